"""Argument checks shared by the operator and both model families (one message for one mistake)."""

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
