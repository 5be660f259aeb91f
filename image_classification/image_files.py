"""Image files that cannot be decoded (empty, cut short, not an image): stop the run naming the file, or skip them
and count (``--bad-images stop|skip``).

A folder data set is checked lazily, when a file is read (decoding every file of ImageNet up front would take
longer than an epoch). In 'skip' mode the unreadable file's sample is replaced by the next readable one, so the
batch keeps its size; the count lives in shared memory, one slot per loader process, so workers add to it without
a lock and the trainer reads the total after each epoch.
"""
from __future__ import annotations

import logging

import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info
from torchvision.datasets.folder import default_loader

_logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("stop", "skip")
# what PIL raises for bytes it cannot decode: UnidentifiedImageError and "image file is truncated" are OSErrors;
# some broken PNG chunks raise SyntaxError, odd headers ValueError
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class UnreadableImage(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def checked_loader(path):
    """torchvision's loader (PIL, RGB) raising UnreadableImage with the file's name."""
    try:
        return default_loader(path)
    except _DECODE_ERRORS as err:
        first = (str(err).strip().splitlines() or [""])[0][:120]
        raise UnreadableImage(f"{path}: cannot be read as an image ({type(err).__name__}: {first})") from None


def one_line(err: UnreadableImage) -> str:
    """The message, also when a DataLoader worker re-raised it (its text then ends with the original line)."""
    last = str(err).strip().splitlines()[-1]
    return last.split(f"{UnreadableImage.__name__}: ", 1)[-1]


class GuardedImages(Dataset):
    """A folder data set (``samples``, ``classes``) whose unreadable files stop the run ('stop') or are skipped
    and counted ('skip'). ``loader_processes``: the DataLoader's workers (0: the main process only)."""

    def __init__(self, dataset, policy: str = "stop", loader_processes: int = 0):
        if policy not in BAD_IMAGE_POLICIES:
            raise ValueError(f"policy must be one of {BAD_IMAGE_POLICIES}, got {policy!r}")
        self.dataset, self.policy = dataset, policy
        self.classes = dataset.classes
        self.skipped_by_process = torch.zeros(loader_processes + 1, dtype=torch.int64).share_memory_()

    def __len__(self):
        return len(self.dataset)

    @property
    def skipped(self) -> int:
        """Unreadable files skipped so far, over all loader processes."""
        return int(self.skipped_by_process.sum())

    def __getitem__(self, index):
        for offset in range(len(self.dataset)):
            try:
                return self.dataset[(index + offset) % len(self.dataset)]
            except UnreadableImage as err:
                if self.policy == "stop":
                    raise UnreadableImage(f"{err}; --bad-images skip skips such files") from None
                worker = get_worker_info()
                self.skipped_by_process[0 if worker is None else worker.id + 1] += 1
                _logger.warning("skipped %s", err)
        raise UnreadableImage(f"none of the {len(self.dataset)} image files can be read")
