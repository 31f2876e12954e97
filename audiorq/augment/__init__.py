"""Augmentations on log-mel batches (B, 1, F, T), each an nn.Module with forward(x, generator=None)."""

from __future__ import annotations

import torch
from torch import nn

from audiorq.augment.crop import RandomResizeCrop
from audiorq.augment.mixup import MixupBYOLA
from audiorq.augment.norm import NormalizeBatch, PrecomputedNorm
from audiorq.augment.quantize import RandomizedQuantization
from audiorq.config import AugmentConfig

__all__ = [
    "AugmentationChain",
    "MixupBYOLA",
    "NormalizeBatch",
    "PrecomputedNorm",
    "RandomResizeCrop",
    "RandomizedQuantization",
    "build_augmentation",
]


class AugmentationChain(nn.Module):
    """Apply augmentations in order, passing the same generator to each: (B, 1, F, T) -> same shape."""

    def __init__(self, modules: dict[str, nn.Module] | None = None):
        super().__init__()
        self.steps = nn.ModuleDict(modules or {})

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for step in self.steps.values():
            x = step(x, generator=generator)
        return x


def build_augmentation(cfg: AugmentConfig) -> AugmentationChain:
    """The chain `cfg.chain` names (e.g. ["mixup", "rrc"] for BYOL-A, ["rrc", "rq"] for the paper)."""
    cfg.validate()
    make = {
        "rq": lambda: RandomizedQuantization(
            bins=cfg.rq.bins, random_bins=cfg.rq.random_bins, random_values=cfg.rq.random_values,
            per=cfg.rq.per, p=cfg.rq.p,
        ),
        "rrc": lambda: RandomResizeCrop(
            virtual_crop_scale=cfg.rrc.virtual_crop_scale, freq_scale=cfg.rrc.freq_scale,
            time_scale=cfg.rrc.time_scale, interpolation=cfg.rrc.interpolation,
        ),
        "mixup": lambda: MixupBYOLA(
            ratio=cfg.mixup.ratio, memory_size=cfg.mixup.memory_size, log_mixup_exp=cfg.mixup.log_mixup_exp
        ),
    }
    return AugmentationChain({name: make[name]() for name in cfg.chain})
