"""LION BERT (mlm/src/bert_layers.py): builds, forms agree with padding, gradients, save/load, published names."""
import pytest
import torch

from mlm.src.bert_layers import LionBertConfig, LionBertForMaskedLM, LionBertForSequenceClassification, LionBertModel
from mlm.src.checkpoint_files import published_config
from mlm.src.checkpoint_loading import load_published

ARCHS = ["attention", "lion-lit", "lion-d", "lion-s"]
LION_ARCHS = ARCHS[1:]


def tiny_config(arch, **kw):
    fields = dict(arch_type=arch, vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64, layer_norm_after=arch == "lion-lit",
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    fields.update(kw)
    return LionBertConfig(**fields)


def padded_batch(seed=0, length=13):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (3, length), generator=g)
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("arch", ARCHS)
def test_each_arch_builds_with_published_parameter_names(arch):
    keys = set(LionBertForMaskedLM(tiny_config(arch)).state_dict())
    self_attn = {k.split("layer.1.attention.self.")[1] for k in keys if "layer.1.attention.self." in k}
    expected = {f"{p}.{t}" for p in ("query", "key", "value") for t in ("weight", "bias")}
    expected |= {"ai"} if arch == "lion-d" else set()
    expected |= {"Wa_i.weight", "Wa_i.bias"} if arch == "lion-s" else set()
    expected |= {"layer_norm.weight", "layer_norm.bias"} if arch == "lion-lit" else set()
    assert self_attn == expected
    assert ("bert.embeddings.position_embeddings.weight" in keys) == (arch in ("attention", "lion-lit"))
    for k in ("cls.predictions.transform.dense.weight", "cls.predictions.decoder.weight", "cls.predictions.bias",
              "bert.encoder.layer.0.attention.output.dense.weight", "bert.encoder.layer.0.intermediate.dense.weight",
              "bert.encoder.layer.0.output.LayerNorm.weight"):
        assert k in keys
    model = LionBertForMaskedLM(tiny_config(arch))
    if arch == "lion-d":
        assert model.bert.encoder.layer[0].attention.self.ai.shape == (2,)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


@pytest.mark.parametrize("arch", LION_ARCHS)
def test_rnn_and_chunk_forms_equal_parallel_with_padding(arch):
    torch.manual_seed(0)
    # a large init range so that attention, not the residual path, dominates the hidden states
    model = LionBertModel(tiny_config(arch, initializer_range=0.3)).double().eval()
    ids, mask = padded_batch()
    real = mask.bool()
    ref = model(ids, mask).last_hidden_state
    layer = model.encoder.layer[0].attention.self
    h = torch.randn(3, 13, 32, dtype=torch.float64)
    ref_attn = layer(h, real)[0]
    assert ref_attn[real].abs().mean() > 1e-2
    for form, chunk in [("rnn", None), ("chunk", 1), ("chunk", 4), ("chunk", 5), ("chunk", 32)]:
        model.set_form(form, chunk)
        torch.testing.assert_close(layer(h, real)[0][real], ref_attn[real], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model(ids, mask).last_hidden_state[real], ref[real], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch,form", [("attention", "parallel")] +
                         [(a, f) for a in LION_ARCHS for f in ("parallel", "rnn", "chunk")])
def test_padding_never_changes_real_tokens(arch, form):
    torch.manual_seed(1)
    model = LionBertForMaskedLM(tiny_config(arch, initializer_range=0.3, form=form, chunk_size=3)).double().eval()
    ids, mask = padded_batch(seed=2)
    padded = model(input_ids=ids, attention_mask=mask).logits
    garbage = ids.masked_fill(mask == 0, 5)  # other content in the padded slots must not matter either
    torch.testing.assert_close(model(input_ids=garbage, attention_mask=mask).logits[mask.bool()], padded[mask.bool()])
    for row, n in [(1, 8), (2, 3)]:
        alone = model(input_ids=ids[row:row + 1, :n]).logits[0]
        torch.testing.assert_close(alone, padded[row, :n], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_every_parameter(arch):
    torch.manual_seed(0)
    model = LionBertForMaskedLM(tiny_config(arch, attention_probs_dropout_prob=0.1)).train()
    ids, mask = padded_batch()
    labels = ids.masked_fill(mask == 0, -100)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_masked_logits_only_matches_full_logits():
    torch.manual_seed(0)
    model = LionBertForMaskedLM(tiny_config("lion-s")).eval()
    ids, mask = padded_batch()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[2, 0] = 4, 9, 11
    full = model(input_ids=ids, attention_mask=mask, labels=labels)
    sparse = model(input_ids=ids, attention_mask=mask, labels=labels, masked_logits_only=True)
    torch.testing.assert_close(sparse.logits, full.logits[labels != -100])
    torch.testing.assert_close(sparse.loss, full.loss)


def test_masked_logits_only_finds_the_masked_tokens_once():
    """The masked positions are found once a step (one nonzero: on a GPU, one host-device sync), not once per
    boolean index in the forward and again in its backward; the gradients equal the full head's."""
    from torch.utils._python_dispatch import TorchDispatchMode
    aten = torch.ops.aten

    class CountNonzero(TorchDispatchMode):
        """nonzero calls, and boolean-mask indexing (which runs a nonzero of its own)."""
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            packet = func.overloadpacket
            if packet in (aten.nonzero, aten.masked_select):
                CountNonzero.calls += 1
            elif packet in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_):
                CountNonzero.calls += any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = LionBertForMaskedLM(tiny_config("lion-d"))
    ids, mask = padded_batch()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[2, 0] = 4, 9, 11
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with CountNonzero():
        model(input_ids=ids, attention_mask=mask, labels=labels, masked_logits_only=True).loss.backward()
    assert CountNonzero.calls == 1
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, full[n], msg=n)


@pytest.mark.parametrize("cls,kw", [(LionBertForMaskedLM, {}), (LionBertForSequenceClassification, {"num_labels": 3})])
def test_save_pretrained_from_pretrained_identical(tmp_path, cls, kw):
    torch.manual_seed(0)
    model = cls(tiny_config("lion-s", form="chunk", chunk_size=4, **kw)).eval()
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path).eval()
    assert loaded.config.arch_type == "lion-s" and loaded.config.form == "chunk" and loaded.config.chunk_size == 4
    ids, mask = padded_batch()
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits,
                       loaded(input_ids=ids, attention_mask=mask).logits)


def test_classification_regression_and_labels():
    torch.manual_seed(0)
    reg = LionBertForSequenceClassification(tiny_config("lion-d", num_labels=1))
    ids, mask = padded_batch()
    out = reg(input_ids=ids, attention_mask=mask, labels=torch.tensor([0.1, 2.0, -1.0]))
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits[:, 0], torch.tensor([0.1, 2.0, -1.0])))
    clf = LionBertForSequenceClassification(tiny_config("lion-lit", num_labels=3))
    out = clf(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2, 1]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2, 1])))
    assert "classifier.weight" in clf.state_dict() and "bert.pooler.dense.weight" in clf.state_dict()


def test_bad_config_values_fail_clearly():
    with pytest.raises(ValueError, match="arch_type must be one of"):
        tiny_config("nova")
    with pytest.raises(ValueError, match="form must be one of"):
        tiny_config("lion-d", form="scan")
    with pytest.raises(ValueError, match="form must be one of"):
        LionBertModel(tiny_config("lion-d")).set_form("scan")


def test_lion_form_names_are_aliases_of_the_published_ones():
    assert tiny_config("lion-d", form="attention").form == "parallel"
    model = LionBertModel(tiny_config("lion-d"))
    model.set_form("Recurrent")
    assert model.config.form == "rnn"


PUBLISHED_CONFIG = {  # a LIONS-EPFL / M2-BERT-style config.json with the legacy arch name of lion-s
    "architectures": ["BertForMaskedLM"], "model_type": "bert", "arch_type": "nova-inputdep",
    "vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "max_position_embeddings": 64, "alibi_starting_size": 512, "position_embedding_type": "absolute",
    "torch_dtype": "float32", "transformers_version": "4.31.0",
}


def published_state_dict(config):
    """Weights under the published names (decoder weight stored once, as HF tying saves it)."""
    torch.manual_seed(3)
    sd = LionBertForMaskedLM(published_config(config)).state_dict()
    sd = {k: v.clone() for k, v in sd.items() if k != "cls.predictions.decoder.weight"}
    return sd


def test_published_checkpoint_loads_strictly_and_maps_legacy_names():
    sd = published_state_dict(PUBLISHED_CONFIG)
    model = load_published(PUBLISHED_CONFIG, sd).eval()
    assert isinstance(model, LionBertForMaskedLM) and model.config.arch_type == "lion-s"
    for name, value in sd.items():
        assert torch.equal(model.state_dict()[name], value), name
    legacy = {"linear_attention": "lion-lit", "nova": "lion-d", "nova-inputdep": "lion-s", "softmax": "attention"}
    for old, new in legacy.items():
        assert published_config({**PUBLISHED_CONFIG, "arch_type": old}).arch_type == new
    # a composer-prefixed, fused-Wqkv (M2-BERT layout) copy of the same weights gives the same model
    fused = {}
    for k, v in sd.items():
        if ".attention.self.query." in k:
            kind = k.rsplit(".", 1)[1]
            base = k.split(".query.")[0]
            fused[f"model.{base}.Wqkv.{kind}"] = torch.cat([sd[f"{base}.{p}.{kind}"]
                                                            for p in ("query", "key", "value")])
        elif ".attention.self.key." not in k and ".attention.self.value." not in k:
            fused["model." + k] = v
    ids, mask = padded_batch()
    published = load_published(PUBLISHED_CONFIG, fused).eval()
    torch.testing.assert_close(published(input_ids=ids, attention_mask=mask).logits,
                               model(input_ids=ids, attention_mask=mask).logits)


def test_published_checkpoint_with_a_wrong_key_is_refused():
    sd = published_state_dict(PUBLISHED_CONFIG)
    sd["bert.encoder.layer.0.attention.self.ai"] = torch.zeros(2)  # a lion-d parameter in a lion-s checkpoint
    with pytest.raises(ValueError, match="do not fit the config.s lion-s model: Unexpected key"):
        load_published(PUBLISHED_CONFIG, sd)
    sd = published_state_dict(PUBLISHED_CONFIG)
    del sd["bert.encoder.layer.1.attention.self.Wa_i.weight"]
    with pytest.raises(ValueError, match="do not fit the config.s lion-s model: Missing key"):
        load_published(PUBLISHED_CONFIG, sd)


def test_classifier_starts_from_an_mlm_checkpoint_and_refuses_a_mismatched_one(tmp_path):
    from mlm.src.create_bert import create_bert_classification

    torch.manual_seed(0)
    mlm = LionBertForMaskedLM(tiny_config("lion-d"))
    mlm.save_pretrained(tmp_path / "mlm")
    sizes = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    clf = create_bert_classification(2, model_config={"arch_type": "lion-d", **sizes},
                                     pretrained_checkpoint=str(tmp_path / "mlm")).model
    for name, value in mlm.bert.state_dict().items():
        assert torch.equal(clf.bert.state_dict()[name], value), name
    with pytest.raises(ValueError, match="does not match the model"):
        create_bert_classification(2, model_config={"arch_type": "lion-s", **sizes},
                                   pretrained_checkpoint=str(tmp_path / "mlm"))
