"""Loading and checking the MLM yamls (pretraining and GLUE finetuning) and their ``key=value`` overrides.

The yaml (with its overrides) is merged into its OmegaConf structured schema (mlm/src/train_config.py), which checks
types and unknown keys; then each field's value check, the registries' keys (model_config, callbacks, loggers,
compile_config, tasks) and the checks across fields. Every problem is one ``ConfigError`` whose message is one line
naming where the value came from (the yaml file or the command-line override), the field, and what is allowed;
unknown fields get the closest valid name suggested.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import typing
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, ValueNode
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from mlm.src.glue.tasks import get_task
from mlm.src.train_config import (
    MODEL_CONFIG_CHECKS,
    NAMED_KEYS,
    FinetuneConfig,
    PretrainConfig,
    required,
)


class ConfigError(ValueError):
    """A user error in a yaml, an override or an input file; its message is the one line shown to the user."""


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


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def unknown(path: str, key, allowed, source: Source) -> ConfigError:
    return source.error(_join(path, key), f"is unknown; {_suggest(key, allowed)}allowed: {_describe(allowed)}")


def _type_name(ref_type) -> str:
    """``int``, ``float``, ``int/str``, ``list``, ``mapping`` for an annotation (Optional left out)."""
    args = [a for a in typing.get_args(ref_type) if a is not type(None)]
    if typing.get_origin(ref_type) is typing.Union:
        return "/".join(_type_name(a) for a in args)
    origin = typing.get_origin(ref_type) or ref_type
    if origin in (list, tuple, ListConfig):
        return "list"
    if origin in (dict, DictConfig) or dataclasses.is_dataclass(origin):
        return "mapping"
    return getattr(origin, "__name__", str(origin))


def _field_of(schema: type, path: str) -> tuple[Optional[type], str, Any]:
    """(the dataclass holding the field at ``path``, the field's name, its annotation); (None, name, None) where
    the path leaves the schema (inside a ``Dict[str, Any]``, or a key of a ``Dict[str, X]``)."""
    parts, node, in_dict = path.split("."), schema, False
    for part in parts[:-1]:
        if in_dict:  # a key of a Dict[str, X]: node stays X
            in_dict = False
            continue
        if not dataclasses.is_dataclass(node):
            return None, parts[-1], None
        hint = typing.get_type_hints(node).get(part)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        node = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint  # Optional[X]: X
        if typing.get_origin(node) is dict:
            node, in_dict = typing.get_args(node)[1], True
    if in_dict or not dataclasses.is_dataclass(node):
        return None, parts[-1], None
    return node, parts[-1], typing.get_type_hints(node).get(parts[-1])


def _translate(err: OmegaConfBaseException, schema: type, source: Source) -> ConfigError:
    """OmegaConf's exception (merging into the schema, or reading a value) as the one-line ConfigError."""
    path = str(getattr(err, "full_key", "") or "")
    field = re.sub(r"\[\d+\]$", "", path)  # a list item: the list's field
    parent, key, hint = _field_of(schema, field)
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and parent is not None and hint is None:
        return unknown(field.rpartition(".")[0], key, [f.name for f in dataclasses.fields(parent)], source)
    if isinstance(err, ValidationError) and hint is not None:
        value = getattr(err, "value", None)
        value = value._value() if isinstance(value, ValueNode) else value
        if value is None:
            return source.error(field, "is required" if required(parent, key) else "may not be null")
        shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        at = f" at {path[len(field):]}" if path != field else ""
        return source.error(field, f"must be of type {_type_name(hint)}, got {shown!r}{at}")
    if path:
        return source.error(field, f"could not be resolved: {_first_line(err)}")
    return ConfigError(f"{source.yaml_path}: {_first_line(err)}")


def _missing_in_yaml(node: Any, path: str = "") -> Optional[str]:
    """The first field left ``???`` in the yaml (a merge into the schema would keep the schema's default)."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            if OmegaConf.is_missing(node, key):
                return _join(path, key)
            found = _missing_in_yaml(node._get_node(key), _join(path, key))
            if found:
                return found
    return None


def _value(node: DictConfig, key, path: str, source: Source, schema: type):
    if OmegaConf.is_missing(node, key):
        raise source.error(path, "is required")
    try:
        return node[key]
    except OmegaConfBaseException as err:
        raise _translate(err, schema, source) from None


def _problem(check, value) -> Optional[str]:
    problem = check.problem(value)
    if problem and check.choices is not None:
        choices = check.choices() if callable(check.choices) else check.choices
        problem = f"{problem}; {_suggest(value, choices)}".rstrip("; ")
    return problem


def check_named(node: DictConfig, path: str, source: Source, schema: type) -> None:
    """A mapping whose keys come from a registry (NAMED_KEYS); a class's entries are its keyword arguments, a
    dataclass entry (a GLUE task's settings) is checked field by field."""
    registry = NAMED_KEYS[path]()
    for name in node.keys():
        if name not in registry:
            raise unknown(path, name, registry, source)
        entry = _value(node, name, _join(path, name), source, schema)
        kind = registry[name] if isinstance(registry, dict) else None
        if isinstance(kind, type) and entry is not None:  # a Composer callback or logger: its keyword arguments
            params = set(inspect.signature(kind).parameters) - {"self", "args", "kwargs"}
            for kwarg in entry.keys():
                if kwarg not in params:
                    raise unknown(_join(path, name), kwarg, params, source)
        elif isinstance(entry, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(entry)):
            check_values(entry, _join(path, name), source, schema)


def check_values(node: DictConfig, path: str, source: Source, schema: type) -> None:
    """After the merge: no field left ??? (required), each field's ``check``, the registries' keys, recursively."""
    for spec in dataclasses.fields(OmegaConf.get_type(node)):
        full = _join(path, spec.name)
        value = _value(node, spec.name, full, source, schema)
        if value is None:
            continue
        check = spec.metadata.get("check")
        problem = check and _problem(check, value)
        if problem:
            raise source.error(full, problem)
        if isinstance(value, DictConfig) and full in NAMED_KEYS:
            check_named(value, full, source, schema)
        elif isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value)):
            check_values(value, full, source, schema)


def typed_config(schema: type, cfg: DictConfig, source: Source) -> DictConfig:
    """``cfg`` merged into ``schema`` (defaults filled in, types converted) with every field's value checked."""
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except OmegaConfBaseException as err:
        raise _translate(err, schema, source) from None
    left = _missing_in_yaml(cfg)
    if left:
        raise source.error(left, f"is required (it is ??? in the yaml): set it, e.g. on the command line {left}=...")
    check_values(typed, "", source, schema)
    model_config = typed.model.model_config
    if model_config.get("arch_type") is None:
        raise source.error("model.model_config.arch_type", "is required")
    for key, check in MODEL_CONFIG_CHECKS.items():
        problem = model_config.get(key) is not None and _problem(check, model_config[key])
        if problem:
            raise source.error(f"model.model_config.{key}", problem)
    return typed


def validate(cfg: DictConfig, source: Optional[Source] = None) -> DictConfig:
    """A pretraining config (mlm/main.py) as a checked ``PretrainConfig``; ConfigError for the first unknown,
    missing or bad field."""
    source = source or Source()
    typed = typed_config(PretrainConfig, cfg, source)
    if typed.autoresume:
        for field in ("save_folder", "run_name"):
            if typed[field] is None:
                raise source.error(field, "is required when autoresume is true")
    return typed


def validate_finetune(cfg: DictConfig, source: Optional[Source] = None) -> DictConfig:
    """A GLUE finetuning config (mlm/glue.py) as a checked ``FinetuneConfig``; ConfigError for the first unknown,
    missing or bad field."""
    source = source or Source()
    typed = typed_config(FinetuneConfig, cfg, source)
    if not typed.tasks:
        raise source.error("tasks", "needs at least one task")
    for name, task_cfg in typed.tasks.items():
        if task_cfg.seeds is not None and not task_cfg.seeds:
            raise source.error(f"tasks.{name}.seeds", "must be a non-empty list of integers, got []")
    for name in typed.tasks:
        origin = get_task(name).init_from
        if origin in typed.tasks:
            keep = typed.tasks[origin].trainer_kwargs.save_num_checkpoints_to_keep
            if keep is not None and keep < 1:
                raise source.error(f"tasks.{origin}.trainer_kwargs.save_num_checkpoints_to_keep",
                                   f"must be >= 1: {name} starts from the {origin} checkpoint")
    return typed


def get(cfg: DictConfig, path: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, DictConfig) or part not in node or OmegaConf.is_missing(node, part):
            return default
        node = node[part]
    return node


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
