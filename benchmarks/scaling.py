"""Data-parallel scaling on the GPUs of one host: training throughput at 1, 2, 4 and 8 processes, per-GPU batch fixed.

ViT rows (images/s): timm's deit_{small,base} (SDPA) beside lion_{small,base} LION-D and LION-S, DDP through
``torchrun``, a synthetic batch per process, bf16 autocast, fused AdamW, fused LION kernels (backend 'auto').
MLM rows (tokens/s, 128-token rows): BERT-base softmax (SDPA) beside LION-D and LION-S in Composer's Trainer,
launched by ``composer -n N``: DDP, and with --fsdp also FSDP with the ``fsdp_config`` of
yamls/pretrain/lion-d-base-fsdp.yaml. Efficiency at N = throughput(N) / (N × throughput(1)); targets ≥ 0.90 at 8 for
ViT-B and BERT-base, LION's efficiency at least its softmax twin's. NVLink multicast stays off (lion/multi_gpu.py).

    python benchmarks/scaling.py [--gpus 1 2 4 8] [--sizes small base] [--no-mlm] [--fsdp] [--results FILE]
    python benchmarks/scaling.py --device cpu --gpus 1 2 --tiny --steps 2 --warmup 1 --results ''   # dry run, gloo

Each launch times every model of its part one after the other (step time: the median over --steps after --warmup,
the slowest process's). The table replaces the ``scaling`` block of RESULTS.md (benchmarks/results_md.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere
from benchmarks.results_md import replace_block, run_header  # noqa: E402
from lion.multi_gpu import disable_nvlink_multicast  # noqa: E402

disable_nvlink_multicast()  # here and in every process launched from here (they inherit the environment)
VIT = {"DeiT": None, "LION-D": "Decay", "LION-S": "Selective"}
MLM = {"BERT": "attention", "LION-D": "lion-d", "LION-S": "lion-s"}
TINY_VIT = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2, num_classes=10)
TINY_MLM = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


# ---------------------------------------------------------------------------------------------- workers

def vit_worker(args) -> dict:
    """Images/s of every ViT model of args.sizes in this DDP job (one process a GPU, or gloo on the CPU)."""
    import timm
    import torch.nn.functional as F

    import image_classification.models_lion  # noqa: F401  (registers lion_* in timm)
    from benchmarks.timing import median_ms

    cuda = args.device == "cuda"
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    kwargs = TINY_VIT if args.tiny else {}
    res, classes = kwargs.get("img_size", 224), kwargs.get("num_classes", 1000)
    x = torch.randn(args.batch, 3, res, res, device=device)
    y = torch.randint(0, classes, (args.batch,), device=device)
    out = {}
    for size in args.sizes:
        for name, mask in VIT.items():
            extra = {} if mask is None else {"mask_type": mask}
            model = timm.create_model(f"{'deit' if mask is None else 'lion'}_{size}_patch16_224", **kwargs, **extra)
            model = torch.nn.parallel.DistributedDataParallel(model.to(device), device_ids=[device] if cuda else None)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)

            def step():
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    loss = F.cross_entropy(model(x).float(), y)
                loss.backward()
                opt.step()

            ms = torch.tensor(median_ms(step, args.warmup, args.steps, device.type))
            torch.distributed.all_reduce(ms, op=torch.distributed.ReduceOp.MAX)  # the slowest process sets the pace
            out[f"ViT-{size[0].upper()} {name}"] = world * args.batch / (ms.item() / 1e3)
    # DDP's reducer must go before its process group: freed after destroy_process_group (when this function
    # returns), gloo's destructor joins a worker thread that waits for the GIL the freeing thread holds.
    model = opt = step = None  # noqa: F841  (frees the closure cells)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return out if rank == 0 else {}


def mlm_worker(args) -> dict:
    """Tokens/s of BERT-base softmax, LION-D and LION-S MLM in Composer's Trainer (DDP, or FSDP with --fsdp)."""
    import time

    from composer import Callback, Trainer
    from composer.utils import dist
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from mlm.main import fsdp_parallelism
    from mlm.src.create_bert import OFFLINE_TOKENIZER_DIR, create_bert_mlm

    cuda, length = args.device == "cuda", 32 if args.tiny else 128
    rows = [{"input_ids": torch.randint(1000, 30000, (length,)), "attention_mask": torch.ones(length, dtype=torch.long),
             "labels": torch.randint(1000, 30000, (length,))} for _ in range(args.mlm_batch * 4)]
    for row in rows:  # 30 % of the positions labelled, as pretraining masks them
        row["labels"][torch.rand(length) >= 0.3] = -100
    fsdp = None
    if args.fsdp:
        fsdp = fsdp_parallelism(OmegaConf.load(REPO / "yamls" / "pretrain" / "lion-d-base-fsdp.yaml"))

    class Clock(Callback):  # wall time of the timed steps, after the warm-up ones
        def batch_start(self, state, logger):
            if int(state.timestamp.batch) == args.warmup:
                dist.barrier()
                self.start = time.perf_counter()

        def fit_end(self, state, logger):
            dist.barrier()
            self.seconds = time.perf_counter() - self.start

    out = {}
    for name, arch in MLM.items():
        model = create_bert_mlm(model_config={"arch_type": arch, **(TINY_MLM if args.tiny else {})},
                                tokenizer_name=OFFLINE_TOKENIZER_DIR)
        loader = DataLoader(rows, batch_size=args.mlm_batch, drop_last=True,
                            sampler=dist.get_sampler(rows, shuffle=False, drop_last=True))
        clock = Clock()
        trainer = Trainer(model=model, train_dataloader=loader, max_duration=f"{args.warmup + args.steps}ba",
                          device="gpu" if cuda else "cpu", precision="amp_bf16" if cuda else "fp32",
                          device_train_microbatch_size=args.mlm_batch, parallelism_config=fsdp, callbacks=[clock],
                          progress_bar=False, log_to_console=False, save_folder=None)
        trainer.fit()
        trainer.close()
        label = f"BERT-base {name}" if not args.tiny else f"BERT-tiny {name}"
        out[label] = dist.get_world_size() * args.mlm_batch * length * args.steps / clock.seconds
    return out if dist.get_global_rank() == 0 else {}


# ---------------------------------------------------------------------------------------------- launcher

def launch(args, part: str, n: int, extra: list[str]) -> dict:
    """Run this script's ``part`` worker on ``n`` processes (torchrun for the ViT, Composer's launcher for MLM)."""
    with tempfile.TemporaryDirectory() as folder:
        result = os.path.join(folder, "result.json")
        worker = [str(Path(__file__).resolve()), "--worker", part, "--out", result, *extra]
        if part == "vit":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *worker]
        else:
            cmd = [os.path.join(os.path.dirname(sys.executable), "composer"), "-n", str(n), *worker]
        env = {**os.environ, "PYTHONPATH": str(REPO), **({"OMP_NUM_THREADS": "1"} if args.device == "cpu" else {})}
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
        if proc.returncode or not os.path.exists(result):
            print(f"{part} on {n} process(es) failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}",
                  flush=True)
            return {}
        return json.loads(Path(result).read_text())


def table(throughput: dict, unit: str) -> str:
    """Rows: models; columns: throughput and efficiency per process count."""
    counts = sorted(throughput)
    models = list(dict.fromkeys(m for n in counts for m in throughput[n]))
    lines = [f"| model | {' | '.join(f'{n} × ({unit})' for n in counts)} | efficiency at {counts[-1]} "
             f"(vs {counts[0]}) |",
             "|---|" + "---|" * (len(counts) + 1)]
    for m in models:
        base = throughput.get(counts[0], {}).get(m)
        cells = [f"{throughput[n][m]:,.0f}" if m in throughput[n] else "failed" for n in counts]
        last = throughput[counts[-1]].get(m)
        eff = f"{last / (counts[-1] / counts[0] * base):.2f}" if base and last and len(counts) > 1 else "—"
        lines.append(f"| {m} | {' | '.join(cells)} | {eff} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, nargs="+", default=None,
                    help="process counts (default: 1 2 4 8, those up to torch.cuda.device_count())")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: gloo, fp32 (a dry run)")
    ap.add_argument("--sizes", nargs="+", default=["small", "base"], choices=["tiny", "small", "base"])
    ap.add_argument("--batch", type=int, default=128, help="images per process")
    ap.add_argument("--mlm-batch", type=int, default=128, help="128-token rows per process")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="tiny models and inputs (the CPU dry run)")
    ap.add_argument("--no-vit", action="store_true")
    ap.add_argument("--no-mlm", action="store_true")
    ap.add_argument("--fsdp", action="store_true", help="MLM rows with FSDP too (the FSDP yaml's fsdp_config)")
    ap.add_argument("--results", default="benchmarks/RESULTS.md", help="markdown file to update ('' = none)")
    ap.add_argument("--worker", choices=["vit", "mlm"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        result = (vit_worker if args.worker == "vit" else mlm_worker)(args)
        if result:
            Path(args.out).write_text(json.dumps(result))
        return
    available = torch.cuda.device_count() if args.device == "cuda" else os.cpu_count()
    gpus = [n for n in (args.gpus or [1, 2, 4, 8]) if n <= available]
    if not gpus:
        sys.exit(f"scaling.py: no process count of {args.gpus or [1, 2, 4, 8]} fits the {available} device(s)")
    common = ["--device", args.device, "--batch", str(args.batch), "--mlm-batch", str(args.mlm_batch),
              "--warmup", str(args.warmup), "--steps", str(args.steps), "--sizes", *args.sizes,
              *(["--tiny"] if args.tiny else [])]
    parts = {"ViT, images/s": ("vit", [])} if not args.no_vit else {}
    if not args.no_mlm:
        parts["MLM with DDP, tokens/s"] = ("mlm", [])
        if args.fsdp:
            parts["MLM with FSDP (FULL_SHARD), tokens/s"] = ("mlm", ["--fsdp"])
    blocks = []
    for title, (part, extra) in parts.items():
        throughput = {n: launch(args, part, n, common + extra) for n in gpus}
        blocks.append(f"**{title}**\n\n{table(throughput, title.split(', ')[-1])}")
        print(blocks[-1] + "\n", flush=True)
    import triton

    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (gloo)"
    command = "python benchmarks/scaling.py " + " ".join(sys.argv[1:])
    header = (run_header(command, device, torch.__version__, triton.__version__) + f"\n\nPer-process batch "
              f"{args.batch} images, {args.mlm_batch} rows; ViT: median step of {args.steps} after {args.warmup} "
              f"warm-up, the slowest process's; MLM: wall time of the {args.steps} steps after {args.warmup} warm-up")
    if args.results:
        replace_block(args.results, "scaling", "## Scaling: `benchmarks/scaling.py`\n\n" + header + "\n\n"
                      + "\n\n".join(blocks))


if __name__ == "__main__":
    main()
