"""lion.forms: one canonical set of form names and one alias table, read by lion_attention and both model families."""
import pytest

from image_classification.models_lion import LionVisionTransformer
from lion.forms import FORMS, canonical_form, published_form
from mlm.src.bert_config import LionBertConfig


def test_every_spelling_maps_to_one_canonical_name():
    for spelling, form in [("Attention", "attention"), ("parallel", "attention"), ("RNN", "rnn"),
                           ("Recurrent", "rnn"), ("CHUNK", "chunk")]:
        assert canonical_form(spelling) == form
        assert published_form(spelling, "vision") == ("Attention", "RNN", "Chunk")[FORMS.index(form)]
        assert published_form(spelling, "mlm") == ("parallel", "rnn", "chunk")[FORMS.index(form)]
    with pytest.raises(ValueError, match="form must be one of 'attention', 'rnn', 'chunk'"):
        canonical_form("scan")
    with pytest.raises(ValueError, match=r"form must be one of \['parallel', 'rnn', 'chunk', 'auto'\]"):
        published_form("scan", "mlm")


def test_both_families_take_any_spelling_in_set_form():
    model = LionVisionTransformer(img_size=16, patch_size=4, embed_dim=32, num_heads=2, depth=1, num_classes=4)
    model.set_form("parallel", 5)
    assert {(b.attn.format, b.attn.chunk_size) for b in model.blocks} == {("Attention", 5)}
    model.set_form("chunk")
    assert {(b.attn.format, b.attn.chunk_size) for b in model.blocks} == {("Chunk", 5)}
    assert LionBertConfig(arch_type="lion-d", form="Attention").form == "parallel"
    assert LionBertConfig(arch_type="lion-d", form="RECURRENT").form == "rnn"
