"""Synthetic test audio: small sounds with distinct timbre, pitch and envelope, for demos and tests."""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000


def harmonic_tone(
    seconds: float, f0: float, n_harmonics: int = 8, vibrato_hz: float = 5.0, vibrato_depth: float = 0.02,
    sr: int = SAMPLE_RATE, rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A voiced, vowel-like tone: harmonics of f0 with 1/k roll-off, vibrato and an attack/decay envelope."""
    rng = rng or np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    f = f0 * (1 + vibrato_depth * np.sin(2 * np.pi * vibrato_hz * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(f) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, n_harmonics + 1) if k * f0 < sr / 2)
    env = np.minimum(1.0, t / 0.05) * np.exp(-t / max(seconds, 1e-3))
    return (x * env).astype(np.float32)


def chirp_train(seconds: float, n: int = 4, f0: float = 2000.0, f1: float = 5000.0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Bird-like: `n` short rising chirps f0 -> f1 Hz, evenly spaced."""
    out = np.zeros(int(seconds * sr), np.float32)
    length = int(0.12 * sr)
    t = np.arange(length) / sr
    chirp = np.sin(2 * np.pi * (f0 * t + (f1 - f0) / (2 * t[-1]) * t**2)) * np.hanning(length)
    for i in range(n):
        start = int((i + 0.5) * len(out) / n - length / 2)
        if 0 <= start and start + length <= len(out):
            out[start : start + length] += chirp.astype(np.float32)
    return out


def noise_bursts(seconds: float, rate_hz: float = 3.0, sr: int = SAMPLE_RATE, rng: np.random.Generator | None = None) -> np.ndarray:
    """Percussive: decaying white-noise bursts at a steady rate (a clock, footsteps, a drum)."""
    rng = rng or np.random.default_rng(0)
    out = np.zeros(int(seconds * sr), np.float32)
    length = int(0.08 * sr)
    decay = np.exp(-np.arange(length) / (0.015 * sr))
    for onset in np.arange(0.05, seconds - 0.1, 1.0 / rate_hz):
        s = int(onset * sr)
        out[s : s + length] += (rng.standard_normal(length) * decay).astype(np.float32)
    return out


def demo_clip(seconds: float = 4.0, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A 16 kHz scene mixing a vowel-like tone, bird chirps and noise bursts, peak 0.8: (S,) float32."""
    rng = np.random.default_rng(seed)
    x = 0.6 * harmonic_tone(seconds, 180.0, rng=rng) + 0.25 * chirp_train(seconds, sr=sr)
    x += 0.15 * noise_bursts(seconds, sr=sr, rng=rng) + 0.003 * rng.standard_normal(len(x)).astype(np.float32)
    return (0.8 * x / np.abs(x).max()).astype(np.float32)
