"""Full training step (forward, backward, AdamW) of LION against softmax (SDPA) baselines, side by side.

ViT-S/B: the five LION variants (Lit, D, S, D♮, S♮) against timm's deit_{small,base}_patch16_224; BERT-base MLM
(lion-lit, lion-d, lion-s) against our softmax BERT (arch_type 'attention'), when mlm.src.bert_layers imports.
bf16 autocast, random data, median of the timed steps after warm-up. Also times the attention op alone at ViT-B
shapes (fused LION kernels vs SDPA) and the bf16 matmul rate of the same GPU, and appends a section with the
ratio table to a results file.

    python benchmarks/train_step.py [--sizes small base] [--batch 128] [--backend auto] [--compile]
                                    [--results benchmarks/RESULTS.md] [--json out.json]
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import signal
import statistics
import sys
import traceback

import timm
import torch
import torch.nn.functional as F

import image_classification.models_lion  # noqa: F401  (registers lion_* in timm)
import lion

VARIANTS = {"Lit": ("Lit", "Normal"), "D": ("Decay", "Normal"), "S": ("Selective", "Normal"),
            "D♮": ("Decay", "S"), "S♮": ("Selective", "S")}
MLM_ARCHS = {"Lit": "lion-lit", "D": "lion-d", "S": "lion-s"}
TARGETS = {"Lit": 0.90, "D": 1.00, "S": 1.10, "D♮": 1.15, "S♮": 1.25}
MLM_TARGETS = {"Lit": 0.95, "D": 1.00, "S": 1.10}


def time_steps(step, warmup: int, steps: int) -> float:
    """Median milliseconds of ``steps`` calls after ``warmup`` calls, each timed with CUDA events."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def compile_blocks(model) -> None:
    """Regional compilation: each transformer block is compiled in place (one graph, reused by every block),
    for the baselines and LION alike; embeddings, head and loss stay eager."""
    blocks = model.blocks if hasattr(model, "blocks") else model.bert.encoder.layer
    for block in blocks:
        block.compile()


def train_step_fn(model, batch, loss_fn, compile_model: bool):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    if compile_model:
        compile_blocks(model)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        return loss
    return step


def bench_model(build, batch, loss_fn, args) -> float:
    model = build().cuda()
    try:
        return time_steps(train_step_fn(model, batch, loss_fn, args.compile), args.warmup, args.steps)
    finally:
        del model
        gc.collect()
        torch.cuda.empty_cache()


def vit_rows(size: str, args, out: dict) -> dict:
    x = torch.randn(args.batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (args.batch,), device="cuda")
    batch = (x, y)

    def loss_fn(model, b):
        return F.cross_entropy(model(b[0]).float(), b[1])

    ms = out
    ms["DeiT"] = bench_model(lambda: timm.create_model(f"deit_{size}_patch16_224"), batch, loss_fn, args)
    print(f"  ViT-{size[0].upper()} DeiT (SDPA): {ms['DeiT']:.2f} ms", flush=True)
    for name in args.variants:
        mask_type, order = VARIANTS[name]
        for backend in args.backends:
            key = name if backend == args.backends[0] else f"{name} [{backend}]"
            try:
                ms[key] = bench_model(lambda: timm.create_model(f"lion_{size}_patch16_224", mask_type=mask_type,
                                                                order=order, backend=backend), batch, loss_fn, args)
                print(f"  ViT-{size[0].upper()} LION-{key}: {ms[key]:.2f} ms ({ms[key] / ms['DeiT']:.2f}x)", flush=True)
            except Exception:  # one failing variant must not hide the others
                traceback.print_exc()
    return ms


def mlm_rows(args, out: dict) -> dict | None:
    try:
        from mlm.src.bert_layers import LionBertConfig, LionBertForMaskedLM
    except Exception as e:  # the MLM model lives in another work package
        print(f"MLM skipped: mlm.src.bert_layers does not import ({e!r})")
        return None
    B, L = args.mlm_batch, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(1, 30522, (B, L), device="cuda", generator=g)
    labels = torch.where(torch.rand(B, L, device="cuda", generator=g) < 0.3, ids, torch.full_like(ids, -100))
    mask = torch.ones(B, L, dtype=torch.bool, device="cuda")

    def loss_fn(model, b):
        return model(input_ids=b[0], attention_mask=b[2], labels=b[1]).loss

    def build(arch):
        cfg = LionBertConfig(arch_type=arch, layer_norm_after=(arch == "lion-lit"), attention_probs_dropout_prob=0.0)
        return LionBertForMaskedLM(cfg)

    ms = out
    ms["BERT"] = bench_model(lambda: build("attention"), (ids, labels, mask), loss_fn, args)
    print(f"  BERT-base softmax (SDPA): {ms['BERT']:.2f} ms", flush=True)
    for name, arch in MLM_ARCHS.items():
        try:
            ms[name] = bench_model(lambda: build(arch), (ids, labels, mask), loss_fn, args)
            print(f"  BERT-base {arch}: {ms[name]:.2f} ms ({ms[name] / ms['BERT']:.2f}x)", flush=True)
        except Exception:
            traceback.print_exc()
    return ms


def matmul_tflops() -> float:
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = time_steps(lambda: a @ b, 3, 20)
    return 2 * 8192 ** 3 / ms / 1e9


def op_rows(B=128, H=12, L=197, D=64) -> dict:
    """fwd and fwd+bwd of the attention op alone (ViT-B shapes, bf16), with TFLOP/s counted as for
    FlashAttention: forward 4·B·H·L²·D (two matmuls), backward 2.5× that (recompute + four matmuls)."""
    from lion.ops.triton import attention_sums
    dev, dt = "cuda", torch.bfloat16
    q, k, v = (torch.rand(B, H, L, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    gates = {"Lit": None, "D": lion.decay_log_gates(torch.randn(H, device=dev), L, B),
             "S": F.logsigmoid(torch.randn(B, H, L, device=dev))}
    flops_fwd = 4 * B * H * L * L * D
    rows = {}

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v)

    fns = {"SDPA": sdpa}
    for name, la in gates.items():
        fns[f"LION-{name}"] = (lambda la=la: attention_sums(q, k, v, la, D ** -0.5, True)[0])
    fns["LION-Lit (kernel)"] = lambda: attention_sums(q, k, v, None, D ** -0.5, True, lit_kv=False)[0]
    for name, fn in fns.items():
        grad = torch.randn(B, H, L, D, device=dev, dtype=dt)
        fwd = time_steps(lambda: fn(), 5, 30)
        fb = time_steps(lambda: torch.autograd.grad(fn(), (q, k, v), grad), 5, 30)
        rows[name] = dict(fwd_ms=fwd, fwd_bwd_ms=fb, fwd_tflops=flops_fwd / fwd / 1e9,
                          fwd_bwd_tflops=3.5 * flops_fwd / fb / 1e9)
    return rows


def ratio_table(results: dict) -> str:
    names = [n for n in VARIANTS if any(n in r for r in results.get("vit", {}).values())]
    lines = ["| train step / softmax baseline | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for size, ms in results.get("vit", {}).items():
        if "DeiT" not in ms:
            continue
        cells = [f"{ms[n] / ms['DeiT']:.2f}" if n in ms else "–" for n in names]
        lines.append(f"| ViT-{size[0].upper()} (DeiT {ms['DeiT']:.1f} ms) | " + " | ".join(cells) + " |")
    lines.append("| target | " + " | ".join(f"≤ {TARGETS[n]:.2f}" for n in names) + " |")
    mlm = results.get("mlm")
    if mlm and "BERT" in mlm:
        lines += ["", "| MLM train step / softmax BERT | Lit | D | S |", "|---|---|---|---|",
                  f"| BERT-base, seq 128 (BERT {mlm['BERT']:.1f} ms) | "
                  + " | ".join(f"{mlm[n] / mlm['BERT']:.2f}" if n in mlm else "–" for n in MLM_ARCHS) + " |",
                  "| target | " + " | ".join(f"≤ {MLM_TARGETS[n]:.2f}" for n in MLM_ARCHS) + " |"]
    extra = [(size, k) for size, ms in results.get("vit", {}).items() if "DeiT" in ms for k in ms if "[" in k]
    if extra:
        lines += ["", "Other backends (ms, ratio to DeiT): " + ", ".join(
            f"ViT-{s[0].upper()} {k} {results['vit'][s][k]:.1f} ({results['vit'][s][k] / results['vit'][s]['DeiT']:.2f})"
            for s, k in extra)]
    return "\n".join(lines)


def op_table(results: dict) -> str:
    ops = results.get("op")
    if not ops:
        return ""
    mm = results.get("matmul_tflops", float("nan"))
    lines = [f"Attention op alone, B=128 H=12 L=197 d=64 bf16 (bf16 matmul 8192³ in this run: {mm:.0f} TFLOP/s):", "",
             "| op | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd+bwd / matmul rate |",
             "|---|---|---|---|---|---|"]
    for name, r in ops.items():
        lines.append(f"| {name} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {r['fwd_tflops']:.0f} | "
                     f"{r['fwd_bwd_tflops']:.0f} | {r['fwd_bwd_tflops'] / mm:.0%} |")
    lines.append("(Lit's default path is KᵀV, O(L·d²): its TFLOP/s are counted as if it did the L² work.)")
    return "\n".join(lines)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["small", "base"], choices=["small", "base"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--backends", nargs="+", default=["auto"], choices=list(lion.BACKENDS),
                    help="LION backends to time; the first fills the ratio table, the others are listed after it")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--mlm-batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile every transformer block (regional compilation; baselines too)")
    ap.add_argument("--no-mlm", action="store_true")
    ap.add_argument("--no-op", action="store_true", help="skip the op-level timing")
    ap.add_argument("--results", default="benchmarks/RESULTS.md", help="markdown file to append to ('' = none)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("train_step.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch,
               "dtype": "bf16 autocast", "compile": args.compile, "backends": args.backends}
    try:
        results["matmul_tflops"] = matmul_tflops()
        print(f"bf16 matmul 8192³: {results['matmul_tflops']:.0f} TFLOP/s", flush=True)
        if not args.no_op:
            results["op"] = op_rows()
            print(op_table(results), flush=True)
    except Exception:
        traceback.print_exc()
    results["vit"] = {}
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout` still gets the table of what was measured
    try:
        for size in args.sizes:
            vit_rows(size, args, results["vit"].setdefault(size, {}))
        if not args.no_mlm:
            results["mlm"] = {}
            if mlm_rows(args, results["mlm"]) is None:
                results["mlm"] = None
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", flush=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"### Training step, {stamp}: {results['gpu']}, torch {results['torch']}, batch {args.batch} "
            f"(MLM {args.mlm_batch}×128 tokens), bf16 autocast, AdamW, {'torch.compile (each block)' if args.compile else 'eager'}, "
            f"LION backend {args.backends[0]}; median of {args.steps} steps after {args.warmup} warm-up")
    section = "\n\n".join(s for s in (head, ratio_table(results), op_table(results)) if s)
    if results.get("mlm") is None and not args.no_mlm:
        section += "\n\nMLM: not measured (mlm.src.bert_layers did not import)."
    print("\n" + section, flush=True)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + section + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
