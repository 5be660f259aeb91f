"""The fused attention form as torch custom ops (opaque to torch.compile, differentiable in q, k, v and log a).

``attention_sums`` follows the FUSED contract of lion.attention: (q, k, v, log_a, scale, with_den, chunk_size)
-> (num, den). Lit (log_a None) takes the K^T V path, num = scale·Q (Kᵀ V), whenever L ≥ head dim: it needs
no L×L work at all. Masked forms take the Triton kernels of lion.ops.triton.kernels; the prefix sums P, C of
the log gates are formed here in torch, so autograd turns the kernels' dP, dC into d log a (reverse cumsums;
for LION-D the expand of the per-head parameter is reduced by autograd too).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton

from lion.ops.triton import kernels

_DUMMY_SHAPE = (0,)


def _strided(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _common(q, k, v, P):
    B, H, L, D = q.shape
    DV = v.shape[-1]
    meta = dict(BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_DV=max(16, triton.next_power_of_2(DV)),
                HAS_MASK=P is not None, PREC="ieee" if v.dtype == torch.float32 else "tf32")
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    return B, H, L, D, DV, meta, strides


@torch.library.custom_op("lion::attention_fwd", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, P: Optional[torch.Tensor],
                  C: Optional[torch.Tensor], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = _strided(q), _strided(k), _strided(v)
    B, H, L, D, DV, meta, strides = _common(q, k, v, P)
    num = torch.empty(B, H, L, DV, device=q.device, dtype=v.dtype)
    den = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    P = q if P is None else P.contiguous()
    C = q if C is None else C.contiguous()
    grid = lambda m: (triton.cdiv(L, m["BLOCK_M"]), B * H)  # noqa: E731
    kernels.launcher(kernels.fwd_kernel)(grid, q, k, v, P, C, num, den, *strides, H, L, D, DV, scale, **meta)
    return num, den


@attention_fwd.register_fake
def _(q, k, v, P, C, scale):
    B, H, L, _ = q.shape
    return (q.new_empty(B, H, L, v.shape[-1], dtype=v.dtype), q.new_empty(B, H, L, dtype=torch.float32))


@torch.library.custom_op("lion::attention_bwd", mutates_args=())
def attention_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, P: Optional[torch.Tensor],
                  C: Optional[torch.Tensor], dnum: torch.Tensor, dden: Optional[torch.Tensor], scale: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = _strided(q), _strided(k), _strided(v)
    B, H, L, D, DV, meta, strides = _common(q, k, v, P)
    dnum = dnum.to(v.dtype).contiguous()
    dden = None if dden is None else dden.float().contiguous()
    dq, dk, dv = torch.empty_like(q, memory_format=torch.contiguous_format), \
        torch.empty_like(k, memory_format=torch.contiguous_format), \
        torch.empty_like(v, memory_format=torch.contiguous_format)
    has_mask = P is not None
    f32 = dict(device=q.device, dtype=torch.float32)
    shape = (B, H, L) if has_mask else _DUMMY_SHAPE
    glo, gup, dP, dC = (torch.empty(shape, **f32) for _ in range(4))
    P = q if P is None else P.contiguous()
    C = q if C is None else C.contiguous()
    dd = q if dden is None else dden
    meta["HAS_DDEN"] = dden is not None
    grid_n = lambda m: (triton.cdiv(L, m["BLOCK_N"]), B * H)  # noqa: E731
    grid_m = lambda m: (triton.cdiv(L, m["BLOCK_M"]), B * H)  # noqa: E731
    kernels.launcher(kernels.bwd_kv_kernel)(grid_n, q, k, v, P, C, dnum, dd, dk, dv, glo, gup, *strides, H, L, D, DV, scale, **meta)
    kernels.launcher(kernels.bwd_q_kernel)(grid_m, q, k, v, P, C, dnum, dd, dq, glo, gup, dP, dC, *strides, H, L, D, DV, scale,
                                 **meta)
    return dq, dk, dv, dP, dC


@attention_bwd.register_fake
def _(q, k, v, P, C, dnum, dden, scale):
    shape = P.shape if P is not None else _DUMMY_SHAPE
    f32 = dict(dtype=torch.float32)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format),
            q.new_empty(shape, **f32), q.new_empty(shape, **f32))


def _setup_context(ctx, inputs, output):
    q, k, v, P, C, scale = inputs
    ctx.save_for_backward(q, k, v, P, C)
    ctx.scale = scale


def _backward(ctx, dnum, dden):
    q, k, v, P, C = ctx.saved_tensors
    if dnum is None:
        dnum = torch.zeros(*q.shape[:-1], v.shape[-1], device=q.device, dtype=v.dtype)
    dq, dk, dv, dP, dC = attention_bwd(q, k, v, P, C, dnum, dden, ctx.scale)
    has_mask = P is not None
    return dq, dk, dv, dP if has_mask else None, dC if has_mask else None, None


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def _compute_dtype(q, k, v) -> torch.dtype:
    """Under autocast the kernel takes the autocast dtype (as autocast's matmuls would); else the promoted one."""
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)


def lit_kv_sums(q, k, v, scale: float = 1.0, with_den: bool = True):
    """M = 1: num = scale·Q (Kᵀ V), den = scale·Q (Kᵀ 1). O(L·d·dv) instead of O(L²·d)."""
    num = torch.matmul(q, torch.matmul(k.transpose(-1, -2), v) * scale)  # scale the small d×dv state, not q
    den = None
    if with_den:
        with torch.autocast(device_type=q.device.type, enabled=False):
            den = torch.einsum("bhld,bhd->bhl", q.float(), k.float().sum(-2)) * scale
    return num, den


def attention_sums(q, k, v, log_a=None, scale: float = 1.0, with_den: bool = True, chunk_size: int = 32,
                   lit_kv: Optional[bool] = None):
    """FUSED['attention']: (num, den) of the attention form. ``chunk_size`` is unused (whole-sequence kernel).

    ``lit_kv`` (Lit only): True forces the KᵀV path, False the kernel; None picks KᵀV when L ≥ head dim.
    """
    if not (q.is_cuda or kernels.INTERPRET):
        raise ValueError("backend='triton' (the fused attention form) needs CUDA tensors, or TRITON_INTERPRET=1 set "
                         f"before triton is imported; got tensors on {q.device}. Use backend='torch' or 'auto' on CPU.")
    dt = _compute_dtype(q, k, v)
    v = v.to(dt)  # the kernels cast q and k to v's dtype on load
    if log_a is None and (lit_kv if lit_kv is not None else q.shape[-2] >= q.shape[-1]):
        return lit_kv_sums(q.to(dt), k.to(dt), v, scale, with_den)
    P = C = None
    if log_a is not None:
        with torch.autocast(device_type=q.device.type, enabled=False):
            la = log_a.float()
            C = torch.cumsum(la, dim=-1)
            P = C - la  # same rounding as lion.masks.exclusive_cumsum
    num, den = attention_fwd(q, k, v, P, C, float(scale))
    return num, (den if with_den else None)
