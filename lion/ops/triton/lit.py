"""Lit normalised through the d×dv state (docs/lion.md §1): with M = 1 the attention form needs no L×L scores,

    y_i = φ(q_i) S / (φ(q_i)·z + eps),   S = scale Σ_j φ(k_j) v_jᵀ,   z = scale Σ_j φ(k_j)   (padded keys dropped)

one program per (batch, head), O(L·d·dv) work. ``lion.ops.triton.naive.fused_attention`` takes this path for Lit
normalised without dropout when L ≥ d (``lit_kv``); the L×L kernels serve the rest.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from lion.ops.triton.common.args import grad_buffer, grad_views, last_dim_unit, token_major
from lion.ops.triton.common.features import phi, phi_bwd
from lion.ops.triton.common.launching import Launcher, block_size
from lion.ops.triton.common.op import FusedOp
from lion.ops.triton.common.rows import dy_rows, key_keep, load_rows


@triton.jit
def _key_rows(k_ptr, v_ptr, KEEP, b, L, start, skl, svl, offs_d, offs_dv, D, DV, FEATURE: tl.constexpr,
              HAS_KEEP: tl.constexpr, BLOCK: tl.constexpr):
    """A block of keys from ``start``: (offsets, offsets < L, kept, raw k, φ(k)·kept, v in v's dtype)."""
    offs = start + tl.arange(0, BLOCK)
    in_r = offs < L
    kk = key_keep(KEEP, b, L, offs, in_r, HAS_KEEP)
    k_raw = load_rows(k_ptr, offs, in_r, skl, offs_d, D)
    v = tl.load(v_ptr + offs[:, None] * svl + offs_dv[None, :], mask=in_r[:, None] & (offs_dv[None, :] < DV),
                other=0.0).to(v_ptr.dtype.element_ty)
    return offs, in_r, kk, k_raw, phi(k_raw, kk, offs_d, D, FEATURE), v


@triton.jit
def _lit_state(k_ptr, v_ptr, KEEP, b, L, skl, svl, offs_d, offs_dv, D, DV, FEATURE: tl.constexpr,
               HAS_KEEP: tl.constexpr, PREC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_DV: tl.constexpr):
    """S = Σ_j φ(k_j) v_jᵀ (BLOCK_D × BLOCK_DV) and z = Σ_j φ(k_j), fp32."""
    dt = v_ptr.dtype.element_ty
    S = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    z = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(0, L, BLOCK):
        offs, in_r, kk, k_raw, k, v = _key_rows(k_ptr, v_ptr, KEEP, b, L, start, skl, svl, offs_d, offs_dv, D, DV,
                                                FEATURE, HAS_KEEP, BLOCK)
        S += tl.dot(tl.trans(k.to(dt)), v, input_precision=PREC)
        z += tl.sum(k, axis=0)
    return S, z


@triton.jit
def _program_head(H):
    """Grid (B·H,): this program's (b·H + h, b, h)."""
    bh = tl.program_id(0)
    return bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64)


@triton.jit
def _lit_fwd_kernel(Q, K, V, KEEP, Y, DEN, sqb, sqh, sql, skb, skh, skl, svb, svh, svl, syb, syh, syl,
                    H, L, D, DV, scale, eps, FEATURE: tl.constexpr, HAS_KEEP: tl.constexpr, PREC: tl.constexpr,
                    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    bh, b, h = _program_head(H)
    dt = V.dtype.element_ty
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_ptr, y_ptr = Q + b * sqb + h * sqh, Y + b * syb + h * syh
    S, z = _lit_state(K + b * skb + h * skh, V + b * svb + h * svh, KEEP, b, L, skl, svl, offs_d, offs_dv, D, DV,
                      FEATURE, HAS_KEEP, PREC, BLOCK, BLOCK_D, BLOCK_DV)
    S = (S * scale).to(dt)
    z = z * scale
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        in_r = offs < L
        q = phi(load_rows(q_ptr, offs, in_r, sql, offs_d, D), in_r, offs_d, D, FEATURE)
        den = tl.sum(q * z[None, :], axis=1)
        y = tl.dot(q.to(dt), S, input_precision=PREC) / (den + eps)[:, None]
        tl.store(DEN + bh * L + offs, den, mask=in_r)
        tl.store(y_ptr + offs[:, None] * syl + offs_dv[None, :], y.to(Y.dtype.element_ty),
                 mask=in_r[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def _lit_bwd_kernel(Q, K, V, KEEP, Y, DEN, DY, DQ, DK, DVV,
                    sqb, sqh, sql, skb, skh, skl, svb, svh, svl, syb, syh, syl, sdyb, sdyh, sdyl,
                    sgb, sgh, sgl, sgvb, sgvh, sgvl, H, L, D, DV, scale, eps,
                    FEATURE: tl.constexpr, HAS_KEEP: tl.constexpr, PREC: tl.constexpr,
                    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """y_i = φq_i S / (φq_i·z + eps) with S, z scaled: dφq_i = (dy_i/D_i) Sᵀ − (δ_i/D_i) z,
    dS = Σ_i φq_iᵀ dy_i/D_i, dz = −Σ_i φq_i δ_i/D_i, then dφk_j = scale(v_j dSᵀ + dz), dv_j = scale φk_j dS."""
    bh, b, h = _program_head(H)
    dt = V.dtype.element_ty
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_ptr, k_ptr, v_ptr = Q + b * sqb + h * sqh, K + b * skb + h * skh, V + b * svb + h * svh
    y_ptr, dy_ptr, den_ptr = Y + b * syb + h * syh, DY + b * sdyb + h * sdyh, DEN + bh * L
    S, z = _lit_state(k_ptr, v_ptr, KEEP, b, L, skl, svl, offs_d, offs_dv, D, DV, FEATURE, HAS_KEEP, PREC,
                      BLOCK, BLOCK_D, BLOCK_DV)
    S_t = tl.trans((S * scale).to(dt))
    z = z * scale
    dS = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    dz = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        in_r = offs < L
        q_raw = load_rows(q_ptr, offs, in_r, sql, offs_d, D)
        q = phi(q_raw, in_r, offs_d, D, FEATURE)
        dyn, dlt = dy_rows(DY, Y, DEN, dy_ptr, y_ptr, den_ptr, offs, in_r, sdyl, syl, offs_dv, DV, eps, True)
        dq = tl.dot(dyn.to(dt), S_t, input_precision=PREC) - dlt[:, None] * z[None, :]
        dS += tl.dot(tl.trans(q.to(dt)), dyn.to(dt), input_precision=PREC)
        dz -= tl.sum(q * dlt[:, None], axis=0)
        dq = phi_bwd(q_raw, dq, in_r, offs_d, D, FEATURE)
        tl.store(DQ + b * sgb + h * sgh + offs[:, None] * sgl + offs_d[None, :], dq.to(DQ.dtype.element_ty),
                 mask=in_r[:, None] & (offs_d[None, :] < D))
    dS_t = tl.trans((dS * scale).to(dt))
    dS = (dS * scale).to(dt)
    dz = dz * scale
    for start in range(0, L, BLOCK):
        offs, in_r, kk, k_raw, k, v = _key_rows(k_ptr, v_ptr, KEEP, b, L, start, skl, svl, offs_d, offs_dv, D, DV,
                                                FEATURE, HAS_KEEP, BLOCK)
        dk = tl.dot(v, dS_t, input_precision=PREC) + dz[None, :]
        dv = tl.dot(k.to(dt), dS, input_precision=PREC)
        dk = phi_bwd(k_raw, dk, kk, offs_d, D, FEATURE)
        tl.store(DK + b * sgb + h * sgh + offs[:, None] * sgl + offs_d[None, :], dk.to(DK.dtype.element_ty),
                 mask=in_r[:, None] & (offs_d[None, :] < D))
        tl.store(DVV + b * sgvb + h * sgvh + offs[:, None] * sgvl + offs_dv[None, :], dv.to(DVV.dtype.element_ty),
                 mask=in_r[:, None] & (offs_dv[None, :] < DV))


_LIT_CONFIGS = [triton.Config({"BLOCK": bl}, num_warps=w, num_stages=st)  # spill-free (32 rows; 64 rows spill)
                for bl, w, st in [(32, 8, 2), (32, 4, 2), (16, 4, 2)]]
_LIT_KEY = ["L", "D", "DV", "FEATURE", "HAS_KEEP", "PREC"]
_lit_fwd = Launcher(_lit_fwd_kernel, _LIT_CONFIGS, _LIT_KEY, triton.Config({"BLOCK": 16}, num_warps=1, num_stages=1))
_lit_bwd = Launcher(_lit_bwd_kernel, _LIT_CONFIGS, _LIT_KEY, triton.Config({"BLOCK": 16}, num_warps=1, num_stages=1))


def _lit_kv_fwd(q, k, v, keep, scale, eps, feature):
    q, k, v = last_dim_unit(q), last_dim_unit(k), last_dim_unit(v)
    B, H, L, D = q.shape
    DV = v.shape[-1]
    y = token_major(B, H, L, DV, q, v.dtype)
    den = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    meta = dict(FEATURE=feature, HAS_KEEP=keep is not None, PREC="ieee" if v.dtype == torch.float32 else "tf32",
                BLOCK_D=block_size(D), BLOCK_DV=block_size(DV))
    _lit_fwd(lambda m: (B * H,), q, k, v, q if keep is None else keep, y, den, *q.stride()[:3], *k.stride()[:3],
             *v.stride()[:3], *y.stride()[:3], H, L, D, DV, scale, eps, **meta)
    return y, den


@torch.library.custom_op("lion::lit_kv_fwd", mutates_args=())
def lit_kv_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: Optional[torch.Tensor], scale: float,
               eps: float, feature: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lit normalised through the d×dv state: y = φ(Q)(φ(K)ᵀV)·scale / (φ(Q)·Σφ(K)·scale + eps); (y, den)."""
    return _lit_kv_fwd(q, k, v, keep, scale, eps, feature)


@lit_kv_fwd.register_fake
def _(q, k, v, keep, scale, eps, feature):
    B, H, L, _ = q.shape
    return token_major(B, H, L, v.shape[-1], q, v.dtype), q.new_empty((B, H, L), dtype=torch.float32)


def _lit_kv_bwd(q, k, v, keep, y, den, dy, scale, eps, feature):
    q, k, v, dy = last_dim_unit(q), last_dim_unit(k), last_dim_unit(v), last_dim_unit(dy)
    B, H, L, D = q.shape
    DV = v.shape[-1]
    dqkv = grad_buffer(B, H, L, D, DV, q, v.dtype)
    dq, dk, dv = grad_views(dqkv, D, DV)
    meta = dict(FEATURE=feature, HAS_KEEP=keep is not None, PREC="ieee" if v.dtype == torch.float32 else "tf32",
                BLOCK_D=block_size(D), BLOCK_DV=block_size(DV))
    _lit_bwd(lambda m: (B * H,), q, k, v, q if keep is None else keep, y, den, dy, dq, dk, dv,
             *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *y.stride()[:3], *dy.stride()[:3],
             *dk.stride()[:3], *dv.stride()[:3], H, L, D, DV, scale, eps, **meta)
    return dqkv


@torch.library.custom_op("lion::lit_kv_bwd", mutates_args=())
def lit_kv_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: Optional[torch.Tensor], y: torch.Tensor,
               den: torch.Tensor, dy: torch.Tensor, scale: float, eps: float, feature: int
               ) -> torch.Tensor:
    """dq, dk, dv in one ``grad_buffer``."""
    return _lit_kv_bwd(q, k, v, keep, y, den, dy, scale, eps, feature)


@lit_kv_bwd.register_fake
def _(q, k, v, keep, y, den, dy, scale, eps, feature):
    B, H, L, D = q.shape
    return grad_buffer(B, H, L, D, v.shape[-1], q, v.dtype)


def _input_grads(tensors, dqkv):
    q, v = tensors[0], tensors[2]
    return (*grad_views(dqkv, q.shape[-1], v.shape[-1]), None)


# (q, k, v, keep, scale, eps, feature) → y
lit_kv_attention = FusedOp(_lit_kv_fwd, _lit_kv_bwd, 4, _input_grads, custom_ops=(lit_kv_fwd, lit_kv_bwd))
