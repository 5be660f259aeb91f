"""The Composer objects of both MLM entry points (mlm/main.py pretraining, mlm/glue.py finetuning): optimizer,
scheduler, callbacks, loggers, precision, the non-finite-loss guard and atomic checkpoint files.

Names and their keyword arguments are checked before any work (mlm/src/train_config.py's registries).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.optim import (
    ConstantWithWarmupScheduler,
    CosineAnnealingWithWarmupScheduler,
    DecoupledAdamW,
    LinearWithWarmupScheduler,
)
from composer.utils import checkpoint as composer_checkpoint

from mlm.src.config_validation import ConfigError
from mlm.src.train_config import NONFINITE_ACTIONS, callback_registry, logger_registry

log = logging.getLogger(__name__)

SCHEDULER_CLASSES = {"linear_decay_with_warmup": LinearWithWarmupScheduler,
                     "cosine_with_warmup": CosineAnnealingWithWarmupScheduler,
                     "constant_with_warmup": ConstantWithWarmupScheduler}
GPU_ONLY_CALLBACKS = ("memory_monitor",)
PARTIAL_PREFIX = ".partial-"  # a checkpoint being written: ``.partial-<pid>-<name>``, renamed to ``<name>`` when done


def build_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, betas: Sequence[float] = (0.9, 0.98),
                    eps: float = 1e-6) -> torch.optim.Optimizer:
    """``decoupled_adamw`` (Composer's, the recipe of docs/lion.md §4) or ``adamw`` (torch)."""
    cls = {"decoupled_adamw": DecoupledAdamW, "adamw": torch.optim.AdamW}[name]
    return cls(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def build_scheduler(cfg: Optional[Mapping[str, Any]]):
    """A Composer warm-up scheduler from ``{name, t_warmup, alpha_f}``; None or {} gives None (constant lr)."""
    if not cfg:
        return None
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    if cfg["name"] == "constant_with_warmup":
        kwargs.pop("alpha_f", None)
    return SCHEDULER_CLASSES[cfg["name"]](**kwargs)


def build_callbacks(cfg: Optional[Mapping[str, Any]], on_gpu: bool) -> list[Callback]:
    registry, callbacks = callback_registry(), []
    for name, kwargs in (cfg or {}).items():
        if name in GPU_ONLY_CALLBACKS and not on_gpu:
            log.info("callbacks.%s skipped: it measures GPU memory and this run is on CPU", name)
            continue
        callbacks.append(registry[name](**dict(kwargs or {})))
    return callbacks


def build_loggers(cfg: Optional[Mapping[str, Any]]) -> list:
    registry, loggers = logger_registry(), []
    for name, kwargs in (cfg or {}).items():
        try:
            loggers.append(registry[name](**dict(kwargs or {})))
        except ImportError as err:  # Composer's MissingConditionalImportError (e.g. wandb not installed)
            raise ConfigError(f"loggers.{name}: {str(err).splitlines()[0]}; install it or remove the logger") from None
    return loggers


def resolve_precision(requested: Optional[str], on_gpu: bool) -> str:
    requested = requested or "fp32"
    if on_gpu or requested == "fp32":
        return requested
    log.warning("precision=%s needs a GPU; this run is on CPU, so it falls back to precision=fp32", requested)
    return "fp32"


class NonFiniteLossError(RuntimeError):
    """Training stopped at a non-finite loss (nonfinite_loss: stop)."""


class NonFiniteLossGuard(Callback):
    """Stops the run at the first non-finite loss, before its backward pass (no update, no checkpoint of it), or
    with ``action='skip'`` drops that batch's gradients so the optimizer leaves the weights unchanged."""

    def __init__(self, action: str = "stop"):
        if action not in NONFINITE_ACTIONS:
            raise ConfigError(f"nonfinite_loss must be one of {list(NONFINITE_ACTIONS)}, got {action!r}")
        self.action, self.bad_batch, self.skipped = action, False, []

    def batch_start(self, state: State, logger: Logger) -> None:
        self.bad_batch = False

    def after_loss(self, state: State, logger: Logger) -> None:
        losses = state.loss.values() if isinstance(state.loss, dict) else [state.loss]
        if all(math.isfinite(float(loss.detach().sum())) for loss in losses):
            return
        step = int(state.timestamp.batch) + 1
        if self.action == "stop":
            raise NonFiniteLossError(f"non-finite loss at step {step}: stopped before updating the weights; the last "
                                     "saved checkpoint is intact (nonfinite_loss: skip skips such steps instead)")
        if not self.bad_batch:
            log.warning("non-finite loss at step %d: skipping its optimizer update", step)
            self.skipped.append(step)
        self.bad_batch = True

    def after_backward(self, state: State, logger: Logger) -> None:
        if self.bad_batch:  # every microbatch of the batch, so that the optimizer sees no gradient at all
            for param in state.model.parameters():
                param.grad = None


def extra_trainer_kwargs(cfg: Mapping[str, Any], on_gpu: bool) -> dict:
    """Trainer arguments both entry points read from the same yaml fields."""
    callbacks = build_callbacks(cfg.get("callbacks"), on_gpu)
    callbacks.append(NonFiniteLossGuard(cfg.get("nonfinite_loss") or "stop"))
    compile_config = cfg.get("compile_config")
    return dict(precision=resolve_precision(cfg.get("precision"), on_gpu), callbacks=callbacks,
                loggers=build_loggers(cfg.get("loggers")),
                compile_config=dict(compile_config) if compile_config is not None else None)


_original_write = composer_checkpoint._write_checkpoint_file


def _write_checkpoint_atomically(state_dict: dict, filename: str) -> None:
    """Composer writes checkpoint files in place; a crash mid-write left a truncated file under the final name.
    Write a hidden sibling (same extension, so Composer picks the same format), flush it to disk, then rename."""
    folder, name = os.path.split(os.path.abspath(filename))
    tmp = os.path.join(folder, f"{PARTIAL_PREFIX}{os.getpid()}-{name}")
    try:
        _original_write(state_dict, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def use_atomic_checkpoint_writes() -> None:
    composer_checkpoint._write_checkpoint_file = _write_checkpoint_atomically
