"""The finetuning yaml: validation (one clear error per bad field, before any training) and per-job configs.

Schema (M2-BERT's finetune-glue yamls)::

    parallel, base_run_name, default_seed, precision, tokenizer_name,
    model: {name: lion_bert, pretrained_model_name, tokenizer_name, model_config: {arch_type, ...}},
    starting_checkpoint_load_path, local_pretrain_checkpoint_folder,
    save_finetune_checkpoint_prefix, save_finetune_checkpoint_folder, results_folder,
    data: {data_dir, cache_dir}, scheduler: {name, t_warmup, alpha_f}, callbacks: {}, loggers: {},
    compile_config, nonfinite_loss, allow_unsafe_checkpoints (as in the pretraining yamls),
    tasks: {<task>: {seeds: [...], trainer_kwargs: {lr, wd, max_duration, max_sequence_length, optim_name,
                                                    save_num_checkpoints_to_keep, batch_size, eval_interval}}}
"""
from __future__ import annotations

import os
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from mlm.src.config_validation import OPTIMIZERS, Source, validate_finetune
from mlm.src.glue.tasks import get_task

COMMON_FIELDS = ("precision", "callbacks", "loggers", "compile_config", "nonfinite_loss", "allow_unsafe_checkpoints")


def normalise_optim_name(name: str) -> Optional[str]:
    """M2-BERT's spellings (``DecoupledAdamW``, ``decoupled_adamw``, ``AdamW``) to ours; None if unknown."""
    names = {n.replace("_", ""): n for n in OPTIMIZERS}
    return names.get(str(name).lower().replace("_", ""))


def validate(cfg: DictConfig, source: Optional[Source] = None) -> None:
    """Checks every field a run uses; raises ConfigError naming the file, the field and the allowed values."""
    validate_finetune(cfg, source)


def task_order(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(round 1, round 2): tasks initialised from pretraining first, then those that start from another task's
    finetuned checkpoint (RTE, MRPC, STS-B from MNLI) when that task is configured too."""
    names = list(cfg.tasks)
    second = [n for n in names if get_task(n).init_from in names]
    return [n for n in names if n not in second], second


def job_configs(cfg: DictConfig, task_names: list[str]) -> list[dict]:
    """One plain dict per (task, seed): everything a worker process needs to build and run the job."""
    jobs, sources = [], {get_task(n).init_from for n in cfg.tasks}
    common = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
              for k in COMMON_FIELDS if (v := cfg.get(k)) is not None}
    for name in task_names:
        task, task_cfg = get_task(name), cfg.tasks[name] or {}
        kwargs = {**task.defaults, "max_sequence_length": cfg.get("max_seq_len", 128),
                  "optim_name": "decoupled_adamw", "save_num_checkpoints_to_keep": int(name in sources),
                  **OmegaConf.to_container(task_cfg.get("trainer_kwargs") or OmegaConf.create({}), resolve=True)}
        kwargs["optim_name"] = normalise_optim_name(kwargs["optim_name"])
        for seed in task_cfg.get("seeds", [cfg.get("default_seed", 19)]):
            run_name = f"{cfg.base_run_name}_task={name}_seed={seed}"
            jobs.append({
                "task": name, "seed": int(seed), "job_name": run_name,
                "model": OmegaConf.to_container(cfg.model, resolve=True),
                "tokenizer_name": cfg.get("tokenizer_name") or cfg.model.get("tokenizer_name"),
                "scheduler": OmegaConf.to_container(cfg.get("scheduler") or OmegaConf.create({}), resolve=True),
                **common,
                "data": OmegaConf.to_container(cfg.get("data") or OmegaConf.create({}), resolve=True),
                "save_folder": os.path.join(cfg.save_finetune_checkpoint_folder, f"task={name}", f"seed={seed}"),
                "load_path": None,  # set by the runner: pretraining checkpoint or the source task's checkpoint
                "trainer_kwargs": kwargs,
            })
    return jobs
