"""One finetuning job = one (task, seed): build the model from a checkpoint, train with Composer, return metrics."""
from __future__ import annotations

import gc
import logging
from typing import Any, Optional, Sequence

import torch
from composer import Trainer
from composer.core import Callback, Evaluator
from composer.utils import reproducibility

from mlm.src.builders import build_optimizer, build_scheduler, extra_trainer_kwargs, use_atomic_checkpoint_writes
from mlm.src.config_validation import ConfigError, check_vocab
from mlm.src.create_bert import build_config, create_bert_classification, load_tokenizer
from mlm.src.glue.checkpoint import load_encoder, model_weights, read_checkpoint
from mlm.src.glue.data import build_dataloader, tokenized_split
from mlm.src.glue.metrics import build_metric, metric_class_name
from mlm.src.glue.tasks import get_task

log = logging.getLogger(__name__)


def evaluator_label(task_name: str, suffix: str) -> str:
    return f"glue_{task_name}" + (f"_{suffix}" if suffix else "")


def build_model(job: dict):
    """The Composer model of a job, its encoder loaded from ``job['load_path']`` (head freshly initialised)."""
    task, model_cfg = get_task(job["task"]), job["model"]
    try:
        pretrained_name = model_cfg.get("pretrained_model_name", "bert-base-uncased")
        config = build_config(pretrained_name, model_cfg.get("model_config"))
        check_vocab(load_tokenizer(job["tokenizer_name"]), config.vocab_size, "tokenizer_name")
        model = create_bert_classification(
            num_labels=task.num_labels,
            pretrained_model_name=pretrained_name,
            model_config=model_cfg.get("model_config"), tokenizer_name=job["tokenizer_name"],
            custom_eval_metrics=[build_metric(m, task.num_labels) for m in task.metrics])
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: cannot be built: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise ConfigError(f"tokenizer_name: cannot be loaded: {str(e).splitlines()[0]}") from None
    if job["load_path"]:
        unsafe = bool(job.get("allow_unsafe_checkpoints", False))
        field = "starting_checkpoint_load_path"
        state = read_checkpoint(job["load_path"], unsafe, field)
        load_encoder(model.model, model_weights(state, job["load_path"], field), job["load_path"], field)
    return model


def run_job(job: dict, device: Any = None, extra_callbacks: Optional[Sequence[Callback]] = None) -> dict:
    """Trains one (task, seed) and returns {'job_name', 'task', 'seed', 'metrics': {evaluator: {metric: value}},
    'checkpoint': path of the last saved checkpoint or None}."""
    reproducibility.seed_all(job["seed"])  # before model init, for determinism
    task, kw = get_task(job["task"]), job["trainer_kwargs"]
    device = device or ("gpu" if torch.cuda.is_available() else "cpu")
    model = build_model(job)
    tokenizer, data = model.tokenizer, job.get("data") or {}
    split_args = dict(tokenizer=tokenizer, max_sequence_length=kw["max_sequence_length"],
                      data_dir=data.get("data_dir"), cache_dir=data.get("cache_dir", "./data_cache/glue"))
    train_split = tokenized_split(task, "train", **split_args)
    train = build_dataloader(train_split, tokenizer, kw["batch_size"], True, job["seed"])
    evaluators = [
        Evaluator(label=evaluator_label(task.name, suffix),
                  dataloader=build_dataloader(tokenized_split(task, split, **split_args), tokenizer,
                                              kw["batch_size"], False, job["seed"]),
                  metric_names=[metric_class_name(m) for m in task.metrics])
        for suffix, split in task.eval_splits.items()]
    keep = kw["save_num_checkpoints_to_keep"]
    extra = extra_trainer_kwargs(job, on_gpu=device == "gpu" or getattr(device, "name", "") == "gpu")
    use_atomic_checkpoint_writes()
    trainer = Trainer(
        model=model, train_dataloader=train, eval_dataloader=evaluators, eval_interval=kw["eval_interval"],
        max_duration=kw["max_duration"],
        optimizers=build_optimizer(kw["optim_name"], model.parameters(), kw["lr"], kw["wd"]),  # M2-BERT's betas, eps
        schedulers=build_scheduler(job["scheduler"]), seed=job["seed"], device=device,
        precision=extra["precision"], compile_config=extra["compile_config"], run_name=job["job_name"],
        save_folder=job["save_folder"] if keep > 0 else None, save_num_checkpoints_to_keep=max(keep, -1),
        save_overwrite=True, save_latest_filename=None,
        callbacks=list(extra_callbacks or []) + extra["callbacks"], loggers=extra["loggers"],
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
    log.info("%s: %s", job["job_name"], metrics)
    return {"job_name": job["job_name"], "task": task.name, "seed": job["seed"], "metrics": metrics,
            "checkpoint": checkpoint}
