"""timm's model conventions (its tests/test_models.py checks) on small LION ViTs, with DeiT as the control.

Every check runs on ``deit_tiny_patch16_224`` made small through the same kwargs, so a failure on LION alone is a
LION defect and not a wrong expectation.
"""
import itertools

import pytest
import timm
import timm.optim
import torch
from timm.layers import get_notrace_functions, get_notrace_modules, resample_abs_pos_embed
from timm.models import get_pretrained_cfg
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import image_classification.models_lion  # noqa: F401  (registers lion_*)

SMALL = dict(depth=2, img_size=32, patch_size=8, embed_dim=32, num_heads=2, num_classes=5)
GRID = 4  # 32 / 8
CONTROL = ("deit_tiny_patch16_224", {})
LIONS = [("lion_tiny_patch16_224", dict(mask_type=m, order=o))
         for m, o in itertools.product(("Lit", "Decay", "Selective"), ("Normal", "S"))]
MODELS = [CONTROL] + LIONS
IDS = ["deit"] + [f"{kw['mask_type']}-{kw['order']}" for _, kw in LIONS]
FORMATS = ("Attention", "RNN", "Chunk")


def create(name, kw, seed=0, **extra):
    torch.manual_seed(seed)
    return timm.create_model(name, **{**SMALL, **kw, **extra})


def forms(model):
    """The LION forms to try on ``model`` (one pass for the control)."""
    if not hasattr(model, "set_format"):
        yield "n/a"
        return
    for fmt in FORMATS:
        model.set_format(fmt, 5)
        yield fmt


def image(batch=2, size=32, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,kw", MODELS, ids=IDS)
def test_forward_backward_reach_every_parameter(name, kw):
    model = create(name, kw, num_classes=42).train()
    out = model(image())
    assert out.shape == (2, 42) and not out.isnan().any()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("name,kw", MODELS, ids=IDS)
def test_features_only_shapes_and_reductions(name, kw):
    x = image()
    model = create(name, kw, features_only=True, out_indices=(0, 1)).eval()
    assert model.feature_info.channels() == [32, 32] and model.feature_info.reduction() == [8, 8]
    assert model.feature_info.module_name() == ["blocks.0", "blocks.1"]
    reference = None
    with torch.no_grad():
        for _ in forms(model.model):  # the getter runs forward_intermediates: every form gives the same maps
            feats = model(x)
            assert [f.shape for f in feats] == [(2, 32, GRID, GRID)] * 2
            reference = reference or feats
            for f, r in zip(feats, reference):  # every LION form gives the same maps
                torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-5)
    # timm's default: the last three blocks
    assert len(create(name, kw, depth=4, features_only=True).feature_info.channels()) == 3
    if name != CONTROL[0]:  # LION clamps the default to the depth (DeiT refuses a depth-2 model)
        assert len(create(name, kw, features_only=True).feature_info.channels()) == 2


@pytest.mark.parametrize("name,kw", MODELS, ids=IDS)
def test_forward_intermediates(name, kw):
    model = create(name, kw).eval()
    x = image()
    with torch.no_grad():
        tokens = model.forward_features(x)
        final, maps = model.forward_intermediates(x, indices=[0, 1], norm=True)
        torch.testing.assert_close(final, tokens)
        assert [m.shape for m in maps] == [(2, 32, GRID, GRID)] * 2
        # NCHW maps are the normed patch tokens in raster order; the last one is forward_features'
        torch.testing.assert_close(maps[1].flatten(2).transpose(1, 2), tokens[:, 1:])
        nlc = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)
        assert len(nlc) == 1 and nlc[0].shape == (2, GRID * GRID, 32)
        torch.testing.assert_close(model.norm(nlc[0]), tokens[:, 1:])
        (_, prefix), = model.forward_intermediates(x, indices=[-1], output_fmt="NLC", norm=True,
                                                       return_prefix_tokens=True, intermediates_only=True)
        torch.testing.assert_close(prefix, tokens[:, :1])
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)[0]
        assert model.prune_intermediate_layers([0], prune_norm=True) == [0]
        assert len(model.blocks) == 1 and model.num_classes == 0
        torch.testing.assert_close(model.forward_intermediates(x, indices=[0], intermediates_only=True)[0], first)
        torch.testing.assert_close(first.flatten(2).transpose(1, 2), model.forward_features(x)[:, 1:])
        with pytest.raises(Exception, match="out of range"):
            model.forward_intermediates(x, indices=[3])


@pytest.mark.parametrize("name,kw", MODELS, ids=IDS)
def test_grad_checkpointing_gives_equal_outputs_and_grads(name, kw):
    x = image()
    results = []
    for enable in (False, True):
        model = create(name, kw, drop_path_rate=0.2).train()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(3)  # same stochastic-depth draws (checkpointing replays the RNG state)
        out = model(x)
        torch.manual_seed(4)
        maps = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        (out.square().mean() + sum(m.mean() for m in maps)).backward()
        results.append((out, maps, {n: p.grad for n, p in model.named_parameters()}))
    (out0, maps0, g0), (out1, maps1, g1) = results
    torch.testing.assert_close(out1, out0)
    for a, b in zip(maps1, maps0):
        torch.testing.assert_close(a, b)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], msg=n)


@pytest.mark.parametrize("name,kw", MODELS, ids=IDS)
def test_layer_decay_scales_each_block(name, kw):
    model = create(name, kw, depth=3)
    opt = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scale = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            scale[names[id(p)]] = (group["lr_scale"], group["weight_decay"])
    assert len(scale) == len(names)
    # timm's layout: stem 0, blocks 1..3 (the final norm joins the last block), head 4; lr scale 0.5 ** (4 - id)
    assert scale["patch_embed.proj.weight"][0] == scale["cls_token"][0] == 0.5 ** 4
    for i in range(3):
        assert {s for n, (s, _) in scale.items() if n.startswith(f"blocks.{i}.")} == {0.5 ** (3 - i)}
    assert scale["norm.weight"][0] == 0.5 and scale["head.weight"][0] == 1.0
    assert scale["cls_token"][1] == 0.0 and scale["blocks.0.attn.qkv.weight"][1] == 0.05


@pytest.mark.parametrize("name,kw", [CONTROL, LIONS[0]], ids=["deit", "lion"])
def test_default_cfg(name, kw):
    model = create(name, kw)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["architecture"] == name
    for key in ("input_size", "num_classes", "mean", "std", "interpolation", "crop_pct", "first_conv",
                "classifier", "license"):
        assert cfg.get(key) is not None, key
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    assert get_pretrained_cfg(name) is not None
    data = timm.data.resolve_data_config(model=model)
    assert data["input_size"] == (3, 224, 224) and data["interpolation"] == "bicubic"


def test_lion_pretrained_cfgs_are_registered():
    for name in ("lion_tiny_patch16_224", "lion_small_patch16_224", "lion_base_patch16_224"):
        cfg = get_pretrained_cfg(name).to_dict()
        assert cfg["first_conv"] == "patch_embed.proj" and cfg["classifier"] == "head"
        assert cfg["num_classes"] == 1000 and cfg["input_size"] == (3, 224, 224)
        assert not cfg["fixed_input_size"]  # LION takes any input size
    with pytest.raises(ValueError, match="pretrained_cfg_overlay=dict\\(file=PATH\\)"):
        timm.create_model("lion_tiny_patch16_224", pretrained=True, **SMALL)


LION_SEL = dict(mask_type="Selective", order="S", pos_emb=True)


def test_pretrained_local_file(tmp_path):
    source = create("lion_tiny_patch16_224", LION_SEL, seed=1)
    state = source.state_dict()
    x = image()
    bare, training = tmp_path / "bare.pth", tmp_path / "checkpoint.pth"
    torch.save(state, bare)
    torch.save({"model": state, "epoch": 3, "args": {"lr": 1e-3}}, training)  # DeiT-style training checkpoint
    for path in (bare, training):
        model = create("lion_tiny_patch16_224", LION_SEL, seed=2, pretrained=True,
                       pretrained_cfg_overlay=dict(file=str(path), num_classes=5))
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), source.eval()(x))
    # a {'model': ...} dict given directly, a new head size (head dropped), a larger input (pos_embed resampled)
    model = create("lion_tiny_patch16_224", LION_SEL, seed=2, pretrained=True, num_classes=7, img_size=48,
                   pretrained_cfg_overlay=dict(state_dict={"model": state}))
    assert model.head.out_features == 7 and not torch.equal(model.head.weight[:5], state["head.weight"])
    assert torch.equal(model.blocks[1].attn.a2_i.weight, state["blocks.1.attn.a2_i.weight"])
    torch.testing.assert_close(model.pos_embed, resample_abs_pos_embed(state["pos_embed"], [6, 6], [4, 4]))
    # features_only loads the body too
    feats = create("lion_tiny_patch16_224", LION_SEL, seed=2, pretrained=True, features_only=True,
                   pretrained_cfg_overlay=dict(file=str(bare)))
    assert torch.equal(feats.model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    # a checkpoint of another configuration fails with a message, even where timm itself loads non-strictly
    with pytest.raises(ValueError, match="does not fit the model.*pos_embed"):
        create("lion_tiny_patch16_224", dict(LION_SEL, pos_emb=False), pretrained=True, num_classes=7,
               pretrained_cfg_overlay=dict(file=str(bare)))


@pytest.mark.parametrize("name,kw", [CONTROL, ("lion_tiny_patch16_224", LION_SEL)], ids=["deit", "lion"])
def test_global_pool_variants(name, kw):
    x = image()
    model = create(name, kw).eval()
    no_fc_norm = dict(fc_norm=False) if name == CONTROL[0] else {}  # timm's ViT moves the norm after 'avg' pooling
    assert model.head_hidden_size == model.num_features == 32
    with torch.no_grad():
        expected = {"avg": lambda t: t[:, 1:].mean(1), "token": lambda t: t[:, 0]}
        for pool, want in expected.items():
            model.reset_classifier(0, pool)
            torch.testing.assert_close(model(x), want(model.forward_features(x)))
            built = create(name, kw, global_pool=pool, num_classes=0, **no_fc_norm).eval()
            torch.testing.assert_close(built(x), want(built.forward_features(x)))
        model.reset_classifier(3, "")
        assert model.head.out_features == 3
        unpooled = create(name, kw, global_pool="", num_classes=0).eval()
        assert unpooled(x).shape == (2, 1 + GRID * GRID, 32)
        # dynamic_img_size=True: another resolution, position embedding resampled
        assert create(name, kw, dynamic_img_size=True).eval()(image(size=48)).shape == (2, 5)


def test_lion_pooling_default_and_cls_tok():
    x = image()
    with torch.no_grad():
        model = create("lion_tiny_patch16_224", LION_SEL, num_classes=0).eval()
        assert model.global_pool == "avg_all" and not model.cls_tok  # the published pooling
        torch.testing.assert_close(model(x), model.forward_features(x).mean(1))
        token = create("lion_tiny_patch16_224", LION_SEL, num_classes=0, cls_tok=True).eval()
        assert token.global_pool == "token" and token.cls_tok
        torch.testing.assert_close(token(x), token.forward_features(x)[:, 0])
        model.reset_classifier(0, "token")
        assert model.cls_tok
        model.reset_classifier(0, "avg_all")
        torch.testing.assert_close(model(x), model.forward_features(x).mean(1))
    with pytest.raises(ValueError, match="cls_tok=True means global_pool='token'"):
        create("lion_tiny_patch16_224", LION_SEL, cls_tok=True, global_pool="avg")
    with pytest.raises(ValueError, match="global_pool must be one of 'avg_all', 'avg', 'token'"):
        create("lion_tiny_patch16_224", LION_SEL, global_pool="mean")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(0, "cls")
    fixed = create("lion_tiny_patch16_224", LION_SEL, dynamic_img_size=False).eval()
    with pytest.raises(ValueError, match=r"x must be \(32, 32\) images \(dynamic_img_size=False\), got \(48, 48\)"):
        fixed(image(size=48))


@pytest.mark.parametrize("name,kw", MODELS, ids=IDS)
def test_fx_trace_equals_eager(name, kw):
    """timm's FX check: trace with timm's leaf modules and functions, the graph's output equals eager's."""
    model = create(name, kw).eval()
    x = image()
    # timm 1.0.31's ViT forward has attn_mask / is_causal arguments, which must be fixed to trace it
    concrete = {"attn_mask": None, "is_causal": False} if name == CONTROL[0] else None
    tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer, concrete_args=concrete)
    traced = create_feature_extractor(model, [eval_nodes[-1]], tracer_kwargs=tracer, concrete_args=concrete)
    with torch.no_grad():
        torch.testing.assert_close(traced(x)[eval_nodes[-1]], model(x))
        if hasattr(model, "set_format"):  # the attention is a leaf: a format switch reaches the traced graph
            model.set_format("RNN")
            torch.testing.assert_close(traced(x)[eval_nodes[-1]], model(x))


# two LION variants (the full trace check above covers every mask and order); DeiT's own fx features fail in
# timm 1.0.31 (its forward's is_causal argument cannot be traced)
@pytest.mark.parametrize("name,kw", [LIONS[2], LIONS[5]], ids=[IDS[3], IDS[6]])
def test_fx_features_only(name, kw):
    model = create(name, kw).eval()
    fx_blocks = create(name, kw, features_only=True, feature_cls="fx", out_indices=(0, 1)).eval()  # same weights
    x = image()
    with torch.no_grad():
        eager = model.forward_intermediates(x, indices=[0, 1], output_fmt="NLC", return_prefix_tokens=True,
                                            intermediates_only=True)
        for got, (patch, prefix) in zip(fx_blocks(x), eager):  # fx gives the raw block outputs, cls first
            torch.testing.assert_close(got, torch.cat([prefix, patch], 1))


@pytest.mark.parametrize("name,kw", [CONTROL, LIONS[3]], ids=["deit", "lion"])
def test_torchscript_works_or_refuses_clearly(name, kw):
    with timm.layers.set_layer_config(scriptable=True):
        model = create(name, kw).eval()
    if name == CONTROL[0]:
        scripted = torch.jit.script(model)
        with torch.no_grad():
            torch.testing.assert_close(scripted(image()), model(image()))
        return
    with pytest.raises(RuntimeError, match="cannot be compiled with torch.jit.script.*FX"):
        torch.jit.script(model)
    with pytest.raises(RuntimeError, match="torch.jit.script"):
        torch.jit.script(model.blocks[0])
