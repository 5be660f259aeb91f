"""Checkpoints for finetuning: fetch the pretraining checkpoint, check its arch_type, load encoder weights.

Composer checkpoints keep the weights in ``state['model']`` with a ``model.`` prefix (the ``HuggingFaceModel``
wrapper); the HF config, when Composer recorded it, sits in ``state['integrations']['huggingface']``. They are read
with ``weights_only=True`` (mlm/src/composer_checkpoint.py); ``allow_unsafe_checkpoints: true`` opts out.
"""
from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

import torch
from composer.utils import get_file

from lion import variants
from mlm.src import composer_checkpoint
from mlm.src.bert_config import FAMILY
from mlm.src.checkpoint_files import rename_published_keys
from mlm.src.config_validation import ConfigError

log = logging.getLogger(__name__)
HEAD_PREFIXES = ("classifier.",)  # the task head: never carried from one task to another
FIELD = "starting_checkpoint_load_path"


def fetch_checkpoint(path: str, local_folder: str) -> str:
    """A local path for ``path``; remote URIs (s3://, https://, ...) are downloaded once into ``local_folder``."""
    if not path:
        raise ConfigError(f"{FIELD}: a Composer pretraining checkpoint is required")
    if urlparse(path).scheme in ("", "file"):
        local = path.removeprefix("file://")
        if not os.path.isfile(local):
            raise ConfigError(f"{FIELD}: checkpoint file {local} not found")
        return local
    local = os.path.join(local_folder, urlparse(path).path.lstrip("/").replace("/", "|"))
    if not os.path.isfile(local):
        os.makedirs(local_folder, exist_ok=True)
        try:
            get_file(path, local + ".tmp", progress_bar=True, overwrite=True)
        except (OSError, RuntimeError, ValueError) as e:  # no network, no such object, no credentials
            raise ConfigError(f"{FIELD}: {path} cannot be downloaded ({type(e).__name__}: "
                              f"{(str(e).strip().splitlines() or [''])[0][:160]})") from None
        os.replace(local + ".tmp", local)
    return local


def read_checkpoint(path: str, allow_unsafe: bool = False, field: str = FIELD) -> dict:
    return composer_checkpoint.read_checkpoint(path, field, allow_unsafe)


def model_weights(state: dict, path: str = "checkpoint", field: str = FIELD) -> dict[str, torch.Tensor]:
    return rename_published_keys(composer_checkpoint.composer_model_state(state, path, field))


def infer_arch_type(weights: dict) -> str:
    """From the parameter names (docs/lion.md §2): Hydra's layers have a ``mixer``; a gated LION mask type has its
    gates' parameters (lion.variants: ``attention.self.ai`` lion-d, ``attention.self.Wa_i`` lion-s); lion-lit a
    LayerNorm after attention (``attention.self.layer_norm``); softmax BERT none of them."""
    if any(".mixer." in k for k in weights):
        return "hydra"
    gated = variants.from_parameter_names(
        FAMILY, lambda name: any(k.endswith(f".attention.self.{name}") or f".attention.self.{name}." in k
                                 for k in weights))
    if gated is not None:
        return gated.names[FAMILY]
    if any(".attention.self.layer_norm." in k for k in weights):
        return variants.LIT.names[FAMILY]
    return "attention"


def checkpoint_arch_type(state: dict, path: str = "checkpoint") -> str:
    try:
        content = state["state"]["integrations"]["huggingface"]["model"]["config"]["content"]
        return content["arch_type"]
    except (KeyError, TypeError):
        return infer_arch_type(model_weights(state, path))


def check_arch_type(state: dict, path: str, expected: str) -> None:
    model_weights(state, path)  # a Composer BERT checkpoint at all?
    found = checkpoint_arch_type(state, path)
    if found != expected:
        raise ConfigError(f"model.model_config.arch_type is {expected!r} but checkpoint {path} was trained with "
                          f"arch_type {found!r}; use the finetuning yaml of that architecture")


def load_encoder(model: torch.nn.Module, weights: dict, source: str, field: str = FIELD) -> None:
    """Load everything but the task head into an HF sequence-classification ``model``.

    Missing keys may only be the head (and the pooler, which MLM pretraining does not train); MLM-head keys
    (``cls.*``) are ignored; a tensor of another size or any other difference is a ConfigError.
    """
    weights = {k: v for k, v in weights.items() if not k.startswith(HEAD_PREFIXES)}
    composer_checkpoint.check_same_sizes(model.state_dict(), weights, source, field)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    bad = [k for k in missing if not k.startswith((*HEAD_PREFIXES, "bert.pooler."))]
    bad += [k for k in unexpected if not k.startswith("cls.")]
    if bad:
        raise ConfigError(f"{field}: checkpoint {source} does not fit the model (first keys: {bad[:6]}); check "
                          "model.model_config (arch_type, layer_norm_after, sizes) against the pretraining yaml")
    log.info("initialised from %s (fresh: %s)", source, missing)
