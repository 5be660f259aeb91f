"""The finetuning yaml: validation (one clear error per bad field, before any training) and per-job configs.

The fields (M2-BERT's finetune-glue yamls) and their defaults: ``FinetuneConfig`` in mlm/src/train_config.py.
"""
from __future__ import annotations

import os
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from mlm.src.config_validation import Source, validate_finetune
from mlm.src.glue.tasks import get_task
from mlm.src.train_config import normalise_optim_name

COMMON_FIELDS = ("precision", "callbacks", "loggers", "compile_config", "nonfinite_loss", "allow_unsafe_checkpoints")


def validate(cfg: DictConfig, source: Optional[Source] = None) -> DictConfig:
    """The checked ``FinetuneConfig`` (defaults filled in) that ``task_order`` and ``job_configs`` take; raises
    ConfigError naming the file, the field and the allowed values."""
    return validate_finetune(cfg, source)


def task_order(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(round 1, round 2): tasks initialised from pretraining first, then those that start from another task's
    finetuned checkpoint (RTE, MRPC, STS-B from MNLI) when that task is configured too."""
    names = list(cfg.tasks)
    second = [n for n in names if get_task(n).init_from in names]
    return [n for n in names if n not in second], second


def job_configs(cfg: DictConfig, task_names: list[str]) -> list[dict]:
    """One plain dict per (task, seed) of a validated config: everything a worker process needs to build and run
    the job. A trainer setting the yaml leaves out is the task's default, then the yaml-wide one."""
    jobs, sources = [], {get_task(n).init_from for n in cfg.tasks}
    common = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
              for k in COMMON_FIELDS if (v := cfg[k]) is not None}
    for name in task_names:
        task, task_cfg = get_task(name), cfg.tasks[name]
        given = OmegaConf.to_container(task_cfg.trainer_kwargs, resolve=True)
        kwargs = {**task.defaults, "max_sequence_length": cfg.max_seq_len, "optim_name": "decoupled_adamw",
                  "save_num_checkpoints_to_keep": int(name in sources),
                  **{k: v for k, v in given.items() if v is not None}}
        kwargs["optim_name"] = normalise_optim_name(kwargs["optim_name"])
        for seed in task_cfg.seeds if task_cfg.seeds is not None else [cfg.default_seed]:
            run_name = f"{cfg.base_run_name}_task={name}_seed={seed}"
            jobs.append({
                "task": name, "seed": int(seed), "job_name": run_name,
                "model": OmegaConf.to_container(cfg.model, resolve=True),
                "tokenizer_name": cfg.tokenizer_name or cfg.model.tokenizer_name,
                "scheduler": OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.scheduler else None,
                **common,
                "data": OmegaConf.to_container(cfg.data, resolve=True),
                "save_folder": os.path.join(cfg.save_finetune_checkpoint_folder, f"task={name}", f"seed={seed}"),
                "load_path": None,  # set by the runner: pretraining checkpoint or the source task's checkpoint
                "trainer_kwargs": kwargs,
            })
    return jobs
