"""AudioNTT2020: the BYOL-A convolutional encoder for log-mel input."""

from __future__ import annotations

import torch
from torch import nn


class AudioNTT2020(nn.Module):
    """BYOL-A encoder: log-mel (B, 1, F, T) -> clip embedding (B, d).

    Three conv blocks (3x3, 64 ch, BN, ReLU, maxpool 2) reduce (F, T) to (F/8, T/8); each of the T/8
    frames (64 * F/8 features) goes through an MLP to d dimensions; the clip embedding is the
    element-wise sum of max and mean over time. Parameter names (``features.*``, ``fc.*``) match
    BYOL-A's checkpoints so those load with ``strict=True``.
    """

    def __init__(self, n_mels: int = 64, d: int = 2048, dropout: float = 0.3):
        super().__init__()
        if n_mels % 8:
            raise ValueError(f"n_mels must be a multiple of 8, got {n_mels}")
        blocks: list[nn.Module] = []
        in_ch = 1
        for _ in range(3):
            blocks += [nn.Conv2d(in_ch, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)]
            in_ch = 64
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Sequential(
            nn.Linear(64 * (n_mels // 8), d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d), nn.ReLU()
        )
        self.n_mels = n_mels
        self.d = d

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """Frame-level features: (B, 1, F, T) -> (B, T // 8, d)."""
        x = self.features(x)  # (B, 64, F/8, T/8)
        b, c, f, t = x.shape
        x = x.permute(0, 3, 2, 1).reshape(b, t, f * c)  # (B, T/8, F/8 * 64), frequency-major like BYOL-A
        return self.fc(x)

    @staticmethod
    def pool(frames: torch.Tensor) -> torch.Tensor:
        """Frame features (B, T, d) -> clip embedding (B, d) = max over time + mean over time."""
        return frames.max(dim=1).values + frames.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clip embedding: (B, 1, F, T) -> (B, d)."""
        return self.pool(self.frames(x))


def ntt_shape(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(d, n_mels) of an AudioNTT2020 state dict, read from fc.0.weight (d, 64 * n_mels / 8); ValueError if not one."""
    w = state.get("fc.0.weight")
    if w is None or w.dim() != 2:
        keys = ", ".join(list(state)[:6])
        raise ValueError(f"not an AudioNTT2020 state dict (no 2-D fc.0.weight; keys start {keys})")
    if w.shape[1] % 8:
        raise ValueError(f"fc.0.weight has {w.shape[1]} inputs, not 64 * n_mels / 8")
    return int(w.shape[0]), int(w.shape[1] // 8)
