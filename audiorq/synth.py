"""Synthetic test audio: small sounds with distinct timbre, pitch and envelope, for demos and tests."""

from __future__ import annotations

import numpy as np

from audiorq.config import SAMPLE_RATE


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


def _whistle(seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A pure tone gliding between two frequencies in 1-3 kHz, with a slow swell."""
    t = np.arange(int(seconds * sr)) / sr
    f_start, f_end = rng.uniform(1000.0, 3000.0, size=2)
    phase = 2 * np.pi * np.cumsum(np.linspace(f_start, f_end, len(t))) / sr
    return (np.sin(phase) * np.sin(np.pi * t / seconds) ** 2).astype(np.float32)


def _hiss(seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Steady band-limited noise (rain, wind, an air vent) with a random centre in 500 Hz - 5 kHz."""
    n = int(seconds * sr)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    centre = rng.uniform(500.0, 5000.0)
    spectrum *= np.exp(-0.5 * (np.log(np.maximum(freqs, 1.0) / centre) / 0.35) ** 2)
    return np.fft.irfft(spectrum, n).astype(np.float32)


# Six classes that differ in pitch, harmonicity, spectral band and temporal envelope; every clip draws its own
# parameters within the class (pitch, rate, onset, loudness, background noise), so classes overlap a little.
CORPUS_CLASSES = {
    "low_voice": lambda s, sr, r: harmonic_tone(s, r.uniform(90.0, 160.0), vibrato_hz=r.uniform(3, 7), sr=sr, rng=r),
    "high_voice": lambda s, sr, r: harmonic_tone(s, r.uniform(260.0, 420.0), vibrato_hz=r.uniform(3, 7), sr=sr, rng=r),
    "bird": lambda s, sr, r: chirp_train(s, n=int(r.integers(2, 6)), f0=r.uniform(1500, 2500), f1=r.uniform(3500, 6000), sr=sr),
    "clock": lambda s, sr, r: noise_bursts(s, rate_hz=r.uniform(2.0, 6.0), sr=sr, rng=r),
    "whistle": _whistle,
    "hiss": _hiss,
}


def corpus_clip(label: str, seconds: float = 1.0, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """One clip of class `label` (a `CORPUS_CLASSES` key): random shift, loudness and background, (S,) float32."""
    rng = np.random.default_rng(seed)
    x = CORPUS_CLASSES[label](seconds, sr, rng)
    x = np.roll(x, int(rng.integers(0, len(x) // 4)))
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.2, 0.9)
    noise_db = rng.uniform(-45.0, -20.0)
    x = x + 10 ** (noise_db / 20) * rng.standard_normal(len(x)).astype(np.float32)
    return np.clip(x, -1.0, 1.0).astype(np.float32)
