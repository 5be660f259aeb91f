"""GLUE data: real GLUE from the HF hub (``nyu-mll/glue``) or from a local GLUE-format folder (the original per-task
TSV layout), tokenised with ``datasets.map`` into an on-disk cache, served with dynamic padding."""
from __future__ import annotations

import hashlib
import logging
import os

import datasets
import pandas as pd
import transformers
from composer.utils import dist
from torch.utils.data import DataLoader

from mlm.src.config_validation import ConfigError
from mlm.src.glue.tasks import GlueTask

log = logging.getLogger(__name__)
HUB_NAME = "nyu-mll/glue"


def _tsv_path(task: GlueTask, split: str, data_dir: str) -> str:
    if split not in task.tsv_files:
        raise ConfigError(f"{task.name}: no split {split!r} in a GLUE folder; allowed: {sorted(task.tsv_files)}")
    path = os.path.join(data_dir, task.folder, task.tsv_files[split])
    if not os.path.isfile(path):
        raise ConfigError(f"data.data_dir: {path} not found (task {task.name} expects "
                                f"{task.folder}/{task.tsv_files[split]} in the GLUE TSV layout)")
    return path


def _label_ids(values: pd.Series, task: GlueTask, path: str) -> list:
    if task.is_regression:
        numbers = pd.to_numeric(values, errors="coerce")
        bad = values[numbers.isna() | ~numbers.abs().lt(float("inf"))]
        if len(bad):
            raise ConfigError(f"data.data_dir: {path}: column {values.name!r} of task {task.name} must hold finite "
                              f"numbers (a regression score); found {sorted(set(bad))[:5]}")
        return numbers.astype(float).tolist()
    lookup = {name: i for i, name in enumerate(task.labels)} | {str(i): i for i in range(task.num_labels)}
    unknown = sorted(set(values) - set(lookup))
    if unknown:
        raise ConfigError(f"data.data_dir: {path}: labels {unknown[:5]} of column {values.name!r} are outside task "
                          f"{task.name}: allowed {list(task.labels)} or 0..{task.num_labels - 1}")
    return [lookup[v] for v in values]


def read_glue_tsv(task: GlueTask, split: str, data_dir: str) -> datasets.Dataset:
    """One split of a task from a GLUE-format folder, with the HF column names (``task.text_columns`` + ``label``)."""
    path = _tsv_path(task, split, data_dir)
    layout = task.tsv
    try:
        frame = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False, on_bad_lines="warn",
                            header=0 if layout.header else None, names=list(layout.names) if layout.names else None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ConfigError(f"data.data_dir: {path}: not a readable TSV file: {str(e).splitlines()[0]}") from None
    missing = [c for c in (*layout.text_columns, layout.label_column) if c not in frame.columns]
    if missing:
        raise ConfigError(f"data.data_dir: {path}: columns {missing} of task {task.name} missing; found "
                          f"{list(frame.columns)}")
    if frame.empty:
        raise ConfigError(f"data.data_dir: {path}: no rows")
    columns = {hf: frame[tsv].tolist() for hf, tsv in zip(task.text_columns, layout.text_columns)}
    columns["label"] = _label_ids(frame[layout.label_column], task, path)
    return datasets.Dataset.from_dict(columns)


def load_split(task: GlueTask, split: str, data_dir: str | None = None):
    """(dataset, fingerprint of its source) for one split, from ``data_dir`` if given, else from the HF hub
    (downloaded once into the usual datasets cache, ``HF_DATASETS_CACHE``)."""
    if data_dir:
        path = _tsv_path(task, split, data_dir)
        stat = os.stat(path)
        return read_glue_tsv(task, split, data_dir), f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"
    if task.hub_config is None:
        raise ConfigError(f"data.data_dir: task {task.name} exists only as a local fixture: set data.data_dir "
                         f"(e.g. mlm/data/glue_fixture)")
    try:
        ds = datasets.load_dataset(HUB_NAME, task.hub_config, split=split)
    except OSError as e:  # ConnectionError offline, DatasetNotFoundError
        raise ConfigError(f"data.data_dir: not set, so task {task.name} is read from the hub ({HUB_NAME}, "
                          f"{task.hub_config}, {split}), which fails ({type(e).__name__}: "
                          f"{(str(e).strip().splitlines() or [''])[0][:160]}); offline? set data.data_dir to a folder "
                          "of GLUE TSV files") from None
    return ds.remove_columns([c for c in ds.column_names if c not in (*task.text_columns, "label")]), ds._fingerprint


def tokenized_split(task: GlueTask, split: str, tokenizer, max_sequence_length: int,
                    data_dir: str | None = None, cache_dir: str = "./data_cache/glue") -> datasets.Dataset:
    """Tokenised split (input_ids, token_type_ids, attention_mask, label), cached as Arrow under ``cache_dir``."""
    ds, source = load_split(task, split, data_dir)
    key = "|".join([task.name, split, source, tokenizer.name_or_path, str(len(tokenizer)), str(max_sequence_length)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    cache_file = os.path.join(cache_dir, "tokenized", f"{task.name}-{split}-{digest}.arrow")
    os.makedirs(os.path.dirname(cache_file), exist_ok=True)

    def tokenize(batch):
        texts = [batch[c] for c in task.text_columns]
        return tokenizer(*texts, truncation=True, max_length=max_sequence_length)

    return ds.map(tokenize, batched=True, batch_size=1000, remove_columns=list(task.text_columns),
                  cache_file_name=cache_file, load_from_cache_file=True, desc=f"tokenizing {task.name}/{split}")


def build_dataloader(ds: datasets.Dataset, tokenizer, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    collate = transformers.DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    return DataLoader(ds, batch_size=batch_size, collate_fn=collate, drop_last=False,
                      sampler=dist.get_sampler(ds, shuffle=shuffle, drop_last=False, seed=seed))
