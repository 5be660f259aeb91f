"""Host time of one attention layer, LION against DeiT's: where an eager training step spends its CPU time.

At batch 1 the GPU work of a ViT-S attention layer is tiny, so the time per forward + backward is the host's: Python,
the dispatcher, autograd and the kernel launches. An eager step whose host time exceeds its GPU time is host-bound
(the ViT-S step is, on the H200 host), and then this is what a LION layer costs beyond DeiT's. Also prints the host
time of each Triton launch (``--launches``).

``--device cpu`` needs no GPU: the same layers on CPU tensors with LION's Triton launches (the attention form's and
the LION-S gates') replaced by no-ops, so the table shows the host work LION adds around its kernels (Python
wrappers, autograd nodes, the small torch ops), each op's CPU compute at batch 1 included; a Triton launch itself
costs ≈ 40–100 µs more per kernel on a GPU host.

    python benchmarks/host_overhead.py [--length 197] [--reps 200] [--launches] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {"DeiT": None, "Lit": ("Lit", "Normal"), "D": ("Decay", "Normal"), "S": ("Selective", "Normal"),
            "D♮": ("Decay", "S"), "S♮": ("Selective", "S")}


def layer_step(variant: str, length: int, device: str = "cuda", dim: int = 384, heads: int = 6,
               form: str = "Attention"):
    """One forward + backward of a ViT-S attention layer at batch 1 (under bf16 autocast on CUDA), LION in the
    vision ``format`` ``form``."""
    from timm.models.vision_transformer import Attention

    from image_classification.models_lion import LionAttention

    x = torch.randn(1, length, dim, device=device, requires_grad=True)
    if VARIANTS[variant] is None:
        module = Attention(dim, heads, qkv_bias=True)
    else:
        mask_type, order = VARIANTS[variant]
        module = LionAttention(dim, heads, qkv_bias=True, mask_type=mask_type, order=order,
                               backend="triton" if device == "cpu" else None, format=form)
    module = module.to(device)

    def step():
        with torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
            y = module(x)
        y.sum().backward()
    return step


class _NoLaunch:
    """Stands in for an autotuned launcher: ``k(grid, ...)`` does nothing."""

    def __call__(self, *args, **kwargs):
        return None


def stub_kernels():
    """CPU mode: the launches of the fused attention and chunk forms and of the fused LION-S gates become no-ops
    (their outputs are then uninitialised memory; only the host work around them is timed)."""
    import lion.ops.triton.chunk as chunk
    import lion.ops.triton.chunk_grad as chunk_grad
    import lion.ops.triton.common.args as op_args
    import lion.ops.triton.gates as gates
    import lion.ops.triton.lit as lit
    import lion.ops.triton.naive as naive

    op_args.INTERPRET = True  # accept CPU tensors
    for module in (naive, gates, chunk, chunk_grad):
        module.INTERPRET = True
        module.launch = lambda kernel, grid, args, meta: None  # the kernels launched directly
    for module, name in ((naive, "_fwd"), (naive, "_bwd"), (lit, "_state"), (lit, "_out"), (lit, "_bwd_q"),
                         (lit, "_bwd_kv")):
        setattr(module, name, _NoLaunch())  # the autotuned launchers


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def host_us(step, reps: int, device: str = "cuda") -> tuple[float, float]:
    """(µs to enqueue one step, µs per step until the GPU is done), after warm-up."""
    for _ in range(10):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    t1 = time.perf_counter()
    _sync(device)
    t2 = time.perf_counter()
    return (t1 - t0) / reps * 1e6, (t2 - t0) / reps * 1e6


def profile_text(step, reps: int, top: int = 25) -> str:
    """cProfile of ``reps`` steps: the ``top`` functions by own time (µs per step)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        step()
    prof.disable()
    stats = pstats.Stats(prof).stats
    rows = sorted(((tt, nc, f"{func[0].split('/')[-1]}:{func[1]} {func[2]}") for func, (_, nc, tt, _, _) in
                   stats.items()), reverse=True)[:top]
    return "\n".join(f"  {tt / reps * 1e6:8.1f} µs  ×{nc / reps:<5g} {name}" for tt, nc, name in rows)


def launch_us(step, reps: int) -> dict[str, tuple[float, float]]:
    """Per Triton kernel: (launches per step, host µs per launch), as lion.ops.triton.common.launching.launch times them
    (its direct path after warm-up; LION_TRITON_FAST_LAUNCH=0 times triton's own launch path)."""
    from lion.ops.triton.common import launching

    for _ in range(5):
        step()
    launching.LAUNCH_TIMES = {}
    try:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
        totals = launching.LAUNCH_TIMES
    finally:
        launching.LAUNCH_TIMES = None
    return {name: (n / reps, t / n * 1e6) for name, (n, t) in sorted(totals.items())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, help="tokens, a square patch grid + 1 for the ♮ variants (default: 197 on "
                    "CUDA; 17 on CPU, where the layers' own compute must stay small against the host work)")
    ap.add_argument("--dim", type=int, help="width, 6 heads (default: 384, ViT-S; 96 on CPU)")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--form", default="Attention", choices=["Attention", "Chunk"],
                    help="the LION layers' form (vision format name)")
    ap.add_argument("--profile", action="store_true", help="also cProfile the LION layers' host work (top functions)")
    ap.add_argument("--launches", action="store_true", help="also the host time of each Triton launch (CUDA)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: no GPU needed, LION's Triton launches replaced by no-ops (see above)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("host_overhead.py --device cuda needs a CUDA GPU (or use --device cpu)")
    cpu = args.device == "cpu"
    args.length = args.length or (17 if cpu else 197)
    args.dim = args.dim or (96 if cpu else 384)
    if cpu:
        stub_kernels()
        where = f"CPU ({torch.get_num_threads()} threads), Triton launches stubbed out"
    else:
        where = f"{torch.cuda.get_device_name()}, bf16 autocast"
    print(f"{where}, torch {torch.__version__}; one attention layer of width {args.dim}, 6 heads, batch 1, "
          f"{args.length} tokens, forward + backward")
    print("| layer | host µs to enqueue | µs per step | ÷ DeiT |\n|---|---|---|---|")
    base = None
    for variant in args.variants:
        step = layer_step(variant, args.length, args.device, args.dim, form=args.form)
        enqueue, wall = host_us(step, args.reps, args.device)
        base = base or (wall if variant == "DeiT" else None)
        print(f"| {variant} | {enqueue:.0f} | {wall:.0f} | {wall / base:.2f} |" if base else
              f"| {variant} | {enqueue:.0f} | {wall:.0f} | – |", flush=True)
        if args.profile and VARIANTS[variant] is not None:
            print(profile_text(step, args.reps), flush=True)
    if args.launches and args.device == "cuda":
        for variant in args.variants:
            if VARIANTS[variant] is None:
                continue
            rows = launch_us(layer_step(variant, args.length, args.device, args.dim, form=args.form), 100)
            print(f"\nTriton launches per step of LION-{variant}: " +
                  ", ".join(f"{name} ×{n:g} {us:.0f} µs" for name, (n, us) in rows.items()))
        from lion.ops.triton.common.launching import _LAUNCHES, _Direct, _hooks_set
        slow = sorted({key[0].fn.__name__ for key, entry in _LAUNCHES.items() if entry.__class__ is not _Direct})
        print("Kernels launched through triton's own path (no direct launch): " +
              ("all (a triton launch hook is set)" if _hooks_set() else ", ".join(slow) or "none"))


if __name__ == "__main__":
    main()
