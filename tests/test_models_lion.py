"""The LION ViT family: spec semantics, parameter names, gradients, bad arguments, timm registration."""
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import brute_force_mask

from image_classification.models_lion import LionVisionTransformer
from lion.curves import curve_permutation, inverse_permutation

TINY = dict(img_size=16, patch_size=4, embed_dim=32, num_heads=2, depth=2, num_classes=4)


def literal_attention(attn, x):
    """docs/lion.md §1 written out literally (explicit gate products, no log space, no shared code)."""
    B, N, C = x.shape
    H, hd = attn.num_heads, C // attn.num_heads
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
    if attn.mask_type == "Lit":
        q, k = F.elu(q) + 1, F.elu(k) + 1
    else:
        r = lambda t: (F.silu(t) + 0.5) / (F.silu(t) + 0.5).norm(dim=-1, keepdim=True)  # noqa: E731
        q, k = r(q), r(k)

    def gate_mask(param, perm):
        if attn.mask_type == "Lit":
            return torch.ones(1, 1, N, N)
        if attn.mask_type == "Decay":
            a = torch.sigmoid(param)[None, :, None].expand(B, H, N)
        else:
            a = (1 - torch.sigmoid(param(x)[:, perm])).transpose(1, 2).clone()
            a[..., 0] = 1.0
        return brute_force_mask(a)

    if attn.order == "Normal":
        M = gate_mask(getattr(attn, "a_i", None), torch.arange(N))
    else:
        M = 0
        for curve, p in (("s", getattr(attn, "a_i", None)), ("sr", getattr(attn, "a2_i", None))):
            perm = curve_permutation(N, curve)
            inv = inverse_permutation(perm)
            M = M + 0.5 * gate_mask(p, perm)[..., inv, :][..., :, inv]
    A = (q @ k.transpose(-1, -2)) * attn.scale * M
    y = (A @ v) / (A.sum(-1, keepdim=True) + 1e-6)
    return attn.proj(y.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("mask_type", ["Lit", "Decay", "Selective"])
@pytest.mark.parametrize("order", ["Normal", "S"])
def test_attention_matches_literal_spec(mask_type, order):
    torch.manual_seed(0)
    m = LionVisionTransformer(**TINY, mask_type=mask_type, order=order).double().eval()
    attn = m.blocks[0].attn
    x = torch.randn(2, 17, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = literal_attention(attn, x)
        for fmt in ("Attention", "RNN", "Chunk"):
            attn.set_format(fmt, 3)
            torch.testing.assert_close(attn(x), expected, rtol=1e-10, atol=1e-12)


PUBLISHED_KEYS = {
    "Lit": [],
    "Decay": ["blocks.{n}.attn.a_i"],
    "Selective": ["blocks.{n}.attn.a_i.weight", "blocks.{n}.attn.a_i.bias"],
}


@pytest.mark.parametrize("mask_type", ["Lit", "Decay", "Selective"])
@pytest.mark.parametrize("order", ["Normal", "S"])
@pytest.mark.parametrize("pos_emb", [False, True])
def test_state_dict_names_are_the_published_ones(mask_type, order, pos_emb):
    m = LionVisionTransformer(**TINY, mask_type=mask_type, order=order, pos_emb=pos_emb)
    expected = {"cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
                "head.weight", "head.bias"} | ({"pos_embed"} if pos_emb else set())
    for n in range(TINY["depth"]):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{n}.{part}.weight", f"blocks.{n}.{part}.bias"}
        gate_keys = [k.format(n=n) for k in PUBLISHED_KEYS[mask_type]]
        expected |= set(gate_keys)
        if order == "S":
            expected |= {k.replace("a_i", "a2_i") for k in gate_keys}
    assert set(m.state_dict()) == expected
    if mask_type == "Decay":
        assert m.blocks[0].attn.a_i.shape == (TINY["num_heads"],)
    # a state dict with these names (e.g. from the published code) loads strictly into a fresh model
    fresh = LionVisionTransformer(**TINY, mask_type=mask_type, order=order, pos_emb=pos_emb)
    fresh.load_state_dict({k: torch.randn_like(v) for k, v in m.state_dict().items()}, strict=True)


@pytest.mark.parametrize("fmt", ["Attention", "Chunk"])
@pytest.mark.parametrize("mask_type,order", [("Lit", "Normal"), ("Decay", "S"), ("Selective", "Normal"),
                                             ("Selective", "S")])
def test_gradients_reach_every_parameter(fmt, mask_type, order):
    torch.manual_seed(0)
    m = LionVisionTransformer(**TINY, mask_type=mask_type, order=order, format=fmt, chunk_size=5, pos_emb=True,
                              cls_tok=True)
    F.cross_entropy(m(torch.randn(2, 3, 16, 16)), torch.tensor([0, 3])).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_format_switch_keeps_parameters():
    m = LionVisionTransformer(**TINY, mask_type="Selective", order="S").eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        y = m(x)
        m.set_format("RNN")
        y_rnn = m(x)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    torch.testing.assert_close(y_rnn, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mask_type="decay"), "mask_type must be one of 'Lit', 'Decay', 'Selective'"),
    (dict(order="Snake"), "order must be one of 'Normal', 'S'"),
    (dict(format="Recurrent"), "format must be one of 'Attention', 'RNN', 'Chunk'"),
    (dict(chunk_size=0), "chunk_size must be an integer ≥ 1"),
    (dict(chunk_size=-3), "chunk_size must be an integer ≥ 1"),
    (dict(order="S", img_size=(16, 32)), "order='S' needs a square patch grid"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LionVisionTransformer(**{**TINY, **kwargs})


def test_bad_format_on_built_model():
    m = LionVisionTransformer(**TINY)
    with pytest.raises(ValueError, match="format must be one of"):
        m.set_format("chunk")
    with pytest.raises(ValueError, match="chunk_size must be"):
        m.set_format("Chunk", 0)


def test_timm_registry_and_overrides():
    for name in ("lion_tiny_patch16_224", "lion_small_patch16_224", "lion_base_patch16_224"):
        assert name in timm.list_models("lion_*")
    m = timm.create_model("lion_tiny_patch16_224", depth=2, img_size=64, embed_dim=48, mask_type="Selective",
                          order="S", format="Chunk", chunk_size=7, num_classes=3, drop_path_rate=0.1)
    assert len(m.blocks) == 2 and m.embed_dim == 48 and m.blocks[1].attn.format == "Chunk"
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert m.forward_head(m.forward_features(torch.randn(1, 3, 64, 64)), pre_logits=True).shape == (1, 48)


@pytest.mark.parametrize("name,millions", [("lion_tiny_patch16_224", 5.7), ("lion_small_patch16_224", 22.0),
                                           ("lion_base_patch16_224", 86.4)])
def test_parameter_counts(name, millions):
    n = sum(p.numel() for p in timm.create_model(name).parameters()) / 1e6
    assert abs(n - millions) < 0.1, n


def test_any_square_resolution_at_inference():
    m = LionVisionTransformer(**TINY, mask_type="Decay", order="S", pos_emb=True).eval()
    with torch.no_grad():
        for size in (16, 24, 40):
            ys = []
            for fmt in ("Attention", "Chunk", "RNN"):
                m.set_format(fmt, 8)
                ys.append(m(torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))))
            torch.testing.assert_close(ys[1], ys[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ys[2], ys[0], rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="square"):
            m(torch.randn(1, 3, 16, 24))
        with pytest.raises(ValueError, match="square"):  # 2×8 = 16 patches: a square count, not a square grid
            m(torch.randn(1, 3, 8, 32))


def test_curve_permutation_cached_and_traced_without_the_cache(monkeypatch):
    """Eager calls share one cached tensor per order; under torch.compile the permutation is built by plain Python
    (dynamo skips lru_cache wrappers with a warning), equal to the cached one."""
    import lion.curves as curves

    first = curve_permutation(17, "sr", 1)
    assert curve_permutation(17, "sr", 1) is first
    cache_calls = []
    cached = curves._cached_permutation
    monkeypatch.setattr(curves, "_cached_permutation", lambda *a: cache_calls.append(a) or cached(*a))
    traced = torch.compile(lambda x: x[:, curve_permutation(17, "sr", 1)], fullgraph=True, backend="eager")
    x = torch.randn(2, 17)
    assert torch.equal(traced(x), x[:, first]) and not cache_calls
