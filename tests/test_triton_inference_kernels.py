"""The fused chunk and RNN inference kernels (lion.ops.triton.chunk / .recurrent) equal the attention form, at tiny
shapes under TRITON_INTERPRET=1 (`make test-triton`, each case reported; on a GPU, test_triton_inference_gpu.py
covers real shapes). Reference:
lion_attention's attention form in float64 on the CPU, on the same raw q, k, v.
"""
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (run with `make test-triton`)", allow_module_level=True)
pytest.importorskip("triton")

from lion import decay_log_gates, lion_attention, selective_log_gates  # noqa: E402
from lion.masks import gate_arguments  # noqa: E402
from lion.ops.triton.chunk import DEFAULT_KERNEL_CHUNK, MAX_KERNEL_CHUNK, chunk_attention  # noqa: E402
from lion.ops.triton.recurrent import recurrent_attention  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cpu"
FORMS = ("chunk", "rnn")
FEATURE = {"lit": "elu_plus_one", "decay": "normalized_silu", "selective": "normalized_silu"}


def fused(form, *args, chunk_size=None, **kw):
    """The fused kernel of ``form`` (the RNN form has no chunk size)."""
    if form == "chunk":
        return chunk_attention(*args, chunk_size=chunk_size, **kw)
    return recurrent_attention(*args, **kw)


def _gates(mask, B, H, L, g):
    if mask == "lit":
        return None
    if mask == "decay":
        return decay_log_gates(torch.randn(H, generator=g), L, B)
    return selective_log_gates(3.0 * torch.randn(B, L, H, generator=g))


def _inputs(B, H, L, d, mask, seed, dtype=torch.float32, dv=None):
    """q, k, v as strided views of one (B, L, 3, H, d) projection output, like the vision model's."""
    g = torch.Generator().manual_seed(seed)
    dv = dv or d
    qk = torch.randn(B, L, 2, H, d, generator=g)
    v = torch.randn(B, L, H, dv, generator=g)
    q, k = (t.to(DEVICE, dtype).permute(0, 2, 1, 3) for t in qk.unbind(2))
    la = _gates(mask, B, H, L, g)
    return q, k, v.to(DEVICE, dtype).permute(0, 2, 1, 3), None if la is None else la.to(DEVICE)


def _cpu64(t):
    return None if t is None else t.detach().double().cpu()


def _reference(q, k, v, log_a=None, orders=None, key_padding_mask=None, **kw):
    orders = None if orders is None else [(p.cpu(), _cpu64(la)) for p, la in orders]
    kpm = None if key_padding_mask is None else key_padding_mask.cpu()
    return lion_attention(_cpu64(q), _cpu64(k), _cpu64(v), _cpu64(log_a), form="attention", backend="torch",
                          orders=orders, key_padding_mask=kpm, **kw)


def _rel(x, ref):
    return ((x.double().cpu() - ref).norm() / ref.norm()).item()


# (B, L, chunk): last chunk of length 1 (17 = 16 + 1, 21 = 4·5 + 1), a chunk that is no power of two, an odd length,
# batch 1 and 3, the automatic chunk size (None)
SHAPES = [(1, 17, 16), (3, 21, 5), (2, 29, None), (1, 33, 32)]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mask", ["lit", "decay", "selective"])
@pytest.mark.parametrize("B,L,chunk", SHAPES)
def test_matches_attention_form(form, mask, B, L, chunk):
    q, k, v, log_a = _inputs(B, 2, L, 8, mask, seed=L + B)
    kw = dict(feature_map=FEATURE[mask], scale=0.7, eps=1e-6)
    y = fused(form, q, k, v, log_a, chunk_size=chunk, **kw)
    assert y.shape == v.shape and y.dtype == v.dtype
    assert y.transpose(1, 2).is_contiguous()  # (B, L, H, dv) memory: the caller's reshape to (B, L, H·dv) is free
    assert _rel(y, _reference(q, k, v, log_a, **kw)) < 1e-5


@pytest.mark.parametrize("form", FORMS)
def test_unnormalised_padded_uneven_value_dim(form):
    """MLM use: no feature map, no normaliser, padded keys; dv ≠ dk with two value blocks (dv = 70)."""
    q, k, v, log_a = _inputs(2, 2, 20, 8, "selective", seed=1, dv=70)
    keep = torch.ones(2, 20, dtype=torch.bool)
    keep[1, 13:] = False
    kw = dict(scale=1.0, normalize=False, key_padding_mask=keep.to(DEVICE))
    y = fused(form, q, k, v, log_a, chunk_size=16, **kw)
    assert _rel(y, _reference(q, k, v, log_a, **kw)) < 1e-5


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n_orders", [2, 3])
def test_orders_in_one_pass(form, n_orders):
    """♮: each order reads the tokens through its permutation with its own gates; sums averaged, then normalised."""
    B, H, L = 2, 2, 19
    q, k, v, _ = _inputs(B, H, L, 8, "lit", seed=7 + n_orders)
    g = torch.Generator().manual_seed(8)
    perms = [torch.arange(L)] + [torch.randperm(L, generator=g) for _ in range(n_orders - 1)]
    orders = [(p.to(DEVICE), _gates("selective", B, H, L, g).to(DEVICE)) for p in perms]
    kw = dict(feature_map="normalized_silu", scale=0.5)
    y = fused(form, q, k, v, **gate_arguments(None, orders, B, L), chunk_size=8, **kw)
    assert _rel(y, _reference(q, k, v, orders=orders, **kw)) < 1e-5


@pytest.mark.parametrize("form", FORMS)
def test_orders_with_padding(form):
    """♮ orders and padded keys together: each order drops the padded keys and gives them gate 1 in its own order."""
    B, H, L = 2, 2, 18
    q, k, v, _ = _inputs(B, H, L, 8, "lit", seed=11)
    g = torch.Generator().manual_seed(12)
    orders = [(p.to(DEVICE), _gates("selective", B, H, L, g).to(DEVICE))
              for p in (torch.arange(L), torch.randperm(L, generator=g))]
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[0, 11:] = False
    kw = dict(feature_map="normalized_silu", scale=0.5, key_padding_mask=keep.to(DEVICE))
    y = fused(form, q, k, v, **gate_arguments(None, orders, B, L), chunk_size=4, **kw)
    assert _rel(y, _reference(q, k, v, orders=orders, **kw)) < 1e-5


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mask", ["lit", "decay"])
def test_chunk_longer_than_sequence_and_partial_value_block(form, mask):
    """L < chunk (one partial chunk) with dv = 24 (a value block only partly used); then several chunks."""
    kw = dict(feature_map=FEATURE[mask], scale=0.6)
    for B, L, chunk, seed in ((2, 5, 16, 13), (1, 23, 6, 14)):
        q, k, v, log_a = _inputs(B, 3, L, 8, mask, seed=seed, dv=24)
        ref = _reference(q, k, v, log_a, **kw)
        assert _rel(fused(form, q, k, v, log_a, chunk_size=chunk, **kw), ref) < 1e-5
        if form == "chunk":  # value blocks of 16 (the second half used), scan programs of 8 state rows
            assert _rel(chunk_attention(q, k, v, log_a, chunk_size=chunk, block_dv=16, scan_rows=8, **kw), ref) < 1e-5


@pytest.mark.parametrize("form", FORMS)
def test_strong_gates_stay_finite(form):
    """log a down to −60 per token: every exponent is ≤ 0, so nothing overflows (docs/lion.md §1)."""
    q, k, v, _ = _inputs(1, 2, 40, 8, "lit", seed=5)
    log_a = selective_log_gates(60.0 * torch.randn(1, 40, 2, generator=torch.Generator().manual_seed(5))).to(DEVICE)
    kw = dict(feature_map="normalized_silu", scale=1.0)
    y = fused(form, q, k, v, log_a, chunk_size=16, **kw)
    assert torch.isfinite(y).all() and _rel(y, _reference(q, k, v, log_a, **kw)) < 1e-5


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(form, dtype):
    q, k, v, log_a = _inputs(2, 2, 33, 16, "selective", seed=3, dtype=dtype)
    kw = dict(feature_map="normalized_silu", scale=0.25)
    y = fused(form, q, k, v, log_a, **kw)
    assert y.dtype == dtype and _rel(y, _reference(q, k, v, log_a, **kw)) < 1e-2


@pytest.mark.parametrize("form", FORMS)
def test_lion_attention_dispatch_and_grad_fallback(form):
    """backend='triton' runs the fused operator; when autograd needs gradients the torch form runs instead."""
    q, k, v, log_a = _inputs(1, 2, 12, 8, "decay", seed=9)
    kw = dict(feature_map="normalized_silu", scale=1.0)
    ref = _reference(q, k, v, log_a, **kw)
    with torch.no_grad():
        y = lion_attention(q, k, v, log_a, form=form, backend="triton", **kw)
    assert y.transpose(1, 2).is_contiguous() and _rel(y, ref) < 1e-5
    q = q.detach().requires_grad_(True)
    y = lion_attention(q, k, v, log_a, form=form, backend="triton", **kw)
    y.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and _rel(y, ref) < 1e-5


def test_launch_settings_are_checked():
    q, k, v, _ = _inputs(1, 2, 8, 8, "lit", seed=0)
    with pytest.raises(ValueError, match="block_dv must be a power of two ≥ 16, got 24"):
        chunk_attention(q, k, v, block_dv=24)
    with pytest.raises(ValueError, match="scan_rows must be a power of two ≥ 1, got 0"):
        chunk_attention(q, k, v, scan_rows=0)


def test_default_kernel_chunk_is_a_valid_size():
    assert 1 <= DEFAULT_KERNEL_CHUNK <= MAX_KERNEL_CHUNK
