"""Reading the checkpoints named on the command line (``--resume``, ``--finetune``, ``--teacher-path``) safely.

A checkpoint is a pickle, and unpickling may call any function the file names. Files and URLs are therefore read
with ``torch.load(weights_only=True)``: tensors, plain containers, numbers, strings and the classes in
``SAFE_GLOBALS`` (DeiT's checkpoints hold their ``args`` as an ``argparse.Namespace``; ours hold a dict).
Anything else is refused with a message unless the caller trusts the file (``--trust-checkpoint``).
Every failure raises ``CheckpointError`` with a one-line reason; the caller prefixes the flag and the file.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pickle
import re
import warnings

import numpy as np
import torch

SAFE_GLOBALS = [argparse.Namespace]
# Plain data that other trainers' checkpoints hold (Composer: numpy RNG state, timedelta, torch version). Allowed
# only to say what a refused file is; such a file is never used.
_DATA_GLOBALS = [datetime.timedelta, np.ndarray, np.dtype, np._core.multiarray._reconstruct,  # numpy ≥ 2
                 torch.torch_version.TorchVersion, *{type(np.dtype(t)) for t in (np.uint32, np.float64, np.int64)}]
_DATA_GLOBAL_NAMES = {"datetime.timedelta", "numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct",
                      "torch.torch_version.TorchVersion"}
TRUST_FLAG = "--trust-checkpoint"
# What one of our checkpoints looks like, for the messages.
EXPECTED = "a dict with a 'model' state dict (this trainer's or DeiT's checkpoints) or a bare state dict"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why in one line."""


def load(path: str, trust: bool = False):
    """The object stored in a checkpoint file or https URL, read on the CPU."""
    if path.startswith("https"):
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            try:
                return torch.hub.load_state_dict_from_url(path, map_location="cpu", check_hash=True,
                                                          weights_only=not trust)
            except pickle.UnpicklingError as err:
                raise CheckpointError(_refusal(_unsafe_globals_in_message(err))) from None
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError("the file is empty (0 bytes): an interrupted copy or save?")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol")  # the error message says it
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise CheckpointError(_corrupt(path, size, err)) from None
        unsafe = _unsafe_globals(path) or _unsafe_globals_in_message(err)
        raise CheckpointError(_refusal(unsafe, _kind_of_refused(path, unsafe))) from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError, OSError,
            ImportError, MemoryError) as err:
        raise CheckpointError(_corrupt(path, size, err)) from None


def _corrupt(path, size, err):
    text = str(err).split("WeightsUnpickler error:")[-1]  # torch's long weights-only preamble cut off
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = re.sub(r"\x1b\[[0-9;]*m", "", first)[:160]
    kind = "a truncated or corrupt torch.save archive" if _looks_like_zip(path) else "not a torch.save file"
    return f"cannot be read: {kind} ({size} bytes; {type(err).__name__}: {first})"


def _looks_like_zip(path):
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _unsafe_globals(path):
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: the refused name comes from the error message
        return []


def _unsafe_globals_in_message(err):
    return re.findall(r"GLOBAL ([\w.]+) was not an allowed global", str(err))


def _kind_of_refused(path, unsafe):
    """Name the trainer that wrote a refused file when it only holds plain data (no code is allowed to run)."""
    if not unsafe or not set(unsafe) <= _DATA_GLOBAL_NAMES:
        return None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS + _DATA_GLOBALS):
            return _composer_note(torch.load(path, map_location="cpu", weights_only=True))
    except Exception:
        return None


def _composer_note(obj):
    if isinstance(obj, dict) and isinstance(obj.get("state"), dict) and "model" in obj["state"]:
        return "it is a Composer checkpoint (keys 'state', 'rng': an MLM/GLUE run's), not a vision trainer's"
    return None


def _refusal(unsafe, kind=None):
    if kind:
        return kind
    unsafe = sorted(set(unsafe))
    names = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "") or "an unknown global"
    return (f"refused to unpickle {names} (loading allows tensors, plain containers and argparse.Namespace, so a "
            f"file cannot run code); if you trust this file, add {TRUST_FLAG}")


def model_state(checkpoint, model_key="model"):
    """The model's state dict in a loaded checkpoint: ``checkpoint[model_key]`` or the checkpoint itself."""
    note = _composer_note(checkpoint)
    if note:
        raise CheckpointError(note)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"holds a {type(checkpoint).__name__} object; expected {EXPECTED}")
    state = checkpoint.get(model_key, checkpoint)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(map(str, list(checkpoint)[:5]))
        raise CheckpointError(f"holds no model state dict (top-level keys: {keys}); expected {EXPECTED}")
    return state


def _shape(t):
    return "x".join(map(str, t.shape)) or "scalar"


def _examples(items, n=2):
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def check_fits(state, model, checkpoint=None, may_miss=()):
    """Raise ``CheckpointError`` naming the keys and shapes that differ between ``state`` and ``model``.

    ``may_miss``: predicates on model keys the checkpoint may lack (they keep their initialisation)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not any(p(k) for p in may_miss)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {_shape(state[k])} vs {_shape(own[k])}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return
    if not any(k in own for k in state):
        raise CheckpointError(f"holds none of this model's weights (its keys look like {_examples(list(state))}): "
                              f"a checkpoint of another kind of model?")
    parts = []
    if shapes:
        parts.append(f"shapes differ (checkpoint vs model): {_examples(shapes)}")
    if missing:
        parts.append(f"missing: {_examples(missing)}")
    if unexpected:
        parts.append(f"unexpected: {_examples(unexpected)}")
    raise CheckpointError(f"does not fit the model of --model/--model-kwargs ({'; '.join(parts)})"
                          f"{_saved_with(checkpoint)}")


def _saved_with(checkpoint):
    """`` (saved with --model X --model-kwargs ...)`` when the checkpoint records its arguments."""
    args = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    if not isinstance(args, dict) or "model" not in args:
        return "; saved with another --model, --model-kwargs or --mask_type/--order?"
    saved = f"--model {args['model']}"
    kwargs = args.get("model_kwargs")
    if kwargs:
        items = kwargs.items() if isinstance(kwargs, dict) else [(k, None) for k in kwargs]
        saved += " --model-kwargs " + " ".join(k if v is None else f"{k}={v}" for k, v in items)
    for flag in ("mask_type", "order"):
        if flag in args:
            saved += f" --{flag} {args[flag]}"
    return f"; it was saved with {saved}"
