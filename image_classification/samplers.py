"""DeiT's repeated-augmentation sampler (Hoffer et al. 2020): each image is seen ``num_repeats`` times per epoch,
the repeats spread over the processes, so every rank sees different augmentations of the same images."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class RASampler(Sampler):
    """Like ``DistributedSampler`` with repeats; ``set_epoch`` must be called every epoch (it seeds the shuffle).

    As in DeiT an epoch keeps ``len(dataset) // 256 * 256`` images (all of them when there are fewer than 256).
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, num_repeats=3, seed=0):
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if num_repeats < 1:
            raise ValueError(f"num_repeats must be ≥ 1, got {num_repeats}")
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.shuffle, self.num_repeats, self.seed, self.epoch = shuffle, num_repeats, seed, 0
        self.num_samples = int(math.ceil(len(dataset) * num_repeats / num_replicas))
        self.total_size = self.num_samples * num_replicas
        kept = len(dataset) // 256 * 256 or len(dataset)
        self.num_selected_samples = int(math.floor(kept / num_replicas))

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(len(self.dataset), generator=g).tolist()
        else:
            indices = list(range(len(self.dataset)))
        indices = [i for i in indices for _ in range(self.num_repeats)]
        indices += indices[: self.total_size - len(indices)]
        assert len(indices) == self.total_size
        indices = indices[self.rank: self.total_size: self.num_replicas]
        return iter(indices[: self.num_selected_samples])

    def __len__(self):
        return self.num_selected_samples

    def set_epoch(self, epoch):
        self.epoch = epoch
