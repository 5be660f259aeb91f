"""Chunk form on the GPU for training: the forward of ``lion.ops.triton.chunk`` plus a backward built from the same
bidirectional chunk operator, so that no step forms an L×L matrix (docs/lion.md §1, chunk form).

Per head and order, with x̂ = scale·φ(q), k̂ = φ(k)·keep, A_ij = M_ij (x̂_i·k̂_j), num = A V, den = A 1 and
y = num / (den + eps) (means over the orders before the division). Writing v' = [v, 1] and
dO' = [dy / D, −δ / D] with D = den + eps, δ_i = dy_i·y_i (or v' = v, dO' = dy unnormalised), divided by the number
of orders, the gradients are three more instances of the operator O_i = Σ_j M_ij (x_i·y_j) z_j:

    dx̂_i = Σ_j M_ij  (dO'_i·v'_j) k̂_j      (x = dO', y = v', z = k̂, mask M)
    dk̂_j = Σ_i M_ji^T (v'_j·dO'_i) x̂_i      (x = v', y = dO', z = x̂, mask Mᵀ)
    dv_j  = Σ_i M_ji^T (k̂_j·x̂_i) dO_i       (x = k̂, y = x̂, z = dO, mask Mᵀ)

with the normaliser column kept out of the products: dO'_i·v'_j = dnum_i·v_j + c_i, c_i = −δ_i / D_i, a rank-one
term of the scores that the kernels add themselves (``chunk_sums``'s ``c``), with its own carried vector states.

The gates: G_ij = dA_ij A_ij = ∂/∂log M_ij. With P, C the exclusive and inclusive prefix sums of the log gates in
the order (log M_ij = P_i − P_j below the diagonal, C_j − C_i above),

    dP_t = Σ_{j<t} G_tj − Σ_{i>t} G_it,   dC_t = Σ_{i<t} G_it − Σ_{j>t} G_tj,

and Σ_{j<t} G_tj = x̂_t·(strictly lower part of dx̂_t), Σ_{i>t} G_it = k̂_t·(strictly upper part of dk̂_t), and so
on: the operators return these dot products beside their outputs (``chunk_sums``'s ``w``). Then
d log a_s = Σ_{t>s} dP_t + Σ_{t≥s} dC_t (reverse cumulative sums). Per-head gates (LION-D) arrive expanded to
(B, H, L) and autograd sums their gradient. The backward recomputes φ (``_prep_kernel``, once per token with dO and
c) and applies its derivative (``_phi_grad_kernel``); the three operators take two launches each and one more per
order.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from lion.checks import check_chunk_size
from lion.ops.triton.chunk import chunk_sums
from lion.ops.triton.common.args import compute_dtype, grad_buffer, grad_views, prepare_scan, token_major
from lion.ops.triton.common.features import phi, phi_bwd
from lion.ops.triton.common.launching import INTERPRET, block_size, cdiv, launch
from lion.ops.triton.common.op import FusedOp
from lion.ops.triton.common.rows import key_keep, load_rows, token_block

_ROWS = 16 if INTERPRET else 32  # tokens per program of the two per-token kernels


@triton.jit
def _prep_kernel(Q, K, KEEP, DY, Y, DEN, XF, KF, DO, CS, sqb, sqh, sql, skb, skh, skl, syb, syh, syl,
                 sdb, sdh, sdl, H, L, D, DV, scale, eps, inv_orders, FEATURE: tl.constexpr, HAS_KEEP: tl.constexpr,
                 NORMALIZE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Per token, once: x̂ = scale·φ(q), k̂ = φ(k)·keep, dO = dy / (n·D) and c = −(dy·y) / (n·D) (n orders, D the
    normaliser + eps; unnormalised dO = dy / n). XF, KF, DO: contiguous (B, H, L, ·) in the compute dtype."""
    bh, b, h, offs, rows = token_block(H, L, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    ok = rows[:, None] & (offs_d < D)[None, :]
    offs_dv = tl.arange(0, BLOCK_DV)
    tile = (bh * L + offs)[:, None] * D + offs_d[None, :]
    q = load_rows(Q + b * sqb + h * sqh, offs, rows, sql, offs_d, D)
    tl.store(XF + tile, (phi(q, rows, offs_d, D, FEATURE) * scale).to(XF.dtype.element_ty), mask=ok)
    k = load_rows(K + b * skb + h * skh, offs, rows, skl, offs_d, D)
    keep = key_keep(KEEP, b, L, offs, rows, HAS_KEEP)
    tl.store(KF + tile, phi(k, keep, offs_d, D, FEATURE).to(KF.dtype.element_ty), mask=ok)
    dy = load_rows(DY + b * sdb + h * sdh, offs, rows, sdl, offs_dv, DV)
    if NORMALIZE:
        y = load_rows(Y + b * syb + h * syh, offs, rows, syl, offs_dv, DV)
        inv = inv_orders / (tl.load(DEN + bh * L + offs, mask=rows, other=1.0) + eps)
        tl.store(CS + bh * L + offs, -tl.sum(dy * y, 1) * inv, mask=rows)
        dy = dy * inv[:, None]
    else:
        dy = dy * inv_orders
    tl.store(DO + (bh * L + offs)[:, None] * DV + offs_dv[None, :], dy.to(DO.dtype.element_ty),
             mask=rows[:, None] & (offs_dv < DV)[None, :])


@triton.jit
def _phi_grad_kernel(Q, K, KEEP, GX, GK, DQ, DK, sqb, sqh, sql, skb, skh, skl, sgb, sgh, sgl, shb, shh, shl,
                     sob, soh, sol, spb, sph, spl, H, L, D, scale, FEATURE: tl.constexpr, HAS_KEEP: tl.constexpr,
                     BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """dq = scale·φ'(q)ᵀ dx̂, dk = keep·φ'(k)ᵀ dk̂ per token (φ recomputed from the raw q, k)."""
    _, b, h, offs, rows = token_block(H, L, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    ok = rows[:, None] & (offs_d < D)[None, :]
    q = load_rows(Q + b * sqb + h * sqh, offs, rows, sql, offs_d, D)
    g = load_rows(GX + b * sgb + h * sgh, offs, rows, sgl, offs_d, D) * scale
    dq = phi_bwd(q, g, rows, offs_d, D, FEATURE)
    tl.store(DQ + b * sob + h * soh + offs[:, None] * sol + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=ok)
    k = load_rows(K + b * skb + h * skh, offs, rows, skl, offs_d, D)
    g = load_rows(GK + b * shb + h * shh, offs, rows, shl, offs_d, D)
    dk = phi_bwd(k, g, key_keep(KEEP, b, L, offs, rows, HAS_KEEP), offs_d, D, FEATURE)
    tl.store(DK + b * spb + h * sph + offs[:, None] * spl + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=ok)


def _bhl(t):
    return tuple(t.stride()[:3])


def _reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Σ_{s ≥ t} x_s along the last dim."""
    return x.flip(-1).cumsum(-1).flip(-1)


def _chunk_fwd(q, k, v, gates, perms, keep, feature, scale, eps, normalize, chunk_size):
    """(y, den): y (B, H, L, dv) a view of (B, L, H, dv) memory, den (B, H, L) fp32 (empty unnormalised)."""
    y, den, _ = chunk_sums(q, k, v, gates, perms, keep, feature=feature, scale=scale, normalize=normalize, eps=eps,
                           store_den=True, chunk_size=chunk_size)
    return y, den if den is not None else q.new_empty((0,), dtype=torch.float32)


def _chunk_bwd(q, k, v, gates, perms, keep, y, den, dy, feature, scale, eps, normalize, chunk_size):
    """(dqkv, dgates): dq, dk, dv in one ``grad_buffer`` (read them with ``grad_views``); dgates (orders, B, H, L)
    fp32 (empty without gates)."""
    n_orders = 1 if perms is None else perms.shape[0]
    B, H, L, D = q.shape
    DV = v.shape[-1]
    dy = dy if dy.stride(-1) == 1 else dy.contiguous()
    x_ = torch.empty(B, H, L, D, device=q.device, dtype=v.dtype)
    k_ = torch.empty_like(x_)
    dO = torch.empty(B, H, L, DV, device=q.device, dtype=v.dtype)
    # dnum = dy / D and dden = −δ / D = c, per order (the means over the orders)
    c = torch.empty(B, H, L, device=q.device, dtype=torch.float32) if normalize else None
    grid = (cdiv(L, _ROWS), B * H)
    kp = keep if keep is not None else q
    launch(_prep_kernel, grid, (
        q, k, kp, dy, y, den if normalize else q, x_, k_, dO, c if normalize else q, *_bhl(q), *_bhl(k),
        *_bhl(y), *_bhl(dy), H, L, D, DV, scale, eps, 1.0 / n_orders), dict(
        FEATURE=feature, HAS_KEEP=keep is not None, NORMALIZE=normalize, BLOCK=_ROWS, BLOCK_D=block_size(D),
        BLOCK_DV=block_size(DV), num_warps=1 if INTERPRET else 4))
    kw = dict(chunk_size=chunk_size, accumulate=n_orders > 1)  # one order: the outputs in the compute dtype
    dx, _, gq = chunk_sums(dO, v, k_, gates, perms, None, w=None if gates is None else x_, c=c, **kw)
    dk, _, gk = chunk_sums(v, dO, x_, gates, perms, None, trans=True, w=None if gates is None else k_, c=c,
                           c_on_keys=True, **kw)
    dqkv = grad_buffer(B, H, L, D, DV, q, v.dtype)  # one buffer: lion.unpack_qkv returns it without a copy
    dq, dk_raw, dv_out = grad_views(dqkv, D, DV)
    # one order: dv written into its place in the buffer; several: summed over the orders in fp32, then copied
    dv, _, _ = chunk_sums(k_, x_, dO, gates, perms, None, trans=True,
                          out=dv_out.transpose(1, 2) if n_orders == 1 else None, **kw)
    dgates = None
    if gates is not None:  # gq, gk: (orders, 2, B, H, L), the strictly lower / upper parts' dot products
        dP = gq[:, 0] - gk[:, 1]
        dC = gk[:, 0] - gq[:, 1]
        dgates = _reverse_cumsum(dP + dC) - dP  # = rev(dP) − dP + rev(dC), one reverse cumsum
    launch(_phi_grad_kernel, grid, (
        q, k, kp, dx, dk, dq, dk_raw, *_bhl(q), *_bhl(k), *_bhl(dx), *_bhl(dk), *_bhl(dq), *_bhl(dk_raw),
        H, L, D, scale), dict(FEATURE=feature, HAS_KEEP=keep is not None, BLOCK=_ROWS, BLOCK_D=block_size(D),
                              num_warps=1 if INTERPRET else 4))
    if n_orders > 1:
        dv_out.copy_(dv)
    return dqkv, dgates if dgates is not None else q.new_empty((0,), dtype=torch.float32)


@torch.library.custom_op("lion::chunk_fwd", mutates_args=())
def chunk_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: Optional[torch.Tensor],
              perms: Optional[torch.Tensor], keep: Optional[torch.Tensor], feature: int, scale: float, eps: float,
              normalize: bool, chunk_size: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """y and den of ``_chunk_fwd``; gates (orders, B, H, L) fp32, perms (orders, L) int32, keep (B, L) uint8."""
    return _chunk_fwd(q, k, v, gates, perms, keep, feature, scale, eps, normalize, chunk_size)


@chunk_fwd.register_fake
def _(q, k, v, gates, perms, keep, feature, scale, eps, normalize, chunk_size):
    B, H, L, _ = q.shape
    return (token_major(B, H, L, v.shape[-1], q, v.dtype),
            q.new_empty((B, H, L) if normalize else (0,), dtype=torch.float32))


@torch.library.custom_op("lion::chunk_bwd", mutates_args=())
def chunk_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: Optional[torch.Tensor],
              perms: Optional[torch.Tensor], keep: Optional[torch.Tensor], y: torch.Tensor, den: torch.Tensor,
              dy: torch.Tensor, feature: int, scale: float, eps: float, normalize: bool, chunk_size: Optional[int]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dqkv, dgates) of ``_chunk_bwd``."""
    return _chunk_bwd(q, k, v, gates, perms, keep, y, den, dy, feature, scale, eps, normalize, chunk_size)


@chunk_bwd.register_fake
def _(q, k, v, gates, perms, keep, y, den, dy, feature, scale, eps, normalize, chunk_size):
    B, H, L, D = q.shape
    return (grad_buffer(B, H, L, D, v.shape[-1], q, v.dtype),
            q.new_empty(gates.shape if gates is not None else (0,), dtype=torch.float32))


def _input_grads(tensors, result):
    """Gradients of (q, k, v, gates, perms, keep) from the backward's (dqkv, dgates)."""
    q, _, v, gates = tensors[:4]
    dqkv, dgates = result
    return (*grad_views(dqkv, q.shape[-1], v.shape[-1]), dgates if gates is not None else None, None, None)


# (q, k, v, gates, perms, keep, feature, scale, eps, normalize, chunk_size) → y
chunk_op = FusedOp(_chunk_fwd, _chunk_bwd, 6, _input_grads, custom_ops=(chunk_fwd, chunk_bwd))


def chunk_attention_trainable(q, k, v, g: Optional[torch.Tensor] = None, g_gamma: Optional[torch.Tensor] = None, *,
                              perms: Optional[Sequence[torch.Tensor]] = None, feature_map: Optional[str] = None,
                              scale: float = 1.0, normalize: bool = True, eps: float = 1e-6, key_padding_mask=None,
                              chunk_size: Optional[int] = None) -> torch.Tensor:
    """The chunk form of ``lion.lion_attention`` with gradients for q, k, v and the log gates; gates ``g`` (per
    token) / ``g_gamma`` (per head) and orders ``perms`` as ``lion.masks.gate_arguments`` gives them. No dropout
    (the chunk form has no attention matrix). Returns y (B, H, L, dv) in the compute dtype (the autocast dtype
    under autocast), a view of (B, L, H, dv) memory."""
    check_chunk_size(chunk_size, allow_none=True)
    dt = compute_dtype(q, k, v)
    q, k, v = (t.to(dt) if t.stride(-1) == 1 else t.to(dt).contiguous() for t in (q, k, v))
    gates, perm_ids, keep, feature = prepare_scan(q, k, v, g, g_gamma, perms, key_padding_mask, feature_map)
    gates = None if gates is None else gates.float()
    return chunk_op(q, k, v, gates, perm_ids, keep, feature, float(scale), float(eps), bool(normalize), chunk_size)
