"""RNN form (docs/lion.md §1): a forward and a backward scan with a d×d state per head and direction.

    S^F_i = a_{i−1} S^F_{i−1} + k_i v_iᵀ        S^B_i = a_{i+1} S^B_{i+1} + k_i v_iᵀ
    y_i   = q_iᵀ (S^F_i + S^B_i) − (q_i·k_i) v_i   (the diagonal is counted once)

The ones column appended to v carries the normaliser z. Vectorised over batch and heads; one step per token,
which is the point of this form (O(d²) memory per head), not of the others.
"""
from __future__ import annotations

import torch

from lion.masks import upcast


def _scan(q, k, v, a):
    """Inclusive scan S_i = a_{i−1} S_{i−1} + k_i v_iᵀ; returns q_iᵀ S_i stacked over i. ``a`` may be None."""
    B, H, L, dk = q.shape
    S = q.new_zeros(B, H, dk, v.shape[-1])
    out = []
    for i in range(L):
        if a is not None and i > 0:
            S = S * a[..., i - 1, None, None]
        S = S + k[..., i, :, None] * v[..., i, None, :]
        out.append(torch.einsum("bhd,bhde->bhe", q[..., i, :], S))
    return torch.stack(out, dim=2)


def recurrent_sums(q, k, v, log_a=None, scale: float = 1.0, with_den: bool = True):
    dtype = v.dtype
    q, k, v = upcast(q) * scale, upcast(k), upcast(v)
    if with_den:
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    a = None if log_a is None else upcast(log_a).exp()
    fwd = _scan(q, k, v, a)
    flip = lambda t: None if t is None else t.flip(-2 if t.dim() == 4 else -1)  # noqa: E731
    bwd = _scan(flip(q), flip(k), flip(v), flip(a)).flip(-2)
    diag = (q * k).sum(-1, keepdim=True) * v
    y = fwd + bwd - diag
    if with_den:
        return y[..., :-1].to(dtype), y[..., -1]
    return y.to(dtype), None
