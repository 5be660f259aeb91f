"""One validator for the MLM yamls (pretraining and GLUE finetuning) and their ``key=value`` overrides.

Every problem is one ``ConfigError`` whose message is one line naming where the value came from (the yaml file or
the command-line override), the field, and what is allowed; unknown fields get the closest valid name suggested.
"""
from __future__ import annotations

import difflib
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import yaml
from composer.core import Time
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mlm.src.bert_config import FORMS, LionBertConfig, arch_types

OPTIMIZERS = ("decoupled_adamw", "adamw")
SCHEDULERS = ("linear_decay_with_warmup", "cosine_with_warmup", "constant_with_warmup")
MODELS = ("lion_bert",)
PRECISIONS = ("fp32", "amp_fp16", "amp_bf16")  # Composer's precisions (amp_fp8 needs Transformer Engine)
NONFINITE_ACTIONS = ("stop", "skip")
SPLITS = ("train", "val")
NUMBER = (int, float)
_MISSING_VALUE = object()


class ConfigError(ValueError):
    """A user error in a yaml, an override or an input file; its message is the one line shown to the user."""


@dataclass(frozen=True)
class Field:
    """A leaf: allowed types (``None`` is always allowed unless required), choices, and a value test."""

    kind: tuple = ()
    choices: Optional[tuple] = None
    required: bool = False
    test: Optional[Callable[[Any], bool]] = None
    wants: str = ""  # what ``test`` asks, for the message


@dataclass(frozen=True)
class Named:
    """A mapping ``{name: {kwarg: value}}`` whose names come from ``registry()`` (name -> class) and whose kwargs
    must be parameters of that class's constructor (``callbacks``, ``loggers``)."""

    registry: Callable[[], Mapping[str, Callable]]


@dataclass(frozen=True)
class Entries:
    """A mapping whose keys come from ``allowed`` (a callable giving the names) and whose values follow ``schema``."""

    allowed: Callable[[], Any]
    schema: Any


class AnyKeys:
    """Keys chosen by the user (e.g. ``model.model_config``: checked by the model's own config class)."""

    def __init__(self, allowed: Callable[[], set]):
        self.allowed = allowed


def positive(value) -> bool:
    return value > 0


def non_negative(value) -> bool:
    return value >= 0


def open_unit(value) -> bool:
    return 0 < value < 1


def is_time(value) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 0
    try:
        Time.from_timestring(str(value))
    except (ValueError, TypeError):
        return False
    return True


def auto_or_positive(value) -> bool:
    return value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


TIME = Field((str, int), test=is_time, wants="a Composer time such as '300ba', '1ep', '0.06dur', '1000sp'")


def model_config_fields() -> set:
    """The fields a ``model_config`` may set: LionBertConfig's own, the Hydra mixer's and the HF task fields."""
    from mlm.src.hydra import HYDRA_DEFAULTS

    own = {k for cls in LionBertConfig.__mro__ if cls.__module__.startswith("mlm.")
           for k in getattr(cls, "__annotations__", {})}
    return own | set(HYDRA_DEFAULTS) | {"num_labels", "id2label", "label2id", "problem_type"}


def compile_kwargs() -> set:
    import torch

    return set(inspect.signature(torch.compile).parameters) - {"model"}


def fsdp_config_fields() -> set:
    """The fields of Composer's FSDPConfig (``fsdp_config`` goes to ``Trainer(parallelism_config={'fsdp': ...})``)."""
    import dataclasses

    from composer.utils.parallelism import FSDPConfig

    return {f.name for f in dataclasses.fields(FSDPConfig) if f.init and not f.name.startswith("_")}


def callback_registry() -> dict:
    from composer.callbacks import LRMonitor, MemoryMonitor, OptimizerMonitor, RuntimeEstimator, SpeedMonitor

    return {"speed_monitor": SpeedMonitor, "lr_monitor": LRMonitor, "memory_monitor": MemoryMonitor,
            "optimizer_monitor": OptimizerMonitor, "runtime_estimator": RuntimeEstimator}


def logger_registry() -> dict:
    from composer.loggers import FileLogger, WandBLogger

    return {"wandb": WandBLogger, "file": FileLogger}


MODEL_CONFIG = AnyKeys(model_config_fields)
SCHEDULER = {"name": Field((str,), SCHEDULERS, required=True), "t_warmup": TIME, "alpha_f": Field(NUMBER)}
COMMON = {  # fields both entry points share, built by mlm/src/builders.py
    "precision": Field((str,), PRECISIONS),
    "callbacks": Named(callback_registry),
    "loggers": Named(logger_registry),
    "compile_config": AnyKeys(compile_kwargs),
    "nonfinite_loss": Field((str,), NONFINITE_ACTIONS),
    "allow_unsafe_checkpoints": Field((bool,)),
}
LOADER = {
    "dataset": {"data_local": Field((str,), required=True), "split": Field((str,), SPLITS, required=True),
                "mlm_probability": Field(NUMBER, required=True, test=open_unit, wants="in (0, 1)"),
                "shuffle": Field((bool,)), "shuffle_seed": Field((int,))},
    "drop_last": Field((bool,)), "num_workers": Field((int,), test=non_negative, wants=">= 0"),
    "pin_memory": Field((bool,)), "prefetch_factor": Field((int,), test=positive, wants="> 0"),
    "persistent_workers": Field((bool,)), "timeout": Field(NUMBER, test=non_negative, wants=">= 0"),
}
PRETRAIN = {
    "run_name": Field((str,)), "seed": Field((int,)),
    "max_seq_len": Field((int,), required=True, test=positive, wants="> 0"),
    "tokenizer_name": Field((str,), required=True),
    "data_local": Field((str,)),
    "data_prep": {"local_files": Field((ListConfig,), required=True),
                  "val_fraction": Field(NUMBER, test=open_unit, wants="in (0, 1)")},
    "model": {"name": Field((str,), MODELS, required=True), "pretrained_model_name": Field((str,), required=True),
              "pretrained_checkpoint": Field((str,)), "gradient_checkpointing": Field((bool,)),
              "model_config": MODEL_CONFIG},
    "train_loader": LOADER,
    "eval_loader": LOADER,
    "optimizer": {"name": Field((str,), OPTIMIZERS, required=True),
                  "lr": Field(NUMBER, required=True, test=positive, wants="> 0"),
                  "betas": Field((ListConfig,)), "eps": Field(NUMBER, test=positive, wants="> 0"),
                  "weight_decay": Field(NUMBER, test=non_negative, wants=">= 0")},
    "scheduler": {**SCHEDULER, "t_warmup": Field((str, int), required=True, test=is_time, wants=TIME.wants)},
    "global_train_batch_size": Field((int,), required=True, test=positive, wants="> 0"),
    "device_train_microbatch_size": Field((int, str), test=auto_or_positive, wants="'auto' or an int >= 1"),
    "device_eval_batch_size": Field((int,), test=positive, wants="> 0"),
    "max_duration": Field((str, int), required=True, test=is_time, wants=TIME.wants),
    "eval_interval": TIME, "eval_subset_num_batches": Field((int,)), "train_subset_num_batches": Field((int,)),
    "progress_bar": Field((bool,)), "log_to_console": Field((bool,)), "console_log_interval": TIME,
    "save_folder": Field((str,)), "save_interval": TIME, "save_num_checkpoints_to_keep": Field((int,)),
    "save_overwrite": Field((bool,)), "load_path": Field((str,)), "load_weights_only": Field((bool,)),
    "autoresume": Field((bool,)), "python_log_level": Field((str,)),
    "dist_timeout": Field(NUMBER, test=positive, wants="> 0 seconds"),
    "fsdp_config": AnyKeys(fsdp_config_fields),
    **COMMON,
}
TRAINER_KWARGS = {
    "lr": Field(NUMBER, test=positive, wants="> 0"), "wd": Field(NUMBER, test=non_negative, wants=">= 0"),
    "max_duration": TIME, "max_sequence_length": Field((int,), test=positive, wants="> 0"),
    "optim_name": Field((str,)), "save_num_checkpoints_to_keep": Field((int,)),
    "batch_size": Field((int,), test=positive, wants="> 0"), "eval_interval": TIME,
}


def _task_names():
    from mlm.src.glue.tasks import TASKS

    return TASKS


FINETUNE = {
    "parallel": Field((bool,)), "base_run_name": Field((str,), required=True), "default_seed": Field((int,)),
    "tokenizer_name": Field((str,)), "max_seq_len": Field((int,), test=positive, wants="> 0"),
    "model": {"name": Field((str,), MODELS), "pretrained_model_name": Field((str,)), "tokenizer_name": Field((str,)),
              "model_config": MODEL_CONFIG},
    "starting_checkpoint_load_path": Field((str,)), "local_pretrain_checkpoint_folder": Field((str,)),
    "save_finetune_checkpoint_prefix": Field((str,)), "save_finetune_checkpoint_folder": Field((str,), required=True),
    "results_folder": Field((str,)), "overwrite": Field((bool,)),
    "data": {"data_dir": Field((str,)), "cache_dir": Field((str,))},
    "scheduler": SCHEDULER,
    "tasks": Entries(_task_names, {"seeds": Field((ListConfig,)), "trainer_kwargs": TRAINER_KWARGS}),
    **COMMON,
}


class Source:
    """Where each value came from: the yaml file, or a ``key=value`` command-line override."""

    def __init__(self, yaml_path: str = "config", overrides: Optional[list[str]] = None):
        self.yaml_path = yaml_path
        self.overrides = {arg.split("=", 1)[0].lstrip("+~"): arg for arg in overrides or []}

    def where(self, path: str) -> str:
        for key, arg in self.overrides.items():
            if path == key or path.startswith(key + "."):
                return f"{self.yaml_path}: command-line override '{arg}'"
        return self.yaml_path

    def error(self, path: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where(path)}: field '{path}' {problem}")


def load_config(yaml_path: str, overrides: list[str]) -> tuple[DictConfig, Source]:
    """The yaml merged with ``key=value`` overrides; a missing or unreadable file or a bad override is a ConfigError.
    An override ``key={}`` empties that mapping (a merge would keep its entries)."""
    if not os.path.isfile(yaml_path):
        what = "is a directory, not a yaml file" if os.path.isdir(yaml_path) else "config file does not exist"
        raise ConfigError(f"{yaml_path}: {what}")
    for arg in overrides:
        if "=" not in arg or not arg.split("=", 1)[0]:
            raise ConfigError(f"{yaml_path}: command-line argument {arg!r} is not of the form key=value "
                              "(e.g. optimizer.lr=1e-3)")
        try:
            OmegaConf.from_dotlist([arg])
        except (yaml.YAMLError, OmegaConfBaseException, ValueError) as err:
            raise ConfigError(f"{yaml_path}: command-line override {arg!r} cannot be parsed: "
                              f"{getattr(err, 'problem', None) or _first_line(err)}") from None
    try:
        cfg = OmegaConf.load(yaml_path)
    except yaml.YAMLError as err:  # the parser's own problem and place, in one line
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{yaml_path}: is not valid YAML: {getattr(err, 'problem', None) or _first_line(err)}"
                          f"{where}") from None
    except (OmegaConfBaseException, ValueError) as err:  # e.g. bytes that are no UTF-8
        raise ConfigError(f"{yaml_path}: cannot be read: {_first_line(err)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{yaml_path}: must hold a mapping of fields (key: value), got a {type(cfg).__name__}")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        for key, value in (arg.split("=", 1) for arg in overrides):
            if value.strip() == "{}":
                OmegaConf.update(cfg, key.lstrip("+~"), {}, merge=False)
    except (OmegaConfBaseException, ValueError, TypeError) as err:
        raise ConfigError(f"{yaml_path}: the command-line overrides cannot be applied: {_first_line(err)}") from None
    return cfg, Source(yaml_path, overrides)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _suggest(name: str, allowed) -> str:
    close = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _describe(allowed) -> str:
    return ", ".join(sorted(str(a) for a in allowed)) or "none"


def _value(node: DictConfig, key: str, path: str, source: Source):
    if OmegaConf.is_missing(node, key):
        return _MISSING_VALUE
    try:
        return node[key]
    except OmegaConfBaseException as err:
        raise source.error(path, f"could not be resolved: {_first_line(err)}") from None


def check_keys(node: DictConfig, allowed, path: str, source: Source) -> None:
    for key in node.keys():
        if key not in allowed:
            full = f"{path}.{key}" if path else str(key)
            raise source.error(full, f"is unknown; {_suggest(key, allowed)}allowed: {_describe(allowed)}")


def check_field(value, spec: Field, path: str, source: Source) -> None:
    if value is None:
        if spec.required:
            raise source.error(path, "is required")
        return
    kinds = spec.kind
    if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
        names = "/".join({ListConfig: "list", DictConfig: "mapping"}.get(k, k.__name__) for k in kinds)
        raise source.error(path, f"must be of type {names}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise source.error(path, f"must be one of {list(spec.choices)}, got {value!r}; "
                                 f"{_suggest(value, spec.choices)}".rstrip("; "))
    if spec.test is not None and not spec.test(value):
        raise source.error(path, f"must be {spec.wants}, got {value!r}")


def check_node(node: Any, schema: Any, path: str, source: Source) -> None:
    """Walks ``node`` against ``schema`` (nested dicts of Field / Named / Entries / AnyKeys)."""
    if isinstance(schema, Field):
        check_field(node, schema, path, source)
        return
    if node is None:
        return
    if not isinstance(node, DictConfig):
        raise source.error(path, f"must be a mapping, got {node!r}")
    if isinstance(schema, AnyKeys):
        check_keys(node, schema.allowed(), path, source)
        return
    if isinstance(schema, Named):
        registry = schema.registry()
        check_keys(node, registry, path, source)
        for name in node.keys():
            kwargs = _value(node, name, f"{path}.{name}", source)
            if kwargs is None:
                continue
            if not isinstance(kwargs, DictConfig):
                raise source.error(f"{path}.{name}", f"must be a mapping of keyword arguments, got {kwargs!r}")
            params = set(inspect.signature(registry[name]).parameters) - {"self", "args", "kwargs"}
            check_keys(kwargs, params, f"{path}.{name}", source)
        return
    if isinstance(schema, Entries):
        check_keys(node, schema.allowed(), path, source)
        for name in node.keys():
            check_node(_value(node, name, f"{path}.{name}", source), schema.schema, f"{path}.{name}", source)
        return
    check_keys(node, schema, path, source)
    for key, sub in schema.items():
        full = f"{path}.{key}" if path else key
        value = _value(node, key, full, source) if key in node else None
        if value is _MISSING_VALUE:
            raise source.error(full, "is required (it is ??? in the yaml): set it, e.g. on the command line "
                                     f"{full}=...")
        check_node(value, sub, full, source)


def get(cfg: DictConfig, path: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, DictConfig) or part not in node or OmegaConf.is_missing(node, part):
            return default
        node = node[part]
    return node


def validate(cfg: DictConfig, source: Optional[Source] = None) -> None:
    """Raise ConfigError for the first unknown, missing or bad field of a pretraining config."""
    source = source or Source()
    check_node(cfg, PRETRAIN, "", source)
    for section in ("model", "model.model_config", "train_loader", "optimizer", "scheduler"):
        if get(cfg, section) is None:
            raise source.error(section, "is required")
    arch = get(cfg, "model.model_config.arch_type")
    check_field(arch, Field((str,), arch_types(), required=True), "model.model_config.arch_type", source)
    check_field(get(cfg, "model.model_config.form"), Field((str,), FORMS), "model.model_config.form", source)
    if get(cfg, "autoresume", False):
        for field in ("save_folder", "run_name"):
            if get(cfg, field) is None:
                raise source.error(field, "is required when autoresume is true")
    if get(cfg, "data_prep") is not None and get(cfg, "train_loader.dataset.data_local") is None:
        raise source.error("train_loader.dataset.data_local", "is required: data_prep converts into it")


def validate_finetune(cfg: DictConfig, source: Optional[Source] = None) -> None:
    """Raise ConfigError for the first unknown, missing or bad field of a GLUE finetuning config."""
    from mlm.src.glue.config import normalise_optim_name  # the GLUE yaml's own aliases (M2-BERT's names)

    source = source or Source()
    check_node(cfg, FINETUNE, "", source)
    if get(cfg, "model") is None:
        raise source.error("model", "is required")
    check_field(get(cfg, "model.model_config.arch_type"), Field((str,), arch_types(), required=True),
                "model.model_config.arch_type", source)
    if not get(cfg, "tasks"):
        raise source.error("tasks", "needs at least one task")
    for name, task_cfg in cfg.tasks.items():
        task_cfg = task_cfg or {}
        seeds = task_cfg.get("seeds", [cfg.get("default_seed", 19)])
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise source.error(f"tasks.{name}.seeds", f"must be a non-empty list of integers, got {list(seeds)}")
        optim = (task_cfg.get("trainer_kwargs") or {}).get("optim_name")
        if optim is not None and normalise_optim_name(optim) is None:
            raise source.error(f"tasks.{name}.trainer_kwargs.optim_name",
                               f"must be one of {list(OPTIMIZERS)}, got {optim!r}")
    from mlm.src.glue.tasks import get_task

    for name in cfg.tasks:
        origin = get_task(name).init_from
        if origin in cfg.tasks:
            keep = ((cfg.tasks[origin] or {}).get("trainer_kwargs") or {}).get("save_num_checkpoints_to_keep", 1)
            if keep < 1:
                raise source.error(f"tasks.{origin}.trainer_kwargs.save_num_checkpoints_to_keep",
                                   f"must be >= 1: {name} starts from the {origin} checkpoint")


def check_folders(cfg: DictConfig, fields: tuple, source: Source) -> None:
    """Each folder field names a directory, or a path not there yet (it is created): never an existing file."""
    for field in fields:
        folder = get(cfg, field)
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            raise source.error(field, f"({folder}) exists and is not a directory; give a directory (it is created "
                                      "if missing)")


def check_vocab(tokenizer, vocab_size: int, where: str) -> None:
    """The tokenizer may not produce ids the embedding does not have."""
    if tokenizer is not None and len(tokenizer) > vocab_size:
        raise ConfigError(f"{where}: tokenizer {tokenizer.name_or_path!r} has {len(tokenizer)} tokens but "
                          f"model vocab_size is {vocab_size}; use the tokenizer the model was built for or set "
                          f"model.model_config.vocab_size >= {len(tokenizer)}")
