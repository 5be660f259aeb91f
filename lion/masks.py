"""Log-space decay masks of LION (docs/lion.md §1).

Every mask is described by per-token log gates ``log_a`` of shape (B, H, L), fp32, all ≤ 0:
Lit has none (``None``), Decay has one constant per head, Selective one value per token.
With P the exclusive prefix sum (P_t = Σ_{s<t} log a_s) and C the inclusive one (C_t = P_{t+1}),

    M_ij = exp(P_i − P_j)  for i ≥ j   (product of a_j … a_{i−1}: the key's gate, not the query's)
    M_ij = exp(C_j − C_i)  for i < j   (product of a_{i+1} … a_j)

Ratios of cumulative products are never formed, and the exponent of every kept entry is ≤ 0.
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn.functional as F

from lion.backend import use_fused

logger = logging.getLogger(__name__)

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


def gates_one_at_padding(log_a: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                         perm: Optional[torch.Tensor] = None) -> torch.Tensor | None:
    """Per-token log gates (B, H, L) with the padded tokens' set to 0 (gate 1), so that padding passes every product
    of gates through unchanged wherever it sits. ``key_padding_mask``: (B, L) bool, True for real tokens; ``perm``:
    the gates are in that token order's indexing (entry t is token perm[t]). None gates or mask: returned as given."""
    if log_a is None or key_padding_mask is None:
        return log_a
    pad = ~key_padding_mask.to(device=log_a.device, dtype=torch.bool)
    return log_a.masked_fill((pad if perm is None else pad[:, perm])[:, None, :], 0.0)


def gate_arguments(log_a: torch.Tensor | None, orders, batch: int, length: int) -> dict:
    """``lion_attention``'s gates as the fused ops take them: ``g`` per-token log gates (B, H, L), ``g_gamma``
    per-head log gates (H,) (fla's names; at most one of the two), ``perms`` the orders' permutations (None: the
    natural order), with one entry of ``g`` / ``g_gamma`` per order. ``log_a`` (or each of ``orders``' (perm,
    log_a)) is per token, per head or None (Lit); orders mixing the two kinds pass per-token gates throughout."""
    gates = [log_a] if orders is None else [la for _, la in orders]
    perms = None if orders is None else [p for p, _ in orders]
    if all(la is None for la in gates):
        return dict(g=None, g_gamma=None, perms=perms)
    if any(la is None for la in gates):
        raise ValueError("orders: either every (perm, log_a) pair has log gates or none has (Lit)")
    if all(la.dim() == 1 for la in gates):
        return dict(g=None, g_gamma=gates[0] if perms is None else gates, perms=perms)
    gates = [per_token_gates(la, batch, length) for la in gates]
    return dict(g=gates[0] if perms is None else gates, g_gamma=None, perms=perms)


_fused_gates = False  # lion.ops.triton.gates.fused_log_gates once looked up (None: unavailable)


def _fused_log_gates():
    """The fused gate op, imported on first use (lion.ops imports this module, so not at import time)."""
    global _fused_gates
    if _fused_gates is False:
        try:
            from lion.ops.triton.gates import fused_log_gates
        except ImportError as err:
            logger.debug("fused gate kernel unavailable: %s", err)
            fused_log_gates = None
        except Exception as err:  # a broken triton install must not break the torch ops
            logger.warning("fused gate kernel failed to load (%s); using the torch ops", err)
            fused_log_gates = None
        _fused_gates = fused_log_gates
    return _fused_gates


def _gate_kernel(z: torch.Tensor, backend: Optional[str]):
    """The fused op if it serves this call (``lion.backend.use_fused``), else None. fp64 z and torch.compile (whose
    inductor fuses the torch ops itself) take the torch ops."""
    if z.dtype == torch.float64 or torch.compiler.is_compiling():
        return None
    kernel = _fused_log_gates()
    return kernel if use_fused(z, backend, kernel is not None, "the gates") else None


def selective_log_gates(z: torch.Tensor, first_gate_one: bool = True, perm: Optional[torch.Tensor] = None,
                        backend: Optional[str] = None) -> torch.Tensor:
    """LION-S: a_t = 1 − sigmoid(z_t) = sigmoid(−z_t), so log a_t = logsigmoid(−z_t) (never log(1 − σ)).

    ``z`` is the gate pre-activation W x + b of shape (B, L, H); returns (B, H, L) fp32. ``perm`` (L,): the gates
    of ``z[:, perm]`` (a token order), gathered inside. With ``first_gate_one`` the gate of entry 0 (in the
    order's indexing; the cls token) is 1, as in the vision model. ``backend`` as in ``lion_attention``: the fused
    kernel (lion.ops.triton.gates, one launch forward and one backward) or these torch ops, same values.
    """
    kernel = _gate_kernel(z, backend)
    if kernel is not None:
        return kernel(z, perm, first_gate_one)
    log_a = F.logsigmoid(-upcast(z if perm is None else z[:, perm]))
    if first_gate_one:  # one pad (not zeros + cat): this runs in every layer of LION-S
        log_a = F.pad(log_a[:, 1:], (0, 0, 1, 0))
    return log_a.transpose(1, 2)  # a view of (B, L, H) memory: the consumers read any strides


def selective_log_gates_eps(z: torch.Tensor, eps: float = 1e-7, perm: Optional[torch.Tensor] = None,
                            backend: Optional[str] = None) -> torch.Tensor:
    """MLM LION-S gate of the published BERT code, log(1 − sigmoid(z) + eps), computed stably
    as logaddexp(logsigmoid(−z), log eps). Returns (B, H, L) fp32; no cls override. ``perm``, ``backend``: as in
    ``selective_log_gates``."""
    kernel = _gate_kernel(z, backend)
    if kernel is not None:
        return kernel(z, perm, eps=eps)
    log_a = F.logsigmoid(-upcast(z if perm is None else z[:, perm]))
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
