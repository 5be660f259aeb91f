"""Load published LIONS-EPFL checkpoints, save_pretrained dirs and Composer checkpoints into our classes.

Published configs may carry legacy names (docs/lion.md §3.4): ``model_type: bert``, ``arch_type`` values
``linear_attention`` / ``nova`` / ``nova-inputdep``, M2-BERT-only fields, and a fused ``Wqkv`` projection
(M2-/Mosaic-BERT layout). They are mapped to ours, then the state dict loads strictly.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Optional, Union

import torch

from mlm.src.bert_layers import LionBertConfig, LionBertForMaskedLM, LionBertForSequenceClassification

log = logging.getLogger(__name__)

LEGACY_ARCH_TYPES = {
    "linear_attention": "lion-lit", "lit": "lion-lit", "lion_lit": "lion-lit",
    "nova": "lion-d", "decay": "lion-d", "lion_d": "lion-d",
    "nova-inputdep": "lion-s", "nova_inputdep": "lion-s", "selective": "lion-s", "lion_s": "lion-s",
    "softmax": "attention", "bert": "attention", "hf_bert": "attention",
}
ARCH_FIELDS = ("arch_type", "attention_type", "mixer_type")  # where older configs keep the architecture
FORM_ALIASES = {"attention": "parallel", "parallel": "parallel", "rnn": "rnn", "recurrent": "rnn", "chunk": "chunk"}
_DROPPED = {"model_type", "architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
            "auto_map", "use_cache", "position_embedding_type", "gradient_checkpointing"}


def published_config(config: Union[str, os.PathLike, Mapping[str, Any]]) -> LionBertConfig:
    """A LionBertConfig from a published ``config.json`` (path or dict), legacy names mapped."""
    if not isinstance(config, Mapping):
        with open(config) as f:
            config = json.load(f)
    fields = dict(config)
    arch = next((fields.pop(k) for k in ARCH_FIELDS if k in fields), "attention")
    arch = LEGACY_ARCH_TYPES.get(str(arch).lower(), str(arch).lower())
    known = set(LionBertConfig.__dataclass_fields__) | {"num_labels", "id2label", "label2id", "problem_type"}
    kept = {k: v for k, v in fields.items() if k in known and k not in _DROPPED}
    dropped = sorted(set(fields) - set(kept) - _DROPPED)
    if dropped:
        log.info("published config: ignoring fields without meaning here: %s", dropped)
    if "form" in kept:
        kept["form"] = FORM_ALIASES.get(str(kept["form"]).lower(), kept["form"])
    return LionBertConfig(**kept, arch_type=arch)


def _task_class(config: Mapping[str, Any]):
    archs = " ".join(config.get("architectures") or [])
    return LionBertForSequenceClassification if "SequenceClassification" in archs else LionBertForMaskedLM


def rename_published_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a Composer ``model.`` prefix and split fused ``Wqkv`` projections into query/key/value."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("model.")
        if ".attention.self.Wqkv." in key:
            prefix, kind = key.split(".Wqkv.")
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{kind}"] = part
        else:
            out[key] = value
    return out


def _fill_tied(model: torch.nn.Module, state_dict: dict) -> None:
    """Checkpoints often store only one side of the tied decoder; copy the other side (as HF tying does)."""
    expected = set(model.state_dict())
    ties = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias"}
    for target, source in ties.items():
        if target in expected and target not in state_dict and source in state_dict:
            state_dict[target] = state_dict[source]
        if source in expected and source not in state_dict and target in state_dict:
            state_dict[source] = state_dict[target]


def load_published(config: Union[str, os.PathLike, Mapping[str, Any]], state_dict: Mapping[str, torch.Tensor],
                   model_class: Optional[type] = None):
    """Build our model from a published config and load its weights strictly (any mismatch raises)."""
    if not isinstance(config, Mapping):
        with open(config) as f:
            config = json.load(f)
    model_class = model_class or _task_class(config)
    model = model_class(published_config(config))
    sd = rename_published_keys(state_dict)
    _fill_tied(model, sd)
    model.load_state_dict(sd, strict=True)
    return model


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Weights of a save_pretrained / hub-style directory, or the model state of a Composer checkpoint file."""
    if os.path.isdir(path):
        st = os.path.join(path, "model.safetensors")
        if os.path.isfile(st):
            from safetensors.torch import load_file

            return load_file(st)
        return torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    state = torch.load(path, map_location="cpu", weights_only=False)  # a trusted local Composer checkpoint
    return state["state"]["model"] if "state" in state else state


def load_pretrained_checkpoint(model, path: str) -> None:
    """Initialise ``model`` from an MLM or same-task checkpoint.

    Only a task head may differ: an MLM checkpoint loaded into a classifier leaves ``bert.pooler`` /
    ``classifier`` initialised fresh and drops ``cls.*``; any other missing or extra key raises.
    """
    sd = rename_published_keys(read_state_dict(path))
    _fill_tied(model, sd)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    head_only = lambda k: k.startswith(("bert.pooler.", "classifier.", "cls."))  # noqa: E731
    bad = [k for k in missing + unexpected if not head_only(k)]
    if bad:
        raise ValueError(f"checkpoint {path} does not match the model (first keys: {bad[:8]}); "
                         "check arch_type / layer_norm_after / sizes in model_config")
    if missing or unexpected:
        log.info("loaded %s; freshly initialised: %s; ignored: %s", path, missing, unexpected)
