"""The backend rule on GPUs the kernels were not tuned for: 'auto' falls back to the torch forms with one warning."""
import logging
from types import SimpleNamespace

import pytest
import torch

from lion import backend


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA tensor stand-in on device 0 and a settable (name, capability, hip) for it."""
    gpu = SimpleNamespace(name="NVIDIA H200", capability=(9, 0), hip=None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu.name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpu.capability)
    monkeypatch.setattr(backend, "_SUPPORTED", {})
    tensor = SimpleNamespace(is_cuda=True, get_device=lambda: 0)
    return gpu, tensor


@pytest.mark.parametrize("name, capability, hip, fused", [
    ("NVIDIA H200", (9, 0), None, True),
    ("NVIDIA A100", (8, 0), None, True),
    ("Tesla V100", (7, 0), None, False),
    ("AMD Instinct MI300X", (9, 4), "6.2", False),
])
def test_auto_uses_the_kernels_only_where_supported(fake_gpu, monkeypatch, caplog, name, capability, hip, fused):
    gpu, x = fake_gpu
    gpu.name, gpu.capability = name, capability
    monkeypatch.setattr(torch.version, "hip", hip)
    with caplog.at_level(logging.WARNING, logger="lion.backend"):
        assert [backend.use_fused(x, "auto", True, "form 'attention'") for _ in range(3)] == [fused] * 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == (0 if fused else 1)  # once per device, not per call
    if not fused:
        assert name in warnings[0] and "torch forms" in warnings[0]
    assert backend.use_fused(x, "triton", True, "form 'attention'")  # forcing still works
    assert not backend.use_fused(x, "torch", True, "form 'attention'")
    assert not backend.use_fused(x, "auto", False, "form 'attention'")  # no kernel: never


def test_cpu_tensors_never_take_the_kernels_with_auto():
    assert not backend.use_fused(torch.zeros(1), "auto", True, "form 'attention'")
