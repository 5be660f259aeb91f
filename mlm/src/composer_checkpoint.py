"""Reading Composer checkpoints given by the user (pretraining ``load_path``, GLUE starting checkpoints) safely.

``torch.load(weights_only=True)`` unpickles only tensors, containers and the classes allow-listed here (what a
Composer checkpoint holds besides tensors: numpy rng state, a timedelta, torch's version string). Anything else
(a pickle that would run code, a vision checkpoint with its own objects) is refused with one line; unpickling
arbitrary objects is an explicit opt-in (``allow_unsafe_checkpoints: true``). Truncated or corrupt files, files of
another kind and weights of another model size are refused before any training too.
"""
from __future__ import annotations

import datetime
import glob
import logging
import os
import re
from typing import Mapping, Optional

import numpy as np
import torch
from torch.torch_version import TorchVersion

from mlm.src.config_validation import ConfigError
from mlm.src.processes import process_alive

log = logging.getLogger(__name__)

COMPOSER_GLOBALS = [TorchVersion, datetime.timedelta, np.ndarray, np.dtype, np.dtypes.UInt32DType,
                    np._core.multiarray._reconstruct]
_ALLOWED_NAMES = {f"{g.__module__}.{g.__qualname__}" for g in COMPOSER_GLOBALS} | {
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"}
_CHECKPOINT_NAME = re.compile(r"ep(\d+)-ba(\d+)-rank0\.pt$")


def read_checkpoint(path: str, field: str, allow_unsafe: bool = False) -> dict:
    """The unpickled checkpoint at ``path``; ``field`` names the yaml field for messages."""
    if not os.path.isfile(path):
        raise ConfigError(f"{field}: checkpoint file {path} not found")
    if allow_unsafe:
        log.warning("%s: unpickling %s with weights_only=False (allow_unsafe_checkpoints: true)", field, path)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # torch raises RuntimeError/ValueError/UnpicklingError for non-zip or cut files
        raise ConfigError(f"{field}: {path} is not a readable torch checkpoint (truncated or corrupt?): "
                          f"{_first_line(err)}") from None
    refused = sorted(set(found) - _ALLOWED_NAMES)
    if refused:
        raise ConfigError(f"{field}: {path} holds objects that only full unpickling can build ({', '.join(refused)}), "
                          "which can run code; not loaded. Set allow_unsafe_checkpoints: true only for a file "
                          "you trust")
    try:
        with torch.serialization.safe_globals(COMPOSER_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ConfigError(f"{field}: {path} is not a readable torch checkpoint (truncated or corrupt?): "
                          f"{_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def composer_model_state(state, path: str, field: str) -> dict:
    """``state['state']['model']`` of a Composer checkpoint of a BERT (keys ``model.bert.*`` ...)."""
    if not (isinstance(state, Mapping) and isinstance(state.get("state"), Mapping)
            and isinstance(state["state"].get("model"), Mapping)):
        keys = sorted(state)[:6] if isinstance(state, Mapping) else type(state).__name__
        raise ConfigError(f"{field}: {path} is not a Composer checkpoint (it has {keys}, no state.model); "
                          "give a checkpoint written by mlm/main.py")
    weights = state["state"]["model"]
    if not any(k.removeprefix("model.").startswith("bert.") for k in weights):
        raise ConfigError(f"{field}: {path} holds no BERT encoder (first keys {sorted(weights)[:3]}): "
                          "not an MLM/GLUE checkpoint")
    return dict(weights)


def check_same_sizes(expected: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], path: str,
                     field: str) -> None:
    wrong = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in weights.items()
             if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        key, got, want = wrong[0]
        raise ConfigError(f"{field}: {path} is a model of another size: {key} is {got} there but {want} here "
                          f"({len(wrong)} tensors differ); set model.model_config to the sizes it was trained with")


def check_resumable(model: torch.nn.Module, path: str, field: str, allow_unsafe: bool = False) -> None:
    """A checkpoint Composer can restore into ``model`` (a Composer model): same keys, same shapes."""
    weights = composer_model_state(read_checkpoint(path, field, allow_unsafe), path, field)
    expected = model.state_dict()
    check_same_sizes(expected, weights, path, field)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"{field}: {path} does not fit the model (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); check model.model_config (arch_type, layer_norm_after) against "
                          "the run that wrote it")


def remove_partial_checkpoints(folder: str) -> None:
    """Delete half-written files of killed runs (``.partial-<pid>-*``, see builders.use_atomic_checkpoint_writes)."""
    for path in glob.glob(os.path.join(folder, ".partial-*")):
        pid = os.path.basename(path).split("-")[1]
        if pid.isdigit() and not process_alive(int(pid)):
            log.info("removing %s, left by a run killed while saving", path)
            os.remove(path)



def checkpoint_batch(path: str) -> Optional[int]:
    """The batch in a Composer checkpoint's file name (``ep0-ba300-rank0.pt`` -> 300); None for another name."""
    match = _CHECKPOINT_NAME.search(os.path.basename(path))
    return int(match.group(2)) if match else None


def complete_checkpoints(folder: str) -> list[tuple[int, str]]:
    """(batch, path) of the checkpoints in ``folder``, oldest first (our writes are atomic: every one is complete)."""
    return sorted((batch, p) for p in glob.glob(os.path.join(folder, "ep*-ba*-rank0.pt"))
                  if (batch := checkpoint_batch(p)) is not None)


def newest_complete_checkpoint(folder: str) -> Optional[str]:
    """The checkpoint of the highest batch in ``folder``."""
    found = complete_checkpoints(folder)
    return found[-1][1] if found else None


def rotate_resumed_checkpoints(saver, folder: str, batch: int) -> None:
    """Composer's saver rotates (keeps ``save_num_checkpoints_to_keep`` of) only the files its own process wrote;
    hand it those of the run it resumed (up to ``batch``), so a resumed run keeps N checkpoints, not N + the old."""
    earlier = [path for b, path in complete_checkpoints(folder) if b <= batch]
    known = {os.path.abspath(p) for p in saver.saved_checkpoints}
    saver.saved_checkpoints[:0] = [p for p in earlier if os.path.abspath(p) not in known]
