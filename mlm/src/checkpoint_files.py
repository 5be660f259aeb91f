"""Checkpoint files of LION BERTs, read safely, and published checkpoints mapped onto our config and weight names.

A published checkpoint (config.json + state dict of the authors' ``bert_layers.py``, docs/lion.md §2) differs from
ours in ways that are mapped here, each one logged:
- config: ``model_type: bert``, legacy ``arch_type`` names (``linear_attention``, ``nova``, ``nova-inputdep``,
  docs/lion.md §3.4), M2-BERT-only fields, and ``position_embedding_type`` (``absolute`` adds positions for every
  arch type; any other value, e.g. the ``relative_key_query`` of the published lion-d / lion-s yamls, adds none);
- state dict: the saved buffer ``bert.embeddings.position_ids``, a position table that exists but is unused when
  positions are off, a Composer ``model.`` prefix and an M2-BERT fused ``Wqkv``.
Everything else must match: the state dict then loads strictly.

Every file is read with ``torch.load(weights_only=True)`` (plus the plain-data types Composer writes), so a checkpoint
can never run code; one that needs anything else is refused, naming the file.

The model classes are the caller's (``LionBertPreTrainedModel.from_published``, mlm/src/checkpoint_loading.py), so
that this module needs no model code.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import pickle
import re
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from mlm.src.bert_config import LionBertConfig, legacy_arch_types

log = logging.getLogger(__name__)

ARCH_FIELDS = ("arch_type", "attention_type", "mixer_type")  # where older configs keep the architecture
_DROPPED = {"model_type", "architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
            "auto_map", "use_cache", "gradient_checkpointing"}
# buffers the published embedding module saves; ours recomputes them
BUFFER_KEYS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")
POSITION_TABLE = "bert.embeddings.position_embeddings.weight"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # 'name' or 'org/name'; paths like ./x or a/b/c are not


def _plain_data_globals() -> list:
    """The non-tensor types of a Composer checkpoint (timestamps, numpy RNG state, versions): data, never code."""
    dtypes = [getattr(np.dtypes, name) for name in getattr(np.dtypes, "__all__", [])]
    return [datetime.timedelta, np.ndarray, np.dtype, np._core.multiarray._reconstruct,
            torch.torch_version.TorchVersion, *dtypes]


def safe_torch_load(path: Union[str, os.PathLike]) -> Any:
    """``torch.load(path, weights_only=True)``; a file that needs any other unpickling is refused, and one that is
    not a torch checkpoint at all (cut short, random bytes, another format) is named as such."""
    try:
        with torch.serialization.safe_globals(_plain_data_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # not a refusal: the bytes are no pickle torch can read
            raise ValueError(_not_a_checkpoint(path, e)) from None
        reason = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), str(e).splitlines()[0])
        raise ValueError(f"refusing to load {os.fspath(path)}: it needs unpickling of more than tensors and plain "
                         f"data ({reason}); only weights_only checkpoints are read") from None
    except (RuntimeError, EOFError, OSError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise ValueError(_not_a_checkpoint(path, e)) from None


def _not_a_checkpoint(path, err: BaseException) -> str:
    text = str(err).split("WeightsUnpickler error:")[-1]  # past torch's weights-only preamble
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = lines[0] if lines else type(err).__name__
    return (f"{os.fspath(path)} is not a readable torch checkpoint (truncated, corrupt or another format; "
            f"{os.path.getsize(path)} bytes): {detail[:160]}")


def _model_type_is_ours(config: Mapping[str, Any]) -> bool:
    return config.get("model_type") == LionBertConfig.model_type


def read_json_config(path: Union[str, os.PathLike]) -> dict:
    """A config.json as a dict; a file that is no JSON object is a ValueError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{os.fspath(path)} is not a JSON config file: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{os.fspath(path)} must hold a JSON object (a model config), got a {type(config).__name__}")
    return config


def published_config(config: Union[str, os.PathLike, Mapping[str, Any]]) -> LionBertConfig:
    """A LionBertConfig from a published ``config.json`` (path or dict), legacy names mapped; ours pass through."""
    if not isinstance(config, Mapping):
        config = read_json_config(config)
    fields = dict(config)
    arch = next((fields.pop(k) for k in ARCH_FIELDS if k in fields), "attention")
    arch = legacy_arch_types().get(str(arch).lower(), str(arch).lower())
    if arch != config.get("arch_type", arch):
        log.info("config: arch_type %r -> %r", config["arch_type"], arch)
    # transformers' BertConfig default is 'absolute'; our own configs default to the paper's per-arch choice
    positions = fields.pop("position_embedding_type", None if _model_type_is_ours(config) else "absolute")
    if positions not in (None, "absolute", "none"):
        log.info("config: position_embedding_type %r adds no positions to the embeddings -> 'none'", positions)
        positions = "none"
    known = set(LionBertConfig.__dataclass_fields__) | {"num_labels", "id2label", "label2id", "problem_type"}
    kept = {k: v for k, v in fields.items() if k in known and k not in _DROPPED}
    dropped = sorted(set(fields) - set(kept) - _DROPPED)
    if dropped:
        log.info("config: ignoring fields without meaning here: %s", dropped)
    return LionBertConfig(**kept, arch_type=arch, position_embedding_type=positions)


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


def drop_buffers(state_dict: dict) -> list[str]:
    """Remove the embedding buffers a published state dict carries; returns the removed keys."""
    return [k for k in BUFFER_KEYS if state_dict.pop(k, None) is not None]


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


def build_published(config: Union[str, os.PathLike, Mapping[str, Any]], state_dict: Mapping[str, torch.Tensor],
                    model_class: type):
    """A ``model_class`` model (bert_layers) from a published config, its weights loaded strictly (any other
    mismatch raises)."""
    if not isinstance(config, Mapping):
        config = read_json_config(config)
    sd = rename_published_keys(state_dict)
    if any(".distance_embedding." in k for k in sd):
        raise ValueError("the checkpoint has relative-position attention weights (distance_embedding); "
                         "LION BERT supports position_embedding_type 'absolute' or none")
    fields = dict(config)
    if "layer_norm_after" not in fields and any(".attention.self.layer_norm." in k for k in sd):
        fields["layer_norm_after"] = True
        log.info("config: layer_norm_after missing; the weights have attention.self.layer_norm -> True")
    model = model_class(published_config(fields))
    dropped = drop_buffers(sd)
    if not model.config.uses_position_embeddings and sd.pop(POSITION_TABLE, None) is not None:
        dropped.append(f"{POSITION_TABLE} (unused: position_embedding_type is not 'absolute')")
    if dropped:
        log.info("weights: dropped %s", dropped)
    _fill_tied(model, sd)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # torch lists every missing / unexpected key and size on many lines
        problems = [line.strip().rstrip(".") for line in str(e).splitlines()[1:] if line.strip()]
        raise ValueError(f"the weights do not fit the config's {model.config.arch_type} model: "
                         f"{'; '.join(problems)[:300]}") from None
    log.info("loaded a %s %s (positions: %s) strictly", model.config.arch_type, model_class.__name__,
             model.config.position_embedding_type)
    return model


def _weights_from_files(files: list[str]) -> dict[str, torch.Tensor]:
    sd = {}
    for path in files:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd.update(load_file(path))
        else:
            sd.update(safe_torch_load(path))
    return sd


def hub_file(source: str, filename: str, **hub_kwargs) -> Optional[str]:
    """A local path for ``filename`` of a directory or hub repo (None when it has no such file)."""
    from transformers.utils import cached_file

    return cached_file(source, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)


def _directory_weights(source: str, **hub_kwargs) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = hub_file(source, name, **hub_kwargs)
        if path:
            return _weights_from_files([path])
    for name in INDEX_FILES:
        index = hub_file(source, name, **hub_kwargs)
        if index:
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return _weights_from_files([hub_file(source, s, **hub_kwargs) for s in shards])
    raise FileNotFoundError(f"{source} has none of {list(WEIGHT_FILES + INDEX_FILES)}")


def _composer_config(state: Mapping) -> Optional[dict]:
    try:
        return dict(state["state"]["integrations"]["huggingface"]["model"]["config"]["content"])
    except (KeyError, TypeError):
        return None


def read_checkpoint(source: str, config: Union[None, str, os.PathLike, Mapping] = None,
                    **hub_kwargs) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, state dict) of a directory or hub id (config.json + weights), or of a checkpoint file
    (a Composer checkpoint, whose recorded HF config serves when ``config`` is None, or a bare state dict)."""
    if config is not None and not isinstance(config, Mapping):
        config = read_json_config(config)
    if not os.path.exists(source) and not HUB_ID.match(source):
        raise FileNotFoundError(f"{source}: no such file or directory (nor a hub id such as 'org/name')")
    if os.path.isfile(source):
        state = safe_torch_load(source)
        weights = state["state"]["model"] if "state" in state else state
        config = config if config is not None else _composer_config(state)
        if config is None:
            raise ValueError(f"{source} records no model config; pass its config.json (--config)")
        return dict(config), weights
    if config is None:
        config_file = hub_file(source, "config.json", **hub_kwargs)
        if not config_file:
            where = "" if os.path.isdir(source) else " (not a local directory; as a hub id it is not in the cache " \
                                                      "and the hub cannot be reached, or has no such repository)"
            raise FileNotFoundError(f"{source} has no config.json{where}")
        config = read_json_config(config_file)
    return dict(config), _directory_weights(source, **hub_kwargs)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Weights of a save_pretrained / hub-style directory, or the model state of a Composer checkpoint file."""
    if os.path.isdir(path):
        return _directory_weights(path)
    state = safe_torch_load(path)
    return state["state"]["model"] if "state" in state else state


def load_pretrained_checkpoint(model, path: str) -> None:
    """Initialise ``model`` from an MLM or same-task checkpoint.

    Only a task head may differ: an MLM checkpoint loaded into a classifier leaves ``bert.pooler`` /
    ``classifier`` initialised fresh and drops ``cls.*``; any other missing or extra key raises.
    """
    sd = rename_published_keys(read_state_dict(path))
    drop_buffers(sd)
    _fill_tied(model, sd)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    head_only = lambda k: k.startswith(("bert.pooler.", "classifier.", "cls."))  # noqa: E731
    bad = [k for k in missing + unexpected if not head_only(k)]
    if bad:
        raise ValueError(f"checkpoint {path} does not match the model (first keys: {bad[:8]}); "
                         "check arch_type / layer_norm_after / position_embedding_type / sizes in model_config")
    if missing or unexpected:
        log.info("loaded %s; freshly initialised: %s; ignored: %s", path, missing, unexpected)
