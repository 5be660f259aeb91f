"""How every kernel is launched: the interpreter and tuning switches, tile sizes autotuned per shape
(``Launcher``), and a launch path with less host work than triton's own (``launch``)."""
from __future__ import annotations

import functools
import logging
import os
import time

import torch
import triton
from triton.compiler.compiler import CompiledKernel

logger = logging.getLogger(__name__)

# TRITON_INTERPRET=1 (set before triton is imported) runs the kernels on the CPU: tiny tiles, no autotuning.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# LION_TRITON_AUTOTUNE=0 takes the first config of each list without timing the others (faster first call).
AUTOTUNE = os.environ.get("LION_TRITON_AUTOTUNE", "1") == "1"
# LION_TRITON_FAST_LAUNCH=0 launches every kernel through triton's own path (see ``launch``).
FAST_LAUNCH = os.environ.get("LION_TRITON_FAST_LAUNCH", "1") == "1"
LAUNCH_TIMES = None  # benchmarks/host_overhead.py sets a dict: kernel name → [launches, host seconds]


# Host-side integer helpers: triton ≥ 3.4's triton.cdiv / next_power_of_2 are constexpr functions whose every
# host call costs microseconds (argument unwrapping); a layer's launches make dozens of these calls.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(n)


@functools.lru_cache(maxsize=None)
def block_size(n: int) -> int:
    """Power of two ≥ max(n, 16): tl.dot needs every dimension ≥ 16."""
    return max(16, next_power_of_2(n))


class Launcher:
    """``Launcher(kernel, configs, key, interpret_config)(grid_fn, *args, **meta)``: launches ``kernel`` with its
    tile sizes chosen by triton.autotune over ``configs`` (keyed by the argument names in ``key``), or with
    ``interpret_config`` under the interpreter. ``grid_fn`` maps the chosen meta-parameters to the grid.
    The autotuner is made on first use, so importing a kernel module needs no GPU driver."""

    def __init__(self, kernel, configs, key, interpret_config, reset_to_zero=None):
        self.kernel, self.configs, self.key, self.interpret_config = kernel, configs, key, interpret_config
        self.reset_to_zero = reset_to_zero  # outputs accumulated with atomics: zeroed before each timed config
        self._tuned = None
        self._chosen = {}  # our key → the config the autotuner picked: later calls launch it directly
        self._key_pos = [(k, kernel.arg_names.index(k)) for k in key]

    def __call__(self, grid, *args, **meta) -> None:
        if INTERPRET or not AUTOTUNE:  # AUTOTUNE read at call time: tests may switch it off
            cfg = self.interpret_config if INTERPRET else self.configs[0]
            launch(self.kernel, grid(cfg.kwargs), args, {**meta, **cfg.all_kwargs()})
            return
        # The autotuner's own lookup costs ~70 µs of host time per launch (it rebuilds a dict of every argument);
        # after the first call per key, the chosen config is launched directly (same kernel, same tiles).
        key = self._key(args, meta)
        cfg = self._chosen.get(key)
        if cfg is None:
            if self._tuned is None:
                self._tuned = triton.autotune(configs=self.configs, key=self.key,
                                              reset_to_zero=self.reset_to_zero)(self.kernel)
            self._tuned[grid](*args, **meta)
            self._chosen[key] = (self._tuned.best_config.kwargs, self._tuned.best_config.all_kwargs())
            return
        tiles, options = cfg
        launch(self.kernel, grid(tiles), args, {**meta, **options})

    def _key(self, args, meta):
        """What the autotuner keys on: the ``key`` arguments' values and every tensor argument's dtype."""
        vals = tuple(meta[k] if k in meta else args[i] for k, i in self._key_pos)
        return vals + tuple(a.dtype for a in args if isinstance(a, torch.Tensor))


# ------------------------------------------------------------------------------------------------ launching
# triton's launch path (JITFunction.run) binds and specialises every argument and formats a string key on each
# call: tens of µs of host time per launch, which an eager training step (host-bound at ViT-S sizes) pays for
# every kernel. ``launch`` keys its own cache on what triton specialises on (a finer key: each int's value, each
# tensor's dtype and 16-byte alignment, the constexprs and launch options, the current device) and, once triton has
# launched a key's compiled kernel, calls that kernel's launcher directly with the argument list triton gave it.
_LAUNCHES: dict = {}  # key → the compiled kernel (seen once) or a _Direct (or None: triton's path only)


class _Direct:
    """A compiled kernel's launcher with the arguments triton passed it around the kernel arguments: ``head``
    between the stream and the arguments (function handle, metadata, launch metadata and the idle launch hooks, which
    ignore it), ``tail`` after them (the constexpr values, which the key fixes)."""
    __slots__ = ("run", "head", "tail")

    def __init__(self, run, head, tail):
        self.run, self.head, self.tail = run, head, tail


def _spec(args) -> tuple:
    """What triton specialises a launch on, finer: tensors by dtype and 16-byte alignment, ints and bools by
    value (and type), other scalars by type."""
    out = []
    for a in args:
        t = a.__class__
        if t is int:
            out.append(a)
        elif isinstance(a, torch.Tensor):
            out.append((a.dtype, a.data_ptr() % 16 == 0))
        else:
            out.append((t, a) if t is bool else t)
    return tuple(out)


def _idle(hook) -> bool:
    """No launch hook: None (triton ≤ 3.3) or an empty hook chain (later versions' knobs.runtime)."""
    return hook is None or (hasattr(hook, "calls") and not hook.calls)


def _hooks_set() -> bool:
    """A launch hook (a profiler such as proton) needs triton's own path."""
    knobs = getattr(triton, "knobs", None)
    hooks = [getattr(CompiledKernel, "launch_enter_hook", None)]
    if knobs is not None:
        hooks += [getattr(knobs.runtime, "launch_enter_hook", None), getattr(knobs.runtime, "launch_exit_hook", None)]
    return not all(_idle(h) for h in hooks)


_current_stream = None  # triton's driver.active.get_current_stream, looked up once


def _stream(device: int):
    global _current_stream
    if _current_stream is None:
        _current_stream = triton.runtime.driver.active.get_current_stream
    return _current_stream(device)


def _record(compiled, kernel, grid, args, meta):
    """Launch through triton once more with the compiled kernel's launcher wrapped, and read off where our
    arguments sit in what triton passes it. None (triton's path stays) if the call does not look as expected."""
    real = compiled.run
    # the launcher is an instance attribute: ``run`` itself (triton 3.3) or what a ``run`` property returns (later)
    name = next((k for k, v in vars(compiled).items() if v is real), None)
    if name is None:
        kernel[grid](*args, **meta)
        return None
    calls = []

    def wrapped(*a):
        calls.append(a)
        return real(*a)
    setattr(compiled, name, wrapped)
    try:
        kernel[grid](*args, **meta)
    finally:
        setattr(compiled, name, real)
    if len(calls) != 1:
        return None
    call, n = calls[0], len(args)
    for start in (len(call) - len(kernel.params), len(call) - n):  # all parameters, or the runtime ones only
        if start < 7 or not (_idle(call[start - 2]) and _idle(call[start - 1])):  # the enter and exit hooks
            continue
        if all(c is a if isinstance(a, torch.Tensor) else c == a for c, a in zip(call[start:start + n], args)):
            return _Direct(real, call[4:start], call[start + n:])
    return None


@functools.lru_cache(maxsize=None)
def _warn_slow_path(name: str) -> None:
    """Once per kernel: its launches stay on triton's own path (tens to hundreds of µs of host time each)."""
    logger.warning("kernel %s: triton %s's launcher call did not match the expected layout, so it launches through "
                   "triton's own path (more host time per launch; results unchanged)", name, triton.__version__)


def launch(kernel, grid, args, meta) -> None:
    """``kernel[grid](*args, **meta)`` (``args`` the runtime arguments in order, ``meta`` the constexprs and launch
    options), through triton's path the first two times per key and directly after that (see above)."""
    t0 = time.perf_counter() if LAUNCH_TIMES is not None else 0.0
    if INTERPRET or not FAST_LAUNCH or _hooks_set():
        kernel[grid](*args, **meta)
    else:
        device = torch.cuda.current_device()
        key = (kernel, device, tuple(meta.items()), _spec(args))
        entry = _LAUNCHES.get(key, False)
        if entry.__class__ is _Direct:
            g = tuple(grid) + (1, 1)
            entry.run(g[0], g[1], g[2], _stream(device), *entry.head, *args, *entry.tail)
        elif entry is False:  # first launch: triton compiles (or finds) the kernel and returns it
            _LAUNCHES[key] = kernel[grid](*args, **meta)
        elif entry is None:
            kernel[grid](*args, **meta)
        else:
            _LAUNCHES[key] = _record(entry, kernel, grid, args, meta)
            if _LAUNCHES[key] is None:
                _warn_slow_path(kernel.fn.__name__)
    if LAUNCH_TIMES is not None:
        stats = LAUNCH_TIMES.setdefault(kernel.fn.__name__, [0, 0.0])
        stats[0] += 1
        stats[1] += time.perf_counter() - t0
