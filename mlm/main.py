"""MLM pretraining of LION BERTs with Composer.

    composer mlm/main.py yamls/pretrain/lion-d-base.yaml train_loader.dataset.data_local=/data/c4 [key=value ...]
    python mlm/main.py yamls/pretrain/demo.yaml            # single process

The yaml is an omegaconf config; ``key=value`` arguments after it override fields (omegaconf dotlist syntax).
"""
from __future__ import annotations

import logging
import os
import sys

import torch
from composer import Trainer
from composer.callbacks import LRMonitor, MemoryMonitor, RuntimeEstimator, SpeedMonitor
from composer.loggers import FileLogger
from composer.optim import (ConstantWithWarmupScheduler, CosineAnnealingWithWarmupScheduler, DecoupledAdamW,
                            LinearWithWarmupScheduler)
from composer.utils import dist, reproducibility
from omegaconf import DictConfig
from omegaconf import OmegaConf as om

from mlm.src.config_validation import ConfigError, validate
from mlm.src.convert_dataset import convert, is_complete, local_documents
from mlm.src.create_bert import create_bert_mlm
from mlm.src.text_data import build_mlm_dataloader

log = logging.getLogger("mlm.main")


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.get("betas", (0.9, 0.98))), eps=cfg.get("eps", 1e-6),
                  weight_decay=cfg.get("weight_decay", 0.0))
    if cfg.name == "decoupled_adamw":
        return DecoupledAdamW(model.parameters(), **kwargs)
    return torch.optim.AdamW(model.parameters(), **kwargs)


def build_scheduler(cfg: DictConfig):
    if cfg.name == "linear_decay_with_warmup":
        return LinearWithWarmupScheduler(t_warmup=cfg.t_warmup, alpha_f=cfg.get("alpha_f", 0.0))
    if cfg.name == "cosine_with_warmup":
        return CosineAnnealingWithWarmupScheduler(t_warmup=cfg.t_warmup, alpha_f=cfg.get("alpha_f", 0.0))
    return ConstantWithWarmupScheduler(t_warmup=cfg.t_warmup)


def build_callbacks(cfg: DictConfig, on_gpu: bool) -> list:
    callbacks = []
    for name, kwargs in (cfg.get("callbacks") or {}).items():
        kwargs = om.to_container(kwargs) if kwargs is not None else {}
        if name == "speed_monitor":
            callbacks.append(SpeedMonitor(**kwargs))
        elif name == "lr_monitor":
            callbacks.append(LRMonitor())
        elif name == "memory_monitor":
            if on_gpu:
                callbacks.append(MemoryMonitor())
            else:
                log.info("callbacks.memory_monitor skipped: it measures GPU memory and this run is on CPU")
        elif name == "runtime_estimator":
            callbacks.append(RuntimeEstimator())
        else:
            raise ConfigError(f"config field 'callbacks.{name}' is unknown; allowed: speed_monitor, lr_monitor, "
                              "memory_monitor, runtime_estimator")
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, kwargs in (cfg.get("loggers") or {}).items():
        kwargs = om.to_container(kwargs) if kwargs is not None else {}
        if name == "wandb":
            try:
                from composer.loggers import WandBLogger

                loggers.append(WandBLogger(**kwargs))
            except ImportError:
                log.warning("loggers.wandb is configured but wandb is not installed; not logging to W&B")
        elif name == "file":
            loggers.append(FileLogger(**kwargs))
        else:
            raise ConfigError(f"config field 'loggers.{name}' is unknown; allowed: wandb, file")
    return loggers


def resolve_precision(requested: str, on_gpu: bool) -> str:
    if on_gpu or requested == "fp32":
        return requested
    log.warning("precision=%s needs a GPU; this run is on CPU, so it falls back to precision=fp32", requested)
    return "fp32"


def device_batch_size(global_batch: int, name: str) -> int:
    world = dist.get_world_size()
    if global_batch % world:
        raise ConfigError(f"config field '{name}' ({global_batch}) must be divisible by the world size ({world})")
    return global_batch // world


def prepare_demo_data(cfg: DictConfig, tokenizer) -> None:
    """With a ``data_prep`` section, convert local text files into ``data_local`` once (local rank 0)."""
    prep = cfg.get("data_prep")
    data_local = cfg.train_loader.dataset.data_local
    if prep is None or is_complete(data_local):
        return
    if dist.get_local_rank() == 0:
        import glob

        files = sorted(f for pattern in prep.local_files for f in glob.glob(pattern))
        if not files:
            raise ConfigError(f"config field 'data_prep.local_files' matched no file: {list(prep.local_files)}")
        log.info("converting %d local files into %s", len(files), data_local)
        convert(local_documents(files, prep.get("val_fraction", 0.05)), data_local, tokenizer, cfg.max_seq_len,
                metadata={"source": files})
    dist.barrier()


def build_trainer(cfg: DictConfig) -> Trainer:
    validate(cfg)
    on_gpu = torch.cuda.is_available()
    device = "gpu" if on_gpu else "cpu"
    if dist.get_world_size() > 1 and not dist.is_initialized():
        dist.initialize_dist(device)
    reproducibility.seed_all(cfg.get("seed", 17))
    train_batch = device_batch_size(cfg.global_train_batch_size, "global_train_batch_size")
    model = create_bert_mlm(pretrained_model_name=cfg.model.pretrained_model_name,
                            model_config=om.to_container(cfg.model.model_config, resolve=True),
                            tokenizer_name=cfg.tokenizer_name,
                            pretrained_checkpoint=cfg.model.get("pretrained_checkpoint"),
                            gradient_checkpointing=cfg.model.get("gradient_checkpointing", False))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %s, %.2fM parameters", cfg.model.name, model.model.config.arch_type, n_params / 1e6)
    prepare_demo_data(cfg, model.tokenizer)
    train_loader = build_mlm_dataloader(cfg.train_loader, model.tokenizer, train_batch, cfg.max_seq_len)
    eval_loader = None
    if "eval_loader" in cfg:
        eval_batch = cfg.get("device_eval_batch_size", train_batch)
        eval_loader = build_mlm_dataloader(cfg.eval_loader, model.tokenizer, eval_batch, cfg.max_seq_len)
    return Trainer(
        run_name=cfg.get("run_name"),
        seed=cfg.get("seed", 17),
        model=model,
        train_dataloader=train_loader,
        eval_dataloader=eval_loader,
        train_subset_num_batches=cfg.get("train_subset_num_batches", -1),
        eval_subset_num_batches=cfg.get("eval_subset_num_batches", -1),
        optimizers=build_optimizer(cfg.optimizer, model),
        schedulers=build_scheduler(cfg.scheduler),
        max_duration=cfg.max_duration,
        eval_interval=cfg.get("eval_interval", 1),
        progress_bar=cfg.get("progress_bar", False),
        log_to_console=cfg.get("log_to_console", True),
        console_log_interval=cfg.get("console_log_interval", "1ba"),
        loggers=build_loggers(cfg),
        callbacks=build_callbacks(cfg, on_gpu),
        precision=resolve_precision(cfg.get("precision", "amp_bf16"), on_gpu),
        device=device,
        device_train_microbatch_size=cfg.get("device_train_microbatch_size", "auto" if on_gpu else train_batch),
        save_folder=cfg.get("save_folder"),
        save_interval=cfg.get("save_interval", "1000ba"),
        save_num_checkpoints_to_keep=cfg.get("save_num_checkpoints_to_keep", -1),
        save_overwrite=cfg.get("save_overwrite", False),
        load_path=cfg.get("load_path"),
        load_weights_only=cfg.get("load_weights_only", False),
        autoresume=cfg.get("autoresume", False),
        python_log_level=cfg.get("python_log_level", None),
    )


def load_config(yaml_path: str, overrides: list[str]) -> DictConfig:
    if not os.path.isfile(yaml_path):
        raise ConfigError(f"config file {yaml_path!r} does not exist")
    cfg = om.merge(om.load(yaml_path), om.from_cli(overrides))
    assert isinstance(cfg, DictConfig)
    return cfg


def main(cfg: DictConfig) -> Trainer:
    trainer = build_trainer(cfg)
    trainer.fit()
    return trainer


def cli(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0].startswith("-"):
        sys.exit(f"usage: {__doc__.strip().splitlines()[2].strip()}")
    try:
        cfg = load_config(argv[0], argv[1:])
        validate(cfg)
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    main(cfg)


if __name__ == "__main__":
    cli(sys.argv[1:])
