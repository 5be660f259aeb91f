"""Distributed set-up, progress logging (DeiT's MetricLogger), seeding and atomic checkpoint/log writing."""
from __future__ import annotations

import datetime
import io
import json
import logging
import os
import random
import time
from collections import defaultdict, deque

import numpy as np
import torch
import torch.distributed as dist

_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- distributed

def is_dist_avail_and_initialized():
    return dist.is_available() and dist.is_initialized()


def get_world_size():
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank():
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process():
    return get_rank() == 0


def init_distributed_mode(args):
    """env:// initialisation from ``torchrun`` or ``torch.distributed.launch --use_env`` (RANK, WORLD_SIZE,
    LOCAL_RANK); NCCL on CUDA, gloo otherwise. Without those variables the run is single-process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 1:
        args.distributed, args.rank, args.world_size, args.gpu = False, 0, 1, 0
        return
    args.rank, args.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    args.gpu = int(os.environ.get("LOCAL_RANK", 0))
    args.distributed = True
    use_cuda = str(args.device).startswith("cuda") and torch.cuda.is_available()
    args.dist_backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(args.gpu)
        args.device = f"cuda:{args.gpu}"
    _logger.info("distributed init (rank %d of %d, %s): %s", args.rank, args.world_size, args.dist_backend,
                 args.dist_url)
    dist.init_process_group(backend=args.dist_backend, init_method=args.dist_url, world_size=args.world_size,
                            rank=args.rank)
    dist.barrier()


def seed_everything(seed):
    """Seed python, numpy and torch (all devices); called at the start of every epoch so that a resumed run
    draws the same random numbers (data order, augmentation, mixup, drop path) as an uninterrupted one."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------- atomic writes

def _atomic_write_bytes(path, data, mode="wb"):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_on_master(obj, path):
    """``torch.save`` on rank 0 only, through a temporary file renamed into place."""
    if not is_main_process():
        return
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _atomic_write_bytes(path, buffer.getvalue())


def append_json_line_on_master(path, record):
    """Append one JSON line to ``path`` on rank 0; the whole file is rewritten atomically."""
    if not is_main_process():
        return
    old = open(path, "rb").read() if os.path.exists(path) else b""
    _atomic_write_bytes(path, old + (json.dumps(record) + "\n").encode())


# ---------------------------------------------------------------------------------------------- progress

class SmoothedValue:
    """A series of values with a windowed median/average and the global average."""

    def __init__(self, window_size=20, fmt="{median:.4f} ({global_avg:.4f})"):
        self.deque, self.total, self.count, self.fmt = deque(maxlen=window_size), 0.0, 0, fmt

    def update(self, value, n=1):
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self):
        """Sum count and total over the processes (the window stays local)."""
        if not is_dist_avail_and_initialized():
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64,
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.barrier()
        dist.all_reduce(t)
        self.count, self.total = int(t[0].item()), t[1].item()

    @property
    def median(self):
        return float(np.median(self.deque)) if self.deque else 0.0

    @property
    def avg(self):
        return float(np.mean(self.deque)) if self.deque else 0.0

    @property
    def global_avg(self):
        return self.total / max(self.count, 1)

    @property
    def value(self):
        return self.deque[-1] if self.deque else 0.0

    def __str__(self):
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, value=self.value)


class MetricLogger:
    """DeiT's progress lines: ``header [ i/n] eta: … meters … time: … data: …`` every ``print_freq`` steps."""

    def __init__(self, delimiter="  "):
        self.meters, self.delimiter = defaultdict(SmoothedValue), delimiter

    def update(self, **kwargs):
        for k, v in kwargs.items():
            self.meters[k].update(v.item() if isinstance(v, torch.Tensor) else float(v))

    def add_meter(self, name, meter):
        self.meters[name] = meter

    def synchronize_between_processes(self):
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def __str__(self):
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def log_every(self, iterable, print_freq, header=""):
        n = len(iterable)
        width = len(str(n))
        start = end = time.time()
        iter_time, data_time = SmoothedValue(fmt="{avg:.4f}"), SmoothedValue(fmt="{avg:.4f}")
        for i, obj in enumerate(iterable):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == n - 1:
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (n - i - 1)))
                _logger.info("%s [%*d/%d]  eta: %s  %s  time: %s  data: %s", header, width, i, n, eta, self,
                             iter_time, data_time)
            end = time.time()
        total = datetime.timedelta(seconds=int(time.time() - start))
        _logger.info("%s Total time: %s (%.4f s / it)", header, total, (time.time() - start) / max(n, 1))
