"""One finetuning job = one (task, seed): build the model from a checkpoint, train with Composer, return metrics."""
from __future__ import annotations

import gc
import logging
from typing import Any, Optional, Sequence

import torch
from composer import Trainer
from composer.callbacks import LRMonitor, MemoryMonitor, OptimizerMonitor, RuntimeEstimator, SpeedMonitor
from composer.core import Callback, Evaluator
from composer.loggers import WandBLogger
from composer.optim import (ConstantWithWarmupScheduler, CosineAnnealingWithWarmupScheduler, DecoupledAdamW,
                            LinearWithWarmupScheduler)
from composer.utils import reproducibility

from mlm.src.create_bert import create_bert_classification

from .checkpoint import load_encoder, model_weights, read_checkpoint
from .data import build_dataloader, tokenized_split
from .metrics import build_metric, metric_class_name
from .tasks import get_task

log = logging.getLogger(__name__)
CALLBACKS = {'lr_monitor': LRMonitor, 'speed_monitor': SpeedMonitor, 'memory_monitor': MemoryMonitor,
             'optimizer_monitor': OptimizerMonitor, 'runtime_estimator': RuntimeEstimator}


def build_callback(name: str, kwargs: dict) -> Callback:
    if name not in CALLBACKS:
        raise ValueError(f'callbacks.{name}: unknown; allowed: {sorted(CALLBACKS)}')
    return CALLBACKS[name](**(kwargs or {}))


def build_logger(name: str, kwargs: dict):
    if name != 'wandb':
        raise ValueError(f"loggers.{name}: unknown; allowed: ['wandb']")
    return WandBLogger(**(kwargs or {}))


def build_scheduler(cfg: dict):
    if not cfg:
        return None
    args = {k: v for k, v in cfg.items() if k != 'name'}
    return {'linear_decay_with_warmup': LinearWithWarmupScheduler,
            'cosine_with_warmup': CosineAnnealingWithWarmupScheduler,
            'constant_with_warmup': ConstantWithWarmupScheduler}[cfg['name']](**args)


def build_optimizer(model: torch.nn.Module, optim_name: str, lr: float, wd: float):
    cls = DecoupledAdamW if optim_name == 'decoupled_adamw' else torch.optim.AdamW
    return cls(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=wd)  # M2-BERT's settings


def evaluator_label(task_name: str, suffix: str) -> str:
    return f'glue_{task_name}' + (f'_{suffix}' if suffix else '')


def build_model(job: dict):
    """The Composer model of a job, its encoder loaded from ``job['load_path']`` (head freshly initialised)."""
    task, model_cfg = get_task(job['task']), job['model']
    model = create_bert_classification(
        num_labels=task.num_labels, pretrained_model_name=model_cfg.get('pretrained_model_name', 'bert-base-uncased'),
        model_config=model_cfg.get('model_config'), tokenizer_name=job['tokenizer_name'],
        custom_eval_metrics=[build_metric(m, task.num_labels) for m in task.metrics])
    if job['load_path']:
        load_encoder(model.model, model_weights(read_checkpoint(job['load_path'])), job['load_path'])
    return model


def pick_precision(precision: str, device) -> str:
    on_gpu = device == 'gpu' or (not isinstance(device, str) and getattr(device, 'name', '') == 'gpu')
    if precision != 'fp32' and not on_gpu:
        log.warning('precision %s needs a GPU; using fp32 on CPU', precision)
        return 'fp32'
    return precision


def run_job(job: dict, device: Any = None, extra_callbacks: Optional[Sequence[Callback]] = None) -> dict:
    """Trains one (task, seed) and returns {'job_name', 'task', 'seed', 'metrics': {evaluator: {metric: value}},
    'checkpoint': path of the last saved checkpoint or None}."""
    reproducibility.seed_all(job['seed'])  # before model init, for determinism
    task, kw = get_task(job['task']), job['trainer_kwargs']
    device = device or ('gpu' if torch.cuda.is_available() else 'cpu')
    model = build_model(job)
    tokenizer, data = model.tokenizer, job.get('data') or {}
    split_args = dict(tokenizer=tokenizer, max_sequence_length=kw['max_sequence_length'],
                      data_dir=data.get('data_dir'), cache_dir=data.get('cache_dir', './data_cache/glue'))
    train = build_dataloader(tokenized_split(task, 'train', **split_args), tokenizer, kw['batch_size'], True, job['seed'])
    evaluators = [
        Evaluator(label=evaluator_label(task.name, suffix),
                  dataloader=build_dataloader(tokenized_split(task, split, **split_args), tokenizer,
                                              kw['batch_size'], False, job['seed']),
                  metric_names=[metric_class_name(m) for m in task.metrics])
        for suffix, split in task.eval_splits.items()]
    keep = kw['save_num_checkpoints_to_keep']
    trainer = Trainer(
        model=model, train_dataloader=train, eval_dataloader=evaluators, eval_interval=kw['eval_interval'],
        max_duration=kw['max_duration'], optimizers=build_optimizer(model, kw['optim_name'], kw['lr'], kw['wd']),
        schedulers=build_scheduler(job['scheduler']), seed=job['seed'], device=device,
        precision=pick_precision(job['precision'], device), run_name=job['job_name'],
        save_folder=job['save_folder'] if keep > 0 else None, save_num_checkpoints_to_keep=max(keep, -1),
        save_overwrite=True, save_latest_filename=None,
        callbacks=[build_callback(n, a) for n, a in job['callbacks'].items()] + list(extra_callbacks or []),
        loggers=[build_logger(n, a) for n, a in job['loggers'].items()],
        progress_bar=True, log_to_console=False, python_log_level=None)
    trainer.fit()
    metrics = {label: {name: float(m.compute()) for name, m in ms.items()}
               for label, ms in trainer.state.eval_metrics.items()}
    checkpoint = str(trainer.saved_checkpoints[-1]) if trainer.saved_checkpoints else None
    trainer.close()
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log.info('%s: %s', job['job_name'], metrics)
    return {'job_name': job['job_name'], 'task': task.name, 'seed': job['seed'], 'metrics': metrics,
            'checkpoint': checkpoint}
