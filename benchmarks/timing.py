"""One timing helper for benchmarks/ and experiments/: median wall time of a callable on its device.

On CUDA each call is bracketed by CUDA events (no host overhead in the number, one sync per call); on the CPU by
``time.perf_counter``. The first ``warmup`` calls (compilation, autotuning, allocator growth) are not counted.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 10, device: str = "cuda") -> float:
    """Median milliseconds of ``reps`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def peak_activation_gib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated by one call of ``fn`` beyond what was allocated before it, in GiB."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


# Kernel-name patterns → category, first match wins (lower-case substrings). LION's Triton kernels are named
# _<something>_kernel / _chunk_* / _scan_states / _rnn_*; everything else is torch's or cuBLAS'.
KERNEL_CATEGORIES = [
    ("SDPA (flash attention)", ("flash", "fmha", "attention_kernel", "efficient_attention")),
    ("LION kernels", ("_fwd_kernel", "_bwd_kernel", "_bwd_q_kernel", "_prep_kernel", "_lit_", "_chunk_",
                      "_scan_states", "_rnn_", "_normalize", "selective_scan")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk")),
    ("layer norm", ("layer_norm", "layernorm")),
    ("optimizer", ("multi_tensor", "adam")),
    ("copy / cat / cast", ("copy", "cat", "convert")),
    ("cumsum (gates)", ("scan",)),
    ("softmax / loss", ("softmax", "nll", "cross_entropy")),
]


def kernel_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 1) -> dict[str, float]:
    """CUDA time (ms) per call of ``fn`` of each kernel name (torch.profiler), the mean over ``reps`` calls."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = {}
    for evt in prof.events():
        if str(getattr(evt, "device_type", "")).endswith("CUDA"):
            per_kernel[evt.name] = per_kernel.get(evt.name, 0.0) + evt.time_range.elapsed_us() / 1e3 / reps
    return per_kernel


def kernel_time_by_category(fn: Callable[[], object], warmup: int = 3) -> tuple[dict, list]:
    """CUDA time (ms) of one call of ``fn`` per kernel category, and the (name, ms) of its 15 costliest kernels."""
    per_kernel = kernel_ms(fn, warmup)
    cats: dict[str, float] = {}
    for name, ms in per_kernel.items():
        low = name.lower()
        cat = next((c for c, pats in KERNEL_CATEGORIES if any(p in low for p in pats)), "other elementwise / reduce")
        cats[cat] = cats.get(cat, 0.0) + ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:15]
    return cats, top
