"""Attention form: materialise A = scale·(Q Kᵀ) ⊙ M (L×L per head). The reference of every other form."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lion.masks import log_mask, upcast


def naive_scores(q, k, log_a=None, scale: float = 1.0) -> torch.Tensor:
    """A of shape (B, H, L, L) in fp32; the mask is built in fp32 even under autocast."""
    s = upcast(torch.matmul(q, k.transpose(-1, -2))) * scale
    if log_a is None:
        return s
    if log_a.shape[0] > 1 and log_a.stride(0) == 0:  # LION-D: gates broadcast over the batch, one mask serves all
        log_a = log_a[:1]
    with torch.autocast(device_type=q.device.type, enabled=False):
        return s * log_mask(log_a).exp()


def naive_sums(q, k, v, log_a=None, scale: float = 1.0, with_den: bool = True,
               dropout_p: float = 0.0, training: bool = False):
    """(num, den): num = dropout(A) V in v's dtype, den = A·1 in fp32 (None unless ``with_den``)."""
    A = naive_scores(q, k, log_a, scale)
    den = A.sum(-1) if with_den else None
    if dropout_p > 0.0 and training:
        A = F.dropout(A, dropout_p, training=True)
    num = torch.matmul(A.to(v.dtype), v)
    return num, den
