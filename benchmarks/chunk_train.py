"""The attention op alone for training (forward + backward): LION's chunk form and attention form (fused kernels)
against SDPA flash attention, at the ViT lengths of 224 / 448 / 896 / 1792 px (197, 785, 3137, 12545 tokens).

B·L tokens per call are fixed (--tokens), so the GPU stays full at every length; bf16 q, k, v (B, H, L, d), raw
(the ops apply φ), timed side by side (``interleaved_median_ms``). Per cell: ms, TFLOP/s-equivalent (the softmax
attention's work, 3.5 · 4·B·H·L²·d flops for fwd + bwd, over the time) and the peak memory beyond the inputs.

    python benchmarks/chunk_train.py [--tokens 131072] [--heads 6] [--dim 64] [--lengths 197 785 3137 12545]
        [--crossover lion/form_crossover.json]

--crossover writes, per mask kind, the shortest measured length from which on the chunk form was at least as fast
as the attention form at every measured length (what form='auto' reads, lion.form_choice), with this command.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.results_md import replace_block, run_header
from benchmarks.timing import interleaved_median_ms, peak_activation_gib

LENGTHS = [197, 785, 3137, 12545]


def ops(L: int, B: int, H: int, D: int, forms) -> tuple[dict, tuple]:
    """name → a fwd + bwd call, and the leaves they differentiate."""
    import lion
    from lion.curves import curve_permutation

    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    a = torch.randn(H, device="cuda", requires_grad=True)
    z = torch.randn(B, L, H, device="cuda", requires_grad=True)
    dy = torch.randn_like(v)
    side = int(round((L - 1) ** 0.5))
    perms = [curve_permutation(L, c, 1, "cuda") for c in ("s", "sr")] if side * side == L - 1 else None

    def lion_op(mask, order, form):
        def fn():
            fm = {"Lit": "elu_plus_one", "Lit-u": None}.get(mask, "normalized_silu")
            if mask.startswith("Lit"):
                gate = None
            elif mask == "D":
                gate = lion.decay_log_gates(a)
            else:
                gate = lion.selective_log_gates(z)
            orders = None
            if order == "♮":
                gs = [gate if mask != "S" else lion.selective_log_gates(z, perm=p) for p in perms]
                orders, gate = list(zip(perms, gs)), None
            y = lion.lion_attention(q, k, v, gate, feature_map=fm, scale=D ** -0.5, form=form, orders=orders,
                                    normalize=mask != "Lit-u", backend="triton")
            return torch.autograd.grad(y, (q, k, v), dy)
        return fn

    fns = {"SDPA flash": lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), dy)}
    for mask in ("Lit", "Lit-u", "D", "S"):  # Lit-u: Lit unnormalised, no feature map (the MLM BERTs' Lit)
        for order in ("", "♮"):
            if order and (perms is None or mask.startswith("Lit")):
                continue
            for form in forms:
                fns[f"{mask}{order} {form}"] = lion_op(mask, order, form)
    return fns, (q, k, v)


def run(tokens: int, H: int, D: int, lengths, forms, reps: int) -> list[tuple]:
    rows = []
    for L in lengths:
        B = max(1, tokens // L)
        fns, _ = ops(L, B, H, D, forms)
        for name, fn in fns.items():  # the first call compiles: report it, so a run cut short still tells how far
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            print(f"L={L:6d} {name:16s} first call (compiles) {time.perf_counter() - t0:6.1f} s", flush=True)
        ms = interleaved_median_ms(fns, warmup=2, reps=reps)
        flops = 3.5 * 4 * B * H * L * L * D
        for name, t in ms.items():
            mem = peak_activation_gib(fns[name])
            rows.append((L, B, name, t, flops / t / 1e9, mem))
            print(f"L={L:6d} B={B:4d} {name:16s} {t:9.3f} ms {flops / t / 1e9:8.1f} TFLOP/s-eq {mem:7.2f} GiB",
                  flush=True)
        del fns
        torch.cuda.empty_cache()
    return rows


def table(rows) -> str:
    """One row per length: SDPA's ms, then per LION op its chunk and attention forms' time ÷ SDPA's; the peak
    memory of each at the longest length below."""
    ms = {(L, name): t for L, _, name, t, _, _ in rows}
    batch = {L: B for L, B, *_ in rows}
    lengths = sorted(batch)
    ops = list(dict.fromkeys(name.split()[0] for _, _, name, *_ in rows if name != "SDPA flash"))
    forms = list(dict.fromkeys(name.split()[1] for _, _, name, *_ in rows if name != "SDPA flash"))

    def cell(L, op):
        base = ms.get((L, "SDPA flash"))
        vals = [ms.get((L, f"{op} {form}")) for form in forms]
        return " · ".join("–" if v is None else (f"{v / base:.2f}" if base else f"{v:.2f} ms") for v in vals)
    out = [f"bf16, fwd + bwd of the op; each LION cell: {' · '.join(forms)} form, time ÷ SDPA's", "",
           "| L (B) | SDPA ms | " + " | ".join(ops) + " |", "|---" * (len(ops) + 2) + "|"]
    for L in lengths:
        sdpa = ms.get((L, "SDPA flash"))
        out.append(f"| {L} ({batch[L]}) | {'–' if sdpa is None else f'{sdpa:.2f}'} | "
                   + " | ".join(cell(L, op) for op in ops) + " |")
    if lengths:  # peak memory beyond the inputs at the longest length, in the cells' layout
        L = lengths[-1]
        mem = {name: m for L_, _, name, _, _, m in rows if L_ == L}
        sdpa = f"SDPA {mem['SDPA flash']:.2f}, " if "SDPA flash" in mem else ""
        out += ["", f"Peak GiB at L = {L}: {sdpa}" + ", ".join(
            f"{op} " + " · ".join(f"{mem[f'{op} {form}']:.2f}" if f"{op} {form}" in mem else "–" for form in forms)
            for op in ops)]
    return "\n".join(out)


def crossover(rows) -> dict:
    """{mask kind: the shortest length from which the chunk form took ≤ the attention form's time at every measured
    length}; a kind whose chunk form never caught up is left out."""
    ms = {(L, name): t for L, _, name, t, _, _ in rows}
    out = {}
    for kind, short in (("Lit", "Lit"), ("Lit-unnormalised", "Lit-u"), ("Decay", "D"), ("Selective", "S")):
        lengths = sorted({L for L, *_ in rows if (L, f"{short} chunk") in ms and (L, f"{short} attention") in ms})
        wins = [ms[L, f"{short} chunk"] <= ms[L, f"{short} attention"] for L in lengths]
        for i, L in enumerate(lengths):
            if all(wins[i:]):
                out[kind] = L
                break
    return out


def main():
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    ap.add_argument("--forms", nargs="+", default=["chunk", "attention"], choices=["chunk", "attention"])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--crossover", default="", help="write the crossover lengths to this JSON (form='auto' reads "
                    "lion/form_crossover.json)")
    ap.add_argument("--results", default="benchmarks/RESULTS.md",
                    help="markdown file whose chunk_train:op block this run replaces ('' = none)")
    args = ap.parse_args()
    rows = run(args.tokens, args.heads, args.dim, args.lengths, args.forms, args.reps)
    gpu = torch.cuda.get_device_name()
    import triton
    head = run_header("python benchmarks/chunk_train.py " + " ".join(sys.argv[1:]), gpu, torch.__version__,
                      triton.__version__)
    block = f"**Op alone, fwd + bwd** · {head}\n\n{table(rows)}"
    print(block)
    if args.results:
        replace_block(args.results, "chunk_train:op", block)
    if args.crossover:
        data = {"command": "python " + " ".join(sys.argv), "gpu": gpu,
                "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "lengths": sorted(set(args.lengths)),
                "chunk_from_length": crossover(rows)}
        with open(args.crossover, "w") as f:
            json.dump(data, f, indent=1)
        print(f"wrote {args.crossover}: {data['chunk_from_length']}")


if __name__ == "__main__":
    main()
