"""Fused Triton kernels for training (attention form). Registers ``lion.attention.FUSED['attention']`` when
triton is importable; lion.attention then uses it for backend 'triton', and for 'auto' on CUDA tensors."""
import importlib.util

__all__ = []

if importlib.util.find_spec("triton") is not None:
    from lion.attention import FUSED
    from lion.ops.triton.attention import attention_sums, lit_kv_sums

    FUSED["attention"] = attention_sums
    __all__ = ["attention_sums", "lit_kv_sums"]
