"""Lit normalised through the d×dv state (docs/lion.md §1): with M = 1 the attention form needs no L×L scores,

    y_i = φ(q_i) S / (φ(q_i)·z + eps),   S = scale Σ_j φ(k_j) v_jᵀ,   z = scale Σ_j φ(k_j)   (padded keys dropped)

O(L·d·dv) work. ``lion.ops.triton.naive.fused_attention`` takes this path for Lit normalised without dropout when
L ≥ d (``lit_kv``); the L×L kernels serve the rest.

Parallel over tokens: every kernel runs on the grid (B·H, splits), each program on its own contiguous slice of T
tokens (``_split``: about 4 programs per SM over the whole grid, T ≥ 256 tokens so that a slice's fp32 partial
state, d×dv, stays small next to its k, v rows). Sums over all tokens are formed per slice into fp32 partial buffers
and reduced by a torch sum over the splits (deterministic; the result depends on the split count only through the
fp32 summation order):

    forward   _lit_state_kernel  partial Σ φ(k_j) v_jᵀ, Σ φ(k_j)        → S, z (saved for the backward)
              _lit_out_kernel    y_i, den_i = φ(q_i)·z from S, z
    backward  _lit_bwd_q_kernel  dq_i and partial dS = Σ_i φq_iᵀ dy_i/D_i, dz = −Σ_i φq_i δ_i/D_i
              _lit_bwd_kv_kernel dk_j, dv_j from dS, dz

With one split (B·H alone fills the GPU, e.g. ViT-S at 224 px) each pass is one launch, as host-bound small models
need, and nothing is saved beyond y and den: ``_lit_out_kernel`` sums S, z itself (WITH_STATE), and
``_lit_bwd_q_kernel`` sums them again, then goes on to dk, dv (WITH_KV).

S, z, dS, dz are kept unscaled in fp32; the kernels scale them and (as S enters the dots) cast them to v's dtype.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from lion.ops.triton.common.args import grad_buffer, grad_views, last_dim_unit, token_major
from lion.ops.triton.common.features import phi, phi_bwd
from lion.ops.triton.common.launching import INTERPRET, Launcher, block_size, cdiv
from lion.ops.triton.common.op import FusedOp
from lion.ops.triton.common.rows import dy_rows, key_keep, load_rows


@triton.jit
def _slice(H, L, T):
    """Grid (B·H, splits): this program's (b·H + h, b, h, first token, end) of its slice of T tokens."""
    bh = tl.program_id(0)
    lo = tl.program_id(1) * T
    return bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64), lo, tl.minimum(lo + T, L)


@triton.jit
def _state_ptrs(ptr, i, offs_d, offs_dv, D, DV):
    """Pointers and mask of the i-th D×DV matrix of a contiguous stack."""
    return (ptr + i.to(tl.int64) * D * DV + offs_d[:, None] * DV + offs_dv[None, :],
            (offs_d < D)[:, None] & (offs_dv < DV)[None, :])


@triton.jit
def _load_state(SM, ZV, bh, offs_d, offs_dv, D, DV):
    """(S[bh], z[bh]) in fp32, zero-padded to the blocks."""
    s_ptrs, s_mask = _state_ptrs(SM, bh, offs_d, offs_dv, D, DV)
    return tl.load(s_ptrs, mask=s_mask, other=0.0), tl.load(ZV + bh.to(tl.int64) * D + offs_d, mask=offs_d < D,
                                                               other=0.0)


@triton.jit
def _store_partial(SP, ZP, S, z, bh, offs_d, offs_dv, D, DV):
    """This program's partial sums at [bh, split] of the (B·H, splits, ·) buffers."""
    i = bh * tl.num_programs(1) + tl.program_id(1)
    s_ptrs, s_mask = _state_ptrs(SP, i, offs_d, offs_dv, D, DV)
    tl.store(s_ptrs, S, mask=s_mask)
    tl.store(ZP + i.to(tl.int64) * D + offs_d, z, mask=offs_d < D)


@triton.jit
def _key_rows(k_ptr, v_ptr, KEEP, b, L, start, end, skl, svl, offs_d, offs_dv, D, DV, FEATURE: tl.constexpr,
              HAS_KEEP: tl.constexpr, BLOCK: tl.constexpr):
    """A block of keys from ``start`` (< end): (offsets, offsets < end, kept, raw k, φ(k)·kept, v in v's dtype)."""
    offs = start + tl.arange(0, BLOCK)
    in_r = offs < end
    kk = key_keep(KEEP, b, L, offs, in_r, HAS_KEEP)
    k_raw = load_rows(k_ptr, offs, in_r, skl, offs_d, D)
    v = tl.load(v_ptr + offs[:, None] * svl + offs_dv[None, :], mask=in_r[:, None] & (offs_dv[None, :] < DV),
                other=0.0).to(v_ptr.dtype.element_ty)
    return offs, in_r, kk, k_raw, phi(k_raw, kk, offs_d, D, FEATURE), v


@triton.jit
def _key_sums(k_ptr, v_ptr, KEEP, b, L, lo, end, skl, svl, offs_d, offs_dv, D, DV, FEATURE: tl.constexpr,
              HAS_KEEP: tl.constexpr, PREC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_DV: tl.constexpr):
    """Σ_j φ(k_j) v_jᵀ and Σ_j φ(k_j) over the keys lo ≤ j < end, fp32."""
    dt = v_ptr.dtype.element_ty
    S = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    z = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(lo, end, BLOCK):
        _, _, _, _, k, v = _key_rows(k_ptr, v_ptr, KEEP, b, L, start, end, skl, svl, offs_d, offs_dv, D, DV, FEATURE,
                                     HAS_KEEP, BLOCK)
        S += tl.dot(tl.trans(k.to(dt)), v, input_precision=PREC)
        z += tl.sum(k, axis=0)
    return S, z


@triton.jit
def _lit_state_kernel(K, V, KEEP, SP, ZP, skb, skh, skl, svb, svh, svl, H, L, T, D, DV,
                      FEATURE: tl.constexpr, HAS_KEEP: tl.constexpr, PREC: tl.constexpr,
                      BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Partial Σ_j φ(k_j) v_jᵀ and Σ_j φ(k_j) over this program's keys, fp32."""
    bh, b, h, lo, end = _slice(H, L, T)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    S, z = _key_sums(K + b * skb + h * skh, V + b * svb + h * svh, KEEP, b, L, lo, end, skl, svl, offs_d, offs_dv,
                     D, DV, FEATURE, HAS_KEEP, PREC, BLOCK, BLOCK_D, BLOCK_DV)
    _store_partial(SP, ZP, S, z, bh, offs_d, offs_dv, D, DV)


@triton.jit
def _lit_out_kernel(Q, K, V, KEEP, SM, ZV, Y, DEN, sqb, sqh, sql, skb, skh, skl, svb, svh, svl, syb, syh, syl,
                    H, L, T, D, DV, scale, eps, FEATURE: tl.constexpr, HAS_KEEP: tl.constexpr, PREC: tl.constexpr,
                    WITH_STATE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """y_i = φ(q_i) S / (den_i + eps), den_i = φ(q_i)·z for this program's queries. WITH_STATE (one split, T ≥ L):
    S, z summed here over all keys, not stored (one launch for the whole forward; the backward sums them again)."""
    bh, b, h, lo, end = _slice(H, L, T)
    dt = Y.dtype.element_ty
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_ptr, y_ptr = Q + b * sqb + h * sqh, Y + b * syb + h * syh
    if WITH_STATE:
        S, z = _key_sums(K + b * skb + h * skh, V + b * svb + h * svh, KEEP, b, L, 0, L, skl, svl, offs_d, offs_dv,
                         D, DV, FEATURE, HAS_KEEP, PREC, BLOCK, BLOCK_D, BLOCK_DV)
    else:
        S, z = _load_state(SM, ZV, bh, offs_d, offs_dv, D, DV)
    S = (S * scale).to(dt)
    z = z * scale
    for start in range(lo, end, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        in_r = offs < end
        q = phi(load_rows(q_ptr, offs, in_r, sql, offs_d, D), in_r, offs_d, D, FEATURE)
        den = tl.sum(q * z[None, :], axis=1)
        y = tl.dot(q.to(dt), S, input_precision=PREC) / (den + eps)[:, None]
        tl.store(DEN + bh * L + offs, den, mask=in_r)
        tl.store(y_ptr + offs[:, None] * syl + offs_dv[None, :], y.to(Y.dtype.element_ty),
                 mask=in_r[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def _lit_bwd_q_kernel(Q, K, V, KEEP, Y, DEN, DY, SM, ZV, DQ, DK, DVV, DSP, DZP, sqb, sqh, sql, skb, skh, skl,
                      svb, svh, svl, syb, syh, syl, sdyb, sdyh, sdyl, sgb, sgh, sgl, sgvb, sgvh, sgvl,
                      H, L, T, D, DV, scale, eps, FEATURE: tl.constexpr, HAS_KEEP: tl.constexpr,
                      PREC: tl.constexpr, WITH_KV: tl.constexpr,
                      BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """y_i = φq_i S / D_i, D_i = φq_i·z + eps (S, z scaled): dφq_i = (dy_i/D_i) Sᵀ − (δ_i/D_i) z with δ_i = dy_i·y_i;
    and this program's partial dS = Σ_i φq_iᵀ dy_i/D_i, dz = −Σ_i φq_i δ_i/D_i (fp32, before the scale). WITH_KV
    (one split, T ≥ L): S, z summed here (the forward did not save them), dS, dz are then whole, and the same program
    goes on to dk, dv (one launch for the backward, as the forward)."""
    bh, b, h, lo, end = _slice(H, L, T)
    dt = Y.dtype.element_ty
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_ptr, y_ptr, dy_ptr = Q + b * sqb + h * sqh, Y + b * syb + h * syh, DY + b * sdyb + h * sdyh
    if WITH_KV:
        S, z = _key_sums(K + b * skb + h * skh, V + b * svb + h * svh, KEEP, b, L, 0, L, skl, svl, offs_d, offs_dv,
                         D, DV, FEATURE, HAS_KEEP, PREC, BLOCK, BLOCK_D, BLOCK_DV)
    else:
        S, z = _load_state(SM, ZV, bh, offs_d, offs_dv, D, DV)
    S_t = tl.trans((S * scale).to(dt))
    z = z * scale
    dS = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    dz = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(lo, end, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        in_r = offs < end
        q_raw = load_rows(q_ptr, offs, in_r, sql, offs_d, D)
        q = phi(q_raw, in_r, offs_d, D, FEATURE)
        dyn, dlt = dy_rows(DY, Y, DEN, dy_ptr, y_ptr, DEN + bh * L, offs, in_r, sdyl, syl, offs_dv, DV, eps, True)
        dq = tl.dot(dyn.to(dt), S_t, input_precision=PREC) - dlt[:, None] * z[None, :]
        dS += tl.dot(tl.trans(q.to(dt)), dyn.to(dt), input_precision=PREC)
        dz -= tl.sum(q * dlt[:, None], axis=0)
        dq = phi_bwd(q_raw, dq, in_r, offs_d, D, FEATURE)
        tl.store(DQ + b * sgb + h * sgh + offs[:, None] * sgl + offs_d[None, :], dq.to(DQ.dtype.element_ty),
                 mask=in_r[:, None] & (offs_d[None, :] < D))
    if WITH_KV:
        _kv_grads(K, V, KEEP, DK, DVV, dS, dz, b, h, L, 0, L, skb, skh, skl, svb, svh, svl, sgb, sgh, sgl, sgvb, sgvh,
                  sgvl, offs_d, offs_dv, D, DV, scale, FEATURE, HAS_KEEP, PREC, BLOCK)
    else:
        _store_partial(DSP, DZP, dS, dz, bh, offs_d, offs_dv, D, DV)


@triton.jit
def _kv_grads(K, V, KEEP, DK, DVV, dS, dz, b, h, L, lo, end, skb, skh, skl, svb, svh, svl, sgb, sgh, sgl, sgvb, sgvh,
              sgvl, offs_d, offs_dv, D, DV, scale, FEATURE: tl.constexpr, HAS_KEEP: tl.constexpr,
              PREC: tl.constexpr, BLOCK: tl.constexpr):
    """S = scale Σ_j φk_j v_jᵀ, z = scale Σ_j φk_j: dφk_j = scale (v_j dSᵀ + dz), dv_j = scale φk_j dS for the keys
    lo ≤ j < end (dS, dz fp32, unscaled)."""
    dt = V.dtype.element_ty
    k_ptr, v_ptr = K + b * skb + h * skh, V + b * svb + h * svh
    dS_t = tl.trans((dS * scale).to(dt))
    dS = (dS * scale).to(dt)
    dz = dz * scale
    for start in range(lo, end, BLOCK):
        offs, in_r, kk, k_raw, k, v = _key_rows(k_ptr, v_ptr, KEEP, b, L, start, end, skl, svl, offs_d, offs_dv, D,
                                                DV, FEATURE, HAS_KEEP, BLOCK)
        dk = tl.dot(v, dS_t, input_precision=PREC) + dz[None, :]
        dv = tl.dot(k.to(dt), dS, input_precision=PREC)
        dk = phi_bwd(k_raw, dk, kk, offs_d, D, FEATURE)
        tl.store(DK + b * sgb + h * sgh + offs[:, None] * sgl + offs_d[None, :], dk.to(DK.dtype.element_ty),
                 mask=in_r[:, None] & (offs_d[None, :] < D))
        tl.store(DVV + b * sgvb + h * sgvh + offs[:, None] * sgvl + offs_dv[None, :], dv.to(DVV.dtype.element_ty),
                 mask=in_r[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def _lit_bwd_kv_kernel(K, V, KEEP, DSM, DZV, DK, DVV, skb, skh, skl, svb, svh, svl, sgb, sgh, sgl, sgvb, sgvh, sgvl,
                       H, L, T, D, DV, scale, FEATURE: tl.constexpr, HAS_KEEP: tl.constexpr, PREC: tl.constexpr,
                       BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """dk, dv of this program's keys from the summed dS, dz (``_kv_grads``)."""
    bh, b, h, lo, end = _slice(H, L, T)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    dS, dz = _load_state(DSM, DZV, bh, offs_d, offs_dv, D, DV)
    _kv_grads(K, V, KEEP, DK, DVV, dS, dz, b, h, L, lo, end, skb, skh, skl, svb, svh, svl, sgb, sgh, sgl, sgvb, sgvh,
              sgvl, offs_d, offs_dv, D, DV, scale, FEATURE, HAS_KEEP, PREC, BLOCK)


# BLOCK rows per step of a program's loop. ptxas for sm_90, bf16, d = dv = 64: no spills but in _lit_bwd_q_kernel
# with normalized_silu at (32, 4) and (64, 8) (16 bytes); (64, 4) spills more
_LIT_CONFIGS = [triton.Config({"BLOCK": bl}, num_warps=w, num_stages=st) for bl, w, st in [(32, 8, 2), (32, 4, 2),
                                                                                            (16, 4, 2), (64, 8, 2)]]
_LIT_KEY = ["T", "D", "DV", "FEATURE", "HAS_KEEP", "PREC"]
_INTERPRET_CONFIG = triton.Config({"BLOCK": 16}, num_warps=1, num_stages=1)
_state = Launcher(_lit_state_kernel, _LIT_CONFIGS, _LIT_KEY, _INTERPRET_CONFIG)
_out = Launcher(_lit_out_kernel, _LIT_CONFIGS, _LIT_KEY + ["WITH_STATE"], _INTERPRET_CONFIG)
_bwd_q = Launcher(_lit_bwd_q_kernel, _LIT_CONFIGS, _LIT_KEY + ["WITH_KV"], _INTERPRET_CONFIG)
_bwd_kv = Launcher(_lit_bwd_kv_kernel, _LIT_CONFIGS, _LIT_KEY, _INTERPRET_CONFIG)

_PROGRAMS_PER_SM = 4
_MIN_SPLIT, _ALIGN = (16, 16) if INTERPRET else (256, 64)  # tokens per program: at least, and a multiple of


@functools.lru_cache(maxsize=None)
def _split(BH: int, L: int, device: torch.device) -> tuple[int, int]:
    """(T, splits): slices of T tokens, a multiple of _ALIGN (the largest BLOCK) and ≥ _MIN_SPLIT where L allows,
    and enough of them for B·H·splits ≈ _PROGRAMS_PER_SM programs per SM (under the interpreter: 8 programs)."""
    programs = 8 if device.type != "cuda" else \
        _PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    n = max(1, min(cdiv(programs, BH), cdiv(L, _MIN_SPLIT)))
    T = cdiv(cdiv(L, n), _ALIGN) * _ALIGN
    return T, cdiv(L, T)


def _split_sums(out, n, launch_partials):
    """``launch_partials(parts, zparts)`` writes n splits' partial sums into (B·H, n, ·) fp32 buffers; their totals
    over the splits go to ``out`` = (S-like (B, H, D, DV), z-like (B, H, D))."""
    parts = [t.new_empty((t.shape[0] * t.shape[1], n, *t.shape[2:])) for t in out]
    launch_partials(*parts)
    for p, t in zip(parts, out):
        torch.sum(p, 1, out=t.view(p.shape[0], *t.shape[2:]))


def _meta(q, v, keep, feature):
    return dict(FEATURE=feature, HAS_KEEP=keep is not None, PREC="ieee" if v.dtype == torch.float32 else "tf32",
                BLOCK_D=block_size(q.shape[-1]), BLOCK_DV=block_size(v.shape[-1]))


def _state_buffers(q, v):
    """S (B, H, D, DV) and z (B, H, D), fp32: the forward's sums, saved for the backward; empty with one split (the
    kernels then sum them in-program, twice, rather than keep B·H·D·DV floats a layer where B·H is large)."""
    B, H, L, D = q.shape
    shapes = ((0,), (0,)) if _split(B * H, L, q.device)[1] == 1 else ((B, H, D, v.shape[-1]), (B, H, D))
    return tuple(q.new_empty(shape, dtype=torch.float32) for shape in shapes)


def _lit_fwd(q, k, v, keep, y, den, S, z, scale, eps, feature):
    """The forward's launches: S, z (fp32, unscaled) into ``S``, ``z``, then y and den; one launch for one split."""
    B, H, L, D = q.shape
    DV = v.shape[-1]
    T, n = _split(B * H, L, q.device)
    meta = _meta(q, v, keep, feature)
    kp = q if keep is None else keep
    if n > 1:
        _split_sums((S, z), n, lambda Sp, zp: _state(lambda m: (B * H, n), k, v, kp, Sp, zp, *k.stride()[:3],
                                                     *v.stride()[:3], H, L, T, D, DV, **meta))
    else:  # S, z are empty: fp32 stand-ins, never read
        S = z = den
    _out(lambda m: (B * H, n), q, k, v, kp, S, z, y, den, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
         *y.stride()[:3], H, L, T, D, DV, scale, eps, WITH_STATE=n == 1, **meta)


def _lit_kv_fwd(q, k, v, keep, scale, eps, feature):
    q, k, v = last_dim_unit(q), last_dim_unit(k), last_dim_unit(v)
    B, H, L, D = q.shape
    DV = v.shape[-1]
    y = token_major(B, H, L, DV, q, v.dtype)
    den = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    S, z = _state_buffers(q, v)
    _lit_fwd(q, k, v, keep, y, den, S, z, scale, eps, feature)
    return y, den, S, z


@torch.library.custom_op("lion::lit_kv_fwd", mutates_args=())
def lit_kv_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: Optional[torch.Tensor], scale: float,
               eps: float, feature: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lit normalised through the d×dv state: y = φ(Q)(φ(K)ᵀV)·scale / (φ(Q)·Σφ(K)·scale + eps); (y, den, S, z) with
    den = φ(Q)·Σφ(K)·scale, S = φ(K)ᵀV and z = Σφ(K) (fp32, unscaled; padded keys dropped; empty with one split)."""
    return _lit_kv_fwd(q, k, v, keep, scale, eps, feature)


@lit_kv_fwd.register_fake
def _(q, k, v, keep, scale, eps, feature):
    B, H, L, D = q.shape
    DV = v.shape[-1]
    return (token_major(B, H, L, DV, q, v.dtype), q.new_empty((B, H, L), dtype=torch.float32),
            *_state_buffers(q, v))


def _lit_bwd(q, k, v, keep, y, den, S, z, dy, dq, dk, dv, scale, eps, feature):
    """The backward's launches: dq with partial dS, dz; their sums; dk, dv (one launch for one split)."""
    B, H, L, D = q.shape
    DV = v.shape[-1]
    T, n = _split(B * H, L, q.device)
    meta = _meta(q, v, keep, feature)
    kp = q if keep is None else keep
    if n == 1:  # S, z are empty: fp32 stand-ins, never read
        S = z = den

    def bwd_q(dSp, dzp):
        _bwd_q(lambda m: (B * H, n), q, k, v, kp, y, den, dy, S, z, dq, dk, dv, dSp, dzp, *q.stride()[:3],
               *k.stride()[:3], *v.stride()[:3], *y.stride()[:3], *dy.stride()[:3], *dq.stride()[:3],
               *dv.stride()[:3], H, L, T, D, DV, scale, eps, WITH_KV=n == 1, **meta)
    if n == 1:
        bwd_q(den, den)  # stand-ins for the partial buffers, never written with one split
    else:
        dS, dz = torch.empty_like(S), torch.empty_like(z)
        _split_sums((dS, dz), n, bwd_q)
        _bwd_kv(lambda m: (B * H, n), k, v, kp, dS, dz, dk, dv, *k.stride()[:3], *v.stride()[:3], *dk.stride()[:3],
                *dv.stride()[:3], H, L, T, D, DV, scale, **meta)


def _lit_kv_bwd(q, k, v, keep, y, den, S, z, dy, scale, eps, feature):
    q, k, v, dy = last_dim_unit(q), last_dim_unit(k), last_dim_unit(v), last_dim_unit(dy)
    B, H, L, D = q.shape
    dqkv = grad_buffer(B, H, L, D, v.shape[-1], q, v.dtype)
    _lit_bwd(q, k, v, keep, y, den, S, z, dy, *grad_views(dqkv, D, v.shape[-1]), scale, eps, feature)
    return dqkv


@torch.library.custom_op("lion::lit_kv_bwd", mutates_args=())
def lit_kv_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: Optional[torch.Tensor], y: torch.Tensor,
               den: torch.Tensor, S: torch.Tensor, z: torch.Tensor, dy: torch.Tensor, scale: float, eps: float,
               feature: int) -> torch.Tensor:
    """dq, dk, dv in one ``grad_buffer``."""
    return _lit_kv_bwd(q, k, v, keep, y, den, S, z, dy, scale, eps, feature)


@lit_kv_bwd.register_fake
def _(q, k, v, keep, y, den, S, z, dy, scale, eps, feature):
    B, H, L, D = q.shape
    return grad_buffer(B, H, L, D, v.shape[-1], q, v.dtype)


def _input_grads(tensors, dqkv):
    q, v = tensors[0], tensors[2]
    return (*grad_views(dqkv, q.shape[-1], v.shape[-1]), None)


# (q, k, v, keep, scale, eps, feature) → y
lit_kv_attention = FusedOp(_lit_kv_fwd, _lit_kv_bwd, 4, _input_grads, custom_ops=(lit_kv_fwd, lit_kv_bwd))
