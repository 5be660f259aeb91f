"""Distributed set-up, progress logging (DeiT's MetricLogger), seeding, atomic checkpoint/log writing and the
test-only fault injection (``LION_FAULT``)."""
from __future__ import annotations

import datetime
import glob
import json
import logging
import os
import random
import signal
import time
from collections import defaultdict, deque
from pathlib import Path

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
    timeout = datetime.timedelta(seconds=getattr(args, "dist_timeout", 1800))
    _logger.info("distributed init (rank %d of %d, %s, timeout %s): %s", args.rank, args.world_size,
                 args.dist_backend, timeout, args.dist_url)
    # The timeout bounds the rendezvous and every collective: a rank that died or hangs ends the others.
    dist.init_process_group(backend=args.dist_backend, init_method=args.dist_url, world_size=args.world_size,
                            rank=args.rank, timeout=timeout)
    dist.barrier()


def seed_everything(seed):
    """Seed python, numpy and torch (all devices); called at the start of every epoch so that a resumed run
    draws the same random numbers (data order, augmentation, mixup, drop path) as an uninterrupted one."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------- fault injection

FAULT_ENV = "LION_FAULT"


def planted_fault(event, index):
    """Test-only fault injection (tests/test_faults_vision.py); off unless ``LION_FAULT`` is set.

    ``LION_FAULT=<fault>@<event>:<index>`` plants one fault: ``kill@checkpoint.pth:2`` SIGKILLs this process in
    its 2nd save of ``checkpoint.pth`` (temporary file written, not yet renamed), ``kill@step:7`` before training
    step 7 and ``nan@step:7`` makes the loss of step 7 NaN (steps counted from 0 over the whole run). Returns the
    fault (``'kill'``, ``'nan'``) planted at ``event``/``index``, else None.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    fault, _, where = spec.partition("@")
    at_event, _, at_index = where.partition(":")
    return fault if at_event == event and at_index == str(index) else None


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- atomic writes

_saves = defaultdict(int)  # checkpoint saves of this process per file name (for LION_FAULT)


# Every file is written as: ``write(file)`` into a temporary sibling, fsync, rename over ``path``, fsync the
# folder. A reader, or a run resumed after a crash, sees the old file or the new one, never a part.

def _write_temporary(path, write):
    """The temporary sibling of ``path`` holding ``write``'s output, on disk; stale ones (a killed writer's)
    are removed first."""
    path = Path(path)
    for stale in path.parent.glob(f"{glob.escape(path.name)}.tmp*"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _rename_into_place(tmp, path):
    os.replace(tmp, path)
    fd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_on_master(obj, path):
    """``torch.save`` on rank 0 only, atomically (temporary file, fsync, rename)."""
    if not is_main_process():
        return
    name = Path(path).name
    _saves[name] += 1
    tmp = _write_temporary(path, lambda f: torch.save(obj, f))
    if planted_fault(name, _saves[name]) == "kill":
        kill_self()
    _rename_into_place(tmp, path)


def _read_lines(path):
    return open(path, "rb").read().splitlines(keepends=True) if os.path.exists(path) else []


def append_json_line_on_master(path, record):
    """Append one JSON line to ``path`` on rank 0; the whole file is rewritten atomically."""
    if not is_main_process():
        return
    data = b"".join(_read_lines(path)) + (json.dumps(record) + "\n").encode()
    _rename_into_place(_write_temporary(path, lambda f: f.write(data)), path)


def drop_json_lines_from_epoch(path, epoch):
    """On resume (rank 0): drop the log records of ``epoch`` and later, the work a crash lost, which the resumed
    run redoes and logs again."""
    if not is_main_process() or not os.path.exists(path):
        return
    lines = _read_lines(path)
    kept = [line for line in lines if json.loads(line).get("epoch", -1) < epoch]
    if len(kept) != len(lines):
        _logger.info("%s: dropping %d record(s) of epoch %d and later", path, len(lines) - len(kept), epoch)
        _rename_into_place(_write_temporary(path, lambda f: f.write(b"".join(kept))), path)


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
