"""Input normalizers: dataset statistics (pre-norm) and per-batch standardization (post-norm)."""

from __future__ import annotations

import torch
from torch import nn


class PrecomputedNorm(nn.Module):
    """(x - mean) / std with scalar statistics of the dataset's log-mel."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 1, F, T) -> same shape."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean:.4f}, std={self.std:.4f}"


class NormalizeBatch(nn.Module):
    """Standardize a batch with its own scalar mean and std (BYOL-A's post-normalization)."""

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 1, F, T) -> same shape, zero mean and unit std over the whole batch."""
        xf = x.float()
        mean, std = xf.mean(), xf.std()
        return ((xf - mean) / (std + torch.finfo(torch.float32).eps)).to(x.dtype)
