"""♮ curve orders over a square patch grid (docs/lion.md §1, order 'S').

Raster index r = g·y + x. Order ``s`` walks rows as a snake, order ``sr`` walks columns as a snake.
The cls token (index 0) stays first; patch tokens follow in curve order.
"""
from __future__ import annotations

import functools
import math

import torch

CURVES = ("s", "sr")


def grid_size(num_patches: int) -> int:
    """Side g of a square grid of ``num_patches`` patches; ValueError if not square."""
    g = math.isqrt(num_patches)
    if g * g != num_patches:
        raise ValueError(
            f"order='S' needs a square patch grid, got {num_patches} patches; "
            "allowed: a square input whose side is a multiple of patch_size, or order='Normal'"
        )
    return g


def _curve(g: int, curve: str) -> list[int]:
    if curve not in CURVES:
        raise ValueError(f"curve must be one of {CURVES}, got {curve!r}")
    out = []
    for outer in range(g):
        inner = range(g) if outer % 2 == 0 else range(g - 1, -1, -1)
        for i in inner:
            y, x = (outer, i) if curve == "s" else (i, outer)
            out.append(g * y + x)
    return out


def curve_permutation(num_tokens: int, curve: str, num_prefix: int = 1, device=None) -> torch.Tensor:
    """Indices ``perm`` such that ``x[:, perm]`` puts a (prefix + g·g)-token sequence in curve order."""
    device = torch.device(device) if device is not None else None
    if torch.compiler.is_compiling():  # traced once into a constant; dynamo warns on (and skips) lru_cache wrappers
        return _permutation(num_tokens, curve, num_prefix, device)
    return _cached_permutation(num_tokens, curve, num_prefix, device)


def _permutation(num_tokens: int, curve: str, num_prefix: int, device) -> torch.Tensor:
    g = grid_size(num_tokens - num_prefix)
    perm = list(range(num_prefix)) + [num_prefix + r for r in _curve(g, curve)]
    return torch.tensor(perm, dtype=torch.long, device=device)


# the models ask for the same orders in every layer of every step: one tensor per (length, curve, prefix, device)
_cached_permutation = functools.lru_cache(maxsize=64)(_permutation)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv
