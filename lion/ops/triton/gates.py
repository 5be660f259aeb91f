"""LION-S per-token log gates from the gate pre-activation z in one Triton kernel forward and one backward
(the torch reference is ``lion.masks.selective_log_gates`` / ``selective_log_gates_eps``).

z is (B, L, H) with any strides and dtype; entry t of the output is token perm[t] (perm a permutation, or none);
the output is (B, H, L) fp32, contiguous:

    log a_t = logsigmoid(−z_t) = −softplus(z_t)            d/dz = −σ(z)     (log a_0 := 0 with first_gate_one)
    log a_t = log(σ(−z_t) + eps) = logaddexp(−softplus(z_t), log eps)      d/dz = −σ(z)σ(−z) / (σ(−z) + eps)

The backward writes dz at the tokens' natural positions (a permutation: no two entries collide).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from lion.ops.triton.common.args import KERNEL_DTYPES, check_device
from lion.ops.triton.common.launching import INTERPRET, cdiv, launch, next_power_of_2
from lion.ops.triton.common.op import FusedOp

_TOKENS = 64  # tokens per program


@triton.jit
def _log1p(x):
    """log(1 + x) for x ≥ 0, accurate when x is tiny (where tl.log(1 + x) rounds to 0)."""
    u = 1.0 + x
    exact = u == 1.0
    return tl.where(exact, x, tl.log(u) * (x / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def _load_tile(Z, PERM, szb, szl, szh, H, L, HAS_PERM: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's batch b, output positions t, heads h, the tokens src (natural positions) they stand for,
    the tile's in-range mask and z there (fp32)."""
    b = tl.program_id(1).to(tl.int64)
    t = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    h = tl.arange(0, BLOCK_H)
    src = tl.load(PERM + t, mask=t < L, other=0).to(tl.int64) if HAS_PERM else t.to(tl.int64)
    mask = (t[:, None] < L) & (h[None, :] < H)
    z = tl.load(Z + b * szb + src[:, None] * szl + h[None, :] * szh, mask=mask, other=0.0).to(tl.float32)
    return b, t, h, src, mask, z


@triton.jit
def _gates_fwd_kernel(Z, PERM, OUT, szb, szl, szh, H, L, log_eps,
                      FIRST_ONE: tl.constexpr, EPS: tl.constexpr, HAS_PERM: tl.constexpr,
                      BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr):
    b, t, h, src, mask, z = _load_tile(Z, PERM, szb, szl, szh, H, L, HAS_PERM, BLOCK_L, BLOCK_H)
    la = -(tl.maximum(z, 0.0) + _log1p(tl.exp(-tl.abs(z))))  # −softplus(z)
    if EPS:  # logaddexp(la, log eps)
        la = tl.maximum(la, log_eps) + _log1p(tl.exp(-tl.abs(la - log_eps)))
    if FIRST_ONE:
        la = tl.where(t[:, None] == 0, 0.0, la)
    tl.store(OUT + (b * H + h[None, :]) * L + t[:, None], la, mask=mask)


@triton.jit
def _gates_bwd_kernel(Z, PERM, DOUT, DZ, szb, szl, szh, sgb, sgh, sgl, H, L, eps,
                      FIRST_ONE: tl.constexpr, EPS: tl.constexpr, HAS_PERM: tl.constexpr,
                      BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr):
    """dz (B, L, H) contiguous, each entry written once (token src of output position t)."""
    b, t, h, src, mask, z = _load_tile(Z, PERM, szb, szl, szh, H, L, HAS_PERM, BLOCK_L, BLOCK_H)
    g = tl.load(DOUT + b * sgb + h[None, :] * sgh + t[:, None] * sgl, mask=mask, other=0.0).to(tl.float32)
    e = tl.exp(-tl.abs(z))
    sig_z = tl.where(z >= 0, 1.0, e) / (1.0 + e)  # σ(z) and σ(−z) without overflow
    dz = -g * sig_z
    if EPS:
        sig_mz = tl.where(z >= 0, e, 1.0) / (1.0 + e)
        dz = dz * (sig_mz / (sig_mz + eps))
    if FIRST_ONE:
        dz = tl.where(t[:, None] == 0, 0.0, dz)
    tl.store(DZ + (b * L + src[:, None]) * H + h[None, :], dz.to(DZ.dtype.element_ty), mask=mask)


def _grid_meta(z, perm, first_gate_one, eps):
    B, L, H = z.shape
    return (cdiv(L, _TOKENS), B), dict(
        FIRST_ONE=first_gate_one, EPS=eps is not None, HAS_PERM=perm is not None, BLOCK_L=_TOKENS,
        BLOCK_H=next_power_of_2(H), num_warps=1 if INTERPRET else 4)


def _gates_fwd(z, perm, first_gate_one, eps):
    B, L, H = z.shape
    out = torch.empty(B, H, L, device=z.device, dtype=torch.float32)
    grid, meta = _grid_meta(z, perm, first_gate_one, eps)
    launch(_gates_fwd_kernel, grid, (z, z if perm is None else perm, out, *z.stride(), H, L,
                                     0.0 if eps is None else math.log(eps)), meta)
    return out


def _gates_bwd(z, perm, dout, first_gate_one, eps):
    B, L, H = z.shape
    dz = torch.empty(B, L, H, device=z.device, dtype=z.dtype)
    grid, meta = _grid_meta(z, perm, first_gate_one, eps)
    launch(_gates_bwd_kernel, grid, (z, z if perm is None else perm, dout, dz, *z.stride(), *dout.stride(), H, L,
                                     0.0 if eps is None else float(eps)), meta)
    return dz


# (z, perm, first_gate_one, eps) → (B, H, L) log gates; eager only (torch.compile takes lion.masks' torch ops)
_log_gates = FusedOp(_gates_fwd, _gates_bwd, 2, lambda tensors, dz: (dz, None), save_outputs=False)


def fused_log_gates(z: torch.Tensor, perm: Optional[torch.Tensor] = None, first_gate_one: bool = False,
                    eps: Optional[float] = None) -> torch.Tensor:
    """(B, H, L) fp32 log gates of z (B, L, H) taken in the order ``perm`` (see the module docstring): eps None
    gives logsigmoid(−z) (first entry 0 with ``first_gate_one``), a float log(σ(−z) + eps). Eager autograd."""
    check_device(z, "the fused gate kernel")
    if z.dtype not in KERNEL_DTYPES:
        raise ValueError(f"the fused gate kernel takes z in {KERNEL_DTYPES}, got {z.dtype}")
    if perm is not None and perm.shape != z.shape[1:2]:
        raise ValueError(f"perm must be a permutation of the {z.shape[1]} tokens, got shape {tuple(perm.shape)}")
    perm = None if perm is None else perm.contiguous()
    return _log_gates(z, perm, bool(first_gate_one), None if eps is None else float(eps))
