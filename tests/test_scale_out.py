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


# ---------------------------------------------------------------------------------------------- MLM (Composer)

# mlm.main.cli in each process with a callback recording, per step, the rows of this process's batch (masking
# undone: labels where masked, input ids elsewhere) and its loss, and a checksum of the weights when fit starts
# and after every step.
MLM_WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from composer import Callback
    from composer.utils import dist
    from mlm.main import cli

    def checksum(model):
        return float(sum(p.detach().double().sum() for p in model.parameters()))

    class Record(Callback):
        def __init__(self):
            self.steps, self.start = {}, None
        def fit_start(self, state, logger):
            self.start = [int(state.timestamp.batch), checksum(state.model)]
        def after_train_batch(self, state, logger):
            batch = state.batch
            rows = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"]).tolist()
            self.steps[int(state.timestamp.batch) + 1] = {"rows": rows, "loss": float(state.loss)}
        def batch_end(self, state, logger):
            self.steps[int(state.timestamp.batch)]["weights"] = checksum(state.model)

    record = Record()
    trainer = cli(sys.argv[2:], extra_callbacks=[record])
    with open(f"{sys.argv[1]}/rank{dist.get_global_rank()}.json", "w") as f:
        json.dump({"start": record.start, "steps": record.steps}, f)
    trainer.close()
""")
MLM_TINY = ["max_seq_len=32", "model.model_config.hidden_size=32", "model.model_config.num_hidden_layers=1",
            "model.model_config.num_attention_heads=2", "model.model_config.intermediate_size=64",
            "global_train_batch_size=16", "device_eval_batch_size=32", "eval_interval=100ba",
            "progress_bar=false", "callbacks={}", "save_num_checkpoints_to_keep=-1", "run_name=scale", "seed=5",
            "max_duration=6ba", "save_interval=2ba", "console_log_interval=100ba"]


def mlm_run(tmp_path, name, nproc, corpus, *extra):
    report = tmp_path / name
    report.mkdir()
    args = [str(tmp_path / "mlm_worker.py"), str(report), str(REPO / "yamls" / "pretrain" / "demo.yaml"), *MLM_TINY,
            f"device_train_microbatch_size={16 // nproc}", f"data_local={corpus}",
            f"save_folder={report / 'ckpt'}", *extra]
    launcher = [os.path.join(os.path.dirname(sys.executable), "composer"), "-n", "2"] if nproc == 2 \
        else [sys.executable]
    proc = subprocess.run(launcher + args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in range(nproc)]
    steps = {int(s): {"rows": sorted(row for rank in ranks for row in rank["steps"][s]["rows"]),
                      "weights": ranks[0]["steps"][s]["weights"]} for s in ranks[0]["steps"]}
    return ranks[0]["start"], steps, report / "ckpt"


def test_mlm_checkpoint_of_n_processes_resumes_on_m_at_the_same_rows(tmp_path):
    """Composer's resumption on another number of processes (2 → 1 → 2): each run continues at the saved batch
    from the saved weights, and every later step trains on the same rows (global batch fixed) as the
    uninterrupted run. The losses are not step-for-step those of another process count: MLM masks are drawn from
    per-rank RNG streams and each rank's loss is a mean over its own masked tokens."""
    from conftest import moby_dick_rows

    (tmp_path / "corpus").mkdir()
    corpus = moby_dick_rows(str(tmp_path / "corpus"))
    (tmp_path / "mlm_worker.py").write_text(MLM_WORKER)
    start, two, two_ckpt = mlm_run(tmp_path, "two", 2, corpus)
    assert start[0] == 0 and sorted(two) == [1, 2, 3, 4, 5, 6]
    assert len({tuple(map(tuple, two[s]["rows"])) for s in two}) == 6  # the rows differ from step to step
    start, on_one, one_ckpt = mlm_run(tmp_path, "2to1", 1, corpus, f"load_path={two_ckpt / 'ep0-ba2-rank0.pt'}",
                                      "max_duration=4ba")
    assert start == [2, two[2]["weights"]]  # the saved step and weights
    assert sorted(on_one) == [3, 4] and all(on_one[s]["rows"] == two[s]["rows"] for s in on_one)
    start, on_two, _ = mlm_run(tmp_path, "1to2", 2, corpus, f"load_path={one_ckpt / 'ep0-ba4-rank0.pt'}")
    assert start == [4, on_one[4]["weights"]]
    assert sorted(on_two) == [5, 6] and all(on_two[s]["rows"] == two[s]["rows"] for s in on_two)


# ---------------------------------------------------------------------------------------------- settings, FSDP yaml

def test_entry_points_keep_nvlink_multicast_off():
    """Each entry point sets the three variables in its own process before any process group; a value the
    environment gives is kept."""
    probe = ("import os, sys, runpy; sys.argv = [sys.argv[1], '--help']; "
             "exec('try:\\n runpy.run_path(sys.argv[0], run_name=\"__main__\")\\nexcept SystemExit: pass'); "
             "print({k: os.environ.get(k) for k in ('NCCL_NVLS_ENABLE', 'TORCH_SYMM_MEM_DISABLE_MULTICAST', "
             "'NVSHMEM_DISABLE_NVLS')})")
    for script in ("image_classification/main_lion.py", "mlm/main.py"):
        env = {k: v for k, v in ENV.items() if k not in ("NCCL_NVLS_ENABLE", "NVSHMEM_DISABLE_NVLS")}
        env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
        proc = subprocess.run([sys.executable, "-c", probe, script], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.stdout.strip().splitlines()[-1] == ("{'NCCL_NVLS_ENABLE': '0', 'TORCH_SYMM_MEM_DISABLE_MULTICAST': "
                                                        "'1', 'NVSHMEM_DISABLE_NVLS': '1'}"), proc.stderr[-2000:]
    from lion.multi_gpu import disable_nvlink_multicast

    assert disable_nvlink_multicast({"NCCL_NVLS_ENABLE": "1"})["NCCL_NVLS_ENABLE"] == "1"  # setdefault


def test_fsdp_yaml_validates_and_reaches_composer():
    """The FSDP yaml passes the validator and becomes Composer's parallelism_config; a misspelt FSDP field is one
    line. (Composer's FSDP runs on CUDA only: it wraps with device_id=torch.cuda.current_device().)"""
    from composer.utils.parallelism import FSDPConfig

    from mlm.main import fsdp_parallelism
    from mlm.src.bert_config import LionBertConfig
    from mlm.src.bert_layers import LionBertForMaskedLM
    from mlm.src.config_validation import ConfigError, load_config, validate

    path = str(REPO / "yamls" / "pretrain" / "lion-d-base-fsdp.yaml")
    cfg, source = load_config(path, ["data_local=/data/c4"])
    validate(cfg, source)
    fsdp = fsdp_parallelism(cfg)["fsdp"]
    assert fsdp["sharding_strategy"] == "FULL_SHARD" and FSDPConfig(**fsdp).state_dict_type == "full"
    assert fsdp_parallelism(load_config(str(REPO / "yamls" / "pretrain" / "lion-d-base.yaml"), [])[0]) is None
    cfg, source = load_config(path, ["data_local=/data/c4", "fsdp_config.sharding_strategey=FULL_SHARD"])
    with pytest.raises(ConfigError, match="field 'fsdp_config.sharding_strategey' is unknown; did you mean "
                                          "'sharding_strategy'"):
        validate(cfg, source)
    model = LionBertForMaskedLM(LionBertConfig(arch_type="lion-d", hidden_size=32, num_hidden_layers=3,
                                               num_attention_heads=2, intermediate_size=64))
    units = [name for name, module in model.named_modules() if model.fsdp_wrap_fn(module)]
    assert units == [f"bert.encoder.layer.{i}" for i in range(3)]


# ---------------------------------------------------------------------------------------------- benchmarks/scaling.py

def test_scaling_benchmark_dry_run_on_two_cpu_processes(tmp_path):
    """The script itself, end to end on 2 gloo processes: torchrun for the ViT rows, Composer's launcher for the MLM
    rows, tiny models, two timed steps; the table lands in its RESULTS.md block."""
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, "benchmarks/scaling.py", "--device", "cpu", "--gpus", "2", "--tiny",
                           "--sizes", "tiny", "--batch", "4", "--mlm-batch", "4", "--warmup", "1", "--steps", "2",
                           "--results", str(results)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "failed" not in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = results.read_text()
    assert "<!-- scaling:begin -->" in text and "CPU (gloo)" in text
    rows = [line for line in text.splitlines() if line.startswith(("| ViT-T", "| BERT-tiny"))]
    assert [row.split(" | ")[0] for row in rows] == ["| ViT-T DeiT", "| ViT-T LION-D", "| ViT-T LION-S",
                                                     "| BERT-tiny BERT", "| BERT-tiny LION-D", "| BERT-tiny LION-S"]
    assert all(float(row.split(" | ")[1].replace(",", "")) > 0 for row in rows)


def test_a_failing_mlm_rank_ends_the_job_with_one_line_naming_it(tmp_path):
    """composer -n 2, rank 1 raises after its first step: the job ends (Composer's launcher stops rank 0) and the
    output holds one line naming the rank and the cause, after that rank's traceback."""
    from conftest import moby_dick_rows

    (tmp_path / "corpus").mkdir()
    corpus = moby_dick_rows(str(tmp_path / "corpus"))
    worker = tmp_path / "failing_worker.py"
    worker.write_text(textwrap.dedent("""
        import sys
        from composer import Callback
        from composer.utils import dist
        from mlm.main import cli

        class Fail(Callback):
            def after_train_batch(self, state, logger):
                if dist.get_global_rank() == 1:
                    raise RuntimeError("planted failure on rank 1")

        cli(sys.argv[1:], extra_callbacks=[Fail()])
    """))
    launcher = os.path.join(os.path.dirname(sys.executable), "composer")
    proc = subprocess.run([launcher, "-n", "2", str(worker), str(REPO / "yamls" / "pretrain" / "demo.yaml"), *MLM_TINY,
                           "device_train_microbatch_size=8", f"data_local={corpus}",
                           f"save_folder={tmp_path / 'ckpt'}"], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=180)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    named = [line.strip() for line in output.splitlines() if "of 2 failed" in line]
    assert named == ["error: rank 1 of 2 failed: RuntimeError: planted failure on rank 1"], output[-3000:]
