"""Checkpoints for finetuning: fetch the pretraining checkpoint, check its arch_type, load encoder weights.

Composer checkpoints keep the weights in ``state['model']`` with a ``model.`` prefix (the ``HuggingFaceModel``
wrapper); the HF config, when Composer recorded it, sits in ``state['integrations']['huggingface']``.
"""
from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

import torch
from composer.utils import get_file

from mlm.src.checkpoint_loading import rename_published_keys

log = logging.getLogger(__name__)
HEAD_PREFIXES = ('classifier.',)  # the task head: never carried from one task to another


def fetch_checkpoint(path: str, local_folder: str) -> str:
    """A local path for ``path``; remote URIs (s3://, https://, ...) are downloaded once into ``local_folder``."""
    if not path:
        raise ValueError('starting_checkpoint_load_path: a Composer pretraining checkpoint is required')
    if urlparse(path).scheme in ('', 'file'):
        local = path.removeprefix('file://')
        if not os.path.isfile(local):
            raise FileNotFoundError(f'starting_checkpoint_load_path: checkpoint file {local} not found')
        return local
    local = os.path.join(local_folder, urlparse(path).path.lstrip('/').replace('/', '|'))
    if not os.path.isfile(local):
        os.makedirs(local_folder, exist_ok=True)
        get_file(path, local + '.tmp', progress_bar=True, overwrite=True)
        os.replace(local + '.tmp', local)
    return local


def read_checkpoint(path: str) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)  # trusted local Composer checkpoint


def model_weights(state: dict) -> dict[str, torch.Tensor]:
    weights = state['state']['model'] if 'state' in state else state
    return rename_published_keys(weights)


def infer_arch_type(weights: dict) -> str:
    """docs/lion.md §2: lion-d has ``attention.self.ai``, lion-s ``attention.self.Wa_i``, lion-lit a LayerNorm after
    attention (``attention.self.layer_norm``); softmax BERT has none of them."""
    keys = ' '.join(weights)
    if '.attention.self.ai' in keys:
        return 'lion-d'
    if '.attention.self.Wa_i.' in keys:
        return 'lion-s'
    if '.attention.self.layer_norm.' in keys:
        return 'lion-lit'
    return 'attention'


def checkpoint_arch_type(state: dict) -> str:
    try:
        content = state['state']['integrations']['huggingface']['model']['config']['content']
        return content['arch_type']
    except (KeyError, TypeError):
        return infer_arch_type(model_weights(state))


def check_arch_type(state: dict, path: str, expected: str) -> None:
    found = checkpoint_arch_type(state)
    if found != expected:
        raise ValueError(f'model.model_config.arch_type is {expected!r} but checkpoint {path} was trained with '
                         f'arch_type {found!r}; use the finetuning yaml of that architecture')


def load_encoder(model: torch.nn.Module, weights: dict, source: str) -> None:
    """Load everything but the task head into an HF sequence-classification ``model``.

    Missing keys may only be the head (and the pooler, which MLM pretraining does not train); MLM-head keys
    (``cls.*``) are ignored; any other difference is an error naming the first keys.
    """
    weights = {k: v for k, v in weights.items() if not k.startswith(HEAD_PREFIXES)}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when strict=False
        raise ValueError(f'checkpoint {source} does not fit the model: {str(e).splitlines()[1:3]}; check '
                         f'model.model_config (sizes, vocab) against the pretraining yaml') from None
    bad = [k for k in missing if not k.startswith((*HEAD_PREFIXES, 'bert.pooler.'))]
    bad += [k for k in unexpected if not k.startswith('cls.')]
    if bad:
        raise ValueError(f'checkpoint {source} does not fit the model (first keys: {bad[:6]}); check '
                         f'model.model_config (arch_type, layer_norm_after, sizes) against the pretraining yaml')
    log.info('initialised from %s (fresh: %s)', source, missing)
