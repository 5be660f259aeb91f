"""Fused LION-S gates (lion.ops.triton.gates) against the torch ops of lion.masks in fp64: values and gradients.

Marked ``triton``: they run on CUDA, or on the CPU under the Triton interpreter (``make test-triton`` sets
TRITON_INTERPRET=1 before triton is imported); elsewhere they skip.
"""

import pytest
import torch
from conftest import CUDA, DEV, FUSED_KERNEL_MARKS

import lion.masks as masks
from lion.masks import selective_log_gates, selective_log_gates_eps

pytestmark = FUSED_KERNEL_MARKS

FORMS = {"first_gate_one": (selective_log_gates, {}),
         "plain": (selective_log_gates, {"first_gate_one": False}),
         "eps": (selective_log_gates_eps, {"eps": 1e-3})}  # a large eps, so that its term shows in every entry


def rel_err(x, ref):
    """max|x − ref| / max|ref| (all zeros when ref is: the one token's gate with first_gate_one)."""
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def make_z(B, L, H, layout, dtype, seed=0):
    """z (B, L, H) as a view of the given layout; large values reach both tails of the sigmoid."""
    g = torch.Generator().manual_seed(seed)
    if layout == "transposed":  # the (B, H, L) memory of a transposed (B, L, H) view
        z = (4 * torch.randn(B, H, L, generator=g)).to(DEV, dtype).transpose(1, 2)
    elif layout == "slice":  # every other token, heads at an offset: no unit stride
        z = (4 * torch.randn(B, 2 * L, H + 3, generator=g)).to(DEV, dtype)[:, ::2, 1:H + 1]
    else:
        z = (4 * torch.randn(B, L, H, generator=g)).to(DEV, dtype)
    return z


def a_perm(L, seed=0):
    """A random permutation that moves token 0 (so that 'first' in the order's indexing is not token 0)."""
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(seed))
    if L > 1 and perm[0] == 0:
        perm = perm.roll(1)
    return perm.to(DEV)


def check(form, z, perm, grad_out=None, tol=1e-6):
    """Fused op vs the torch ops on z in fp64 (the same values): forward, and dz for a random or given d log a."""
    fn, kw = FORMS[form]
    z = z.detach().requires_grad_()
    z64 = z.detach().double().requires_grad_()
    out = fn(z, perm=perm, backend="triton", **kw)
    ref = fn(z64, perm=perm, backend="torch", **kw)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_err(out, ref) < tol
    if grad_out is None:
        grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(DEV)
    dz, = torch.autograd.grad(out, z, grad_out)
    dz_ref, = torch.autograd.grad(ref, z64, grad_out.double())
    assert dz.dtype == z.dtype and dz.shape == z.shape
    # bf16 z: dz is rounded to bf16 (8 bits of mantissa)
    assert rel_err(dz, dz_ref) < (tol if z.dtype == torch.float32 else 1e-2)
    return out, dz


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("with_perm", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "slice"])
def test_fused_gates_match_torch(form, with_perm, dtype, layout):
    z = make_z(2, 13, 3, layout, dtype)
    check(form, z, a_perm(13) if with_perm else None)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("B,L,H", [(1, 1, 2), (1, 70, 5), (3, 64, 1)])
def test_shapes_across_token_blocks(form, B, L, H):
    """One token, batch 1, more tokens than one program's block (64), a single head."""
    check(form, make_z(B, L, H, "contiguous", torch.float32, seed=L), a_perm(L, seed=B))


def test_first_gate_is_one_in_the_orders_indexing():
    """Entry 0 is token perm[0]: its log gate and its gradient are 0, token 0's are not."""
    perm = a_perm(13)
    out, dz = check("first_gate_one", make_z(2, 13, 3, "contiguous", torch.float32), perm)
    assert (out[..., 0] == 0).all() and (out[..., 1:] < 0).all()
    assert (dz[:, perm[0]] == 0).all() and (dz[:, 0] != 0).all()


def test_gradient_of_any_strides():
    """d log a as a transposed view and as the expanded ones of a sum."""
    z = make_z(2, 13, 3, "contiguous", torch.float32)
    g = torch.randn(2, 13, 3, generator=torch.Generator().manual_seed(2)).to(DEV).transpose(1, 2)
    for form in FORMS:
        check(form, z, a_perm(13), grad_out=g)
        check(form, z, None, grad_out=torch.ones(1, device=DEV).expand(2, 3, 13))


def test_tails_are_exact():
    """Gates near 0 and 1 (z from −100 to 100): the fused op equals torch's fp32 ops entry by entry, to rounding."""
    z = torch.tensor([-100., -30, -17, -10, -1e-3, 0, 1e-8, 1, 10, 17, 30, 100], device=DEV).view(1, 12, 1)
    for fn, kw in FORMS.values():
        zf, zt = z.clone().requires_grad_(), z.clone().requires_grad_()
        out, ref = fn(zf, backend="triton", **kw), fn(zt, backend="torch", **kw)
        # rtol: a few ulps (the GPU's exp is approximate); atol: denormals
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-38)
        dz, = torch.autograd.grad(out.sum(), zf)
        dz_ref, = torch.autograd.grad(ref.sum(), zt)
        torch.testing.assert_close(dz, dz_ref, rtol=1e-5, atol=1e-38)


def test_dispatch(monkeypatch):
    """'triton' takes the fused op; 'torch', fp64 and torch.compile the torch ops; 'auto' the fused op on CUDA only;
    'triton' without a kernel, or with a perm that is no permutation of the tokens, is an error."""
    calls = []
    real = masks._fused_log_gates()

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)
    monkeypatch.setattr(masks, "_fused_gates", spy)
    z = torch.randn(1, 5, 2, device=DEV)
    for backend, dtype, fused in [("triton", torch.float32, True), ("torch", torch.float32, False),
                                  ("triton", torch.float64, False), ("auto", torch.float32, CUDA)]:
        calls.clear()
        selective_log_gates(z.to(dtype), backend=backend)
        selective_log_gates_eps(z.to(dtype), backend=backend)
        assert len(calls) == (2 if fused else 0), (backend, dtype)
    calls.clear()
    torch.compile(lambda z: selective_log_gates(z, backend="triton"), fullgraph=True, backend="eager")(z)
    assert not calls
    with pytest.raises(ValueError, match="permutation of the 5 tokens"):
        selective_log_gates(z, perm=torch.arange(3, device=DEV), backend="triton")
    monkeypatch.setattr(masks, "_fused_gates", None)
    with pytest.raises(ValueError, match="backend='triton' but no fused kernel"):
        selective_log_gates(z, backend="triton")


@pytest.mark.parametrize("order", ["Normal", "S"])
def test_vision_model_fused_equals_torch(order):
    """A tiny LION-S ViT with backend='triton' (fused gates, ♮ orders gathered in the kernel) against the same
    weights with backend='torch': logits and every gradient."""
    from image_classification.models_lion import FAMILY, LionVisionTransformer

    torch.manual_seed(0)
    kw = dict(img_size=16, patch_size=4, embed_dim=16, num_heads=2, depth=1, num_classes=3, mask_type="Selective",
              order=order)
    fused = LionVisionTransformer(backend="triton", **kw).to(DEV)
    ref = LionVisionTransformer(backend="torch", **kw).to(DEV)
    ref.load_state_dict(fused.state_dict())
    for blk in fused.blocks:  # gates far from 1/2, so that wrong gates would show in the logits
        for lin in (blk.attn.a_i, getattr(blk.attn, "a2_i", None)):
            if lin is not None:
                torch.nn.init.normal_(lin.weight, std=2.0)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 16, 16, device=DEV)
    attn, tokens = fused.blocks[0].attn, torch.randn(2, 17, 16, device=DEV)
    for perm in ([None] if order == "Normal" else [a_perm(17), a_perm(17, seed=1)]):
        z = attn.a_i(tokens)
        expected = selective_log_gates(z if perm is None else z[:, perm], backend="torch")  # the model's gates
        assert rel_err(attn.variant.log_gates(attn, FAMILY, tokens, 0, perm, attn.backend), expected) < 1e-6
    y, y_ref = fused(x), ref(x)
    assert rel_err(y, y_ref) < 1e-5
    grads = torch.autograd.grad(y.square().sum(), list(fused.parameters()))
    grads_ref = torch.autograd.grad(y_ref.square().sum(), list(ref.parameters()))
    for (name, _), g, g_ref in zip(fused.named_parameters(), grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-4, name


def test_mlm_model_fused_equals_torch(monkeypatch):
    """A tiny LION-S BERT (eps gates, padding) under the process default backend 'triton' against 'torch'."""
    import lion.backend
    from mlm.src.bert_layers import LionBertConfig, LionBertForMaskedLM

    torch.manual_seed(0)
    model = LionBertForMaskedLM(LionBertConfig(
        arch_type="lion-s", vocab_size=31, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)).to(DEV)
    ids = torch.randint(1, 31, (2, 11), device=DEV)
    mask = torch.ones(2, 11, dtype=torch.long, device=DEV)
    mask[1, 7:] = 0
    out = {}
    for backend in ("triton", "torch"):
        monkeypatch.setattr(lion.backend, "_default_backend", backend)
        logits = model(input_ids=ids, attention_mask=mask).logits
        out[backend] = (logits, torch.autograd.grad(logits.square().sum(), list(model.parameters())))
    assert rel_err(out["triton"][0], out["torch"][0]) < 1e-5
    for g, g_ref in zip(out["triton"][1], out["torch"][1]):
        assert rel_err(g, g_ref) < 1e-4
