"""Composer dataloaders over the arrow data sets written by ``mlm.src.convert_dataset``.

Masking is HF's ``DataCollatorForLanguageModeling``: ``mlm_probability`` of the real tokens are chosen, of which
80% become [MASK], 10% a random token, 10% stay; labels are -100 elsewhere.
"""
from __future__ import annotations

import glob
import logging
import os
from typing import Any, Mapping, Optional

from composer.core import DataSpec
from composer.utils import dist
from datasets import load_from_disk
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling

from mlm.src.config_validation import ConfigError
from mlm.src.convert_dataset import MARKER, SPLITS, is_complete

log = logging.getLogger(__name__)


def load_split(data_local: str, split: str, field: str = "train_loader"):
    """One split of a finished conversion; anything else (missing, unfinished, empty) is a ConfigError."""
    if split not in SPLITS:
        raise ConfigError(f"{field}.dataset.split must be one of {list(SPLITS)}, got {split!r}")
    if not is_complete(data_local):
        raise ConfigError(
            f"{field}.dataset.data_local: {data_local!r} is not a finished conversion (no {MARKER}); run "
            "`python -m mlm.src.convert_dataset --out_root <data_local> ...` (see the README)")
    path = os.path.join(data_local, split)
    if not os.path.isdir(path):
        raise ConfigError(f"{field}.dataset.data_local: {data_local} has no {split} split; convert the data again")
    dataset = None
    if glob.glob(os.path.join(path, "*.arrow")):  # datasets cannot even open a saved split of no rows
        try:
            dataset = load_from_disk(path).with_format("torch")
        except (OSError, ValueError) as err:
            raise ConfigError(f"{field}.dataset.data_local: the {split} split of {data_local} cannot be read "
                              f"({str(err).splitlines()[0][:160]}); convert the data again") from None
    if dataset is None or len(dataset) == 0:
        raise ConfigError(f"{field}.dataset.data_local: the {split} split of {data_local} has no rows; convert "
                          "more text or use a smaller max_seq_len")
    return dataset


def build_mlm_dataloader(cfg: Mapping[str, Any], tokenizer, device_batch_size: int,
                         max_seq_len: Optional[int] = None, field: str = "train_loader") -> DataSpec:
    """cfg: dataset.{data_local, split, mlm_probability, shuffle}, drop_last, num_workers, pin_memory, …

    ``field`` names the loader in messages (``train_loader`` / ``eval_loader``, with the yaml it came from)."""
    ds_cfg = cfg["dataset"]
    dataset = load_split(ds_cfg["data_local"], ds_cfg.get("split", "train"), field)
    row_len = len(dataset[0]["input_ids"])
    if max_seq_len is not None and row_len != max_seq_len:
        raise ConfigError(f"{field}.dataset.data_local: max_seq_len={max_seq_len} but {ds_cfg['data_local']} holds "
                          f"rows of {row_len} tokens; convert the data again with --max_seq_len or change max_seq_len")
    drop_last = bool(cfg.get("drop_last", True))
    if drop_last and len(dataset) < device_batch_size * dist.get_world_size():
        raise ConfigError(f"{field}.dataset.data_local: the {ds_cfg.get('split', 'train')} split of "
                          f"{ds_cfg['data_local']} has {len(dataset)} rows, fewer than one batch of "
                          f"{device_batch_size * dist.get_world_size()} with drop_last: true")
    probability = float(ds_cfg.get("mlm_probability", 0.15))
    if not 0.0 < probability < 1.0:
        raise ConfigError(f"{field}.dataset.mlm_probability must be in (0, 1), got {probability}")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=probability)
    sampler = dist.get_sampler(dataset, shuffle=bool(ds_cfg.get("shuffle", True)), drop_last=drop_last,
                               seed=int(ds_cfg.get("shuffle_seed", 17)))
    num_workers = int(cfg.get("num_workers", 0))
    loader = DataLoader(
        dataset, batch_size=device_batch_size, sampler=sampler, collate_fn=collator, drop_last=drop_last,
        num_workers=num_workers, pin_memory=bool(cfg.get("pin_memory", False)),
        prefetch_factor=cfg.get("prefetch_factor", 2) if num_workers > 0 else None,
        persistent_workers=bool(cfg.get("persistent_workers", False)) and num_workers > 0,
        timeout=float(cfg.get("timeout", 0)))
    log.info("%s split of %s: %d rows, batch %d per device", ds_cfg.get("split", "train"), ds_cfg["data_local"],
             len(dataset), device_batch_size)
    return DataSpec(loader)
