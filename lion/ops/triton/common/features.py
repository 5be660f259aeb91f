"""The feature map φ in Triton (docs/lion.md §1.1) and the codes the kernels take for it: φ of the chunk and RNN
kernels' tiles (``feature_map``, ``load_features``) and of the attention form's (``phi``, with its backward
``phi_bwd``). Each is the Triton twin of ``lion.feature_maps``."""
from __future__ import annotations

from typing import Optional

import triton
import triton.language as tl

# feature map name → the FEATURE constexpr of every kernel: 0 none (q, k are features), 1 elu + 1, 2 normalised silu
FEATURE_CODES = {None: 0, "elu_plus_one": 1, "normalized_silu": 2}


def feature_code(feature_map: Optional[str]) -> int:
    """The kernels' FEATURE code of a feature map name (ValueError for an unknown one)."""
    if feature_map not in FEATURE_CODES:
        raise ValueError(f"feature_map must be one of {tuple(FEATURE_CODES)}, got {feature_map!r}")
    return FEATURE_CODES[feature_map]


@triton.jit
def feature_map(x, m, FEATURE: tl.constexpr):
    """φ of an fp32 tile of raw q or k rows (docs/lion.md §1), zero outside the mask ``m``.
    FEATURE: 0 none, 1 elu(x) + 1, 2 r / ‖r‖ with r = silu(x) + 0.5 (the norm over the row)."""
    if FEATURE == 1:
        x = tl.where(x > 0, x + 1.0, tl.exp(x))
    elif FEATURE == 2:
        r = tl.where(m, x * tl.sigmoid(x) + 0.5, 0.0)
        x = r / tl.sqrt(tl.maximum(tl.sum(r * r, 1), 1e-30))[:, None]
    return tl.where(m, x, 0.0)


@triton.jit
def load_features(base, rows, s_row, s_col, offs_d, row_ok, col_ok, FEATURE: tl.constexpr):
    """fp32 tile φ(x) of the rows ``rows`` (any order: a permutation gathers them); zero outside the mask."""
    m = row_ok[:, None] & col_ok[None, :]
    x = tl.load(base + rows[:, None] * s_row + offs_d[None, :] * s_col, mask=m, other=0.0).to(tl.float32)
    return feature_map(x, m, FEATURE)


@triton.jit
def phi(x, keep_rows, offs_d, D, FEATURE: tl.constexpr):
    """φ(x) in fp32 on a (rows, BLOCK_D) tile; rows not kept and columns ≥ D are 0."""
    if FEATURE == 1:    # elu + 1
        x = tl.where(x > 0, x + 1.0, tl.exp(x))
    elif FEATURE == 2:  # r / ‖r‖, r = silu(x) + 0.5
        x = tl.where((offs_d < D)[None, :], x * tl.sigmoid(x) + 0.5, 0.0)
        x = x / tl.sqrt(tl.sum(x * x, axis=1))[:, None]
    return tl.where(keep_rows[:, None] & (offs_d < D)[None, :], x, 0.0)


@triton.jit
def phi_bwd(x, g, keep_rows, offs_d, D, FEATURE: tl.constexpr):
    """Gradient wrt the raw x of a tile given g = ∂/∂φ(x)."""
    if FEATURE == 1:
        g = g * tl.where(x > 0, 1.0, tl.exp(x))
    elif FEATURE == 2:
        sg = tl.sigmoid(x)
        r = tl.where((offs_d < D)[None, :], x * sg + 0.5, 0.0)
        inv_n = 1.0 / tl.sqrt(tl.sum(r * r, axis=1))
        y = r * inv_n[:, None]
        g = (g - y * tl.sum(g * y, axis=1)[:, None]) * inv_n[:, None] * (sg * (1.0 + x * (1.0 - sg)))
    return tl.where(keep_rows[:, None] & (offs_d < D)[None, :], g, 0.0)
