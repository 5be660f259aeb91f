"""Which implementation serves a call: the process default (``set_backend``) and the rule every op follows."""
from __future__ import annotations

from typing import Optional

import torch

BACKENDS = ("auto", "torch", "triton")

_default_backend = "auto"


def set_backend(backend: str) -> None:
    """Process-wide default: 'auto' (fused kernels on CUDA, torch elsewhere), 'torch', 'triton'."""
    global _default_backend
    _default_backend = check_backend(backend)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def use_fused(x: torch.Tensor, backend: Optional[str], available: bool, what: str) -> bool:
    """'torch': no; 'triton': yes (ValueError if no kernel is ``available`` for ``what``); 'auto': on CUDA tensors
    when available. None stands for the process default."""
    backend = check_backend(backend or _default_backend)
    if backend == "torch":
        return False
    if backend == "triton":
        if not available:
            raise ValueError(f"backend='triton' but no fused kernel is available for {what} (is triton installed?)")
        return True
    return available and x.is_cuda
