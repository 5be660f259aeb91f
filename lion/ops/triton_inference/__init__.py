"""Fused GPU forward kernels for the chunk and RNN forms (inference): registers ``lion.attention.FUSED['chunk']``
and ``FUSED['rnn']`` when triton imports. Same contract as the torch forms in ``lion.ops``:

    fn(q, k, v, log_a, scale, with_den, chunk_size) -> (num in v's dtype, den fp32 or None)

Forward only: when autograd needs gradients the torch form runs instead (same result, differentiable).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

try:
    import triton  # noqa: F401
except ImportError:  # no triton: nothing is registered, the torch forms run
    triton = None

if triton is not None:
    from lion.attention import FUSED
    from lion.ops.triton_inference.ops import chunk_sums_triton, recurrent_sums_triton

    FUSED.setdefault("chunk", chunk_sums_triton)
    FUSED.setdefault("rnn", recurrent_sums_triton)
    __all__ = ["chunk_sums_triton", "recurrent_sums_triton"]
