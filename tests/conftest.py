"""Shared fixtures: the real-audio folder (skipped when absent) and small synthetic signals."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """../shared/data beside the repo, or $AUDIORQ_SHARED_DATA."""
    return Path(os.environ.get("AUDIORQ_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "fsdd" / "recordings").is_dir() or not (root / "esc10").is_dir():
        pytest.skip(f"real audio not found at {root} (set AUDIORQ_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def real_clips(shared_data: Path) -> list[Path]:
    """One speech clip (FSDD, 8 kHz wav) and two environmental clips (ESC-10, 44.1 kHz ogg)."""
    speech = shared_data / "fsdd" / "recordings" / "3_theo_7.wav"
    env = sorted((shared_data / "esc10").glob("*/*.ogg"))
    return [speech, env[0], env[len(env) // 2]]


def make_chirp(seconds: float = 2.0, sr: int = 16000, f0: float = 100.0, f1: float = 7000.0) -> torch.Tensor:
    """Linear chirp f0 -> f1 Hz, amplitude 0.5: (S,) float32."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2)
    return torch.from_numpy((0.5 * np.sin(phase)).astype(np.float32))


@pytest.fixture
def chirp() -> torch.Tensor:
    return make_chirp()
