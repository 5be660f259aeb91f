"""MLM pretraining of LION BERTs with Composer.

    composer mlm/main.py yamls/pretrain/lion-d-base.yaml train_loader.dataset.data_local=/data/c4 [key=value ...]
    python mlm/main.py yamls/pretrain/demo.yaml            # single process

The yaml is an omegaconf config; ``key=value`` arguments after it override fields (omegaconf dotlist syntax).
Every field is checked before any work against its schema (mlm/src/train_config.py, mlm/src/config_validation.py):
a bad one ends the run with one line; fields the yaml leaves out take the schema's defaults.
"""
from __future__ import annotations

import glob
import logging
import os
import sys
import traceback
from typing import Optional, Sequence

if __package__ in (None, ""):  # `python mlm/main.py` / `composer mlm/main.py`: import the repository's mlm package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from composer import Callback, Trainer
from composer.utils import dist, reproducibility
from omegaconf import DictConfig
from omegaconf import OmegaConf as om

from lion.multi_gpu import (
    disable_nvlink_multicast,
    is_communication_error,
    lost_contact_message,
    rank_failed_message,
)
from mlm.src.builders import (
    NonFiniteLossError,
    build_optimizer,
    build_scheduler,
    extra_trainer_kwargs,
    use_atomic_checkpoint_writes,
)
from mlm.src.composer_checkpoint import (
    check_resumable,
    checkpoint_batch,
    complete_checkpoints,
    newest_complete_checkpoint,
    remove_partial_checkpoints,
    rotate_resumed_checkpoints,
)
from mlm.src.config_validation import ConfigError, Source, check_folders, check_vocab, load_config, validate
from mlm.src.convert_dataset import convert, is_complete, local_documents
from mlm.src.create_bert import build_config, create_bert_mlm, load_tokenizer
from mlm.src.text_data import build_mlm_dataloader

disable_nvlink_multicast()  # before Composer initialises the process group (NCCL reads NCCL_NVLS_ENABLE then)

log = logging.getLogger("mlm.main")


def device_batch_size(global_batch: int, name: str, source: Source) -> int:
    world = dist.get_world_size()
    if global_batch % world:
        raise source.error(name, f"({global_batch}) must be divisible by the world size ({world})")
    return global_batch // world


def prepare_demo_data(cfg: DictConfig, tokenizer, source: Source) -> None:
    """With a ``data_prep`` section, convert local text files into ``data_local`` once (local rank 0)."""
    prep = cfg.data_prep
    data_local = cfg.train_loader.dataset.data_local
    if prep is None or is_complete(data_local):
        return
    if dist.get_local_rank() == 0:
        files = sorted(f for pattern in prep.local_files for f in glob.glob(pattern))
        if not files:
            raise source.error("data_prep.local_files", f"matched no file: {list(prep.local_files)}")
        log.info("converting %d local files into %s", len(files), data_local)
        try:
            convert(local_documents(files, prep.val_fraction), data_local, tokenizer, cfg.max_seq_len,
                    metadata={"source": files})
        except ValueError as err:
            raise source.error("data_prep.local_files", str(err)) from None
    dist.barrier()


def build_model(cfg: DictConfig, source: Source):
    model_config = om.to_container(cfg.model.model_config, resolve=True)
    try:
        vocab_size = build_config(cfg.model.pretrained_model_name, model_config).vocab_size
        check_vocab(load_tokenizer(cfg.tokenizer_name), vocab_size, source.where("tokenizer_name"))
        model = create_bert_mlm(pretrained_model_name=cfg.model.pretrained_model_name,
                                model_config=model_config,
                                tokenizer_name=cfg.tokenizer_name,
                                pretrained_checkpoint=cfg.model.pretrained_checkpoint,
                                gradient_checkpointing=cfg.model.gradient_checkpointing)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise source.error("model", f"cannot be built: {str(err).splitlines()[0]}") from None
    except OSError as err:  # a tokenizer directory or name transformers cannot open
        raise source.error("tokenizer_name", f"cannot be loaded: {str(err).splitlines()[0]}") from None
    return model


def check_save_folder(cfg: DictConfig, source: Source) -> None:
    """Before any work: save_folder is a directory (or not there yet), and a run that would start from batch 0
    never overwrites the checkpoints an earlier run left there unless asked (save_overwrite)."""
    check_folders(cfg, ("save_folder", "train_loader.dataset.data_local", "eval_loader.dataset.data_local"), source)
    folder = cfg.save_folder
    if not folder or cfg.autoresume or cfg.save_overwrite:
        return
    start, start_name = 0, "batch 0"
    if cfg.load_path:  # Composer refuses (inside fit) checkpoints later than the one it starts from
        start = checkpoint_batch(os.path.realpath(cfg.load_path))  # latest-rank0.pt: the file it links to
        if start is None:
            return
        start_name = os.path.basename(cfg.load_path)
    found = [os.path.basename(path) for batch, path in complete_checkpoints(folder) if batch > start]
    if found:
        raise source.error("save_folder", f"({folder}) holds an earlier run's checkpoints ({', '.join(found[-3:])}), "
                                          f"which this run (from {start_name}) would overwrite: set autoresume=true "
                                          "to continue that run, save_overwrite=true to replace them, or choose "
                                          "another save_folder")


def resume_path(cfg: DictConfig, model, source: Source) -> Optional[str]:
    """Check the checkpoint the run will restore before Composer touches it; returns the load_path to use.
    ``cfg``: the validated config (``validate``), as for the other steps of ``build_trainer``.

    With autoresume, a missing ``latest-rank0.pt`` link next to finished checkpoints (a crash between Composer's
    removal of the old link and the new one) falls back to the newest checkpoint file."""
    allow_unsafe = cfg.allow_unsafe_checkpoints
    load_path = cfg.load_path
    if cfg.save_folder and dist.get_local_rank() == 0:
        remove_partial_checkpoints(cfg.save_folder)
    if cfg.autoresume:
        latest = os.path.join(cfg.save_folder, "latest-rank{rank}.pt".format(rank=dist.get_global_rank()))
        if os.path.exists(latest):
            check_resumable(model, latest, source.where("save_folder") + ": autoresume", allow_unsafe)
            return load_path
        newest = newest_complete_checkpoint(cfg.save_folder)
        if newest is not None:
            log.warning("autoresume: no latest-rank0.pt link in %s; resuming from %s", cfg.save_folder, newest)
            load_path = newest
    if load_path is not None and "://" not in load_path:
        check_resumable(model, load_path, source.where("load_path") + ": load_path", allow_unsafe)
    return load_path


def fsdp_parallelism(cfg: DictConfig) -> Optional[dict]:
    """``fsdp_config`` (Composer's FSDPConfig fields, e.g. yamls/pretrain/lion-d-base-fsdp.yaml) as Composer's
    ``parallelism_config``; None (DDP when there are several processes) without it."""
    fsdp = cfg.get("fsdp_config")
    return None if fsdp is None else {"fsdp": om.to_container(fsdp, resolve=True)}


def build_trainer(cfg: DictConfig, source: Optional[Source] = None,
                  extra_callbacks: Sequence[Callback] = ()) -> Trainer:
    source = source or Source()
    cfg = validate(cfg, source)  # a PretrainConfig: every field set (the schema's defaults) and checked
    on_gpu = torch.cuda.is_available()
    device = "gpu" if on_gpu else "cpu"
    dist_timeout = cfg.dist_timeout
    if dist.get_world_size() > 1 and not dist.is_initialized():
        try:
            dist.initialize_dist(device, dist_timeout)
        except (RuntimeError, TimeoutError) as err:  # torch's DistStoreError is a RuntimeError
            raise source.error("dist_timeout", f"({dist_timeout:g} s) passed before all {dist.get_world_size()} "
                                               f"ranks joined: {str(err).splitlines()[0][:160]}") from None
    check_save_folder(cfg, source)
    reproducibility.seed_all(cfg.seed)
    train_batch = device_batch_size(cfg.global_train_batch_size, "global_train_batch_size", source)
    model = build_model(cfg, source)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %s, %.2fM parameters", cfg.model.name, model.model.config.arch_type, n_params / 1e6)
    prepare_demo_data(cfg, model.tokenizer, source)
    train_loader = build_mlm_dataloader(cfg.train_loader, model.tokenizer, train_batch, cfg.max_seq_len,
                                        field=source.where("train_loader") + ": train_loader")
    eval_loader = None
    if cfg.eval_loader is not None:
        eval_batch = cfg.device_eval_batch_size or train_batch
        eval_loader = build_mlm_dataloader(cfg.eval_loader, model.tokenizer, eval_batch, cfg.max_seq_len,
                                           field=source.where("eval_loader") + ": eval_loader")
    load_path = resume_path(cfg, model, source)
    optimizer = cfg.optimizer
    extra = extra_trainer_kwargs(cfg, on_gpu)
    use_atomic_checkpoint_writes()
    trainer = Trainer(
        run_name=cfg.run_name,
        seed=cfg.seed,
        model=model,
        train_dataloader=train_loader,
        eval_dataloader=eval_loader,
        train_subset_num_batches=cfg.train_subset_num_batches,
        eval_subset_num_batches=cfg.eval_subset_num_batches,
        optimizers=build_optimizer(optimizer.name, model.parameters(), optimizer.lr, optimizer.weight_decay,
                                   optimizer.betas, optimizer.eps),
        schedulers=build_scheduler(cfg.scheduler),
        max_duration=cfg.max_duration,
        eval_interval=cfg.eval_interval,
        progress_bar=cfg.progress_bar,
        log_to_console=cfg.log_to_console,
        console_log_interval=cfg.console_log_interval,
        precision=extra["precision"],
        callbacks=list(extra_callbacks) + extra["callbacks"],
        loggers=extra["loggers"],
        compile_config=extra["compile_config"],
        parallelism_config=fsdp_parallelism(cfg),
        device=device,
        dist_timeout=dist_timeout,
        device_train_microbatch_size=cfg.device_train_microbatch_size or ("auto" if on_gpu else train_batch),
        save_folder=cfg.save_folder,
        save_interval=cfg.save_interval,
        save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
        save_overwrite=cfg.save_overwrite,
        load_path=load_path,
        load_weights_only=cfg.load_weights_only,
        autoresume=cfg.autoresume,
        python_log_level=cfg.python_log_level,
    )
    saver = trainer._checkpoint_saver  # Composer's CheckpointSaver (None without save_folder)
    if saver is not None and dist.get_global_rank() == 0:
        rotate_resumed_checkpoints(saver, cfg.save_folder, int(trainer.state.timestamp.batch))
    return trainer


def check_not_finished(trainer: Trainer, cfg: DictConfig, source: Source) -> None:
    """A run resumed at its max_duration has nothing left to do (Composer would raise inside fit)."""
    state = trainer.state
    done = state.timestamp.get(state.max_duration.unit)
    if done >= state.max_duration:
        trainer.close()
        raise source.error("max_duration", f"({cfg.max_duration}) is reached already: the run resumed from "
                                           f"{cfg.get('save_folder') or cfg.get('load_path')} has trained {done}; "
                                           "nothing left to train (raise max_duration to continue it, or choose "
                                           "another save_folder)")


def main(cfg: DictConfig, source: Optional[Source] = None, extra_callbacks: Sequence[Callback] = ()) -> Trainer:
    source = source or Source()
    trainer = build_trainer(cfg, source, extra_callbacks)
    check_not_finished(trainer, cfg, source)
    trainer.fit()
    return trainer


def cli(argv: list[str], extra_callbacks: Sequence[Callback] = ()) -> Trainer:
    """Runs the yaml; an expected user error or a non-finite loss exits non-zero with one line, no traceback. In a
    run of several processes (``composer -n N``) any other failure of a rank prints its traceback, then one line
    naming the rank and the cause; Composer's launcher then ends the other ranks."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0].startswith("-"):
        sys.exit(f"usage: {__doc__.strip().splitlines()[2].strip()}")
    try:
        cfg, source = load_config(argv[0], argv[1:])
        return main(cfg, source, extra_callbacks)
    except (ConfigError, NonFiniteLossError) as err:
        message = str(err) if str(err).startswith(argv[0]) else f"{argv[0]}: {err}"
        sys.exit(f"error: {message}")
    except Exception as err:
        world = int(os.environ.get("WORLD_SIZE", 1))
        if world == 1:
            raise
        rank = os.environ.get("RANK", "?")
        if is_communication_error(err):
            sys.exit(f"error: {lost_contact_message(rank, err)}")
        traceback.print_exc()
        sys.exit(f"error: {rank_failed_message(rank, world, err)}")


if __name__ == "__main__":
    cli(sys.argv[1:])
