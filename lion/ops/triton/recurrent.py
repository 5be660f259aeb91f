"""RNN form on the GPU, inference only: the fused twin of ``lion.ops.recurrent`` (docs/lion.md §1, RNN form).

One launch runs, per (order, batch, head, block of value columns), a forward and a backward program that carry a
d×dv fp32 state through the tokens one at a time (O(d²) state, the streaming form):

    forward:  S ← a_{i−1} S + k_i v_iᵀ, then y_i = q_iᵀ S        (inclusive: the diagonal is counted here)
    backward: S ← a_{i+1} S,           y_i = q_iᵀ S, then S += k_i v_iᵀ   (strict)

and likewise the normaliser with v = 1. Tokens are read BLOCK_T at a time (the next block is loaded while the
current one is scanned), the feature map is applied in registers, ♮ orders read tokens through their permutation.
Directions and orders add into one fp32 (B, L, H, dv) buffer; ``_normalize`` then writes y / (den + eps) in v's
dtype as (B, L, H, dv) memory, returned as a (B, H, L, dv) view.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from lion.ops.triton.common.args import prepare_scan, stand_ins, strides_or_zero
from lion.ops.triton.common.features import feature_map
from lion.ops.triton.common.launching import block_size, cdiv, launch, next_power_of_2

# measured on an H200 (benchmarks/RESULTS.md): tokens per load, value columns per program, warps per program
BLOCK_T, BLOCK_DV, NUM_WARPS = 4, 16, 1


@triton.jit
def _load_block(p, PERM, o, L, q_base, k_base, v_base, la_base, sql, sqd, skl, skd, svl, sal, offs_dk, dk_ok, dv_ok,
                HAS_PERM: tl.constexpr, HAS_GATES: tl.constexpr):
    """The raw q, k, v tiles and fp32 log gates of the tokens at scan positions p (masks, natural indices too)."""
    ok = (p >= 0) & (p < L)
    tok = p
    if HAS_PERM:
        tok = tl.load(PERM + o * L + p, mask=ok, other=0)
    qk_m = ok[:, None] & dk_ok[None, :]
    q_raw = tl.load(q_base + tok[:, None] * sql + offs_dk[None, :] * sqd, mask=qk_m, other=0.0)
    k_raw = tl.load(k_base + tok[:, None] * skl + offs_dk[None, :] * skd, mask=qk_m, other=0.0)
    v_raw = tl.load(v_base + tok[:, None] * svl, mask=ok[:, None] & dv_ok[None, :], other=0.0)
    la_raw = tl.zeros(p.shape, dtype=tl.float32)
    if HAS_GATES:
        la_raw = tl.load(la_base + p * sal, mask=ok, other=0.0).to(tl.float32)
    return ok, tok, qk_m, q_raw, k_raw, v_raw, la_raw


@triton.jit
def _rnn_kernel(
    Q, K, V, LA, PERM, KEEP, NUM, DEN,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, sao, sab, sah, sal, skeep,
    snb, snl, snh, snd,
    BH, H, L, DK, DV, scale,
    HAS_GATES: tl.constexpr, HAS_PERM: tl.constexpr, HAS_KEEP: tl.constexpr, NORMALIZE: tl.constexpr,
    FEATURE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid = tl.program_id(0)  # (order, batch, head)
    pid_dv = tl.program_id(1)
    fwd = tl.program_id(2) == 0
    o = (pid // BH).to(tl.int64)
    b = ((pid % BH) // H).to(tl.int64)
    h = (pid % H).to(tl.int64)
    offs_t = tl.arange(0, BLOCK_T)
    offs_dk = tl.arange(0, BLOCK_DK)
    dk_ok = offs_dk < DK
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < DV
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh + offs_dv[None, :] * svd
    la_base = LA + o * sao + b * sab + h * sah
    self_w = tl.where(fwd, 1.0, 0.0)
    state = tl.zeros((BLOCK_DK, BLOCK_DV), dtype=tl.float32)
    z = tl.zeros((BLOCK_DK,), dtype=tl.float32)
    prev = scale * 0.0  # log gate of the previous token in scan order: none before the first
    n_blocks = tl.cdiv(L, BLOCK_T)
    # the raw tiles of block 0; inside the loop, those of the next block are loaded before this one is scanned
    p = tl.where(fwd, offs_t, L - 1 - offs_t)  # positions in scan order
    ok, tok, qk_m, q_raw, k_raw, v_raw, la_raw = _load_block(
        p, PERM, o, L, q_base, k_base, v_base, la_base, sql, sqd, skl, skd, svl, sal, offs_dk, dk_ok, dv_ok,
        HAS_PERM, HAS_GATES)
    for blk in range(0, n_blocks):
        q = feature_map(q_raw.to(tl.float32), qk_m, FEATURE) * scale
        k = feature_map(k_raw.to(tl.float32), qk_m, FEATURE)
        if HAS_KEEP:
            k = k * tl.load(KEEP + b * skeep + tok, mask=ok, other=0).to(tl.float32)[:, None]
        v = v_raw.to(tl.float32)
        la = la_raw
        cur_ok = ok
        cur_tok = tok
        p = tl.where(fwd, (blk + 1) * BLOCK_T + offs_t, L - 1 - (blk + 1) * BLOCK_T - offs_t)
        ok, tok, qk_m, q_raw, k_raw, v_raw, la_raw = _load_block(
            p, PERM, o, L, q_base, k_base, v_base, la_base, sql, sqd, skl, skd, svl, sal, offs_dk, dk_ok, dv_ok,
            HAS_PERM, HAS_GATES)
        y_blk = tl.zeros((BLOCK_T, BLOCK_DV), dtype=tl.float32)
        d_blk = tl.zeros((BLOCK_T,), dtype=tl.float32)
        for t in tl.static_range(BLOCK_T):
            sel = offs_t == t
            q_t = tl.sum(tl.where(sel[:, None], q, 0.0), 0)
            k_t = tl.sum(tl.where(sel[:, None], k, 0.0), 0)
            v_t = tl.sum(tl.where(sel[:, None], v, 0.0), 0)
            if HAS_GATES:
                decay = tl.exp(prev)
                state = state * decay
                z = z * decay
                prev = tl.sum(tl.where(sel, la, 0.0), 0)
            qk = tl.sum(q_t * k_t, 0) * self_w
            y_t = tl.sum(q_t[:, None] * state, 0) + qk * v_t
            y_blk = tl.where(sel[:, None], y_t[None, :], y_blk)
            if NORMALIZE:
                d_blk = tl.where(sel, tl.sum(q_t * z, 0) + qk, d_blk)
                z = z + k_t
            state = state + k_t[:, None] * v_t[None, :]
        rows = b * snb + cur_tok * snl + h * snh
        tl.atomic_add(NUM + rows[:, None] + offs_dv[None, :] * snd, y_blk, mask=cur_ok[:, None] & dv_ok[None, :],
                      sem="relaxed")
        if NORMALIZE:
            tl.atomic_add(DEN + (b * L + cur_tok) * H + h, d_blk, mask=cur_ok & (pid_dv == 0), sem="relaxed")


@triton.jit
def _normalize(NUM, DEN, OUT, n_rows, DV, eps, inv_orders, NORMALIZE: tl.constexpr,
               ROWS: tl.constexpr, BLOCK_DV: tl.constexpr):
    """OUT = mean num / (mean den + eps) (or mean num), rows of dv values; NUM and OUT may be one buffer."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_DV)
    m = (rows < n_rows)[:, None] & (cols < DV)[None, :]
    offs = rows.to(tl.int64)[:, None] * DV + cols[None, :]
    y = tl.load(NUM + offs, mask=m, other=0.0) * inv_orders
    if NORMALIZE:
        d = tl.load(DEN + rows, mask=rows < n_rows, other=1.0) * inv_orders
        y = y / (d + eps)[:, None]
    tl.store(OUT + offs, y.to(OUT.dtype.element_ty), mask=m)


def recurrent_attention(q, k, v, g: Optional[torch.Tensor] = None, g_gamma: Optional[torch.Tensor] = None, *,
                        perms: Optional[Sequence[torch.Tensor]] = None, feature_map: Optional[str] = None,
                        scale: float = 1.0, normalize: bool = True, eps: float = 1e-6, key_padding_mask=None,
                        block_t: int = BLOCK_T, block_dv: int = BLOCK_DV, num_warps: int = NUM_WARPS) -> torch.Tensor:
    """LION attention in the RNN form, forward only (the ``lion_attention`` contract, without dropout; gates
    ``g`` / ``g_gamma`` and orders ``perms`` as ``lion.masks.gate_arguments`` gives them).
    q, k raw (``feature_map`` applied here), v: (B, H, L, d) of any strides; returns y as a (B, H, L, dv) view of
    (B, L, H, dv) memory in v's dtype (one token per step: no chunk size)."""
    gates, perm_ids, keep, feature = prepare_scan(q, k, v, g, g_gamma, perms, key_padding_mask, feature_map)
    B, H, L, DK = q.shape
    DV = v.shape[-1]
    n_orders = 1 if perms is None else len(perms)
    dev = q.device
    block_dk = block_size(DK)
    block_dv = min(block_dv, block_size(DV))
    num = torch.zeros(B, L, H, DV, device=dev, dtype=torch.float32)
    den = torch.zeros(B, L, H, device=dev, dtype=torch.float32) if normalize else num
    dummy = num
    launch(_rnn_kernel, (n_orders * B * H, cdiv(DV, block_dv), 2), (
        q, k, v, *stand_ins(dummy, gates, perm_ids, keep), num, den,
        *q.stride(), *k.stride(), *v.stride(), *strides_or_zero(gates, 4), keep.stride(0) if keep is not None else 0,
        *num.stride(), B * H, H, L, DK, DV, float(scale)), dict(
        HAS_GATES=gates is not None, HAS_PERM=perm_ids is not None, HAS_KEEP=keep is not None, NORMALIZE=normalize,
        FEATURE=feature, BLOCK_T=block_t, BLOCK_DK=block_dk, BLOCK_DV=block_dv,
        num_warps=num_warps))
    out = num if v.dtype == torch.float32 else torch.empty(B, L, H, DV, device=dev, dtype=v.dtype)
    rows = 32
    launch(_normalize, (cdiv(B * L * H, rows),), (num, den, out, B * L * H, DV, float(eps), 1.0 / n_orders),
           dict(NORMALIZE=normalize, ROWS=rows, BLOCK_DV=next_power_of_2(DV), num_warps=4))
    return out.permute(0, 2, 1, 3)
