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
