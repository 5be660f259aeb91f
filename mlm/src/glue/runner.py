"""Runs every (task, seed) job of a finetuning yaml in the paper's order and collects the results.

Round 1: MNLI, QNLI, QQP, SST-2, CoLA from the pretraining checkpoint. Round 2: RTE, MRPC, STS-B from the MNLI
checkpoint of the first MNLI seed (docs/lion.md §4, M2-BERT). With ``parallel: true`` and several GPUs one spawned
process per GPU runs jobs from a queue (M2-BERT's ``glue.py``); otherwise jobs run one after the other.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Optional, Sequence

import torch
from composer.core import Callback
from composer.devices import DeviceGPU
from omegaconf import DictConfig

from mlm.src.config_validation import Source, check_folders
from mlm.src.glue.checkpoint import check_arch_type, fetch_checkpoint, read_checkpoint
from mlm.src.glue.config import job_configs, task_order, validate
from mlm.src.glue.data import load_split, read_glue_tsv
from mlm.src.glue.jobs import build_model, run_job
from mlm.src.glue.tasks import get_task

log = logging.getLogger(__name__)
_WORKER_GPU = None


def _init_worker(gpu_queue) -> None:
    global _WORKER_GPU
    _WORKER_GPU = gpu_queue.get()


def _run_on_worker_gpu(job: dict) -> dict:
    torch.cuda.set_device(_WORKER_GPU)
    return run_job(job, device=DeviceGPU(_WORKER_GPU))


def run_jobs(jobs: list[dict], parallel: bool, extra_callbacks: Optional[Sequence[Callback]] = None) -> list[dict]:
    num_gpus = torch.cuda.device_count()
    if not (parallel and num_gpus > 1 and len(jobs) > 1):
        if parallel:
            log.info("parallel: true but %d GPU(s): running %d jobs serially", num_gpus, len(jobs))
        return [run_job(job, extra_callbacks=extra_callbacks) for job in jobs]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        gpu_queue = manager.Queue()
        for gpu in range(num_gpus):
            gpu_queue.put(gpu)
        with ProcessPoolExecutor(max_workers=min(num_gpus, len(jobs)), mp_context=ctx,
                                 initializer=_init_worker, initargs=(gpu_queue,)) as pool:
            return list(pool.map(_run_on_worker_gpu, jobs))


def preflight(cfg: DictConfig, source: Optional[Source] = None) -> str:
    """Everything that can fail before training, for a validated config (``config.validate``): the folders, the
    checkpoint file (safe to read, a Composer BERT), its arch_type, loading its weights into the configured model,
    and local GLUE files (columns, labels). Raises ConfigError; returns the local checkpoint path."""
    check_folders(cfg, ("save_finetune_checkpoint_folder", "results_folder", "local_pretrain_checkpoint_folder",
                        "data.cache_dir"), source or Source())
    check_no_earlier_checkpoints(cfg, source or Source())
    path = fetch_checkpoint(cfg.starting_checkpoint_load_path, cfg.local_pretrain_checkpoint_folder)
    state = read_checkpoint(path, cfg.allow_unsafe_checkpoints)
    check_arch_type(state, path, cfg.model.model_config.arch_type)
    del state
    first = job_configs(cfg, [next(iter(cfg.tasks))])[0]
    build_model({**first, "load_path": path})  # raises if the weights do not fit model_config
    data_dir = cfg.data.data_dir
    for name in cfg.tasks:
        task = get_task(name)
        for split in ("train", *task.eval_splits.values()):
            if data_dir:
                read_glue_tsv(task, split, data_dir)
            else:  # from the hub (downloaded once, then cached): a hub that cannot be reached stops here
                load_split(task, split)
    return path


def check_no_earlier_checkpoints(cfg: DictConfig, source: Source) -> None:
    """A rerun into the folders of an earlier run would replace its finetuned checkpoints: only with overwrite=true."""
    if cfg.overwrite:
        return
    for job in job_configs(cfg, list(cfg.tasks)):
        folder = job["save_folder"]
        if os.path.isdir(folder) and any(name.endswith(".pt") for name in os.listdir(folder)):
            raise source.error("save_finetune_checkpoint_folder", f"({cfg.save_finetune_checkpoint_folder}) holds "
                               f"the checkpoints of an earlier run ({folder}); set overwrite=true to replace them, "
                               "or choose another base_run_name")


def train(cfg: DictConfig, extra_callbacks: Optional[Sequence[Callback]] = None,
          source: Optional[Source] = None) -> list[dict]:
    """All jobs of ``cfg``; a list of run_job results, round 1 then round 2 (each with its ``load_path``)."""
    start = time.time()
    cfg = validate(cfg, source)  # a FinetuneConfig: every field set (the schema's defaults) and checked
    pretrained = preflight(cfg, source)
    first_round, second_round = task_order(cfg)
    results = []
    jobs = job_configs(cfg, first_round)
    for job in jobs:
        job["load_path"] = pretrained
    results += _with_load_paths(run_jobs(jobs, cfg.parallel, extra_callbacks), jobs)

    if second_round:
        source_checkpoints = {}
        for r in results:
            source_checkpoints.setdefault(r["task"], r["checkpoint"])  # first seed of each source task
        jobs = job_configs(cfg, second_round)
        for job in jobs:
            source = get_task(job["task"]).init_from
            job["load_path"] = source_checkpoints[source]
            log.info("%s starts from the %s checkpoint %s", job["job_name"], source, job["load_path"])
        results += _with_load_paths(run_jobs(jobs, cfg.parallel, extra_callbacks), jobs)
    log.info("finetuning finished in %.1f s", time.time() - start)
    return results


def _with_load_paths(results: list[dict], jobs: list[dict]) -> list[dict]:
    return [{**r, "load_path": job["load_path"]} for r, job in zip(results, jobs)]
