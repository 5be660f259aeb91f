"""Shared helpers of the Triton kernels: interpreter detection and tile-size selection (autotuned per shape)."""
from __future__ import annotations

import os

import torch
import triton

# TRITON_INTERPRET=1 (set before triton is imported) runs the kernels on the CPU: tiny tiles, no autotuning.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# LION_TRITON_AUTOTUNE=0 takes the first config of each list without timing the others (faster first call).
AUTOTUNE = os.environ.get("LION_TRITON_AUTOTUNE", "1") == "1"


def block_size(n: int) -> int:
    """Power of two ≥ max(n, 16): tl.dot needs every dimension ≥ 16."""
    return max(16, triton.next_power_of_2(n))


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

    def __call__(self, grid, *args, **meta):
        if INTERPRET or not AUTOTUNE:  # AUTOTUNE read at call time: tests may switch it off
            cfg = self.interpret_config if INTERPRET else self.configs[0]
            return self.kernel[grid(cfg.kwargs)](*args, **meta, **cfg.kwargs, num_warps=cfg.num_warps,
                                                 num_stages=cfg.num_stages)
        # The autotuner's own lookup costs ~70 µs of host time per launch (it rebuilds a dict of every argument);
        # after the first call per key, the chosen config is launched directly (same kernel, same tiles).
        key = self._key(args, meta)
        cfg = self._chosen.get(key)
        if cfg is None:
            if self._tuned is None:
                self._tuned = triton.autotune(configs=self.configs, key=self.key,
                                              reset_to_zero=self.reset_to_zero)(self.kernel)
            out = self._tuned[grid](*args, **meta)
            self._chosen[key] = self._tuned.best_config
            return out
        return self.kernel[grid(cfg.kwargs)](*args, **meta, **cfg.all_kwargs())

    def _key(self, args, meta):
        """What the autotuner keys on: the ``key`` arguments' values and every tensor argument's dtype."""
        vals = tuple(meta[k] if k in meta else args[i] for k, i in self._key_pos)
        return vals + tuple(a.dtype for a in args if isinstance(a, torch.Tensor))
