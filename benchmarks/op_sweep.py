"""Attention op time (forward + backward) against sequence length: SDPA and the three LION masks (fused attention
form; LION-D and LION-S also in the fused chunk form).

Tokens per batch are fixed (B·L = --tokens), so a linear-time op stays flat and a quadratic one grows with L.
Writes a JSON of the timings and a log-log PNG (the README's plot).

    python benchmarks/op_sweep.py [--tokens 32768] [--heads 12] [--dim 64] [--png benchmarks/op_time.png]
    python benchmarks/op_sweep.py --plot-only sweep.json --png benchmarks/op_time.png
"""
from __future__ import annotations

import argparse
import json
import traceback

import torch
import torch.nn.functional as F

LENGTHS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
STYLE = {"SDPA": ("k", "o"), "LION-Lit": ("tab:blue", "s"), "LION-D": ("tab:orange", "^"),
         "LION-S": ("tab:green", "v"), "LION-D chunk": ("tab:red", "^"), "LION-S chunk": ("tab:olive", "v")}


def _time_length(L: int, B: int, H: int, D: int) -> dict:
    """fwd + bwd ms of each op at one length (its tensors are freed on return)."""
    import triton.testing

    import lion
    from lion.ops.triton.chunk_grad import chunk_attention_trainable
    from lion.ops.triton.naive import fused_attention
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)
    a = torch.randn(H, device="cuda", requires_grad=True)
    z = torch.randn(B, H, L, device="cuda", requires_grad=True)
    kw = dict(scale=D ** -0.5)  # raw q, k: the fused op applies φ in-kernel, as the models call it
    fns = {"SDPA": lambda: F.scaled_dot_product_attention(q, k, v),
           "LION-Lit": lambda: fused_attention(q, k, v, None, feature_map="elu_plus_one", **kw),
           "LION-D": lambda: fused_attention(q, k, v, g_gamma=lion.decay_log_gates(a), feature_map="normalized_silu",
                                             **kw),
           "LION-S": lambda: fused_attention(q, k, v, F.logsigmoid(z), feature_map="normalized_silu", **kw),
           # the chunk form (lion.ops.triton.chunk_grad): linear in L
           "LION-D chunk": lambda: chunk_attention_trainable(q, k, v, g_gamma=lion.decay_log_gates(a),
                                                             feature_map="normalized_silu", **kw),
           "LION-S chunk": lambda: chunk_attention_trainable(q, k, v, F.logsigmoid(z), feature_map="normalized_silu",
                                                             **kw)}
    out = {}
    for name, fn in fns.items():
        try:
            ms = triton.testing.do_bench(lambda: torch.autograd.grad(fn(), (q, k, v), grad), warmup=25, rep=100,
                                         return_mode="median")
            out[name] = ms
            print(f"L={L:6d} B={B:4d} {name:9s} fwd+bwd {ms:8.3f} ms", flush=True)
        except Exception:
            traceback.print_exc()
    return out


def sweep(tokens: int, H: int, D: int, lengths, json_path: str = "") -> dict:
    out = {"tokens": tokens, "heads": H, "dim": D, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "ms": {name: {} for name in STYLE}}
    for L in lengths:
        for name, ms in _time_length(L, max(1, tokens // L), H, D).items():
            out["ms"][name][L] = ms
        torch.cuda.empty_cache()
        if json_path:  # after every length, so that a run cut short still leaves its numbers
            with open(json_path, "w") as f:
                json.dump(out, f, indent=1)
    return out


def plot(data: dict, png: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, (color, marker) in STYLE.items():
        pts = sorted((int(L), ms) for L, ms in data["ms"].get(name, {}).items())
        if pts:
            ax.plot(*zip(*pts), color=color, marker=marker, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("forward + backward (ms)")
    ax.set_title(f"{data['gpu']}, bf16, B·L = {data['tokens']}, H={data['heads']}, d={data['dim']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    ap.add_argument("--json", default="benchmarks/op_sweep.json")
    ap.add_argument("--png", default="benchmarks/op_time.png")
    ap.add_argument("--plot-only", default="", help="re-plot a JSON written earlier (no GPU needed)")
    args = ap.parse_args()
    if args.plot_only:
        with open(args.plot_only) as f:
            data = json.load(f)
    else:
        data = sweep(args.tokens, args.heads, args.dim, args.lengths, args.json)
    plot(data, args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
