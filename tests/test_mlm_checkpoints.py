"""Published LION BERT checkpoints (docs/lion.md §2) load strictly and give the published outputs in every form.

The published side is built here from the documented semantics only: a state dict under the published names
(with the ``position_ids`` buffer and an always-present position table) and a float64 re-implementation of its
forward, independent of mlm/src/bert_layers.py.
"""
import datetime
import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from mlm.src.bert_config import LionBertConfig
from mlm.src.bert_layers import LionBertForMaskedLM, LionBertForSequenceClassification
from mlm.src.checkpoint_files import safe_torch_load
from mlm.src.checkpoint_loading import load_checkpoint, load_published, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
             max_position_embeddings=24, type_vocab_size=2, layer_norm_eps=1e-12)
LEGACY_NAME = {"attention": "attention", "lion-lit": "linear_attention", "lion-d": "nova", "lion-s": "nova-inputdep"}


def published_config(arch, positions, legacy=True):
    """A config.json as the published HF-BertConfig-based code writes it."""
    return {"architectures": ["BertForMaskedLM"], "model_type": "bert", "transformers_version": "4.31.0",
            "arch_type": LEGACY_NAME[arch] if legacy else arch, "layer_norm_after": arch == "lion-lit",
            "position_embedding_type": positions, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "pad_token_id": 0, "initializer_range": 0.02, "use_cache": True,
            "torch_dtype": "float32", **SIZES}


def published_state_dict(arch, seed=0, value_scale=1.0):
    """Random weights under the published names and shapes, the buffers the published embedding module saves."""
    g = torch.Generator().manual_seed(seed)
    h, v, i, heads = SIZES["hidden_size"], SIZES["vocab_size"], SIZES["intermediate_size"], SIZES["num_attention_heads"]

    def rand(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    def layer_norm(prefix):
        return {f"{prefix}.weight": 1 + rand(h, std=0.1), f"{prefix}.bias": rand(h, std=0.1)}

    def linear(prefix, out_f, in_f, scale=1.0):
        return {f"{prefix}.weight": rand(out_f, in_f) * scale, f"{prefix}.bias": rand(out_f, std=0.05) * scale}

    e = "bert.embeddings"
    sd = {f"{e}.word_embeddings.weight": rand(v, h, std=1.0),
          f"{e}.position_embeddings.weight": rand(SIZES["max_position_embeddings"], h, std=1.0),
          f"{e}.token_type_embeddings.weight": rand(SIZES["type_vocab_size"], h, std=1.0),
          f"{e}.position_ids": torch.arange(SIZES["max_position_embeddings"])[None], **layer_norm(f"{e}.LayerNorm")}
    for n in range(SIZES["num_hidden_layers"]):
        p = f"bert.encoder.layer.{n}"
        sd.update({**linear(f"{p}.attention.self.query", h, h), **linear(f"{p}.attention.self.key", h, h),
                   **linear(f"{p}.attention.self.value", h, h, value_scale),
                   **linear(f"{p}.attention.output.dense", h, h), **layer_norm(f"{p}.attention.output.LayerNorm"),
                   **linear(f"{p}.intermediate.dense", i, h), **linear(f"{p}.output.dense", h, i),
                   **layer_norm(f"{p}.output.LayerNorm")})
        if arch == "lion-d":
            sd[f"{p}.attention.self.ai"] = torch.randn(heads, generator=g)
        if arch == "lion-s":
            sd.update(linear(f"{p}.attention.self.Wa_i", heads, h, scale=5.0))
        if arch == "lion-lit":
            sd.update(layer_norm(f"{p}.attention.self.layer_norm"))
    sd.update({**linear("cls.predictions.transform.dense", h, h), **layer_norm("cls.predictions.transform.LayerNorm"),
               "cls.predictions.bias": rand(v, std=0.1)})
    sd["cls.predictions.decoder.weight"] = sd[f"{e}.word_embeddings.weight"]
    sd["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"]
    return sd


def lion_mask(arch, sd, prefix, x):
    """M (B, H, L, L) of docs/lion.md §2, product by product."""
    b, length, _ = x.shape
    heads = SIZES["num_attention_heads"]
    if arch == "lion-lit":
        return torch.ones(b, heads, length, length, dtype=x.dtype)
    if arch == "lion-d":
        lam = torch.sigmoid(sd[f"{prefix}.ai"].double())
        dist = (torch.arange(length)[:, None] - torch.arange(length)[None]).abs().double()
        return (lam[:, None, None] ** dist).expand(b, -1, -1, -1)
    gate = 1 - torch.sigmoid(F.linear(x, sd[f"{prefix}.Wa_i.weight"].double(), sd[f"{prefix}.Wa_i.bias"].double()))
    a = gate + 1e-7  # (B, L, H)
    m = torch.ones(b, heads, length, length, dtype=x.dtype)
    for i in range(length):
        for j in range(length):
            span = range(j, i) if i > j else range(i + 1, j + 1)  # key's gate in, query's gate out
            for t in span:
                m[:, :, i, j] = m[:, :, i, j] * a[:, t, :]
    return m


def reference_logits(config, sd, ids, mask):
    """The published MLM forward in float64 (eval mode)."""
    sd = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    arch = {v: k for k, v in LEGACY_NAME.items()}.get(config["arch_type"], config["arch_type"])
    heads, d = config["num_attention_heads"], config["hidden_size"] // config["num_attention_heads"]

    def ln(x, prefix, eps=config["layer_norm_eps"]):
        return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)

    def lin(x, prefix):
        return F.linear(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])

    b, length = ids.shape
    x = sd["bert.embeddings.word_embeddings.weight"][ids] + sd["bert.embeddings.token_type_embeddings.weight"][0]
    if config.get("position_embedding_type", "absolute") == "absolute":
        x = x + sd["bert.embeddings.position_embeddings.weight"][:length]
    x = ln(x, "bert.embeddings.LayerNorm")
    keys = mask.bool()[:, None, None, :]
    for n in range(config["num_hidden_layers"]):
        p = f"bert.encoder.layer.{n}"
        q, k, v = (lin(x, f"{p}.attention.self.{name}").view(b, length, heads, d).transpose(1, 2)
                   for name in ("query", "key", "value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        if arch == "attention":
            scores = scores.masked_fill(~keys, -math.inf).softmax(-1)
        else:
            scores = scores * lion_mask(arch, sd, f"{p}.attention.self", x) * keys
        y = (scores @ v).transpose(1, 2).reshape(b, length, -1)
        if arch == "lion-lit":
            y = ln(y, f"{p}.attention.self.layer_norm", eps=1e-5)  # nn.LayerNorm's default eps
        h = ln(lin(y, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        x = ln(lin(F.gelu(lin(h, f"{p}.intermediate.dense")), f"{p}.output.dense") + h, f"{p}.output.LayerNorm")
    t = ln(F.gelu(lin(x, "cls.predictions.transform.dense")), "cls.predictions.transform.LayerNorm")
    return t @ sd["bert.embeddings.word_embeddings.weight"].T + sd["cls.predictions.bias"]


def padded_batch():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, SIZES["vocab_size"], (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 2:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def assert_matches_published(model, config, sd, forms=(("parallel", None), ("rnn", None), ("chunk", 4))):
    ids, mask = padded_batch()
    real = mask.bool()
    ref = reference_logits(config, sd, ids, mask)[real]
    for form, chunk in forms:
        model.set_form(form, chunk)
        with torch.no_grad():
            ours = model(input_ids=ids, attention_mask=mask).logits[real].double()
        rel = ((ours - ref).abs().max() / ref.abs().max()).item()
        assert rel <= 1e-4, f"{config['arch_type']} {config['position_embedding_type']} {form}: rel. error {rel:.2e}"


CASES = [(arch, pos) for arch in ("attention", "lion-lit", "lion-d", "lion-s")
         for pos in ("absolute", "relative_key_query")]


@pytest.mark.parametrize("arch,positions", CASES)
def test_published_checkpoint_loads_strictly_and_matches_in_every_form(arch, positions, caplog):
    config, sd = published_config(arch, positions), published_state_dict(arch)
    with caplog.at_level(logging.INFO, logger="mlm.src"):
        model = load_published(config, sd).eval()
    assert model.config.arch_type == arch
    assert model.config.uses_position_embeddings == (positions == "absolute")
    assert "bert.embeddings.position_ids" in caplog.text
    assert ("unused" in caplog.text) == (positions != "absolute")
    if positions == "absolute":
        assert torch.equal(model.bert.embeddings.position_embeddings.weight,
                           sd["bert.embeddings.position_embeddings.weight"])
    assert_matches_published(model, config, sd)


def test_lion_lit_attention_layer_norm_uses_the_pytorch_default_eps():
    """Small values make the LayerNorm's eps visible: 1e-12 (config.layer_norm_eps) would miss the published output."""
    config, sd = published_config("lion-lit", "absolute"), published_state_dict("lion-lit", value_scale=1e-3)
    model = load_published(config, sd).eval()
    assert model.bert.encoder.layer[0].attention.self.layer_norm.eps == 1e-5
    assert_matches_published(model, config, sd)
    for layer in model.bert.encoder.layer:
        layer.attention.self.layer_norm.eps = 1e-12
    with pytest.raises(AssertionError, match="rel. error"):
        assert_matches_published(model, config, sd, forms=[("parallel", None)])


def test_our_config_defaults_and_pretraining_yamls_keep_the_papers_positions():
    for arch, with_positions in [("attention", True), ("lion-lit", True), ("lion-d", False), ("lion-s", False)]:
        assert LionBertConfig(arch_type=arch).uses_position_embeddings == with_positions
        assert LionBertConfig(arch_type=arch, position_embedding_type="absolute").uses_position_embeddings
        has_table = "bert.embeddings.position_embeddings.weight" in LionBertForMaskedLM(
            LionBertConfig(arch_type=arch, **SIZES)).state_dict()
        assert has_table == with_positions
    from mlm.src.create_bert import build_config

    yamls = sorted(f for f in os.listdir(os.path.join(REPO, "yamls", "pretrain")) if f.endswith(".yaml"))
    assert len(yamls) >= 8
    for name in yamls:
        model = OmegaConf.to_container(OmegaConf.load(os.path.join(REPO, "yamls", "pretrain", name)).model)
        config = build_config(model["pretrained_model_name"], model.get("model_config"))
        assert config.uses_position_embeddings == (config.arch_type in ("attention", "lion-lit")), name
    with pytest.raises(ValueError, match="position_embedding_type must be one of"):
        LionBertConfig(position_embedding_type="rotary")


def test_legacy_and_current_arch_names_and_a_classifier_checkpoint():
    for arch in ("lion-lit", "lion-d", "lion-s"):
        legacy = load_published(published_config(arch, "absolute"), published_state_dict(arch))
        current = load_published(published_config(arch, "absolute", legacy=False), published_state_dict(arch))
        assert legacy.config.arch_type == current.config.arch_type == arch
    config = {**published_config("lion-d", "relative_key_query"), "architectures": ["BertForSequenceClassification"],
              "num_labels": 3}
    sd = {k: v for k, v in published_state_dict("lion-d").items() if not k.startswith("cls.")}
    sd.update({"bert.pooler.dense.weight": torch.zeros(32, 32), "bert.pooler.dense.bias": torch.zeros(32),
               "classifier.weight": torch.ones(3, 32), "classifier.bias": torch.zeros(3)})
    model = load_published(config, sd)
    assert isinstance(model, LionBertForSequenceClassification) and model.num_labels == 3
    with pytest.raises(ValueError, match="legacy name 'nova'"):
        LionBertConfig(arch_type="nova")


def write_published_dir(path, arch, positions):
    config, sd = published_config(arch, positions), published_state_dict(arch)
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    torch.save(sd, os.path.join(path, "pytorch_model.bin"))
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("[PAD]\n[UNK]\n")
    return config, sd


def test_from_published_directory_takes_the_hub_path(tmp_path):
    """A local directory goes through the same transformers cached_file path as a hub id (no download here)."""
    config, sd = write_published_dir(tmp_path / "lion-s", "lion-s", "relative_key_query")
    model = LionBertForMaskedLM.from_published(str(tmp_path / "lion-s")).eval()
    assert model.config.arch_type == "lion-s" and not model.config.uses_position_embeddings
    assert_matches_published(model, config, sd, forms=[("parallel", None), ("chunk", 3)])


def composer_checkpoint(path, arch, with_config=True):
    """The layout Composer writes: weights under state.model with a model. prefix, plain-data extras."""
    config, sd = published_config(arch, "absolute"), published_state_dict(arch)
    state = {"model": {f"model.{k}": v for k, v in sd.items()},
             "timestamp": {"total_wct": datetime.timedelta(seconds=3)}, "rng": [{"numpy": np.zeros(3)}],
             "metadata": {"torch_version": torch.__version__}}
    if with_config:
        state["integrations"] = {"huggingface": {"model": {"config": {"content": config}}}}
    torch.save({"state": state}, path)
    return config, sd


def test_composer_checkpoints_load_with_weights_only_and_code_is_refused(tmp_path):
    config, sd = composer_checkpoint(tmp_path / "ck.pt", "lion-d")
    assert_matches_published(load_checkpoint(str(tmp_path / "ck.pt")).eval(), config, sd,
                             forms=[("parallel", None), ("rnn", None)])
    composer_checkpoint(tmp_path / "bare.pt", "lion-d", with_config=False)
    with pytest.raises(ValueError, match="records no model config"):
        load_checkpoint(str(tmp_path / "bare.pt"))
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    load_checkpoint(str(tmp_path / "bare.pt"), config=str(tmp_path / "config.json"))
    torch.save({"state": {"model": {}, "callback": logging.Formatter()}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.pt.*logging\.Formatter"):
        safe_torch_load(tmp_path / "evil.pt")


def test_converter_writes_a_save_pretrained_dir_atomically_and_logs_what_it_mapped(tmp_path, caplog):
    config, sd = write_published_dir(tmp_path / "pub", "lion-lit", "absolute")
    out = tmp_path / "converted"
    with caplog.at_level(logging.INFO, logger="mlm.src"):
        main([str(tmp_path / "pub"), str(out)])
    assert "'linear_attention' -> 'lion-lit'" in caplog.text and "bert.embeddings.position_ids" in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["converted", "pub"]  # no temporary directory left behind
    assert {"config.json", "model.safetensors", "bert_layers.py", "vocab.txt"} <= set(os.listdir(out))
    model = LionBertForMaskedLM.from_pretrained(out).eval()
    assert model.config.position_embedding_type == "absolute"
    assert_matches_published(model, config, sd, forms=[("parallel", None), ("rnn", None)])
    with pytest.raises(SystemExit, match="--overwrite"):  # the CLI's one line
        main([str(tmp_path / "pub"), str(out)])
    os.remove(out / "vocab.txt")
    main([str(tmp_path / "pub"), str(out), "--overwrite", "--task", "mlm"])
    assert "vocab.txt" in os.listdir(out) and sorted(os.listdir(tmp_path)) == ["converted", "pub"]


def test_converter_cli_help():
    result = subprocess.run([sys.executable, "-m", "mlm.src.checkpoint_loading", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "save_pretrained" in result.stdout and "--config" in result.stdout
