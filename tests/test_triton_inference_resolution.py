"""LION vision models at inference: any square input resolution (the patch grid and the ♮ curve orders follow the
input, the position embedding is interpolated when ``pos_emb``), and the chunk-size settings."""
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

import image_classification.models_lion  # noqa: F401  (registers lion_* in timm)


def _model(img_size, **kw):
    torch.manual_seed(0)
    return timm.create_model("lion_tiny_patch16_224", img_size=img_size, depth=1, num_classes=5, **kw).eval()


@pytest.mark.parametrize("mask_type,order", [("Decay", "S"), ("Selective", "S"), ("Selective", "Normal")])
def test_other_resolution_equals_model_built_for_it(mask_type, order):
    """A model built at 64 px, run at 96 px, equals the same weights built at 96 px (grid 6×6, its own curves)."""
    small, big = _model(64, mask_type=mask_type, order=order), _model(96, mask_type=mask_type, order=order)
    big.load_state_dict(small.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        for fmt in ("Attention", "RNN", "Chunk"):
            small.set_format(fmt, 8)
            torch.testing.assert_close(small(x), big(x), rtol=1e-4, atol=1e-5)


def test_pos_embed_is_interpolated_to_the_input_grid():
    small = _model(64, mask_type="Decay", order="S", pos_emb=True)
    big = _model(96, mask_type="Decay", order="S", pos_emb=True)
    state = small.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [6, 6], [4, 4], num_prefix_tokens=1)
    big.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        small.set_format("Chunk", 5)
        torch.testing.assert_close(small(x), big(x), rtol=1e-4, atol=1e-5)


def test_non_square_grid_is_refused_for_curve_orders():
    model = _model(64, mask_type="Decay", order="S")
    with pytest.raises(ValueError, match="square"):
        model(torch.randn(1, 3, 64, 96))


def test_chunk_size_defaults_to_automatic_and_set_format_keeps_it():
    from lion.checks import KEEP

    model = _model(64, mask_type="Decay")
    assert all(blk.attn.chunk_size is None for blk in model.blocks)  # None: the fused kernels pick the chunk
    model.set_format("Chunk", 7)
    model.set_format("RNN")  # KEEP by default
    assert model.blocks[0].attn.chunk_size == 7 and model.blocks[0].attn.format == "RNN"
    model.set_format("Chunk", None)
    assert model.blocks[0].attn.chunk_size is None
    model.set_format("Chunk", KEEP)
    assert model.blocks[0].attn.chunk_size is None
    with pytest.raises(ValueError, match="chunk_size must be an integer ≥ 1 or None"):
        model.set_format("Chunk", 0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        auto = model(x)
        model.set_format("Attention")
        torch.testing.assert_close(auto, model(x), rtol=1e-4, atol=1e-5)
