"""RNN and chunk forms equal the attention form (docs/lion.md §1, §2), at the op and at the model level."""
import itertools

import pytest
import timm
import torch
from conftest import log_gates, rel_err_max

import image_classification.models_lion  # noqa: F401
from lion import curve_permutation, decay_log_gates, lion_attention, selective_log_gates, selective_log_gates_eps


def gates(kind, B, H, L, dtype=torch.float32):
    if kind == "Lit":
        return None
    param = torch.randn(H, dtype=dtype) if kind == "Decay" else 3 * torch.randn(B, L, H, dtype=dtype)
    return log_gates(kind, param, B, L)


# --- model level: every mask × order × pos_emb/cls_tok, L ∈ {17, 50, 197}, chunks {1, 7, 32, L, L+3}, batch 1, 3
IMG = {17: 16, 50: 28, 197: 56}  # patch 4 → 4×4, 7×7, 14×14 grids, plus the cls token


@pytest.mark.parametrize("mask_type,order", list(itertools.product(["Lit", "Decay", "Selective"], ["Normal", "S"])))
@pytest.mark.parametrize("L", [17, 50, 197])
def test_model_forms_equal_attention(mask_type, order, L):
    for (pos_emb, cls_tok), B in itertools.product([(False, False), (True, True)], [1, 3]):
        torch.manual_seed(L + B)
        model = timm.create_model("lion_tiny_patch16_224", img_size=IMG[L], patch_size=4, embed_dim=32,
                                  num_heads=2, depth=1, num_classes=5, mask_type=mask_type, order=order,
                                  pos_emb=pos_emb, cls_tok=cls_tok).eval()
        x = torch.randn(B, 3, IMG[L], IMG[L])
        with torch.no_grad():
            ref = model.forward_features(x)
            assert ref.shape[1] == L
            model.set_format("RNN")
            assert rel_err_max(model.forward_features(x), ref) <= 1e-5
            for C in (1, 7, 32, L, L + 3):
                model.set_format("Chunk", C)
                assert rel_err_max(model.forward_features(x), ref) <= 1e-5, (C, pos_emb, B)
            model.set_format("Attention")


# --- op level: the normalised (vision) and unnormalised (MLM) variants, with padding
@pytest.mark.parametrize("kind", ["Lit", "Decay", "Selective"])
@pytest.mark.parametrize("normalize", [True, False])
def test_op_forms_equal_attention_with_padding(kind, normalize):
    torch.manual_seed(0)
    B, H, L, d = 3, 2, 23, 8
    q, k, v = torch.randn(3, B, H, L, d, dtype=torch.float64).unbind(0)
    if normalize:
        q, k = q.exp(), k.exp()
    log_a = gates(kind, B, H, L, torch.float64)
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[1, 15:] = False          # right padding
    keep[2, :4] = False           # left padding
    keep[2, 10:12] = False        # a hole
    kw = dict(scale=d ** -0.5, normalize=normalize, key_padding_mask=keep)
    ref = lion_attention(q, k, v, log_a, **kw)
    assert rel_err_max(lion_attention(q, k, v, log_a, form="rnn", **kw), ref) <= 1e-12
    for C in (1, 4, 22, 23, 30):
        assert rel_err_max(lion_attention(q, k, v, log_a, form="chunk", chunk_size=C, **kw), ref) <= 1e-12


@pytest.mark.parametrize("form", ["attention", "rnn", "chunk"])
@pytest.mark.parametrize("kind", ["Lit", "Decay", "Selective"])
def test_padded_tokens_do_not_change_real_outputs(form, kind):
    torch.manual_seed(1)
    B, H, L, d = 2, 2, 19, 8
    q, k, v = torch.randn(3, B, H, L, d, dtype=torch.float64).unbind(0)
    z = torch.randn(B, L, H, dtype=torch.float64)
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[0, 12:] = False
    keep[1, 5:8] = False
    pad = ~keep

    def run(q, k, v, z):
        log_a = None if kind == "Lit" else (decay_log_gates(torch.ones(H), L, B) if kind == "Decay"
                                            else selective_log_gates_eps(z))
        return lion_attention(q, k, v, log_a, scale=d ** -0.5, normalize=False, key_padding_mask=keep,
                              form=form, chunk_size=4)

    y = run(q, k, v, z)
    noise = lambda t, m: t + 10 * torch.randn_like(t) * m  # noqa: E731
    m4 = pad[:, None, :, None].double()
    y2 = run(noise(q, m4), noise(k, m4), noise(v, m4), noise(z, pad[:, :, None].double()))
    real = keep[:, None, :, None].expand_as(y)
    torch.testing.assert_close(y[real], y2[real], rtol=1e-12, atol=1e-12)


def test_orders_sum_equals_averaged_mask():
    """♮: the sums over the two curve orders equal the attention form with M♮ = ½(M_s + M_sr) in raster order."""
    from lion.curves import inverse_permutation
    from lion.masks import mask
    torch.manual_seed(2)
    B, H, L, d = 2, 2, 17, 4
    q, k, v = torch.rand(3, B, H, L, d, dtype=torch.float64).unbind(0)
    orders = []
    Mnat = 0
    for curve in ("s", "sr"):
        perm = curve_permutation(L, curve)
        la = selective_log_gates(torch.randn(B, L, H, dtype=torch.float64)[:, perm])
        inv = inverse_permutation(perm)
        Mnat = Mnat + 0.5 * mask(la)[..., inv, :][..., :, inv]
        orders.append((perm, la))
    A = (q @ k.transpose(-1, -2)) * Mnat
    expected = (A @ v) / (A.sum(-1, keepdim=True) + 1e-6)
    for form in ("attention", "rnn", "chunk"):
        y = lion_attention(q, k, v, orders=orders, form=form, chunk_size=5)
        assert rel_err_max(y, expected) <= 1e-12


def test_curve_orders():
    from lion.curves import _curve
    assert _curve(3, "s") == [0, 1, 2, 5, 4, 3, 6, 7, 8]
    assert _curve(3, "sr") == [0, 3, 6, 7, 4, 1, 2, 5, 8]
    perm = curve_permutation(10, "s")
    assert perm[0] == 0 and sorted(perm.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="square"):
        curve_permutation(1 + 12, "s")


def test_bf16_autocast_long_sequence_is_finite():
    torch.manual_seed(3)
    B, H, L, d = 1, 2, 4096, 16
    q, k = torch.randn(2, B, H, L, d).exp().unbind(0)
    v = torch.randn(B, H, L, d)
    z = torch.where(torch.rand(B, L, H) < 0.5, -20.0, 20.0)  # gates near 1 and near 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for form in ("attention", "chunk"):
            y = lion_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), selective_log_gates(z), form=form,
                               chunk_size=256)
            assert torch.isfinite(y.float()).all(), form


@pytest.mark.parametrize("form", ["attention", "rnn", "chunk"])
def test_per_head_decay_gates_equal_per_token_gates(form):
    """LION-D's gates as (H,) (what the vision models pass) give what their (B, H, L) broadcast gives, with padding
    and with ♮ orders."""
    torch.manual_seed(3)
    B, H, L, D = 2, 3, 17, 8
    q, k, v = (torch.randn(B, H, L, D, dtype=torch.float64) for _ in range(3))
    a = torch.randn(H, dtype=torch.float64)
    kpm = torch.ones(B, L, dtype=torch.bool)
    kpm[1, -4:] = False
    perms = [curve_permutation(L, c) for c in ("s", "sr")]
    kw = dict(feature_map="normalized_silu", scale=0.3, form=form, chunk_size=5, backend="torch")
    for pad in (None, kpm):
        y_head = lion_attention(q, k, v, decay_log_gates(a), key_padding_mask=pad, **kw)
        y_tok = lion_attention(q, k, v, decay_log_gates(a, L, B), key_padding_mask=pad, **kw)
        assert rel_err_max(y_head, y_tok) <= 1e-12
        y_head = lion_attention(q, k, v, orders=[(p, decay_log_gates(a)) for p in perms], key_padding_mask=pad, **kw)
        y_tok = lion_attention(q, k, v, orders=[(p, decay_log_gates(a, L, B)) for p in perms], key_padding_mask=pad,
                               **kw)
        assert rel_err_max(y_head, y_tok) <= 1e-12


def test_auto_form_follows_the_measured_crossover(monkeypatch):
    """form='auto' runs the chunk form from the stored crossover length of the mask kind on, the attention form
    below it and whenever attention dropout acts (the chunk form refuses it in training with one clear line)."""
    import lion.attention as attention
    import lion.form_choice as form_choice

    lengths = form_choice.crossover_lengths()
    assert set(lengths) <= {"Lit", "Lit-unnormalised", "Decay", "Selective"} and all(n >= 1 for n in lengths.values())
    monkeypatch.setattr(form_choice, "crossover_lengths",
                        lambda: {"Lit": 8, "Lit-unnormalised": 10, "Decay": 12, "Selective": 16})
    used = []
    monkeypatch.setattr(attention, "_sums", lambda q, k, v, log_a, scale, form, *a: used.append(form) or (
        torch.zeros_like(v), torch.ones(v.shape[:-1], dtype=v.dtype)))
    a, z = torch.randn(2), torch.randn(1, 12, 2)
    for L, gate, form in [(7, None, "attention"), (8, None, "chunk"), (12, decay_log_gates(a), "chunk"),
                          (12, selective_log_gates(z), "attention"), (11, decay_log_gates(a), "attention")]:
        q = torch.randn(1, 2, L, 4)
        lion_attention(q, q, q, gate, form="auto", backend="torch")
        assert used.pop() == form, (L, form)
    for L, form in [(9, "attention"), (10, "chunk")]:  # unnormalised Lit (the MLM BERTs): its own crossover
        q = torch.randn(1, 2, L, 4)
        lion_attention(q, q, q, form="auto", normalize=False, backend="torch")
        assert used.pop() == form, (L, form)
    q = torch.randn(1, 2, 12, 4)
    lion_attention(q, q, q, form="auto", backend="torch", dropout_p=0.1, training=True)
    assert used.pop() == "attention"
    with pytest.raises(ValueError, match="form='chunk' has no attention matrix to drop out"):
        lion_attention(q, q, q, form="chunk", backend="torch", dropout_p=0.1, training=True)
    with pytest.raises(ValueError, match="form='rnn' has no attention matrix to drop out"):
        lion_attention(q, q, q, form="rnn", backend="torch", dropout_p=0.1, training=True)
    lion_attention(q, q, q, form="rnn", backend="torch", dropout_p=0.1, training=False)  # dropout acts in training only
