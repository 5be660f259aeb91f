"""Two-process gloo training of main_lion.py through torch.distributed.launch --use_env and torchrun
(failures of one process: tests/test_faults_vision.py)."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from image_classification.datasets import materialise_fmnist_mini

REPO = Path(__file__).resolve().parents[1]

# Runs main_lion.main in each process, records every file the process renames into place (all checkpoint and
# log writes are atomic renames) and saves the rank's final weights.
WORKER = textwrap.dedent("""
    import faulthandler, json, os, sys
    import torch
    faulthandler.dump_traceback_later(200, exit=True)  # a hung process reports where it hangs
    from image_classification.main_lion import get_args_parser, main

    rank, report = int(os.environ["RANK"]), sys.argv[1]
    if rank != 0:  # a planted NaN loss (LION_FAULT) hits rank 0 only
        os.environ.pop("LION_FAULT", None)
    replaced, real_replace = [], os.replace
    os.replace = lambda src, dst: (replaced.append(str(dst)), real_replace(src, dst))[1]
    result = main(get_args_parser().parse_args(sys.argv[2:]))
    os.replace = real_replace
    torch.save(result["model"].state_dict(), f"{report}/rank{rank}.pt")
    with open(f"{report}/rank{rank}.json", "w") as f:
        json.dump({"replaced": replaced, "world_size": torch.distributed.get_world_size()}, f)
    torch.distributed.barrier()  # nobody leaves (and takes rank 0's store down) while another rank still needs it
    torch.distributed.destroy_process_group()
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("launcher", ["launch", "torchrun"])
def test_two_process_gloo_training(tmp_path, launcher):
    data = materialise_fmnist_mini(tmp_path / "fmnist_tiny", per_class=4)
    out, report = tmp_path / "out", tmp_path / "report"
    report.mkdir()
    (tmp_path / "worker.py").write_text(WORKER)
    if launcher == "launch":
        cmd = [sys.executable, "-m", "torch.distributed.launch", "--use_env", "--nproc_per_node=2",
               f"--master_port={free_port()}"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port()}"]
    cmd += [str(tmp_path / "worker.py"), str(report),
            "--model", "lion_tiny_patch16_224", "--model-kwargs", "patch_size=4", "depth=1", "embed_dim=32",
            "num_heads=2", "--input-size", "28", "--mask_type", "Selective", "--data-set", "FMNIST_MINI",
            "--data-path", str(data), "--batch-size", "8", "--epochs", "1", "--num_workers", "0", "--device", "cpu",
            "--warmup-epochs", "0", "--output_dir", str(out)]
    if launcher == "launch":  # a NaN loss on rank 0 in step 1 (of 2): both processes skip that step (--skip-nonfinite)
        cmd += ["--skip-nonfinite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "LION_FAULT": "nan@step:1" if launcher == "launch" else ""}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    reports = [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    written = lambda r: sorted(Path(p).name for p in reports[r]["replaced"] if Path(p).parent == out)
    assert written(0) == ["best_checkpoint.pth", "checkpoint.pth", "log.txt"]
    assert written(1) == []  # only rank 0 writes
    (record,) = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert record["train_skipped_steps"] == (1 if launcher == "launch" else 0)
    weights = [torch.load(report / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=0)
    saved = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)["model"]
    torch.testing.assert_close(saved["head.weight"], weights[0]["head.weight"], rtol=0, atol=0)
