"""Small-scale vision study: DeiT (softmax) and Vim against the five LION variants on the full Fashion-MNIST.

    python experiments/vision_fmnist.py                          # GPU, full 60k/10k, epochs fitted to --time-budget
    python experiments/vision_fmnist.py --epochs 10 --seeds 0 1  # fixed budget, two seeds
    python experiments/vision_fmnist.py --smoke                  # CPU, embedded 3k/1k subset, tiny model, 1 epoch

Every variant gets the same model size, recipe and number of epochs. The models, optimizer, scheduler, loss and the
train/eval loops are the vision trainer's (``image_classification/main_lion.py``, ``engine.py``); only the data path
differs: the idx files are read by ``image_classification.datasets.read_fashion_mnist`` and kept as one uint8 tensor
on the device, batched and augmented there (random 4-px-padded crop, horizontal flip), so a 28-px model is not
starved by per-image PIL transforms. Resumable: runs already in the results JSON (same settings) are skipped.
Writes ``<out>/vision_fmnist.json`` (all runs, per-epoch history, table), ``<out>/vision_fmnist.png`` (curves).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer
from timm.scheduler import create_scheduler

from benchmarks.timing import median_ms
from experiments.common import atomic_write_json, load_json, load_results, plot_curves
from image_classification import main_lion
from image_classification.datasets import FMNIST_DEBIAN_DIR, FMNIST_MINI_NPZ, read_fashion_mnist
from image_classification.engine import LossScaler, evaluate, train_one_epoch
from image_classification.utils import seed_everything

# name -> (timm model, --mask_type, --order); DeiT is timm's ViT (softmax, cls token + learned position embedding).
VARIANTS = {
    "DeiT": ("vit_tiny_patch16_224", None, None),
    "LION-D♮": ("lion_tiny_patch16_224", "Decay", "S"),
    "LION-S♮": ("lion_tiny_patch16_224", "Selective", "S"),
    "LION-S": ("lion_tiny_patch16_224", "Selective", "Normal"),
    "LION-D": ("lion_tiny_patch16_224", "Decay", "Normal"),
    "LION-Lit": ("lion_tiny_patch16_224", "Lit", "Normal"),
    "Vim": ("vim_tiny_patch16_224", None, None),  # the paper's SSM baseline (image_classification/models_vim.py)
}
# --smoke default: Vim's torch selective scan alone would take longer on the CPU than all the others together
SMOKE_VARIANTS = [v for v in VARIANTS if v != "Vim"]
# docs/lion.md §5, ImageNet-1K base: top-1 and training time relative to DeiT.
PAPER = {"DeiT": (81.8, 1.0), "LION-Lit": (74.7, 0.73), "LION-D": (77.8, 1.39), "LION-D♮": (80.2, 1.48),
         "LION-S": (76.3, 1.46), "LION-S♮": (79.9, 1.68), "Vim": (81.9, 10.86)}
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


class DeviceLoader:
    """Batches of a uint8 image tensor held on the device: normalised, optionally crop-and-flip augmented."""

    def __init__(self, images, labels, batch_size, train, seed=0):
        self.images, self.labels, self.batch_size, self.train = images, labels, batch_size, train
        self.generator = torch.Generator(device=images.device).manual_seed(seed)

    def __len__(self):
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def _augment(self, x):  # x: (B, 1, H, W) float; 4-px zero-padded random crop, then random horizontal flip
        B, _, H, W = x.shape
        padded = F.pad(x, (4, 4, 4, 4))
        dy, dx = (torch.randint(0, 9, (B,), device=x.device, generator=self.generator) for _ in range(2))
        rows = (dy[:, None] + torch.arange(H, device=x.device))[:, :, None]
        cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, :]
        x = padded[torch.arange(B, device=x.device)[:, None, None], 0, rows, cols].unsqueeze(1)
        flip = torch.rand(B, device=x.device, generator=self.generator) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    def __iter__(self):
        n = len(self.labels)
        order = (torch.randperm(n, device=self.images.device, generator=self.generator) if self.train
                 else torch.arange(n, device=self.images.device))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = (self.images[idx].float().div_(255.0).sub_(FMNIST_MEAN).div_(FMNIST_STD)).unsqueeze(1)
            yield (self._augment(x) if self.train else x), self.labels[idx]


def load_data(args, device):
    """(train images, train labels, test images, test labels) as device tensors."""
    if args.smoke:  # the 3k/1k real Fashion-MNIST subset committed with the vision trainer
        with np.load(FMNIST_MINI_NPZ) as npz:
            arrays = [npz["train_images"][:256], npz["train_labels"][:256], npz["val_images"][:128],
                      npz["val_labels"][:128]]
    else:
        arrays = [*read_fashion_mnist(args.data_path, train=True), *read_fashion_mnist(args.data_path, train=False)]
    arrays[1], arrays[3] = arrays[1].astype(np.int64), arrays[3].astype(np.int64)
    return [torch.as_tensor(np.ascontiguousarray(a)).to(device) for a in arrays]


def trainer_args(args, variant, epochs, seed):
    """The vision trainer's own argument namespace for one run (its defaults, this study's recipe)."""
    model, mask_type, order = VARIANTS[variant]
    argv = ["--model", model, "--input-size", str(args.img_size), "--epochs", str(epochs), "--seed", str(seed),
            "--lr", str(args.lr), "--unscale-lr", "--weight-decay", str(args.weight_decay), "--sched", "cosine",
            "--warmup-epochs", str(args.warmup_epochs), "--cooldown-epochs", "0", "--min-lr", "1e-5",
            "--drop-path", str(args.drop_path), "--smoothing", str(args.smoothing), "--clip-grad", str(args.clip_grad),
            "--batch-size", str(args.batch_size), "--device", args.device, "--no-model-ema",
            "--model-kwargs", f"patch_size={args.patch_size}", f"depth={args.depth}", f"embed_dim={args.dim}",
            f"num_heads={args.heads}", "in_chans=1"]
    if mask_type is not None:
        argv += ["--mask_type", mask_type, "--order", order]
    ns = main_lion.get_args_parser().parse_args(argv)
    ns.model_kwargs = main_lion.parse_model_kwargs(ns.model_kwargs)
    return ns


def timed_steps(model, criterion, loader, optimizer, device, amp_dtype, warmup, steps):
    """Median ms of ``steps`` forward+backward passes after ``warmup`` (kernel compilation) — no optimizer step, so
    the weights stay at their initialisation. The batches are drawn before the timing starts."""
    it = iter(loader)
    batches = iter([next(it) for _ in range(warmup + steps)])

    def step():
        x, y = next(batches)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = criterion(x, model(x), y)
        loss.backward()

    ms = median_ms(step, warmup=warmup, reps=steps, device=device.type)
    optimizer.zero_grad(set_to_none=True)
    return ms


def build_run(args, variant, epochs, seed, data, device):
    ns = trainer_args(args, variant, epochs, seed)
    seed_everything(seed)
    model = main_lion.create_lion_model(ns, 10).to(device)
    optimizer = create_optimizer(ns, model)
    scheduler, _ = create_scheduler(ns, optimizer)
    criterion = main_lion.build_criterion(ns, mixup_active=False, teacher=None)
    train = DeviceLoader(data[0], data[1], args.batch_size, train=True, seed=seed)
    test = DeviceLoader(data[2], data[3], 2 * args.batch_size, train=False)
    return ns, model, optimizer, scheduler, criterion, train, test


def calibrate(args, data, device, amp_dtype):
    """ms per training step (forward+backward) of every variant, after compilation warm-up."""
    out = {}
    for variant in args.variants:
        _, model, optimizer, _, criterion, train, _ = build_run(args, variant, 1, 0, data, device)
        out[variant] = timed_steps(model, criterion, train, optimizer, device, amp_dtype, warmup=args.warmup_steps,
                                   steps=args.calib_steps)
        print(f"[calibrate] {variant}: {out[variant]:.2f} ms/step", flush=True)
    return out


def run_one(args, variant, epochs, seed, data, device, amp_dtype):
    ns, model, optimizer, scheduler, criterion, train, test = build_run(args, variant, epochs, seed, data, device)
    n_params = sum(p.numel() for p in model.parameters())
    # compile (triton) and warm up outside the timed epochs; no optimizer step, the weights are untouched
    if args.warmup_steps:
        timed_steps(model, criterion, train, optimizer, device, amp_dtype, warmup=args.warmup_steps - 1, steps=1)
    seed_everything(seed)
    scaler, history = LossScaler(device.type, enabled=False), []
    for epoch in range(epochs):
        scheduler.step(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        stats = train_one_epoch(model, criterion, train, optimizer, device, epoch, scaler, amp_dtype,
                                ns.clip_grad, None, None, True, False, 10, print_freq=10 ** 9)
        t1 = time.perf_counter()
        test_stats = evaluate(test, model, device, amp_dtype, print_freq=10 ** 9)
        t2 = time.perf_counter()
        history.append({"epoch": epoch, "train_loss": stats["loss"], "lr": stats["lr"],
                        "test_acc1": test_stats["acc1"], "test_loss": test_stats["loss"],
                        "epoch_s": t1 - t0, "eval_s": t2 - t1})
        print(f"[{variant} seed {seed}] epoch {epoch}: loss {stats['loss']:.4f} top-1 {test_stats['acc1']:.2f} "
              f"train {t1 - t0:.2f}s eval {t2 - t1:.2f}s", flush=True)
    epoch_times = [h["epoch_s"] for h in history]
    return {"variant": variant, "seed": seed, "epochs": epochs, "params": n_params, "history": history,
            "top1": history[-1]["test_acc1"], "top1_best": max(h["test_acc1"] for h in history),
            "epoch_s_median": statistics.median(epoch_times)}


def summarize(results, variants):
    """One row per variant: mean top-1 over seeds, median epoch time, ratio to DeiT, the paper's numbers."""
    runs = results["runs"].values()
    base = [r["epoch_s_median"] for r in runs if r["variant"] == "DeiT"]
    base_step = results.get("calibration_ms", {}).get("DeiT")
    rows = []
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        if not rs:
            continue
        t = statistics.median(r["epoch_s_median"] for r in rs)
        step = results.get("calibration_ms", {}).get(v)
        rows.append({"variant": v, "seeds": [r["seed"] for r in rs], "epochs": rs[0]["epochs"],
                     "top1_mean": statistics.mean(r["top1"] for r in rs), "top1_each": [r["top1"] for r in rs],
                     "epoch_s": t, "time_ratio": t / statistics.median(base) if base else None,
                     "step_ms": step, "step_ratio": step / base_step if step and base_step else None,
                     "paper_top1": PAPER[v][0], "paper_time_ratio": PAPER[v][1]})
    return rows


def plot(results, path):
    s, rows = results["settings"], results.get("table") or []
    plot_curves(results, path, x="epoch", y="test_acc1", loss="train_loss",
                bars={r["variant"]: r["time_ratio"] for r in rows if r["time_ratio"]},
                bar_label="train time per epoch / DeiT's",
                title=f"Fashion-MNIST 60k/10k, ViT depth {s['depth']} width {s['dim']} patch {s['patch_size']}, "
                      f"{results['epochs']} epoch(s), {results.get('gpu', s['device'])}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-path", default=FMNIST_DEBIAN_DIR, help="folder with the Fashion-MNIST idx[.gz] files")
    p.add_argument("--out", default="experiments/results", help="folder for the JSON, PNG")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="default: all (with --smoke: all but Vim)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--extra-seed-variants", nargs="*", default=["DeiT", "LION-D♮", "LION-S♮"],
                   help="after every variant ran with --seeds, these get seed max(seeds)+1 while time is left")
    p.add_argument("--epochs", type=int, default=None, help="fixed epoch budget (default: fitted to --time-budget)")
    p.add_argument("--max-epochs", type=int, default=12)
    p.add_argument("--time-budget", type=float, default=240.0, help="seconds for the whole study (epochs fitted)")
    p.add_argument("--calib-steps", type=int, default=10, help="timed forward+backward steps per variant")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first (triton compilation)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=0)
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--img-size", type=int, default=28)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="CPU, embedded subset, tiny model, 1 epoch (CI)")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the results JSON in --out")
    p.add_argument("--merge", nargs="+", default=[], metavar="DIR",
                   help="first fold in the runs of these results folders (same settings; e.g. one seed per GPU)")
    args = p.parse_args(argv)
    if args.variants is None:
        args.variants = SMOKE_VARIANTS if args.smoke else list(VARIANTS)
    if args.smoke:
        args.device, args.epochs, args.depth, args.dim, args.heads = "cpu", 1, 1, 32, 2
        args.batch_size, args.calib_steps, args.warmup_steps, args.extra_seed_variants = 128, 1, 0, []
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be ≥ 1, got {args.epochs}")
    if not args.smoke and not args.replot and not args.merge and not os.path.isdir(args.data_path):
        p.error(f"--data-path {args.data_path!r} is not a directory (apt-get install dataset-fashion-mnist)")
    return args


def settings(args):
    keys = ("batch_size", "lr", "weight_decay", "warmup_epochs", "drop_path", "smoothing", "clip_grad", "img_size",
            "patch_size", "depth", "dim", "heads", "device", "smoke")
    return {k: getattr(args, k) for k in keys}


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "vision_fmnist.json"
    if args.replot:
        results = load_json(path)
        plot(results, out / "vision_fmnist.png")
        return results
    results = load_results(path, settings(args), args.merge)
    device = torch.device(args.device)
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        results.setdefault("gpu", torch.cuda.get_device_name(0))
    import lion.attention
    results.setdefault("torch", torch.__version__)
    results.setdefault("lion_fused_forms", sorted(lion.attention.fused_forms()))
    loaded = []

    def data():  # read only when something is trained (not for a merge of finished runs)
        if not loaded:
            loaded.extend(load_data(args, device))
            print(f"data: train {tuple(loaded[0].shape)}, test {tuple(loaded[2].shape)} on {device}", flush=True)
        return loaded

    if "calibration_ms" not in results or set(results["calibration_ms"]) != set(args.variants):
        results["calibration_ms"] = calibrate(args, data(), device, amp_dtype)
        atomic_write_json(path, results)
    epochs = args.epochs or results.get("epochs")
    if epochs is None:  # the largest common budget that fits: steps × calibrated time ×1.8 (eval, optimizer, sync)
        left = args.time_budget - (time.perf_counter() - t_start) - 3.0 * len(args.variants)
        per_epoch = sum(1.8 * len(data()[1]) // args.batch_size * ms / 1e3 for ms in results["calibration_ms"].values())
        epochs = int(max(1, min(args.max_epochs, left // per_epoch)))
        print(f"[budget] {left:.0f}s left, ~{per_epoch:.1f}s per epoch of all variants -> {epochs} epochs", flush=True)
    if results.get("epochs") not in (None, epochs):
        raise SystemExit(f"--epochs {epochs}: {path} holds runs of {results['epochs']} epochs (use another --out)")
    results["epochs"] = epochs

    extra_seed = max(args.seeds) + 1
    plan = [(v, s) for s in args.seeds for v in args.variants]
    plan += [(v, extra_seed) for v in args.extra_seed_variants if v in args.variants]
    for variant, seed in plan:
        key = f"{variant}/seed{seed}"
        if key in results["runs"]:
            print(f"[skip] {key}: already in {path}", flush=True)
            continue
        elapsed = time.perf_counter() - t_start
        guess = results["runs"].get(f"{variant}/seed{args.seeds[0]}", {}).get("epoch_s_median")
        if seed == extra_seed and guess and elapsed + 1.3 * guess * epochs > args.time_budget:
            print(f"[budget] no time left for {key}", flush=True)
            continue
        results["runs"][key] = run_one(args, variant, epochs, seed, data(), device, amp_dtype)
        results["table"] = summarize(results, args.variants)
        atomic_write_json(path, results)
        plot(results, out / "vision_fmnist.png")
    results["table"] = summarize(results, args.variants)
    results["wall_s"] = time.perf_counter() - t_start
    atomic_write_json(path, results)
    plot(results, out / "vision_fmnist.png")
    for row in results["table"]:
        print(json.dumps(row, ensure_ascii=False), flush=True)
    return results


if __name__ == "__main__":
    main()
