"""Bidirectional masked linear attention: one entry point for every LION model (vision and MLM).

    A_ij = scale · (q_i·k_j) · M_ij · keep_j         (keep_j = 0 for padded keys)
    vision (normalize=True):  y_i = Σ_j A_ij v_j / (Σ_j A_ij + eps)        docs/lion.md §1
    MLM    (normalize=False): y_i = Σ_j A_ij v_j                           docs/lion.md §2

``form`` picks the attention (reference), RNN or chunk form; all three give the same result. 'auto' takes the chunk
form from the length where it trains faster (``lion.form_choice``), else the attention form.
``orders`` implements the ♮ variants: a list of (perm, log_a) pairs, each a token order with its own gates;
the sums are taken in each order, mapped back, averaged, then normalised (docs/lion.md §1, order 'S').
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch

from lion.backend import BACKENDS, set_backend, use_fused  # noqa: F401  (re-exported)
from lion.checks import check_attention_inputs, check_chunk_size
from lion.curves import inverse_permutation
from lion.feature_maps import FEATURE_MAPS
from lion.form_choice import auto_form
from lion.forms import canonical_form
from lion.masks import gate_arguments, gates_one_at_padding, per_token_gates, upcast
from lion.ops import chunk_sums, naive_sums, recurrent_sums

logger = logging.getLogger(__name__)

try:  # fused Triton kernels. attention and chunk forms: forward and backward (training); RNN form: forward only
    from lion.ops.triton.chunk import chunk_attention
    from lion.ops.triton.chunk_grad import chunk_attention_trainable
    from lion.ops.triton.naive import fused_attention
    from lion.ops.triton.recurrent import recurrent_attention
except ImportError as err:  # no triton: the torch forms serve every call
    logger.debug("fused kernels unavailable: %s", err)
    fused_attention = chunk_attention = chunk_attention_trainable = recurrent_attention = None
except Exception as err:  # a broken triton install must not break the torch forms
    logger.warning("fused kernels failed to load (%s); using the torch forms", err)
    fused_attention = chunk_attention = chunk_attention_trainable = recurrent_attention = None

def fused_forms() -> tuple[str, ...]:
    """The forms whose fused Triton kernels are importable here (none without triton)."""
    kernels = {"attention": fused_attention, "chunk": chunk_attention, "rnn": recurrent_attention}
    return tuple(form for form, kernel in kernels.items() if kernel is not None)


def _use_fused(q: torch.Tensor, backend: Optional[str], available: bool, form: str) -> bool:
    return use_fused(q, backend, available, f"form {form!r}")


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _sums(q, k, v, log_a, scale, form, chunk_size, with_den, dropout_p, training):
    """The torch forms (lion.ops): (num, den)."""
    if form == "attention":
        return naive_sums(q, k, v, log_a, scale, with_den, dropout_p, training)
    if form == "rnn":
        return recurrent_sums(q, k, v, log_a, scale, with_den)
    return chunk_sums(q, k, v, log_a, scale, 32 if chunk_size is None else chunk_size, with_den)


def lion_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_a: Optional[torch.Tensor] = None,
    *,
    feature_map: Optional[str] = None,
    scale: float = 1.0,
    normalize: bool = True,
    eps: float = 1e-6,
    key_padding_mask: Optional[torch.Tensor] = None,
    form: str = "attention",
    chunk_size: Optional[int] = None,
    orders: Optional[Sequence[tuple[torch.Tensor, Optional[torch.Tensor]]]] = None,
    dropout_p: float = 0.0,
    training: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """q, k: (B, H, L, dk); v: (B, H, L, dv); log_a: (B, H, L) per-token log gates ≤ 0, (H,) one per head (LION-D;
    the fused attention kernel then forms λ^|i−j| itself, no prefix sums), or None (Lit). Likewise in ``orders``.

    feature_map: None (q and k are already features) or a name in ``lion.feature_maps.FEATURE_MAPS``
    ('elu_plus_one', 'normalized_silu'), applied here to q and k (fused kernels apply it on load).

    key_padding_mask: (B, L) bool, True for real tokens. Padded keys are dropped and their gates set to 1,
    so padded positions never influence real ones, whatever their content or place.
    chunk_size: None lets the fused chunk kernel pick one for the length (the torch chunk form then uses 32).
    Returns y of shape (B, H, L, dv) in v's dtype. Dropout (attention form only) acts on A, not the normaliser;
    the chunk and RNN forms have no attention matrix and refuse ``dropout_p`` > 0 in training.
    backend: None (the process default, see ``set_backend``), 'auto', 'torch' or 'triton'. The attention form's
    fused kernels (lion.ops.triton.naive) apply φ, the mask, padding, dropout and the normalisation in-kernel
    and return y as a view of a (B, L, H, dv) buffer. The chunk form's kernels (lion.ops.triton.chunk, forward;
    .chunk_grad, forward and backward) do likewise in O(L) memory. The RNN form has a forward-only kernel
    (lion.ops.triton.recurrent), used when no gradient is needed; otherwise its torch form runs.
    """
    form = canonical_form(form)
    if form == "auto":  # the faster form for the length (lion.form_choice); attention dropout needs the attention form
        form = "attention" if training and dropout_p > 0.0 else auto_form(q.shape[-2], log_a, orders, normalize)
    if form in ("chunk", "rnn") and training and dropout_p > 0.0:
        raise ValueError(f"form={form!r} has no attention matrix to drop out (dropout_p={dropout_p}): "
                         "pass dropout_p=0, or form='attention' for attention dropout")
    check_chunk_size(chunk_size)
    check_attention_inputs(q, k, v, log_a, key_padding_mask, orders)
    if feature_map is not None and feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be None or one of {tuple(FEATURE_MAPS)}, got {feature_map!r}")
    B, L = q.shape[0], q.shape[-2]
    if form == "attention" and _use_fused(q, backend, fused_attention is not None, form):  # takes (H,) gates
        return fused_attention(q, k, v, **gate_arguments(log_a, orders, B, L), feature_map=feature_map, scale=scale,
                               normalize=normalize, eps=eps, key_padding_mask=key_padding_mask,
                               dropout_p=dropout_p if training else 0.0)
    if form == "chunk" and _needs_grad(q, k, v, log_a, *[la for _, la in orders or ()]) and \
            _use_fused(q, backend, chunk_attention_trainable is not None, form):
        return chunk_attention_trainable(q, k, v, **gate_arguments(log_a, orders, B, L), feature_map=feature_map,
                                         scale=scale, normalize=normalize, eps=eps,
                                         key_padding_mask=key_padding_mask, chunk_size=chunk_size)
    log_a = per_token_gates(log_a, B, L)
    if orders is not None:
        orders = [(p, per_token_gates(la, B, L)) for p, la in orders]
    if form != "attention":
        kernel = chunk_attention if form == "chunk" else recurrent_attention
        if not _needs_grad(q, k, v, log_a, *[la for _, la in orders or ()]) and \
                _use_fused(q, backend, kernel is not None, form):
            chunk = dict(chunk_size=chunk_size) if form == "chunk" else {}  # the RNN form has no chunks
            return kernel(q, k, v, **gate_arguments(log_a, orders, B, L), feature_map=feature_map, scale=scale,
                          normalize=normalize, eps=eps, key_padding_mask=key_padding_mask, **chunk)
    if feature_map is not None:
        phi = FEATURE_MAPS[feature_map]
        q, k = phi(q), phi(k)
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, :, None].to(k.dtype)
        k = k * keep
        if orders is None:
            log_a = gates_one_at_padding(log_a, key_padding_mask)
        else:
            orders = [(p, gates_one_at_padding(la, key_padding_mask, p)) for p, la in orders]
    if orders is None:
        num, den = _sums(q, k, v, log_a, scale, form, chunk_size, normalize, dropout_p, training)
    else:
        num = den = 0
        for perm, la in orders:
            inv = inverse_permutation(perm)
            n, d = _sums(q[:, :, perm], k[:, :, perm], v[:, :, perm], la, scale, form, chunk_size,
                         normalize, dropout_p, training)
            num = num + n[:, :, inv]
            den = den + d[..., inv] if normalize else None
        num = num / len(orders)
        den = den / len(orders) if normalize else None
    if not normalize:
        return num
    den = den[..., None] + eps
    if not (torch.is_grad_enabled() and num.requires_grad):  # inference: no fp32 copy of num (same math)
        return num.div_(den)
    return (upcast(num) / den).to(v.dtype)
