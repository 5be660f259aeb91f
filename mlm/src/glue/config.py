"""The finetuning yaml: validation (one clear error per bad field, before any training) and per-job configs.

Schema (M2-BERT's finetune-glue yamls)::

    parallel, base_run_name, default_seed, precision, tokenizer_name,
    model: {name: lion_bert, pretrained_model_name, tokenizer_name, model_config: {arch_type, ...}},
    starting_checkpoint_load_path, local_pretrain_checkpoint_folder,
    save_finetune_checkpoint_prefix, save_finetune_checkpoint_folder, results_folder,
    data: {data_dir, cache_dir}, scheduler: {name, t_warmup, alpha_f}, callbacks: {}, loggers: {},
    tasks: {<task>: {seeds: [...], trainer_kwargs: {lr, wd, max_duration, max_sequence_length, optim_name,
                                                    save_num_checkpoints_to_keep, batch_size, eval_interval}}}
"""
from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from mlm.src.bert_config import ARCH_TYPES

from .tasks import get_task

TOP_LEVEL = {'parallel', 'base_run_name', 'default_seed', 'precision', 'tokenizer_name', 'max_seq_len', 'model',
             'starting_checkpoint_load_path', 'local_pretrain_checkpoint_folder', 'save_finetune_checkpoint_prefix',
             'save_finetune_checkpoint_folder', 'results_folder', 'data', 'scheduler', 'callbacks', 'loggers',
             'algorithms', 'tasks'}
TRAINER_KWARGS = {'lr', 'wd', 'max_duration', 'max_sequence_length', 'optim_name', 'save_num_checkpoints_to_keep',
                  'batch_size', 'eval_interval'}
OPTIMIZERS = ('decoupled_adamw', 'adamw')
SCHEDULERS = ('linear_decay_with_warmup', 'cosine_with_warmup', 'constant_with_warmup')
PRECISIONS = ('fp32', 'amp_fp16', 'amp_bf16')
TASK_KEYS = {'seeds', 'trainer_kwargs'}


def _unknown(where: str, keys, allowed) -> None:
    bad = sorted(set(keys) - set(allowed))
    if bad:
        raise ValueError(f'{where}: unknown field(s) {bad}; allowed: {sorted(allowed)}')


def normalise_optim_name(name: str) -> str:
    key = str(name).lower().replace('_', '')
    names = {'decoupledadamw': 'decoupled_adamw', 'adamw': 'adamw'}
    if key not in names:
        raise ValueError(f'trainer_kwargs.optim_name must be one of {list(OPTIMIZERS)}, got {name!r}')
    return names[key]


def validate(cfg: DictConfig) -> None:
    """Checks every field a run uses; raises ValueError naming the field and the allowed values."""
    _unknown('yaml', cfg.keys(), TOP_LEVEL)
    for field in ('base_run_name', 'model', 'tasks', 'save_finetune_checkpoint_folder'):
        if cfg.get(field) in (None, ''):
            raise ValueError(f'{field}: required')
    arch = cfg.model.get('model_config', {}).get('arch_type')
    if arch not in ARCH_TYPES:
        raise ValueError(f'model.model_config.arch_type must be one of {list(ARCH_TYPES)}, got {arch!r}')
    if cfg.model.get('name', 'lion_bert') != 'lion_bert':
        raise ValueError(f"model.name must be 'lion_bert', got {cfg.model.name!r}")
    if cfg.get('precision', 'fp32') not in PRECISIONS:
        raise ValueError(f'precision must be one of {list(PRECISIONS)}, got {cfg.precision!r}')
    scheduler = cfg.get('scheduler') or {}
    if scheduler and scheduler.get('name') not in SCHEDULERS:
        raise ValueError(f'scheduler.name must be one of {list(SCHEDULERS)}, got {scheduler.get("name")!r}')
    if not cfg.tasks:
        raise ValueError('tasks: at least one task is required')
    for name, task_cfg in cfg.tasks.items():
        get_task(name)
        task_cfg = task_cfg or {}
        _unknown(f'tasks.{name}', task_cfg.keys(), TASK_KEYS)
        _unknown(f'tasks.{name}.trainer_kwargs', (task_cfg.get('trainer_kwargs') or {}).keys(), TRAINER_KWARGS)
        seeds = task_cfg.get('seeds', [cfg.get('default_seed', 19)])
        if not seeds or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f'tasks.{name}.seeds must be a non-empty list of integers, got {seeds}')
        if 'optim_name' in (task_cfg.get('trainer_kwargs') or {}):
            normalise_optim_name(task_cfg.trainer_kwargs.optim_name)
    for name in cfg.tasks:
        source = get_task(name).init_from
        if source in cfg.tasks:
            keep = ((cfg.tasks[source] or {}).get('trainer_kwargs') or {}).get('save_num_checkpoints_to_keep', 1)
            if keep < 1:
                raise ValueError(f'tasks.{source}.trainer_kwargs.save_num_checkpoints_to_keep must be >= 1: '
                                 f'{name} starts from the {source} checkpoint')


def task_order(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(round 1, round 2): tasks initialised from pretraining first, then those that start from another task's
    finetuned checkpoint (RTE, MRPC, STS-B from MNLI) when that task is configured too."""
    names = list(cfg.tasks)
    second = [n for n in names if get_task(n).init_from in names]
    return [n for n in names if n not in second], second


def job_configs(cfg: DictConfig, task_names: list[str]) -> list[dict]:
    """One plain dict per (task, seed): everything a worker process needs to build and run the job."""
    jobs, sources = [], {get_task(n).init_from for n in cfg.tasks}
    for name in task_names:
        task, task_cfg = get_task(name), cfg.tasks[name] or {}
        kwargs = {**task.defaults, 'max_sequence_length': cfg.get('max_seq_len', 128),
                  'optim_name': 'decoupled_adamw', 'save_num_checkpoints_to_keep': int(name in sources),
                  **OmegaConf.to_container(task_cfg.get('trainer_kwargs') or OmegaConf.create({}), resolve=True)}
        kwargs['optim_name'] = normalise_optim_name(kwargs['optim_name'])
        for seed in task_cfg.get('seeds', [cfg.get('default_seed', 19)]):
            run_name = f'{cfg.base_run_name}_task={name}_seed={seed}'
            jobs.append({
                'task': name, 'seed': int(seed), 'job_name': run_name,
                'model': OmegaConf.to_container(cfg.model, resolve=True),
                'tokenizer_name': cfg.get('tokenizer_name') or cfg.model.get('tokenizer_name'),
                'scheduler': OmegaConf.to_container(cfg.get('scheduler') or OmegaConf.create({}), resolve=True),
                'precision': cfg.get('precision', 'fp32'),
                'callbacks': OmegaConf.to_container(cfg.get('callbacks') or OmegaConf.create({}), resolve=True),
                'loggers': OmegaConf.to_container(cfg.get('loggers') or OmegaConf.create({}), resolve=True),
                'data': OmegaConf.to_container(cfg.get('data') or OmegaConf.create({}), resolve=True),
                'save_folder': os.path.join(cfg.save_finetune_checkpoint_folder, f'task={name}', f'seed={seed}'),
                'load_path': None,  # set by the runner: pretraining checkpoint or the source task's checkpoint
                'trainer_kwargs': kwargs,
            })
    return jobs
