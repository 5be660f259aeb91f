"""The triton chunk and RNN inference kernels equal the attention form (lion.ops.naive_sums).

Runs on CUDA when present, else only under TRITON_INTERPRET=1 (test_triton_inference.py starts it so, in a
subprocess, so that the variable never leaks into other test files).
"""
import os

import pytest
import torch

if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("needs CUDA or TRITON_INTERPRET=1 (run through tests/test_triton_inference.py)", allow_module_level=True)
pytest.importorskip("triton")

from conftest import rel_err_l2  # noqa: E402
from lion import lion_attention, selective_log_gates  # noqa: E402
from lion.ops import naive_sums  # noqa: E402
from lion.ops.triton_inference import chunk_sums_triton, ops, recurrent_sums_triton  # noqa: E402

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def _chunk_sequential(*args):
    """The other chunk algorithm (one program carries the state through the chunks), ops.CHUNK_CONFIG."""
    old = ops.CHUNK_CONFIG["algorithm"]
    ops.CHUNK_CONFIG["algorithm"] = "sequential"
    try:
        return chunk_sums_triton(*args)
    finally:
        ops.CHUNK_CONFIG["algorithm"] = old


FNS = {"chunk": chunk_sums_triton, "chunk_sequential": _chunk_sequential, "rnn": recurrent_sums_triton}


def _inputs(B, H, L, d, mask, seed, dtype=torch.float32, strength=3.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.rand(B, H, L, d, generator=g) for _ in range(3))
    log_a = {"lit": None,
             "decay": torch.nn.functional.logsigmoid(torch.randn(H, generator=g))[None, :, None].expand(B, H, L),
             "selective": selective_log_gates(strength * torch.randn(B, L, H, generator=g))}[mask]
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return to(q.to(dtype)), to(k.to(dtype)), to(v.to(dtype)), to(log_a)


def _reference(q, k, v, log_a, scale):
    c = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    return naive_sums(c(q), c(k), c(v), c(log_a), scale, True)


# (B, L, chunk): last chunk of length 1 (17 = 16 + 1, 33 = 32 + 1), an odd length, batch 1 and 3
SHAPES = [(1, 17, 16), (3, 33, 32), (3, 29, 16)]


@pytest.mark.parametrize("form", list(FNS))
@pytest.mark.parametrize("mask", ["lit", "decay", "selective"])
@pytest.mark.parametrize("B,L,chunk", SHAPES)
def test_kernel_matches_attention_form(form, mask, B, L, chunk):
    q, k, v, log_a = _inputs(B, 2, L, 8, mask, seed=L + B)
    num, den = FNS[form](q, k, v, log_a, 0.7, True, chunk)
    ref_num, ref_den = _reference(q, k, v, log_a, 0.7)
    assert num.dtype == v.dtype and num.shape == v.shape and den.dtype == torch.float32
    assert rel_err_l2(num, ref_num) < 1e-5 and rel_err_l2(den, ref_den) < 1e-5


@pytest.mark.parametrize("form", list(FNS))
def test_without_den_and_uneven_value_dim(form):
    g = torch.Generator().manual_seed(1)
    q, k = (torch.rand(2, 2, 20, 8, generator=g).to(DEVICE) for _ in range(2))
    v = torch.randn(2, 2, 20, 70, generator=g).to(DEVICE)  # dv ≠ dk, two value blocks, signed values
    log_a = selective_log_gates(torch.randn(2, 20, 2, generator=g)).to(DEVICE)
    num, den = FNS[form](q, k, v, log_a, 1.0, False, 16)
    assert den is None and rel_err_l2(num, _reference(q, k, v, log_a, 1.0)[0]) < 1e-5


def test_strong_gates_stay_finite():
    """log a down to −60 per token: every exponent is ≤ 0, so nothing overflows (docs/lion.md §1)."""
    q, k, v, log_a = _inputs(1, 2, 40, 8, "selective", seed=5, strength=60.0)
    ref_num, ref_den = _reference(q, k, v, log_a, 1.0)
    for form, fn in FNS.items():
        num, den = fn(q, k, v, log_a, 1.0, True, 16)
        assert torch.isfinite(num).all() and torch.isfinite(den).all(), form
        assert rel_err_l2(num, ref_num) < 1e-5 and rel_err_l2(den, ref_den) < 1e-5, form


def test_bf16_inputs():
    q, k, v, log_a = _inputs(2, 2, 33, 16, "selective", seed=3, dtype=torch.bfloat16)
    ref_num, ref_den = _reference(q, k, v, log_a, 0.25)
    for form, fn in FNS.items():
        num, den = fn(q, k, v, log_a, 0.25, True, 16)
        assert num.dtype == torch.bfloat16 and den.dtype == torch.float32
        assert rel_err_l2(num, ref_num) < 1e-2 and rel_err_l2(den, ref_den) < 1e-2, form


@pytest.mark.parametrize("form", ["chunk", "rnn"])
def test_registered_through_lion_attention_with_padding_and_orders(form):
    """backend='triton' dispatches to these kernels; padding and the ♮ orders (the caller's loop) still agree."""
    B, H, L, d = 2, 2, 10, 8
    q, k, v, _ = _inputs(B, H, L, d, "lit", seed=7)
    g = torch.Generator().manual_seed(8)
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[1, 6:] = False
    keep = keep.to(DEVICE)
    log_a = selective_log_gates(torch.randn(B, L, H, generator=g)).to(DEVICE)
    perms = [torch.arange(L), torch.randperm(L, generator=g)]
    orders = [(p.to(DEVICE), selective_log_gates(torch.randn(B, L, H, generator=g)).to(DEVICE)) for p in perms]
    for kwargs in (dict(log_a=log_a, key_padding_mask=keep), dict(orders=orders)):
        ref = lion_attention(q, k, v, form="attention", backend="torch", **kwargs)
        out = lion_attention(q, k, v, form=form, chunk_size=16, backend="triton", **kwargs)
        assert rel_err_l2(out, ref.double().cpu()) < 1e-5


def test_grad_falls_back_to_differentiable_torch_form():
    q, k, v, log_a = _inputs(1, 2, 12, 8, "decay", seed=9)
    q.requires_grad_(True)
    for form, fn in FNS.items():
        num, den = fn(q, k, v, log_a, 1.0, True, 16)
        assert num.requires_grad, form
        (num.sum() + den.sum()).backward()
        assert q.grad is not None and torch.isfinite(q.grad).all()
        q.grad = None
