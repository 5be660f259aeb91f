"""Scale-out on the CPU with gloo: a checkpoint written on N processes resumes on M ≠ N (vision and MLM), the
NVLink-multicast variables of the entry points, the FSDP yaml, and benchmarks/scaling.py's dry run.

What "the same loss curve" means for the vision trainer (torchrun, repeated augmentation as by default): with the
global batch fixed (``--batch-size`` × processes), step s of every run trains on the same images, since the
sampler cuts one permutation of (seed, epoch) into global batches whatever the number of processes, and DDP's
average of the per-process mean losses is the mean over the global batch. So per-step losses (the mean over the
processes) and weights agree up to fp32 rounding (other batch shapes and reduction orders: ≤ 1e-5 relative here).
That needs a step that is a function of the global batch alone: no mixup/cutmix, random augmentation or drop path,
whose draws come from per-process RNG streams.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from image_classification.datasets import materialise_fmnist_mini

REPO = Path(__file__).resolve().parents[1]
DIST_VARS = {"MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK"}
ENV = {**{k: v for k, v in os.environ.items() if k not in DIST_VARS}, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(REPO), "LION_FAULT": ""}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc, script, *args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{free_port()}", str(script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    return proc


# ---------------------------------------------------------------------------------------------- vision

# main_lion.main in each process, recording every training step's loss (this process's mean) and keeping a copy
# of the checkpoint after epoch 0; rank 0 saves the final weights.
VISION_WORKER = textwrap.dedent("""
    import json, os, shutil, sys
    import torch
    from image_classification import engine, utils
    from image_classification.main_lion import get_args_parser, main

    rank, report = int(os.environ["RANK"]), sys.argv[1]
    losses, real_update, real_save = [], engine.MetricLogger.update, utils.save_on_master
    def update(self, **kwargs):
        if "lr" in kwargs:  # a training step (evaluation logs no lr)
            losses.append(kwargs["loss"])
        return real_update(self, **kwargs)
    def save(obj, path):
        real_save(obj, path)
        if os.path.basename(path) == "checkpoint.pth" and obj["epoch"] == 0 and rank == 0:
            shutil.copy(path, f"{report}/epoch0.pth")
    engine.MetricLogger.update, utils.save_on_master = update, save
    result = main(get_args_parser().parse_args(sys.argv[2:]))
    with open(f"{report}/losses{rank}.json", "w") as f:
        json.dump(losses, f)
    if rank == 0:
        torch.save(result["model"].state_dict(), f"{report}/final.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
""")
GLOBAL_BATCH, STEPS_PER_EPOCH = 8, 5  # 40 training images (4 a class)


def vision_run(tmp_path, name, nproc, data, *extra):
    report = tmp_path / name
    report.mkdir()
    proc = torchrun(nproc, tmp_path / "worker.py", report,
                    "--model", "lion_tiny_patch16_224", "--model-kwargs", "patch_size=7", "depth=1", "embed_dim=32",
                    "num_heads=2", "--input-size", "28", "--mask_type", "Selective", "--data-set", "FMNIST_MINI",
                    "--data-path", data, "--batch-size", GLOBAL_BATCH // nproc, "--epochs", 2, "--num_workers", 0,
                    "--device", "cpu", "--warmup-epochs", 0, "--no-aug", "--mixup", 0, "--cutmix", 0,
                    "--drop-path", 0, "--no-model-ema", "--lr", "2e-3", "--unscale-lr", "--print-freq", 100,
                    "--output_dir", report / "out", *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    per_rank = [json.loads((report / f"losses{r}.json").read_text()) for r in range(nproc)]
    steps = [sum(step) / nproc for step in zip(*per_rank)]  # the loss of the global batch
    return steps, torch.load(report / "final.pt", weights_only=True), report, proc.stdout + proc.stderr


def test_vision_checkpoint_of_n_processes_resumes_on_m_with_the_same_loss_curve(tmp_path):
    data = str(materialise_fmnist_mini(tmp_path / "fmnist_tiny", per_class=4))
    (tmp_path / "worker.py").write_text(VISION_WORKER)
    two, two_weights, two_dir, _ = vision_run(tmp_path, "two", 2, data)
    one, one_weights, one_dir, _ = vision_run(tmp_path, "one", 1, data)
    assert len(two) == len(one) == 2 * STEPS_PER_EPOCH
    assert len({round(x, 3) for x in two}) > 1  # it trains (the losses move)
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-6)  # the same curve on 1 and 2 processes

    # 2 → 1: epoch 1 on one process from the checkpoint two processes wrote after epoch 0, and 1 → 2
    resumed_on_one, weights_21, _, log = vision_run(tmp_path, "2to1", 1, data, "--resume", two_dir / "epoch0.pth")
    assert "written with a global batch" not in log
    resumed_on_two, weights_12, _, _ = vision_run(tmp_path, "1to2", 2, data, "--resume", one_dir / "epoch0.pth")
    torch.testing.assert_close(resumed_on_one, two[STEPS_PER_EPOCH:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(resumed_on_two, one[STEPS_PER_EPOCH:], rtol=1e-5, atol=1e-6)
    for weights in (one_weights, weights_21, weights_12):
        torch.testing.assert_close(weights, two_weights, rtol=1e-4, atol=1e-5)
