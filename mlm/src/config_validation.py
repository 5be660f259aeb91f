"""Early checks of a pretraining yaml: every problem is one message naming the field and what is allowed."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mlm.src.bert_config import ARCH_TYPES, FORMS

OPTIMIZERS = ("decoupled_adamw", "adamw")
SCHEDULERS = ("linear_decay_with_warmup", "cosine_with_warmup", "constant_with_warmup")
MODELS = ("lion_bert",)
PRECISIONS = ("fp32", "amp_bf16", "amp_fp16", "bf16")
_MISSING = object()


class ConfigError(ValueError):
    pass


def get(cfg: DictConfig, path: str, default: Any = _MISSING) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, DictConfig) or part not in node or OmegaConf.is_missing(node, part):
            if default is _MISSING:
                raise ConfigError(f"config field '{path}' is missing")
            return default
        try:
            node = node[part]
        except OmegaConfBaseException as err:
            raise ConfigError(f"config field '{path}' could not be resolved: {str(err).splitlines()[0]}") from None
    return node


def require(cfg, path: str, kind=None, choices=None, default: Any = _MISSING, positive: bool = False):
    value = get(cfg, path, default)
    if value is None and default is None:
        return None
    kinds = () if kind is None else (kind if isinstance(kind, tuple) else (kind,))
    if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
        names = "/".join(k.__name__ for k in kinds)
        raise ConfigError(f"config field '{path}' must be of type {names}, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"config field '{path}' must be one of {list(choices)}, got {value!r}")
    if positive and not value > 0:
        raise ConfigError(f"config field '{path}' must be > 0, got {value!r}")
    return value


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first missing or bad field of a pretraining config."""
    require(cfg, "model.name", str, MODELS)
    require(cfg, "model.pretrained_model_name", str)
    require(cfg, "model.model_config", DictConfig)
    require(cfg, "model.model_config.arch_type", str, ARCH_TYPES)
    require(cfg, "model.model_config.form", str, FORMS, default="parallel")
    require(cfg, "tokenizer_name", str)
    require(cfg, "max_seq_len", int, positive=True)
    for loader in ("train_loader", "eval_loader"):
        if loader == "eval_loader" and "eval_loader" not in cfg:
            continue
        require(cfg, f"{loader}.dataset.data_local", str)
        require(cfg, f"{loader}.dataset.split", str, ("train", "val"))
        p = require(cfg, f"{loader}.dataset.mlm_probability", (int, float))
        if not 0 < p < 1:
            raise ConfigError(f"config field '{loader}.dataset.mlm_probability' must be in (0, 1), got {p}")
        require(cfg, f"{loader}.num_workers", int, default=0)
    require(cfg, "optimizer.name", str, OPTIMIZERS)
    require(cfg, "optimizer.lr", (int, float), positive=True)
    require(cfg, "optimizer.weight_decay", (int, float), default=0.0)
    require(cfg, "scheduler.name", str, SCHEDULERS)
    require(cfg, "scheduler.t_warmup", (str, int))
    if cfg.scheduler.name != "constant_with_warmup":
        require(cfg, "scheduler.alpha_f", (int, float), default=0.0)
    require(cfg, "global_train_batch_size", int, positive=True)
    micro = require(cfg, "device_train_microbatch_size", (int, str), default="auto")
    if isinstance(micro, str) and micro != "auto" or isinstance(micro, int) and micro < 1:
        raise ConfigError(f"config field 'device_train_microbatch_size' must be 'auto' or an int >= 1, got {micro!r}")
    require(cfg, "max_duration", (str, int))
    require(cfg, "eval_interval", (str, int), default=1)
    require(cfg, "precision", str, PRECISIONS, default="amp_bf16")
    if get(cfg, "autoresume", False) and get(cfg, "save_folder", None) is None:
        raise ConfigError("config field 'save_folder' is missing: autoresume needs a save_folder")
    if get(cfg, "autoresume", False):
        require(cfg, "run_name", str)
