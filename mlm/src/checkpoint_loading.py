"""Load LION BERT checkpoints: as the LION authors published them, save_pretrained directories, Composer checkpoints.

Reading the files safely and mapping published config and weight names onto ours (each mapping logged, the load
then strict) is mlm/src/checkpoint_files.py, which needs no model code; here the model class is chosen (given, or
from the config's ``architectures``) and checkpoints are converted.

Convert a published checkpoint (local dir, hub id or Composer ``.pt``) into a ``save_pretrained`` directory:
    python -m mlm.src.checkpoint_loading SOURCE OUT_DIR [--config config.json] [--task mlm|classification]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from typing import Any, Mapping, Optional, Union

import torch

from mlm.src.bert_layers import LionBertForMaskedLM, LionBertForSequenceClassification
from mlm.src.checkpoint_files import TOKENIZER_FILES, build_published, hub_file, read_checkpoint, read_json_config

log = logging.getLogger(__name__)


def task_class(config: Mapping[str, Any]) -> type:
    """The model class a config's ``architectures`` name: sequence classification, else masked LM."""
    archs = " ".join(config.get("architectures") or [])
    return LionBertForSequenceClassification if "SequenceClassification" in archs else LionBertForMaskedLM


def load_published(config: Union[str, os.PathLike, Mapping[str, Any]], state_dict: Mapping[str, torch.Tensor],
                   model_class: Optional[type] = None):
    """Build our model from a published config and load its weights strictly (any other mismatch raises); the
    class is ``model_class``, else the one the config's ``architectures`` name."""
    if not isinstance(config, Mapping):
        config = read_json_config(config)
    return build_published(config, state_dict, model_class or task_class(config))


def load_checkpoint(source: str, model_class: Optional[type] = None,
                    config: Union[None, str, os.PathLike, Mapping] = None, **hub_kwargs):
    """Our model from a published / save_pretrained directory, a hub id (same path; hub_kwargs go to the hub:
    revision, cache_dir, local_files_only, token) or a Composer checkpoint file."""
    config, weights = read_checkpoint(source, config, **hub_kwargs)
    return load_published(config, weights, model_class)


def convert(source: str, out_dir: str, config=None, task: Optional[str] = None, overwrite: bool = False,
            **hub_kwargs) -> str:
    """Write ``source`` as a ``save_pretrained`` directory (weights, config with auto_map, model code, and the
    tokenizer files a directory / hub source has), atomically: a temporary sibling directory renamed at the end."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a directory; give a directory path")
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    model_class = {None: None, "mlm": LionBertForMaskedLM, "classification": LionBertForSequenceClassification}[task]
    model = load_checkpoint(source, model_class, config, **hub_kwargs)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", dir=parent)
    try:
        model.save_pretrained(tmp)
        if not os.path.isfile(source):
            for name in TOKENIZER_FILES:
                path = hub_file(source, name, **hub_kwargs)
                if path:
                    shutil.copy(path, os.path.join(tmp, name))
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%s, arch_type=%s)", out_dir, type(model).__name__, model.config.arch_type)
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlm.src.checkpoint_loading",
        description="Convert a published LION BERT checkpoint (directory or hub id with config.json + weights, or a "
                    "Composer .pt) into a save_pretrained directory that LionBertForMaskedLM.from_pretrained and "
                    "AutoModelForMaskedLM.from_pretrained(..., trust_remote_code=True) load. Logs every mapped "
                    "config field and every dropped weight; the load itself is strict.")
    parser.add_argument("source", help="directory, hub id, or checkpoint file (.pt / .bin)")
    parser.add_argument("out_dir", help="output directory (written atomically)")
    parser.add_argument("--config", help="config.json for a checkpoint file that records none")
    parser.add_argument("--task", choices=["mlm", "classification"],
                        help="model head (default: from the config's architectures)")
    parser.add_argument("--revision", help="hub revision (hub ids only)")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hub_kwargs = {"revision": args.revision} if args.revision else {}
    try:
        convert(args.source, args.out_dir, args.config, args.task, args.overwrite, **hub_kwargs)
    except (ValueError, OSError) as e:  # bad paths, files of another kind, weights that do not fit: one line
        lines = str(e).strip().splitlines() or [type(e).__name__]
        sys.exit(f"error: {lines[0]}")


if __name__ == "__main__":
    main()
