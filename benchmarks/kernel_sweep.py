"""GPU time of each LION kernel alone, per launch setting: how the config lists and defaults were chosen.

``attn``: the fused attention form's forward and backward kernels (lion/ops/triton/naive.py), one tile config
at a time (autotuning off), inside a forward + backward of LION-D (per-head gates) and LION-S (per-token gates)
at ViT-S (B128 H6 L197) and BERT (B128 H12 L128, LION-D) shapes, bf16; SDPA's forward + backward for reference.
``paths``: every kernel of the fused attention op's forward + backward at the default configs, for each gate path
(LION-D per-head gates, LION-S per-token gates, and both with two ♮ orders) at the ViT-S and BERT shapes.
``mlm``: the op's kernels at the MLM layer's settings (BERT shape, raw q and k, unnormalised, the all-True
key padding mask a data loader passes) with attention dropout 0.1 and 0, for LION-Lit, LION-D and LION-S.
``chunk``: the chunk form's three kernels (lion/ops/triton/chunk.py) at 896 and 1792 px (B8 H6 d64, bf16, LION-S
gates) for chunk sizes and warp counts. Times are torch.profiler kernel times in µs (mean over the calls), so host
launch time does not count. Needs a CUDA GPU.

    python benchmarks/kernel_sweep.py attn [--reps 10] [--only fwd bwd]
    python benchmarks/kernel_sweep.py paths [--reps 20]
    python benchmarks/kernel_sweep.py mlm [--reps 20]
    python benchmarks/kernel_sweep.py chunk [--reps 20]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import kernel_ms  # noqa: E402

# (BLOCK_M, BLOCK_N, warps, stages, maxnreg)
FWD_TILES = [(64, 32, 8, 2, None), (64, 64, 8, 2, None), (128, 32, 8, 2, None), (64, 32, 4, 2, None),
             (32, 32, 4, 2, None), (64, 64, 4, 2, None), (64, 64, 4, 3, None), (128, 64, 8, 2, None),
             (64, 64, 8, 2, 128)]
BWD_TILES = [(32, 64, 4, 3, 168), (32, 64, 4, 2, 168), (32, 64, 4, 2, 128), (32, 64, 4, 2, None),
             (64, 64, 4, 2, None), (16, 64, 4, 2, None), (32, 64, 4, 3, None), (64, 64, 4, 3, None),
             (32, 128, 8, 2, None), (64, 128, 8, 2, None), (32, 128, 4, 2, None), (64, 64, 4, 2, 168)]
CHUNK_SETTINGS = [(64, None), (64, 8), (32, 4), (128, 8), (128, 4)]  # (chunk size, warps); None: the default


def kernel_us(fn, reps: int) -> dict[str, float]:
    """Mean GPU time per call of ``fn``, µs, per kernel (name cut to 24 characters)."""
    per: dict[str, float] = {}
    for name, ms in kernel_ms(fn, warmup=3, reps=reps).items():
        per[name[:24]] = per.get(name[:24], 0.0) + ms * 1e3
    return per


def _line(per: dict[str, float]) -> str:
    return f"total {sum(per.values()):8.1f} | " + " ".join(f"{k}={v:.1f}" for k, v in sorted(per.items()))


def attn(reps: int, only=("fwd", "bwd")) -> None:
    import triton

    import lion
    import lion.ops.triton.common.launching as launching
    from lion.ops.triton import naive as A

    launching.AUTOTUNE = False  # each Launcher then takes configs[0]: the tile under test
    saved = A._fwd.configs, A._bwd.configs

    def tile(bm, bn, w, st, mr):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st, maxnreg=mr)
    try:
        for B, H, L, masks in ((128, 6, 197, ("D", "S")), (128, 12, 128, ("D",))):
            qkv = torch.randn(B, L, 3, H, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
            dy = torch.randn(B, H, L, 64, device="cuda", dtype=torch.bfloat16)
            a = torch.randn(H, device="cuda", requires_grad=True)
            z = torch.randn(B, H, L, device="cuda", requires_grad=True)
            for mask in masks:
                def step(mask=mask, q=q, k=k, v=v, qkv=qkv, a=a, z=z, dy=dy):
                    log_a = lion.decay_log_gates(a) if mask == "D" else F.logsigmoid(z)
                    gates = dict(g_gamma=log_a) if mask == "D" else dict(g=log_a)
                    y = A.fused_attention(q, k, v, **gates, feature_map="normalized_silu", scale=0.125)
                    torch.autograd.grad(y, (qkv, a if mask == "D" else z), dy)

                for which, tiles, kernel in (("fwd", FWD_TILES, "_fwd_kernel"), ("bwd", BWD_TILES, "_bwd_kernel")):
                    if which not in only:
                        continue
                    A._fwd.configs, A._bwd.configs = [A._fwd_configs()[0]], [A._bwd_configs()[0]]  # defaults
                    for t in tiles:
                        (A._fwd if which == "fwd" else A._bwd).configs = [tile(*t)]
                        try:
                            per = kernel_us(step, reps)
                            print(f"attn B{B} H{H} L{L} LION-{mask} {which} {t}: {kernel} {per.get(kernel, 0):7.1f} µs"
                                  f" | {_line(per)}", flush=True)
                        except Exception as err:  # a tile the compiler refuses (shared memory) is reported
                            print(f"attn B{B} H{H} L{L} LION-{mask} {which} {t}: failed, {type(err).__name__}",
                                  flush=True)
            def sdpa(q=q, k=k, v=v, qkv=qkv, dy=dy):
                torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (qkv,), dy)
            print(f"attn B{B} H{H} L{L} SDPA fwd+bwd: {_line(kernel_us(sdpa, reps))}", flush=True)
    finally:
        A._fwd.configs, A._bwd.configs = saved
        launching.AUTOTUNE = True


def paths(reps: int) -> None:
    import lion
    from lion.masks import gate_arguments
    from lion.ops.triton import naive as A

    for B, H, L in ((128, 6, 197), (128, 12, 128)):
        qkv = torch.randn(B, L, 3, H, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        q, k, v = lion.unpack_qkv(qkv)
        dy = torch.randn(B, H, L, 64, device="cuda", dtype=torch.bfloat16)
        a = torch.randn(2, H, device="cuda", requires_grad=True)
        z = torch.randn(2, B, H, L, device="cuda", requires_grad=True)
        natural, shuffled = torch.arange(L, device="cuda"), torch.randperm(L, device="cuda")
        for mask in ("D", "S", "D♮", "S♮"):
            def step(mask=mask, q=q, k=k, v=v, qkv=qkv, a=a, z=z, dy=dy, natural=natural, shuffled=shuffled):
                gate = a if mask[0] == "D" else z
                las = [lion.decay_log_gates(g) for g in a] if mask[0] == "D" else [F.logsigmoid(g) for g in z]
                orders = [(natural, las[0]), (shuffled, las[1])] if mask.endswith("♮") else None
                y = A.fused_attention(q, k, v, **gate_arguments(None if orders else las[0], orders, B, L),
                                      feature_map="normalized_silu", scale=0.125)
                torch.autograd.grad(y, (qkv, gate), dy)
            print(f"paths B{B} H{H} L{L} LION-{mask}: {_line(kernel_us(step, reps))}", flush=True)


def mlm(reps: int) -> None:
    from lion.ops.triton.naive import fused_attention

    B, H, L = 128, 12, 128
    qkv = torch.randn(B, L, 3, H, 64, device="cuda", dtype=torch.bfloat16)
    q, k, v = (qkv[:, :, i].transpose(1, 2).detach().requires_grad_() for i in range(3))
    dy = torch.randn(B, H, L, 64, device="cuda", dtype=torch.bfloat16)
    real = torch.ones(B, L, dtype=torch.bool, device="cuda")
    gates = {"Lit": None, "D": (-0.2 * torch.rand(H, device="cuda")).requires_grad_(),
             "S": (-0.2 * torch.rand(B, H, L, device="cuda")).requires_grad_()}
    for mask, log_a in gates.items():
        for p in (0.1, 0.0):
            def step(log_a=log_a, p=p):
                gates = dict(g_gamma=log_a) if mask == "D" else dict(g=log_a)
                y = fused_attention(q, k, v, **gates, scale=0.125, normalize=False, key_padding_mask=real,
                                    dropout_p=p)
                torch.autograd.grad(y, [q, k, v] + ([] if log_a is None else [log_a]), dy)
            print(f"mlm B{B} H{H} L{L} LION-{mask} dropout {p}: {_line(kernel_us(step, reps))}", flush=True)


def chunk(reps: int) -> None:
    from lion import selective_log_gates
    from lion.ops.triton.chunk import chunk_attention

    B, H, d = 8, 6, 64
    for L in (3137, 12545):
        qkv = torch.randn(B, L, 3, H, d, device="cuda", dtype=torch.bfloat16)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        log_a = selective_log_gates(torch.randn(B, L, H, device="cuda"))
        with torch.inference_mode():
            for size, warps in CHUNK_SETTINGS:
                def forward(q=q, k=k, v=v, log_a=log_a, size=size, warps=warps):
                    chunk_attention(q, k, v, log_a, feature_map="normalized_silu", scale=0.125, chunk_size=size,
                                    num_warps=warps)
                per = kernel_us(forward, reps)
                print(f"chunk L={L} C={size} warps={warps or 'default'}: {_line(per)}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["attn", "paths", "mlm", "chunk"])
    ap.add_argument("--reps", type=int, default=None,
                    help="profiled calls per setting (default 10 attn, 20 the others)")
    ap.add_argument("--only", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"], help="attn: which kernels")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernel_sweep.py times GPU kernels: it needs a CUDA device")
    if args.part == "attn":
        attn(args.reps or 10, args.only)
    elif args.part == "paths":
        paths(args.reps or 20)
    elif args.part == "mlm":
        mlm(args.reps or 20)
    else:
        chunk(args.reps or 20)


if __name__ == "__main__":
    main()
