"""Batch collation for the pretraining datasets, which give None for a bad file."""

from __future__ import annotations

import torch


def collate_skipping(batch: list[torch.Tensor | None]) -> tuple[torch.Tensor | None, int]:
    """Stack the non-None items: (B', ...) with B' = number of good items (None if no item is good), and
    the number of None (bad) items, so the training loop can keep a running count and decide when to stop."""
    good = [item for item in batch if item is not None]
    n_bad = len(batch) - len(good)
    return (torch.stack(good) if good else None), n_bad
