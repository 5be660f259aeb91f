"""Argument checks shared by the operator and both model families (one message for one mistake)."""


def check_chunk_size(chunk_size) -> int:
    """chunk_size must be an int ≥ 1 (bools are not sizes); returns it."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer ≥ 1, got {chunk_size!r}")
    return chunk_size
