"""Which implementation serves a call: the process default (``set_backend``) and the rule every op follows."""
from __future__ import annotations

import logging
from typing import Optional

import torch

log = logging.getLogger(__name__)

# The fused kernels were tuned and tested on Hopper (compute capability 9.0, H100/H200) and need bf16 tensor cores
# (8.0 and later). With backend='auto', a CUDA device below that (or a ROCm build, untested) gets the torch forms
# and one warning; backend='triton' still forces the kernels there.
MIN_CAPABILITY = (8, 0)

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
    if not (available and x.is_cuda):
        return False
    device = x.get_device()
    supported = _SUPPORTED.get(device)
    return _kernels_supported(device) if supported is None else supported


_SUPPORTED: dict = {}  # CUDA device index → whether 'auto' uses the fused kernels there (a dict: dynamo traces it)


def _kernels_supported(device: int) -> bool:
    """Whether backend='auto' sends CUDA tensors on ``device`` to the fused kernels (decided once per device, with
    one warning where not)."""
    _SUPPORTED[device] = False
    name = torch.cuda.get_device_name(device)
    if torch.version.hip is not None:
        log.warning("LION's fused kernels are untested on ROCm (%s): using the torch forms "
                    "(lion.set_backend('triton') forces the kernels)", name)
        return False
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        log.warning("LION's fused kernels need compute capability ≥ %d.%d; %s has %d.%d: using the torch forms",
                    *MIN_CAPABILITY, name, *capability)
        return False
    _SUPPORTED[device] = True
    return True
