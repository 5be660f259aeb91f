"""Chunk form: blocks of C tokens; within a block the masked scores are explicit (C×C), across blocks a d×d
state per direction is carried (docs/lion.md §1, chunk form). O(L·C·d + L·d²) time, O(C² + d²) extra memory.

The backward (right-to-left) direction is the forward one on the flipped sequence: the backward mask
Π_{t=i+1}^{j} a_t becomes, after flipping positions and gates, the forward mask Π_{t'=j'}^{i'−1} a'_{t'}.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lion.checks import DEFAULT_CHUNK_SIZE, check_chunk_size
from lion.masks import upcast


def _strict_causal(q, k, v, log_a, C: int):
    """Σ_{j<i} M_ij (q_i·k_j) v_j with M_ij = exp(P_i − P_j), processed C tokens at a time."""
    B, H, L, _ = q.shape
    pad = (-L) % C
    if pad:  # trailing zero keys and unit gates never reach an earlier query
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_a = None if log_a is None else F.pad(log_a, (0, pad))
    n = q.shape[2] // C
    q, k, v = (t.unflatten(2, (n, C)) for t in (q, k, v))
    strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    state = q.new_zeros(B, H, q.shape[-1], v.shape[-1])
    out = []
    for c in range(n):
        qc, kc, vc = q[:, :, c], k[:, :, c], v[:, :, c]
        s = qc @ kc.transpose(-1, -2)
        if log_a is None:
            y = (s * strict) @ vc + qc @ state
            state = state + kc.transpose(-1, -2) @ vc
        else:
            la = log_a[..., c * C:(c + 1) * C]
            p = torch.cumsum(la, -1) - la          # local exclusive prefix: P_i − P_start
            total = p[..., -1:] + la[..., -1:]     # P_end − P_start (≤ 0)
            intra = torch.where(strict, p[..., :, None] - p[..., None, :], float("-inf")).exp()
            y = (s * intra) @ vc + p.exp()[..., None] * (qc @ state)
            kdec = kc * (total - p).exp()[..., None]
            state = total.exp()[..., None] * state + kdec.transpose(-1, -2) @ vc
        out.append(y)
    return torch.stack(out, dim=2).flatten(2, 3)[:, :, :L]


def chunk_sums(q, k, v, log_a=None, scale: float = 1.0, chunk_size=None, with_den: bool = True):
    """chunk_size None: DEFAULT_CHUNK_SIZE (32)."""
    chunk_size = check_chunk_size(chunk_size) or DEFAULT_CHUNK_SIZE
    dtype = v.dtype
    q, k, v = upcast(q) * scale, upcast(k), upcast(v)
    if with_den:
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    la = None if log_a is None else upcast(log_a)
    fwd = _strict_causal(q, k, v, la, chunk_size)
    bwd = _strict_causal(q.flip(2), k.flip(2), v.flip(2), None if la is None else la.flip(-1), chunk_size).flip(2)
    y = fwd + bwd + (q * k).sum(-1, keepdim=True) * v
    if with_den:
        return y[..., :-1].to(dtype), y[..., -1]
    return y.to(dtype), None
