"""Random draws that honour an optional `torch.Generator` on whatever device it lives."""

from __future__ import annotations

import torch


def uniform(
    shape: tuple[int, ...], low: float | torch.Tensor, high: float | torch.Tensor,
    generator: torch.Generator | None, device: torch.device,
) -> torch.Tensor:
    """U(low, high) float32 samples of `shape` on `device`, drawn from `generator`'s own device."""
    src = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=src).to(device)
    return low + (high - low) * u
