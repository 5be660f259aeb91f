"""The MLM yamls as OmegaConf structured configs: ``PretrainConfig`` (mlm/main.py) and ``FinetuneConfig``
(mlm/glue.py), with their sections as nested dataclasses.

Each field says once what it is: its type (checked by OmegaConf when the yaml is merged into the schema, as are
unknown keys), its default (what a run uses when the yaml leaves it out; ``MISSING``: required) and, in ``check``,
what its value must be beyond the type (a range, a Composer time, one of a few names). Merging, those checks and
the one-line messages are in mlm/src/config_validation.py.

(No ``from __future__ import annotations`` here: OmegaConf reads these annotations as types.)
"""
import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

from composer.core import Time
from omegaconf import MISSING

from mlm.src.bert_config import FORMS, LionBertConfig, arch_types
from mlm.src.glue.tasks import TASKS
from mlm.src.hydra import HYDRA_DEFAULTS

OPTIMIZERS = ("decoupled_adamw", "adamw")
SCHEDULERS = ("linear_decay_with_warmup", "cosine_with_warmup", "constant_with_warmup")
MODELS = ("lion_bert",)
PRECISIONS = ("fp32", "amp_fp16", "amp_bf16")  # Composer's precisions (amp_fp8 needs Transformer Engine)
NONFINITE_ACTIONS = ("stop", "skip")
SPLITS = ("train", "val")
TimeValue = Union[int, str]  # a Composer time: '300ba', '1ep', '0.06dur', '1000sp' (an int counts epochs)


@dataclass(frozen=True)
class Check:
    """What a value must be beyond its type: ``test(value)`` is true (``wants`` says what it asks), or it is one
    of ``choices`` (a tuple, or a callable giving them, e.g. the variant registry's arch types)."""

    wants: str = ""
    test: Optional[Callable[[Any], bool]] = None
    choices: Union[tuple, Callable[[], tuple], None] = None

    def problem(self, value) -> Optional[str]:
        """None if ``value`` passes, else what is wrong (the end of a one-line message)."""
        if self.choices is not None:
            choices = self.choices() if callable(self.choices) else self.choices
            return None if value in choices else f"must be one of {list(choices)}, got {value!r}"
        return None if self.test(value) else f"must be {self.wants}, got {value!r}"


def _is_time(value) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 0
    try:
        Time.from_timestring(str(value))
    except (ValueError, TypeError):
        return False
    return True


POSITIVE = Check("> 0", lambda v: v > 0)
NON_NEGATIVE = Check(">= 0", lambda v: v >= 0)
OPEN_UNIT = Check("in (0, 1)", lambda v: 0 < v < 1)
TIME = Check("a Composer time such as '300ba', '1ep', '0.06dur', '1000sp'", _is_time)
AUTO_OR_POSITIVE = Check("'auto' or an int >= 1",
                         lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1))


def one_of(choices) -> Check:
    return Check(choices=choices)


def checked(default: Any = MISSING, check: Optional[Check] = None, factory: Optional[Callable] = None):
    """A dataclass field with a value check (``Check``); ``factory`` for mutable defaults."""
    metadata = {"check": check} if check else {}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def model_config_fields() -> set:
    """The keys a ``model_config`` may set: LionBertConfig's own, the Hydra mixer's and the HF task fields."""
    own = {k for cls in LionBertConfig.__mro__ if cls.__module__.startswith("mlm.")
           for k in getattr(cls, "__annotations__", {})}
    return own | set(HYDRA_DEFAULTS) | {"num_labels", "id2label", "label2id", "problem_type"}


def compile_kwargs() -> set:
    import torch

    return set(inspect.signature(torch.compile).parameters) - {"model"}


def fsdp_config_fields() -> set:
    """The fields of Composer's FSDPConfig (``fsdp_config`` goes to ``Trainer(parallelism_config={'fsdp': ...})``)."""
    from composer.utils.parallelism import FSDPConfig

    return {f.name for f in dataclasses.fields(FSDPConfig) if f.init and not f.name.startswith("_")}


def callback_registry() -> dict:
    from composer.callbacks import LRMonitor, MemoryMonitor, OptimizerMonitor, RuntimeEstimator, SpeedMonitor

    return {"speed_monitor": SpeedMonitor, "lr_monitor": LRMonitor, "memory_monitor": MemoryMonitor,
            "optimizer_monitor": OptimizerMonitor, "runtime_estimator": RuntimeEstimator}


def logger_registry() -> dict:
    from composer.loggers import FileLogger, WandBLogger

    return {"wandb": WandBLogger, "file": FileLogger}


def normalise_optim_name(name: str) -> Optional[str]:
    """M2-BERT's spellings (``DecoupledAdamW``, ``decoupled_adamw``, ``AdamW``) to ours; None if unknown."""
    names = {n.replace("_", ""): n for n in OPTIMIZERS}
    return names.get(str(name).lower().replace("_", ""))


# Mappings whose keys the user picks from a registry; checked after the merge (config_validation.check_named).
NAMED_KEYS = {
    "model.model_config": model_config_fields,
    "compile_config": compile_kwargs,
    "fsdp_config": fsdp_config_fields,
    "callbacks": callback_registry,  # each entry's keys: the keyword arguments of that Composer class
    "loggers": logger_registry,
    "tasks": lambda: TASKS,
}
MODEL_CONFIG_CHECKS = {"arch_type": one_of(arch_types), "form": one_of(FORMS)}  # arch_type is required too


@dataclass
class RunConfig:
    """The fields both entry points share, built by mlm/src/builders.py."""

    precision: Optional[str] = checked(None, one_of(PRECISIONS))  # None: fp32
    callbacks: Dict[str, Optional[Dict[str, Any]]] = field(default_factory=dict)  # name: kwargs (callback_registry)
    loggers: Dict[str, Optional[Dict[str, Any]]] = field(default_factory=dict)  # name: kwargs (logger_registry)
    compile_config: Optional[Dict[str, Any]] = None  # torch.compile kwargs; None: no compilation
    nonfinite_loss: str = checked("stop", one_of(NONFINITE_ACTIONS))
    allow_unsafe_checkpoints: bool = False


# ---- pretraining (mlm/main.py) -----------------------------------------------------------------------------------

@dataclass
class DatasetConfig:
    data_local: str = MISSING  # a folder written by mlm.src.convert_dataset
    split: str = checked(MISSING, one_of(SPLITS))
    mlm_probability: float = checked(MISSING, OPEN_UNIT)
    shuffle: bool = True
    shuffle_seed: int = 17


@dataclass
class LoaderConfig:
    dataset: DatasetConfig = MISSING
    drop_last: bool = True
    num_workers: int = checked(0, NON_NEGATIVE)
    pin_memory: bool = False
    prefetch_factor: int = checked(2, POSITIVE)  # used with num_workers > 0
    persistent_workers: bool = False
    timeout: float = checked(0.0, NON_NEGATIVE)


@dataclass
class DataPrepConfig:
    """Local text files converted into ``train_loader.dataset.data_local`` when it is not there yet."""

    local_files: List[str] = MISSING  # glob patterns
    val_fraction: float = checked(0.05, OPEN_UNIT)


@dataclass
class ModelConfig:
    name: str = checked(MISSING, one_of(MODELS))
    pretrained_model_name: str = MISSING  # the HF BERT whose sizes model_config starts from
    pretrained_checkpoint: Optional[str] = None
    gradient_checkpointing: bool = False
    model_config: Dict[str, Any] = MISSING  # LionBertConfig keyword arguments (NAMED_KEYS, MODEL_CONFIG_CHECKS)


@dataclass
class OptimizerConfig:
    name: str = checked(MISSING, one_of(OPTIMIZERS))
    lr: float = checked(MISSING, POSITIVE)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = checked(1e-6, POSITIVE)
    weight_decay: float = checked(0.0, NON_NEGATIVE)


@dataclass
class SchedulerConfig:
    name: str = checked(MISSING, one_of(SCHEDULERS))
    t_warmup: TimeValue = checked(MISSING, TIME)
    alpha_f: float = 0.0  # not used by constant_with_warmup


@dataclass
class PretrainConfig(RunConfig):
    run_name: Optional[str] = None
    seed: Optional[int] = 17
    max_seq_len: int = checked(MISSING, POSITIVE)
    tokenizer_name: str = MISSING
    data_local: Optional[str] = None  # for ${data_local} in the loaders
    data_prep: Optional[DataPrepConfig] = None
    model: ModelConfig = MISSING
    train_loader: LoaderConfig = MISSING
    eval_loader: Optional[LoaderConfig] = None
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    global_train_batch_size: int = checked(MISSING, POSITIVE)
    device_train_microbatch_size: Optional[Union[int, str]] = checked(None, AUTO_OR_POSITIVE)  # None: auto / batch
    device_eval_batch_size: Optional[int] = checked(None, POSITIVE)  # None: the device train batch size
    max_duration: TimeValue = checked(MISSING, TIME)
    eval_interval: TimeValue = checked(1, TIME)
    eval_subset_num_batches: int = -1
    train_subset_num_batches: int = -1
    progress_bar: bool = False
    log_to_console: bool = True
    console_log_interval: TimeValue = checked("1ba", TIME)
    save_folder: Optional[str] = None
    save_interval: TimeValue = checked("1000ba", TIME)
    save_num_checkpoints_to_keep: int = -1
    save_overwrite: bool = False
    load_path: Optional[str] = None
    load_weights_only: bool = False
    autoresume: bool = False
    python_log_level: Optional[str] = None
    dist_timeout: float = checked(300.0, Check("> 0 seconds", POSITIVE.test))
    fsdp_config: Optional[Dict[str, Any]] = None  # Composer's FSDPConfig fields; None: DDP over several processes


# ---- GLUE finetuning (mlm/glue.py) -------------------------------------------------------------------------------

@dataclass
class TrainerKwargs:
    """One task's trainer settings; None: the task's default (mlm/src/glue/tasks.py), then the yaml-wide one."""

    lr: Optional[float] = checked(None, POSITIVE)
    wd: Optional[float] = checked(None, NON_NEGATIVE)
    max_duration: Optional[TimeValue] = checked(None, TIME)
    max_sequence_length: Optional[int] = checked(None, POSITIVE)  # None: max_seq_len
    optim_name: Optional[str] = checked(None, Check(f"one of {list(OPTIMIZERS)} (any case, '_' optional)",
                                                    lambda v: normalise_optim_name(v) is not None))
    save_num_checkpoints_to_keep: Optional[int] = None  # None: 1 for a task others start from, else 0
    batch_size: Optional[int] = checked(None, POSITIVE)
    eval_interval: Optional[TimeValue] = checked(None, TIME)


@dataclass
class TaskConfig:
    seeds: Optional[List[int]] = None  # None: [default_seed]
    trainer_kwargs: TrainerKwargs = field(default_factory=TrainerKwargs)


@dataclass
class FinetuneModelConfig:
    name: str = checked("lion_bert", one_of(MODELS))
    pretrained_model_name: str = "bert-base-uncased"
    tokenizer_name: Optional[str] = None
    model_config: Dict[str, Any] = MISSING  # must match the pretraining yaml's


@dataclass
class GlueDataConfig:
    data_dir: Optional[str] = None  # a GLUE-format folder; None: nyu-mll/glue from the hub
    cache_dir: str = "./data_cache/glue"


@dataclass
class FinetuneConfig(RunConfig):
    parallel: bool = False  # one job per GPU
    base_run_name: str = MISSING
    default_seed: int = 19
    tokenizer_name: Optional[str] = None  # None: model.tokenizer_name
    max_seq_len: int = checked(128, POSITIVE)
    model: FinetuneModelConfig = MISSING
    starting_checkpoint_load_path: Optional[str] = None
    local_pretrain_checkpoint_folder: str = "./local-bert-checkpoints"
    save_finetune_checkpoint_prefix: Optional[str] = None
    save_finetune_checkpoint_folder: str = MISSING
    results_folder: Optional[str] = None  # None: save_finetune_checkpoint_folder
    overwrite: bool = False
    data: GlueDataConfig = field(default_factory=GlueDataConfig)
    scheduler: Optional[SchedulerConfig] = None  # None: constant lr
    tasks: Dict[str, TaskConfig] = field(default_factory=dict)  # task name (mlm/src/glue/tasks.py): settings


def required(cls: type, name: str) -> bool:
    """Whether dataclass ``cls``'s field ``name`` has no default."""
    return any(f.name == name and f.default is MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(cls))
