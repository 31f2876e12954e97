"""Schedules as pure functions of the optimizer step: learning rate and EMA decay of the target."""

from __future__ import annotations

import math


def cosine_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine ramp from `start` (step 0) to `end` (step >= total_steps), e.g. BYOL's EMA decay 0.99 -> 1."""
    if total_steps <= 0:
        return end
    t = min(max(step, 0), total_steps) / total_steps
    return end - (end - start) * (math.cos(math.pi * t) + 1.0) / 2.0


def learning_rate(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0,
                  schedule: str = "constant") -> float:
    """Learning rate at `step`: linear warmup over `warmup_steps`, then constant or cosine to 0 at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        return cosine_schedule(step - warmup_steps, max(1, total_steps - warmup_steps), base_lr, 0.0)
    return base_lr


def ema_decay(step: int, base_decay: float, total_steps: int, schedule: str = "constant") -> float:
    """EMA decay of the target at `step`: constant, or BYOL's cosine ramp from `base_decay` to 1."""
    if schedule == "cosine":
        return cosine_schedule(step, total_steps, base_decay, 1.0)
    return base_decay
