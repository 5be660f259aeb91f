"""Log-space decay masks of LION (docs/lion.md §1).

Every mask is described by per-token log gates ``log_a`` of shape (B, H, L), fp32, all ≤ 0:
Lit has none (``None``), Decay has one constant per head, Selective one value per token.
With P the exclusive prefix sum (P_t = Σ_{s<t} log a_s) and C the inclusive one (C_t = P_{t+1}),

    M_ij = exp(P_i − P_j)  for i ≥ j   (product of a_j … a_{i−1}: the key's gate, not the query's)
    M_ij = exp(C_j − C_i)  for i < j   (product of a_{i+1} … a_j)

Ratios of cumulative products are never formed, and the exponent of every kept entry is ≤ 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MASK_TYPES = ("Lit", "Decay", "Selective")


def upcast(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64): mask math never runs in half precision."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def decay_log_gates(a: torch.Tensor, length: int | None = None, batch: int | None = None) -> torch.Tensor:
    """LION-D: λ_h = sigmoid(a_h); returns log λ_h in fp32, per head (H,) when ``length`` is None (what
    ``lion_attention`` takes most cheaply), else broadcast to (B, H, L)."""
    log_lam = F.logsigmoid(upcast(a))
    return log_lam if length is None else per_token_gates(log_lam, batch, length)


def per_token_gates(log_a: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """Per-head log gates (H,) as the (B, H, L) per-token gates they stand for (a broadcast view); per-token gates
    and None are returned as given."""
    if log_a is None or log_a.dim() != 1:
        return log_a
    return log_a[None, :, None].expand(batch, log_a.shape[0], length)


def selective_log_gates(z: torch.Tensor, first_gate_one: bool = True) -> torch.Tensor:
    """LION-S: a_t = 1 − sigmoid(z_t) = sigmoid(−z_t), so log a_t = logsigmoid(−z_t) (never log(1 − σ)).

    ``z`` is the gate pre-activation W x + b of shape (B, L, H); returns (B, H, L) fp32 (a transposed view).
    With ``first_gate_one`` the gate of token 0 (the cls token) is 1, as in the vision model.
    """
    log_a = F.logsigmoid(-upcast(z))
    if first_gate_one:  # one pad (not zeros + cat): this runs in every layer of LION-S
        log_a = F.pad(log_a[:, 1:], (0, 0, 1, 0))
    return log_a.transpose(1, 2)  # a view of (B, L, H) memory: the consumers read any strides


def selective_log_gates_eps(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """MLM LION-S gate of the published BERT code, log(1 − sigmoid(z) + eps), computed stably
    as logaddexp(logsigmoid(−z), log eps). Returns (B, H, L) fp32; no cls override."""
    log_a = F.logsigmoid(-upcast(z))
    log_a = torch.logaddexp(log_a, torch.full_like(log_a, math.log(eps)))
    return log_a.transpose(1, 2)


def exclusive_cumsum(log_a: torch.Tensor) -> torch.Tensor:
    """P_t = Σ_{s<t} log a_s along the last dim."""
    c = torch.cumsum(log_a, dim=-1)
    return c - log_a


def log_mask(log_a: torch.Tensor) -> torch.Tensor:
    """The full log mask log M of shape (B, H, L, L), fp32 (attention form only)."""
    log_a = upcast(log_a)
    P = exclusive_cumsum(log_a)
    C = P + log_a
    L = log_a.shape[-1]
    lower = P[..., :, None] - P[..., None, :]
    upper = C[..., None, :] - C[..., :, None]
    i = torch.arange(L, device=log_a.device)
    return torch.where(i[:, None] >= i[None, :], lower, upper)


def mask(log_a: torch.Tensor | None, length: int | None = None) -> torch.Tensor:
    """M = exp(log M); for Lit (``log_a is None``) a (1, 1, L, L) tensor of ones."""
    if log_a is None:
        return torch.ones(1, 1, length, length)
    return log_mask(log_a).exp()
