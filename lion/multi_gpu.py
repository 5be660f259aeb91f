"""Settings every multi-GPU entry point applies before any process group exists (main_lion.py, mlm/main.py,
mlm/glue.py, benchmarks/scaling.py), and how they tell a lost peer from their own failure.

NVLink multicast (NVLS) stays off in NCCL, torch's symmetric memory and NVSHMEM: on shared multi-GPU hosts a
program that uses it can put the host's GPUs out of service for everyone, and the all-reduces of data-parallel
training gain little from it. The variables are set only where the environment does not set them already.
"""
from __future__ import annotations

import os
import re
from typing import MutableMapping

NVLINK_MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def disable_nvlink_multicast(env: MutableMapping[str, str] = os.environ) -> MutableMapping[str, str]:
    """Set NVLINK_MULTICAST_OFF in ``env`` (default: this process's environment) unless already set; returns ``env``.
    Call it before ``torch.distributed.init_process_group`` (NCCL reads the variables when it builds a communicator)."""
    for name, value in NVLINK_MULTICAST_OFF.items():
        env.setdefault(name, value)
    return env


def is_communication_error(err: BaseException) -> bool:
    """A failed or timed-out collective / rendezvous (gloo and NCCL raise RuntimeError with their name): in a run of
    several processes, usually the sign that another process failed first."""
    import torch.distributed

    return isinstance(err, torch.distributed.DistError) or (
        isinstance(err, RuntimeError) and bool(re.search(r"gloo|nccl|c10d|timed out|connection", str(err), re.I)))


def first_line(err: BaseException) -> str:
    """An exception's first message line (at most 200 characters), or its type's name when it has no message."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def lost_contact_message(rank, err: BaseException) -> str:
    """The line a rank ends with when a collective or the rendezvous failed (``is_communication_error``)."""
    return (f"rank {rank}: lost contact with the other processes ({first_line(err)}); another process probably "
            "failed first (see its message)")


def rank_failed_message(rank, world: int, err: BaseException) -> str:
    """The line a rank of a ``world``-process run ends with after a failure of its own (its traceback printed
    before it)."""
    return f"rank {rank} of {world} failed: {type(err).__name__}: {first_line(err)}"
