"""Argument checks shared by the operator and both model families (one message for one mistake)."""
import torch

DEFAULT_CHUNK_SIZE = 32  # the torch chunk form's chunk when the caller leaves it to the library (None)


class _Keep:
    """Sentinel of ``set_format`` / ``set_form``: keep the current chunk size (None means 'automatic')."""

    def __repr__(self):
        return "KEEP"


KEEP = _Keep()


def check_chunk_size(chunk_size, allow_none: bool = True):
    """chunk_size must be an int ≥ 1 (bools are not sizes), or None (automatic: the fused kernels pick one for the
    length and GPU, the torch chunk form uses DEFAULT_CHUNK_SIZE) where ``allow_none``; returns it."""
    if chunk_size is None and allow_none:
        return None
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        allowed = "an integer ≥ 1 or None (automatic)" if allow_none else "an integer ≥ 1"
        raise ValueError(f"chunk_size must be {allowed}, got {chunk_size!r}")
    return chunk_size


def _check_gates(name, log_a, B, H, L):
    """log_a: None, (H,) one gate per head, or (B, H, L) per-token gates (docs/lion.md §1)."""
    if log_a is None:
        return
    shape = log_a.shape
    if shape != (H,) and shape != (B, H, L):
        raise ValueError(f"{name} must be (H,) = ({H},) or (B, H, L) = ({B}, {H}, {L}) for q of shape "
                         f"(B, H, L, d), got {tuple(shape)}")


def check_attention_inputs(q, k, v, log_a, key_padding_mask, orders) -> None:
    """Shapes of ``lion_attention``'s arguments, checked once per call with plain size comparisons (no tensor op):
    a wrong one is a ValueError naming the argument and the expected shape, not a broadcasting error in a kernel."""
    shape = q.shape
    if len(shape) != 4:
        raise ValueError(f"q must be (B, H, L, d), got {tuple(shape)}")
    B, H, L, _ = shape
    if k.shape != shape:
        raise ValueError(f"k must have q's shape (B, H, L, d) = {tuple(shape)}, got {tuple(k.shape)}")
    v_shape = v.shape
    if len(v_shape) != 4 or v_shape[:3] != shape[:3]:
        raise ValueError(f"v must be (B, H, L, dv) = ({B}, {H}, {L}, dv) like q {tuple(shape)}, got {tuple(v_shape)}")
    if orders is None:
        _check_gates("log_a", log_a, B, H, L)
    else:
        for i, (perm, la) in enumerate(orders):
            if perm.shape != (L,):
                raise ValueError(f"orders[{i}]'s permutation must be (L,) = ({L},), got {tuple(perm.shape)}")
            _check_gates(f"orders[{i}]'s log_a", la, B, H, L)
    if key_padding_mask is not None:
        if key_padding_mask.shape != (B, L):
            raise ValueError(f"key_padding_mask must be (B, L) = ({B}, {L}) for q of shape (B, H, L, d) = "
                             f"{tuple(shape)}, got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(f"key_padding_mask must be a bool tensor (True for real tokens), got "
                             f"{key_padding_mask.dtype}")
