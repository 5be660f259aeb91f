"""Composer ``HuggingFaceModel`` factories for LION BERTs (the M2-BERT ``create_bert.py`` interface).

The architecture comes from ``pretrained_model_name``'s config values, shipped here (no network), or from a local
directory holding a ``config.json``; ``model_config`` overrides any field (e.g. ``arch_type: lion-d``).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Optional, Sequence

from composer.metrics.nlp import LanguageCrossEntropy, MaskedAccuracy
from composer.models import HuggingFaceModel
from torchmetrics import MeanSquaredError, Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.regression import SpearmanCorrCoef

from mlm.src.bert_layers import LionBertConfig, LionBertForMaskedLM, LionBertForSequenceClassification
from mlm.src.checkpoint_files import load_pretrained_checkpoint
from mlm.src.mlm_model import ComposerMaskedLM

log = logging.getLogger(__name__)

_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
_COMMON = dict(hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
               max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12,
               pad_token_id=0)
# config.json values of the HF hub BERTs, so that building a model never needs the network
KNOWN_BERT_CONFIGS = {
    "bert-base-uncased": {**_COMMON, **_BASE, "vocab_size": 30522},
    "bert-large-uncased": {**_COMMON, **_LARGE, "vocab_size": 30522},
    "bert-base-cased": {**_COMMON, **_BASE, "vocab_size": 28996},
    "bert-large-cased": {**_COMMON, **_LARGE, "vocab_size": 28996},
}

# the offline copy of bert-base-uncased's vocabulary shipped with the repo (mlm/data/README.md)
OFFLINE_TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "bert-base-uncased")


def base_config_dict(pretrained_model_name: str) -> dict:
    name = pretrained_model_name.removeprefix("google-bert/")
    if name in KNOWN_BERT_CONFIGS:
        return dict(KNOWN_BERT_CONFIGS[name])
    config_file = os.path.join(pretrained_model_name, "config.json")
    if os.path.isfile(config_file):
        with open(config_file) as f:
            return json.load(f)
    raise ValueError(f"pretrained_model_name must be one of {sorted(KNOWN_BERT_CONFIGS)} or a local directory with "
                     f"a config.json, got {pretrained_model_name!r}")


def build_config(pretrained_model_name: str = "bert-base-uncased",
                 model_config: Optional[Mapping[str, Any]] = None, **extra) -> LionBertConfig:
    fields = base_config_dict(pretrained_model_name)
    for key in ("model_type", "architectures", "transformers_version"):
        fields.pop(key, None)
    fields.update(dict(model_config or {}))
    fields.update(extra)
    return LionBertConfig(**fields)


def load_tokenizer(tokenizer_name: Optional[str]):
    """``bert-base-uncased`` (or any hub name / local dir) through transformers; None gives None."""
    if tokenizer_name is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_name)


def create_bert_mlm(pretrained_model_name: str = "bert-base-uncased", model_config: Optional[Mapping] = None,
                    tokenizer_name: Optional[str] = None, pretrained_checkpoint: Optional[str] = None,
                    gradient_checkpointing: bool = False) -> HuggingFaceModel:
    model = LionBertForMaskedLM(build_config(pretrained_model_name, model_config))
    if pretrained_checkpoint is not None:
        load_pretrained_checkpoint(model, pretrained_checkpoint)
    if gradient_checkpointing:
        model.activation_checkpointing_enable()
    metrics = [LanguageCrossEntropy(ignore_index=-100), MaskedAccuracy(ignore_index=-100)]
    return ComposerMaskedLM(model, tokenizer=load_tokenizer(tokenizer_name), use_logits=True, metrics=metrics)


def classification_metrics(num_labels: int) -> list[Metric]:
    if num_labels == 1:
        return [MeanSquaredError(), SpearmanCorrCoef()]
    return [MulticlassAccuracy(num_classes=num_labels, average="micro")]


def create_bert_classification(num_labels: int, pretrained_model_name: str = "bert-base-uncased",
                               model_config: Optional[Mapping] = None, tokenizer_name: Optional[str] = None,
                               pretrained_checkpoint: Optional[str] = None,
                               custom_eval_metrics: Optional[Sequence[Metric]] = None,
                               gradient_checkpointing: bool = False) -> HuggingFaceModel:
    """Sequence classification (regression when ``num_labels == 1``, as in HF).

    ``pretrained_checkpoint`` (a Composer checkpoint or a save_pretrained dir of an MLM model) initialises the
    encoder; the pooler and classifier stay freshly initialised when the checkpoint has none.
    """
    if int(num_labels) < 1:
        raise ValueError(f"num_labels must be an integer >= 1, got {num_labels!r}")
    model = LionBertForSequenceClassification(build_config(pretrained_model_name, model_config,
                                                           num_labels=int(num_labels)))
    if pretrained_checkpoint is not None:
        load_pretrained_checkpoint(model, pretrained_checkpoint)
    if gradient_checkpointing:
        model.activation_checkpointing_enable()
    metrics = classification_metrics(int(num_labels))
    eval_metrics = metrics + list(custom_eval_metrics or [])
    return HuggingFaceModel(model, tokenizer=load_tokenizer(tokenizer_name), use_logits=True,
                            metrics=metrics, eval_metrics=[m.clone() for m in eval_metrics])
