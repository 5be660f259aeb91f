"""LION BERT follows transformers' BERT conventions: inputs_embeds, return_dict, output_attentions, remote code
(auto_map), transformers.Trainer with gradient accumulation, and Composer checkpoints → save_pretrained."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mlm.src.bert_layers import LionBertConfig, LionBertForMaskedLM, LionBertForSequenceClassification, LionBertModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ["attention", "lion-lit", "lion-d", "lion-s"]


def tiny_config(arch, **kw):
    fields = dict(arch_type=arch, vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32, layer_norm_after=arch == "lion-lit",
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    fields.update(kw)
    return LionBertConfig(**fields)


def padded_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 61, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("arch", ARCHS)
def test_inputs_embeds_and_return_dict(arch):
    torch.manual_seed(0)
    model = LionBertForMaskedLM(tiny_config(arch)).eval()
    ids, mask = padded_batch()
    labels = ids.masked_fill(mask == 0, -100)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=mask).logits, out.logits)
    torch.testing.assert_close(model.bert(inputs_embeds=embeds).last_hidden_state, model.bert(ids).last_hidden_state)
    for bad in ({}, {"input_ids": ids, "inputs_embeds": embeds}):
        with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
            model(**bad)
    as_tuple = model(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[0], out.loss)
    torch.testing.assert_close(as_tuple[1], out.logits)
    base = LionBertModel(tiny_config(arch, return_dict=False)).eval()
    hidden, pooled = base(ids, mask)
    assert hidden.shape == (2, 7, 16) and pooled.shape == (2, 16)
    assert isinstance(base(ids, mask, return_dict=True).last_hidden_state, torch.Tensor)
    clf = LionBertForSequenceClassification(tiny_config(arch, num_labels=3)).eval()
    logits, states = clf(input_ids=ids, attention_mask=mask, output_hidden_states=True, return_dict=False)
    assert logits.shape == (2, 3) and len(states) == 3


@pytest.mark.parametrize("arch", ARCHS)
def test_output_attentions_in_the_parallel_form_and_a_clear_error_otherwise(arch):
    torch.manual_seed(0)
    model = LionBertForMaskedLM(tiny_config(arch)).eval()
    ids, mask = padded_batch()
    plain = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(out.logits, plain.logits)  # the written-out parallel form is the same model
    assert len(out.attentions) == 2 and all(a.shape == (2, 2, 7, 7) for a in out.attentions)
    first = out.attentions[0]
    assert torch.all(first[1, :, :, 4:] == 0)  # padded keys get no weight
    layer = model.bert.encoder.layer[0].attention.self
    x = out.hidden_states[0]
    q, k = (proj(x).view(2, 7, 2, 8).transpose(1, 2) for proj in (layer.query, layer.key))
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    real = mask.bool()[:, None, None, :]
    if arch == "attention":  # HF BERT: softmax probabilities
        expected = scores.masked_fill(~real, -math.inf).softmax(-1)
    elif arch == "lion-d":  # LION: the unnormalised masked scores that multiply V
        dist = (torch.arange(7)[:, None] - torch.arange(7)[None]).abs()
        expected = scores * torch.sigmoid(layer.ai)[:, None, None] ** dist * real
    elif arch == "lion-lit":
        expected = scores * real
    else:
        expected = None
    if expected is not None:  # on real queries (LION gives padded tokens gate 1, which no real token sees)
        torch.testing.assert_close(first[0], expected[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(first[1, :, :4], expected[1, :, :4], rtol=1e-5, atol=1e-6)
    if arch == "attention":
        return
    for form in ("rnn", "chunk"):
        model.set_form(form, 3)
        with pytest.raises(ValueError, match="output_attentions=True needs form='parallel'"):
            model(input_ids=ids, attention_mask=mask, output_attentions=True)
        model(input_ids=ids, attention_mask=mask)  # without attentions every form runs


def test_gradient_checkpointing_trains():
    torch.manual_seed(0)
    model = LionBertForMaskedLM(tiny_config("lion-s")).train()
    model.activation_checkpointing_enable()
    ids, mask = padded_batch()
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    assert model.bert.encoder.layer[0].attention.self.Wa_i.weight.grad.abs().sum() > 0


REMOTE_LOAD = """
import json, sys, torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification
assert "mlm" not in sys.modules
ids = torch.load("ids.pt")
mlm = AutoModelForMaskedLM.from_pretrained("mlm_dir", trust_remote_code=True).eval()
base = AutoModel.from_pretrained("mlm_dir", trust_remote_code=True).eval()
clf = AutoModelForSequenceClassification.from_pretrained("clf_dir", trust_remote_code=True).eval()
print(json.dumps({"mlm": (mlm(input_ids=ids).logits - torch.load("mlm.pt")).abs().max().item(),
                  "base": (base(input_ids=ids).last_hidden_state - torch.load("base.pt")).abs().max().item(),
                  "clf": (clf(input_ids=ids).logits - torch.load("clf.pt")).abs().max().item(),
                  "module": type(mlm).__module__, "arch": mlm.config.arch_type, "form": mlm.config.form}))
"""


def test_auto_classes_load_a_saved_model_in_a_fresh_process_with_trust_remote_code(tmp_path):
    import json

    torch.manual_seed(0)
    ids, _ = padded_batch()
    torch.save(ids, tmp_path / "ids.pt")
    mlm = LionBertForMaskedLM(tiny_config("lion-s", form="chunk", chunk_size=3)).eval()
    mlm.save_pretrained(tmp_path / "mlm_dir")
    torch.save(mlm(input_ids=ids).logits, tmp_path / "mlm.pt")
    torch.save(mlm.bert(ids).last_hidden_state, tmp_path / "base.pt")
    clf = LionBertForSequenceClassification(tiny_config("lion-d", num_labels=3)).eval()
    clf.save_pretrained(tmp_path / "clf_dir")
    torch.save(clf(input_ids=ids).logits, tmp_path / "clf.pt")
    auto_map = json.load(open(tmp_path / "mlm_dir" / "config.json"))["auto_map"]
    assert auto_map["AutoModelForMaskedLM"] == "bert_layers.LionBertForMaskedLM"
    assert auto_map["AutoConfig"] == "bert_config.LionBertConfig"
    env = {**os.environ, "PYTHONPATH": REPO, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", REMOTE_LOAD], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules")
    assert report["arch"] == "lion-s" and report["form"] == "chunk"
    assert report["mlm"] < 1e-6 and report["base"] < 1e-6 and report["clf"] < 1e-6


def test_trainer_gradient_accumulation_gives_the_full_batch_loss_and_gradient(tmp_path):
    """transformers.Trainer (needs accelerate, in requirements.txt): two micro-batches of two with different counts
    of labelled tokens must give the gradient of the full batch's mean loss, not twice it or a mean of means."""
    from transformers import Trainer, TrainingArguments

    assert LionBertForMaskedLM.accepts_loss_kwargs and not LionBertForSequenceClassification.accepts_loss_kwargs
    torch.manual_seed(0)
    model = LionBertForMaskedLM(tiny_config("lion-d"))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 61, (4, 6), generator=g)
    labels = torch.full_like(ids, -100)
    for row, n in enumerate((1, 5, 2, 6)):
        labels[row, :n] = ids[row, :n]
    data = [{"input_ids": ids[r], "attention_mask": torch.ones(6, dtype=torch.long), "labels": labels[r]}
            for r in range(4)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(input_ids=ids, labels=labels).loss.backward()  # the full-batch mean over the 14 labelled tokens
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant",
                             weight_decay=0.0, max_grad_norm=0.0, save_strategy="no", report_to="none",
                             use_cpu=True, logging_steps=1, dataloader_num_workers=0, seed=0)
    Trainer(model=model, args=args, train_dataset=data).train()
    for name, p in model.named_parameters():
        torch.testing.assert_close(before[name] - p.detach(), expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_composer_checkpoint_converts_to_save_pretrained(tmp_path):
    """The supported Composer → HF path: ``python -m mlm.src.checkpoint_loading ck.pt out`` (weights_only, atomic),
    rather than Composer's write_huggingface_pretrained_from_composer_checkpoint (needs peft and a tokenizer)."""
    from composer import Trainer

    from mlm.src.checkpoint_loading import main
    from mlm.src.mlm_model import ComposerMaskedLM

    torch.manual_seed(0)
    model = ComposerMaskedLM(LionBertForMaskedLM(tiny_config("lion-lit")), tokenizer=None, use_logits=True,
                             metrics=[])
    ids = torch.randint(1, 61, (4, 7))
    data = [{"input_ids": ids[r], "attention_mask": torch.ones(7, dtype=torch.long), "labels": ids[r]}
            for r in range(4)]
    trainer = Trainer(model=model, train_dataloader=torch.utils.data.DataLoader(data, batch_size=2),
                      max_duration="1ba", save_folder=str(tmp_path / "ck"), save_filename="ck.pt", device="cpu",
                      progress_bar=False)
    trainer.fit()
    trainer.close()
    main([str(tmp_path / "ck" / "ck.pt"), str(tmp_path / "hf")])
    loaded = LionBertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    trained = model.model.eval()
    torch.testing.assert_close(loaded(input_ids=ids).logits, trained(input_ids=ids).logits)
    assert F.cosine_similarity(loaded.cls.predictions.bias, trained.cls.predictions.bias, dim=0) > 0.999
