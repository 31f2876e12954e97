"""Device names from configs and options ('auto', 'cpu', 'cuda', 'cuda:N') -> torch.device, checked once."""

from __future__ import annotations

import torch

from audiorq.config import ConfigError


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """'auto'/None -> this rank's GPU if CUDA is available, else CPU; 'cuda' -> cuda:local_rank.

    Raises ConfigError naming the device when it asks for CUDA on a machine without it.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available (use device=cpu)")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a `precision` setting on `device`; None means fp32 (no autocast).

    'auto' is bf16 on CUDA and fp32 elsewhere (CPU autocast is slower than fp32 for these convolutions).
    """
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
