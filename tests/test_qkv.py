"""lion.unpack_qkv: q, k, v views of one projection whose gradient comes back without a copy from the fused kernels."""
import pytest
import torch

from lion import decay_log_gates, lion_attention, unpack_qkv


def _qkv(B=2, L=13, H=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, 3, H, d, generator=g, dtype=torch.float64, requires_grad=True)


def test_views_and_gradient_match_unbind():
    qkv = _qkv()
    q, k, v = unpack_qkv(qkv)
    ref = qkv.detach().clone().requires_grad_()
    rq, rk, rv = ref.permute(2, 0, 3, 1, 4).unbind(0)
    assert q.data_ptr() == qkv.data_ptr() and torch.equal(q, rq) and torch.equal(k, rk) and torch.equal(v, rv)
    a = torch.randn(3)
    y = lion_attention(q, k, v, decay_log_gates(a, 13, 2), feature_map="normalized_silu", backend="torch")
    ry = lion_attention(rq, rk, rv, decay_log_gates(a, 13, 2), feature_map="normalized_silu", backend="torch")
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (ry * g).sum().backward()
    torch.testing.assert_close(qkv.grad, ref.grad, rtol=0, atol=1e-12)


def test_unused_views_get_zero_gradient():
    qkv = _qkv()
    q, k, v = unpack_qkv(qkv)
    (q.sum() + 2 * v.sum()).backward()
    assert torch.equal(qkv.grad[:, :, 0], torch.ones_like(qkv.grad[:, :, 0]))
    assert torch.equal(qkv.grad[:, :, 1], torch.zeros_like(qkv.grad[:, :, 1]))
    assert torch.equal(qkv.grad[:, :, 2], torch.full_like(qkv.grad[:, :, 2], 2.0))


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match=r"qkv must have shape \(B, L, 3, H, d\)"):
        unpack_qkv(torch.zeros(2, 5, 4, 3, 8))


@pytest.mark.triton
@pytest.mark.parametrize("mask", ["Decay", "Lit"])
def test_fused_backward_returns_the_packed_buffer_without_a_stack(mask, monkeypatch):
    pytest.importorskip("triton")
    from lion.ops.triton.common.launching import INTERPRET
    if not (INTERPRET or torch.cuda.is_available()):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 (make test-triton)")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    qkv = _qkv(L=21 if mask == "Decay" else 33).float().to(dev).detach().requires_grad_()
    ref = qkv.detach().double().requires_grad_()
    a = torch.randn(3, device=dev)
    log_a = None if mask == "Lit" else decay_log_gates(a, qkv.shape[1], 2)
    fm = "elu_plus_one" if mask == "Lit" else "normalized_silu"
    y = lion_attention(*unpack_qkv(qkv), log_a, feature_map=fm, backend="triton")
    ry = lion_attention(*ref.permute(2, 0, 3, 1, 4).unbind(0), None if log_a is None else log_a.double(),
                        feature_map=fm, backend="torch")
    g = torch.randn_like(ry)

    def no_stack(*args, **kwargs):
        raise AssertionError("unpack_qkv's backward stacked the gradients")

    with monkeypatch.context() as m:
        m.setattr(torch, "stack", no_stack)
        (y * g.float()).sum().backward()
    (ry * g).sum().backward()
    err = (qkv.grad.double() - ref.grad).abs().max() / ref.grad.abs().max()
    assert err < 1e-5, err


def _input_copies_saved(module, x, *args) -> int:
    """Distinct low-precision copies of x's values that autograd saves for ``module(x, *args)`` under CPU bf16
    autocast, x not a leaf (as a layer's input is; autocast caches its casts of leaves)."""
    storages = set()
    leaf, x = x, x * 1.0

    def pack(t):
        if t.dtype == torch.bfloat16 and t.numel() == x.numel() and \
                torch.equal(t.reshape(x.shape), x.detach().to(torch.bfloat16)):  # saved as (B·L, C) too
            storages.add(t.untyped_storage().data_ptr())
        return t
    with torch.autocast("cpu", torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x, *args)
    (out[0] if isinstance(out, tuple) else out).float().sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    return len(storages)


@pytest.mark.parametrize("mask_type,order", [("Selective", "Normal"), ("Selective", "S"), ("Decay", "Normal")])
def test_vit_attention_saves_one_low_precision_copy_of_its_input(mask_type, order):
    """The qkv projection and the per-token gate projections (two for ♮ S) read one x: one bf16 copy of it is saved,
    not one per projection (what autocast alone would save)."""
    from image_classification.models_lion import LionAttention

    torch.manual_seed(0)
    layer = LionAttention(48, 2, qkv_bias=True, mask_type=mask_type, order=order, backend="torch")
    x = torch.randn(2, 17, 48, requires_grad=True)  # 1 + 4×4 tokens: a square grid for the ♮ orders
    assert _input_copies_saved(layer, x) == 1


def test_bert_attention_saves_one_low_precision_copy_of_its_input():
    """LION BERT's separate query, key, value and gate projections share one bf16 copy of the hidden states."""
    from mlm.src.bert_layers import LionBertSelfAttention
    from tests.test_mlm_model import tiny_config

    torch.manual_seed(0)
    layer = LionBertSelfAttention(tiny_config("lion-s"))
    x = torch.randn(3, 13, 32, requires_grad=True)
    assert _input_copies_saved(layer, x, torch.ones(3, 13, dtype=torch.bool)) == 1
