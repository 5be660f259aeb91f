"""Host-side argument preparation shared by the fused ops: device and gate checks, strides, buffers in the
layouts the models read for free, and the chunk and RNN kernels' view of the gates, orders and padding."""
from __future__ import annotations

import torch

from lion.masks import gates_one_at_padding, per_token_gates
from lion.ops.triton.common.features import feature_code
from lion.ops.triton.common.launching import INTERPRET
from lion.qkv import qkv_views

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_device(x: torch.Tensor, what: str) -> None:
    """The kernels run on CUDA tensors, or on the CPU under the Triton interpreter."""
    if not (x.is_cuda or INTERPRET):
        raise ValueError(f"{what} needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is imported; got "
                         f"tensors on {x.device}. Use backend='torch' or 'auto' on CPU.")


def compute_dtype(q, k, v) -> torch.dtype:
    """The dtype a fused op computes in: under autocast the autocast dtype (as autocast's matmuls would use); else
    the promoted input dtype."""
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)


def one_gate_kind(g, g_gamma):
    """The gates given: per-token ``g`` or per-head ``g_gamma``, not both (None: Lit)."""
    if g is not None and g_gamma is not None:
        raise ValueError("pass per-token log gates g or per-head log gates g_gamma, not both")
    return g if g_gamma is None else g_gamma


def strides_or_zero(t, n):
    return tuple(t.stride()) if t is not None else (0,) * n


def stand_ins(q, *tensors):
    """Tensors standing in for absent optional inputs (never read: their flags are off)."""
    return tuple(q if t is None else t for t in tensors)


def last_dim_unit(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def token_major(B, H, L, n, like, dtype):
    """A (B, H, L, n) tensor stored as (B, L, H, n): the models' transpose + reshape back to (B, L, H·n) is free."""
    return torch.empty(B, L, H, n, device=like.device, dtype=dtype).transpose(1, 2)


def grad_buffer(B, H, L, D, DV, like, dtype):
    """One buffer for dq, dk, dv: (B, L, 3, H, d) when D == DV, laid out as a model's fused qkv projection so
    that ``lion.unpack_qkv``'s backward returns it without a copy; else (B, L, H, 2·D + DV)."""
    if D == DV:
        return torch.empty(B, L, 3, H, D, device=like.device, dtype=dtype)
    return torch.empty(B, L, H, 2 * D + DV, device=like.device, dtype=dtype)


def grad_views(buf, D, DV):
    """(dq, dk, dv) as (B, H, L, ·) views of a ``grad_buffer``."""
    if buf.dim() == 5:
        return qkv_views(buf)
    return (buf[..., :D].transpose(1, 2), buf[..., D:2 * D].transpose(1, 2), buf[..., 2 * D:].transpose(1, 2))


def prepare_scan(q, k, v, g, g_gamma, perms, key_padding_mask, feature_map):
    """Checks and the chunk and RNN kernels' view of the gates: (O, B, H, L) per-token log gates with padded
    tokens' gates 1 (or None), (O, L) int32 permutations (or None), (B, L) uint8 keep flags (or None), the FEATURE
    code. Per-head gates ``g_gamma`` are read as the per-token gates they stand for."""
    check_device(q, "the fused chunk and RNN kernels")
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be (B, H, L, dk) and v (B, H, L, dv); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in KERNEL_DTYPES:
            raise ValueError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    feature = feature_code(feature_map)
    B, H, L = q.shape[:3]
    gates = one_gate_kind(g, g_gamma)
    if g_gamma is not None:
        gates = per_token_gates(g_gamma, B, L) if perms is None else [per_token_gates(x, B, L) for x in g_gamma]
    keep = None
    if key_padding_mask is not None:
        keep = key_padding_mask.to(device=q.device, dtype=torch.uint8).contiguous()
    if perms is None:
        gates = None if gates is None else gates_one_at_padding(gates, key_padding_mask).unsqueeze(0)
        perm_ids = None
    else:
        perm_ids = torch.stack([p.to(device=q.device, dtype=torch.int32) for p in perms])
        if gates is not None:  # each order's gates are in its token order
            gates = torch.stack([gates_one_at_padding(la.expand(B, H, L), key_padding_mask, p)
                                 for la, p in zip(gates, perms)])
    if gates is not None and tuple(gates.shape[1:]) != (B, H, L):
        raise ValueError(f"log_a must be (B, H, L) = {(B, H, L)}, got {tuple(gates.shape[1:])}")
    return gates, perm_ids, keep, feature
