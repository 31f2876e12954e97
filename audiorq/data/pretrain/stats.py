"""Pretraining dataset normalization statistics: scalar mean/std of the log-mel over a random sample of items."""

from __future__ import annotations

import itertools
import math
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from audiorq.data.pretrain.sampler import collate_skipping


def compute_norm_stats(
    dataset: Dataset,
    frontend: nn.Module | None,
    n_items: int = 10000,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 0,
) -> tuple[float, float]:
    """(mean, std) of the log-mel of min(n_items, len(dataset)) items drawn without replacement by `seed`.

    A streamed dataset (one with `first_items(n)`, e.g. WebDatasetShards) gives its first n items of epoch 0
    instead, read in this process. Items of a wave dataset (``dataset.kind == "wave"``, (S,)) go through
    `frontend` on `device` in batches; items of a log-mel dataset ((1, n_mels, T)) are used directly and
    `frontend` may be None. Bad (None) items are skipped. Sums are accumulated in float64 on `device`.
    """
    n = min(int(n_items), len(dataset))
    if n <= 0:
        raise ValueError("compute_norm_stats needs a non-empty dataset and n_items >= 1")
    is_wave = getattr(dataset, "kind", "wave") == "wave"
    if is_wave:
        if frontend is None:
            raise ValueError("a wave dataset needs a frontend to compute log-mel statistics")
        frontend = frontend.to(device)
    if hasattr(dataset, "first_items"):
        loader: Iterable = _batched(dataset.first_items(n), batch_size)
    else:
        generator = torch.Generator().manual_seed(int(seed))
        indices = torch.randperm(len(dataset), generator=generator)[:n].sort().values.tolist()
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=collate_skipping)
    device = torch.device(device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    total_sq = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    with torch.no_grad():
        for batch, _ in loader:
            if batch is None:
                continue
            batch = batch.to(device, non_blocking=True)
            lm = frontend(batch) if is_wave else batch
            lm = lm.double()
            total += lm.sum()
            total_sq += lm.square().sum()
            count += lm.numel()
    if count == 0:
        raise ValueError(f"all {n} sampled items of the dataset are bad; cannot compute statistics")
    mean = float(total) / count
    var = max(float(total_sq) / count - mean * mean, 0.0)
    return mean, math.sqrt(var)


def _batched(items: Iterator, batch_size: int) -> Iterator[tuple[torch.Tensor | None, int]]:
    while batch := list(itertools.islice(items, batch_size)):
        yield collate_skipping(batch)
