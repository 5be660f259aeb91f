"""Timing helpers for benchmarks/ and experiments/: median wall time of a callable on its device.

On CUDA each call is bracketed by CUDA events (no host overhead in the number, one sync per call); on the CPU by
``time.perf_counter``. The first ``warmup`` calls (compilation, autotuning, allocator growth) are not counted.
``interleaved_median_ms`` times several callables round by round, so that drift of the machine's speed over time
lands on all of them alike.
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

logger = logging.getLogger(__name__)


def median_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 10, device: str = "cuda") -> float:
    """Median milliseconds of ``reps`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return statistics.median(_call_ms(fn, device) for _ in range(reps))


def _call_ms(fn: Callable[[], object], device: str) -> float:
    """Milliseconds of one call of ``fn``: CUDA events around it on CUDA, ``time.perf_counter`` elsewhere."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def interleaved_median_ms(fns: dict[str, Callable[[], object]], warmup: int = 3, reps: int = 10,
                          device: str = "cuda") -> dict[str, float]:
    """Median milliseconds per name of ``fns``, timed side by side.

    First ``warmup`` untimed calls of each fn, one fn's after the other's; then ``reps`` rounds, each timing one
    call of every fn as ``median_ms`` does (CUDA events and a sync on ``device`` "cuda", ``time.perf_counter``
    otherwise). Round r starts at the (r mod n)-th of the n fns still running and goes on in ``fns``' order,
    wrapping around, so that no fn always runs right after the same other one. A fn that raises is logged
    (``logger.exception``), not called again and left out of the result.
    """
    live = list(fns)
    for name in fns:
        try:
            for _ in range(warmup):
                fns[name]()
        except Exception:
            logger.exception("%s failed during warm-up; dropped", name)
            live.remove(name)
    if device == "cuda":
        torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in live}
    for r in range(reps):
        if not live:
            break
        k = r % len(live)
        for name in live[k:] + live[:k]:
            try:
                times[name].append(_call_ms(fns[name], device))
            except Exception:
                logger.exception("%s failed while timed; dropped", name)
                live.remove(name)
                del times[name]
    return {name: statistics.median(ts) for name, ts in times.items() if ts}


def peak_activation_gib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated by one call of ``fn`` beyond what was allocated before it, in GiB."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def live_at_peak(events: list[dict]) -> tuple[int, list[dict]]:
    """Replay an allocator trace (an entry of ``torch.cuda.memory._snapshot()["device_traces"]``): the highest sum
    of the live allocations made within it, and those allocations at that moment, largest first."""
    live: dict = {}
    cur = best = 0
    at_best: list[dict] = []
    for e in events:
        if e["action"] == "alloc":
            live[e["addr"]] = e
            cur += e["size"]
        elif e["action"] == "free_requested" and e["addr"] in live:
            cur -= live.pop(e["addr"])["size"]
        if cur > best:
            best, at_best = cur, list(live.values())
    return best, sorted(at_best, key=lambda e: -e["size"])


def by_site(live: list[dict], where: Callable[[dict], str]) -> list[tuple[int, int, str]]:
    """Live allocations summed by call site: (bytes, how many, site), the largest sum first. A block's tensors
    share a site with every other block's, so a model's per-layer cost shows as one line."""
    sums: dict = {}
    for e in live:
        site = where(e)
        total, n = sums.get(site, (0, 0))
        sums[site] = (total + e["size"], n + 1)
    return sorted(((total, n, site) for site, (total, n) in sums.items()), key=lambda t: -t[0])


def peak_tensors(fn: Callable[[], object], top: int = 8, keep=("lion", "timm", "image_classification"),
                 group: bool = False):
    """What one call of ``fn`` holds at its memory peak: (peak MiB beyond what was allocated before it, as
    ``peak_activation_gib`` measures it; the replayed peak of the allocations made during the call, MiB; its
    ``top`` largest live allocations as (MiB, the innermost frames of the call sites in ``keep``)). group: the
    ``top`` largest sums by call site instead, as (MiB, 'N× ' + site)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    try:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated() - base
        events = torch.cuda.memory._snapshot()["device_traces"][torch.cuda.current_device()]
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    replayed, live = live_at_peak(events)

    def where(e):
        frames = [f for f in e.get("frames", []) if any(k in f["filename"] for k in keep)][:3]
        return " < ".join(f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in frames) or "?"
    if group:
        rows = [(t / 2**20, f"{n}× {site}") for t, n, site in by_site(live, where)[:top]]
    else:
        rows = [(e["size"] / 2**20, where(e)) for e in live[:top]]
    return measured / 2**20, replayed / 2**20, rows


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
