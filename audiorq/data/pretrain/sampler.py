"""How pretraining batches are drawn: the resumable, rank-split sampler and the collate that skips bad items."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Shuffled indices for (seed, epoch), split across ranks, able to start after `start_batch` batches.

    Every rank gets the same number of full batches (`batches_per_epoch`), so no rank waits on another
    at the end of an epoch. The order depends on (seed, epoch) only, so a resumed run sees the same
    items as an uninterrupted one.
    """

    def __init__(self, n_items: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.n_items, self.batch_size, self.rank, self.world_size, self.seed = n_items, batch_size, rank, world_size, seed
        self.batches_per_epoch = (n_items // world_size) // batch_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use the order of `epoch` and skip its first `start_batch` batches."""
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n_items, generator=g)
        mine = order[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        return iter(mine[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch) * self.batch_size


def collate_skipping(batch: list[torch.Tensor | None]) -> tuple[torch.Tensor | None, int]:
    """Stack the non-None items: (B', ...) with B' = number of good items (None if no item is good), and
    the number of None (bad) items, so the training loop can keep a running count and decide when to stop."""
    good = [item for item in batch if item is not None]
    n_bad = len(batch) - len(good)
    return (torch.stack(good) if good else None), n_bad
