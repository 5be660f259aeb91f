"""q, k, v as views of one fused projection, with a backward that needs no copy.

A model that projects x to qkv (B, L, 3·H·d) in one Linear usually splits it with reshape/permute/unbind; the
backward of unbind then stacks dq, dk, dv into a new tensor and the reshape back copies it again. The fused
attention kernels write dq, dk, dv into one (B, L, 3, H, d) buffer (lion.ops.triton.naive), so the gradient
of qkv is that buffer itself: ``unpack_qkv`` hands it back as is, and stacks only when the gradients come from
elsewhere (the torch forms, or under torch.compile, which fuses the stack anyway).

``autocast_once``: the input of the projections cast to the autocast dtype once, for all of them.
"""
from __future__ import annotations

import torch


def qkv_views(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L, 3, H, d) → its three (B, H, L, d) slices, as views (no autograd function: see ``unpack_qkv``)."""
    return tuple(qkv.permute(2, 0, 3, 1, 4).unbind(0))


class _UnpackQKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv):
        ctx.shape = qkv.shape
        return qkv_views(qkv)

    @staticmethod
    def backward(ctx, dq, dk, dv):
        packed = _packed_base(dq, dk, dv, ctx.shape)
        if packed is not None:
            return packed
        like = next(g for g in (dq, dk, dv) if g is not None)
        grads = [torch.zeros_like(like) if g is None else g for g in (dq, dk, dv)]
        return torch.stack([g.transpose(1, 2) for g in grads], dim=2)


def _packed_base(dq, dk, dv, shape):
    """The (B, L, 3, H, d) buffer that dq, dk, dv are the three slices of, or None."""
    if torch.compiler.is_compiling() or dq is None or dk is None or dv is None:
        return None
    base = dq._base
    if base is None or dk._base is not base or dv._base is not base or tuple(base.shape) != tuple(shape) \
            or not base.is_contiguous():
        return None
    B, L, _, H, d = shape
    for i, g in enumerate((dq, dk, dv)):
        if g.data_ptr() != base.data_ptr() + i * H * d * base.element_size() or g.stride() != \
                (L * 3 * H * d, d, 3 * H * d, 1):
            return None
    return base


def unpack_qkv(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv (B, L, 3, H, d) → q, k, v, each (B, H, L, d), as views (no copy)."""
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must have shape (B, L, 3, H, d), got {tuple(qkv.shape)}")
    return _UnpackQKV.apply(qkv)


def autocast_once(x: torch.Tensor) -> torch.Tensor:
    """x in the autocast dtype when autocast is on for x's device and x is fp32; else x itself. Under autocast each
    Linear casts its fp32 input and saves its own low-precision copy for the backward: with separate q, k, v or
    gate projections of one x, one copy per projection. Cast once, they share it. The results are the same
    (autocast casts x to that dtype anyway)."""
    dev = x.device.type
    if x.dtype == torch.float32 and torch.is_autocast_enabled(dev):
        return x.to(torch.get_autocast_dtype(dev))
    return x
