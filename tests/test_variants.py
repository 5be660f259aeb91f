"""lion.variants: a fourth mask type, added by one ``register`` call (a product of LION-D's per-head gate and LION-S's
per-token gate), builds a tiny ViT and a tiny BERT that train, is the product of its gates, and is found again from
a checkpoint's parameter names."""
import pytest
import torch

from image_classification.models_lion import LionVisionTransformer
from lion import variants
from lion.variants import DECAY, PER_HEAD, SELECTIVE, Gate, Variant
from mlm.src.bert_config import LionBertConfig, arch_types
from mlm.src.bert_layers import LionBertForMaskedLM
from mlm.src.glue.checkpoint import infer_arch_type

TINY_VIT = dict(img_size=16, patch_size=4, embed_dim=32, num_heads=2, depth=2, num_classes=4)
TINY_BERT = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture
def product_mask():
    """λ_h · a_t: a per-head gate (own parameter names) times LION-S's per-token gate."""
    head = Gate(PER_HEAD, {"vision": ("b_i", "b2_i"), "mlm": ("bi",)}, DECAY.log_gates)
    variant = variants.register(Variant({"vision": "DecaySelective", "mlm": "lion-ds"},
                                        {"vision": "normalized_silu", "mlm": None}, (head, SELECTIVE)))
    yield variant
    variants.unregister(variant)


def _grads_reach(model, names):
    """Every parameter of the gates ``names`` (a per-head parameter, or a projection's weight) gets a gradient."""
    seen = set()
    for name, p in model.named_parameters():
        gate = next((part for part in name.split(".")[-2:] if part in names), None)
        if gate is not None:
            seen.add(gate)
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert seen == names


@pytest.mark.parametrize("order", ["Normal", "S"])
def test_vision_model_with_a_registered_mask_type(product_mask, order):
    torch.manual_seed(0)
    model = LionVisionTransformer(**TINY_VIT, mask_type="DecaySelective", order=order)
    params = {"b_i", "a_i"} | ({"b2_i", "a2_i"} if order == "S" else set())
    assert params <= {n.split(".")[3] for n in model.state_dict() if n.startswith("blocks.0.attn.")}
    x = torch.randn(2, 3, 16, 16)
    y = model(x)
    y.square().sum().backward()
    _grads_reach(model, params)
    with torch.no_grad():  # every form of the product mask gives the same output
        model.set_format("Chunk", 3)
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-6)
        model.set_format("RNN")
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-6)


def test_product_with_a_unit_head_gate_is_the_token_gate(product_mask):
    """With λ_h = σ(40) (1 to fp32 rounding), the product mask is LION-S's: the model equals a Selective model with
    the same weights."""
    torch.manual_seed(0)
    product = LionVisionTransformer(**TINY_VIT, mask_type="DecaySelective", order="S")
    selective = LionVisionTransformer(**TINY_VIT, mask_type="Selective", order="S")
    state = product.state_dict()
    for key in [k for k in state if k.endswith(("attn.b_i", "attn.b2_i"))]:
        del state[key]
    selective.load_state_dict(state, strict=True)
    with torch.no_grad():
        for blk in product.blocks:
            blk.attn.b_i.fill_(40.0)
            blk.attn.b2_i.fill_(40.0)
        x = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(product(x), selective(x), rtol=1e-5, atol=1e-6)


def test_bert_with_a_registered_mask_type(product_mask):
    assert "lion-ds" in arch_types()
    torch.manual_seed(0)
    config = LionBertConfig(arch_type="lion-ds", **TINY_BERT)
    assert config.position_embedding_type == "none"  # a gated mask encodes position
    model = LionBertForMaskedLM(config)
    ids = torch.randint(1, 97, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    _grads_reach(model, {"bi", "Wa_i"})
    assert infer_arch_type(model.state_dict()) == "lion-ds"
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        model.set_form("chunk", 4)
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, logits, rtol=1e-5, atol=1e-5)


def test_registry_refuses_a_taken_name_and_forgets_an_unregistered_type(product_mask):
    with pytest.raises(ValueError, match="already registered"):
        variants.register(Variant({"vision": "Decay", "mlm": "lion-x"}, {"vision": None, "mlm": None}))
    variants.unregister(product_mask)
    try:
        with pytest.raises(ValueError, match="mask_type must be one of 'Lit', 'Decay', 'Selective'"):
            LionVisionTransformer(**TINY_VIT, mask_type="DecaySelective")
        with pytest.raises(ValueError, match="arch_type must be one of"):
            LionBertConfig(arch_type="lion-ds", **TINY_BERT)
    finally:
        variants.register(product_mask)


def test_published_names_and_parameters_of_the_built_in_types():
    assert variants.names("vision") == ("Lit", "Decay", "Selective")
    assert arch_types() == ("attention", "lion-lit", "lion-d", "lion-s", "hydra")
    assert variants.legacy_names("mlm")["nova-inputdep"] == "lion-s"
    assert variants.variant("mlm", "lion-d").param_names("mlm") == ("ai",)
    assert variants.variant("vision", "Selective").param_names("vision", 1) == ("a2_i",)
    assert infer_arch_type({"bert.encoder.layer.0.mixer.in_proj.weight": torch.zeros(1)}) == "hydra"
