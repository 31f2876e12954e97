"""Audio I/O: read any soundfile format, mix to mono, resample to 16 kHz, pad/crop for evaluation."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audiorq.atomic import atomic_write
from audiorq.config import SAMPLE_RATE  # re-exported: readers of audio need the rate it is read at
from audiorq.data.tasks.task import SPLITS

PAD_CROP_POLICIES = ("byola", "evar")  # the evaluation presets' pad/crop rules, see `pad_or_crop`


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, or not finite. The message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says, without decoding the samples."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header of an audio file; raises AudioError if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(path, f"unreadable audio ({_reason(e)})") from None
    return AudioInfo(frames=int(info.frames), sample_rate=int(info.samplerate), channels=int(info.channels))


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    start: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """Load audio as mono float32 at `sample_rate`: (S,).

    Only the span [start, start + duration) seconds is decoded (soundfile seeks; for compressed formats
    it decodes up to the span but never beyond it). A span reaching past the end is returned short.
    Raises AudioError for missing, unreadable, empty or non-finite audio, or a start past the end.
    """
    info = audio_info(path)
    if info.frames == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if start < 0 or (duration is not None and duration <= 0):
        raise AudioError(path, f"invalid span start={start}, duration={duration}")
    first = int(round(start * info.sample_rate))
    if first >= info.frames:
        raise AudioError(path, f"start {start:.3f} s is past the end ({info.duration:.3f} s)")
    last = info.frames if duration is None else min(info.frames, first + int(round(duration * info.sample_rate)))
    try:
        data, sr = sf.read(str(path), start=first, stop=last, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(path, f"cannot decode audio ({_reason(e)})") from None
    if data.size == 0:
        raise AudioError(path, "empty audio (0 samples decoded)")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio contains NaN or Inf samples")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if sr != sample_rate:
        wave = resample(wave, sr, sample_rate)
    return wave


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling of (..., S) with torchaudio (scipy polyphase if torchaudio is unusable)."""
    if orig_sr == new_sr:
        return wave
    resampler = _resampler(orig_sr, new_sr)
    if resampler is not None:
        return resampler.to(wave.device)(wave)
    from scipy.signal import resample_poly

    g = math.gcd(orig_sr, new_sr)
    out = resample_poly(wave.numpy(), new_sr // g, orig_sr // g, axis=-1)
    return torch.from_numpy(out.astype(np.float32))


@lru_cache(maxsize=16)
def _resampler(orig_sr: int, new_sr: int):
    # Cached because building the windowed-sinc kernel costs more than resampling a short crop.
    # torchaudio raises OSError (not ImportError) when its native library does not match torch.
    try:
        from torchaudio.transforms import Resample
    except (ImportError, OSError) as e:
        warnings.warn(f"torchaudio unusable ({e}); resampling with scipy instead", stacklevel=3)
        return None
    return Resample(orig_sr, new_sr)


def save_audio(path: str | os.PathLike, wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono waveform (S,) in [-1, 1] as 16-bit PCM WAV, atomically."""
    data = wave.detach().to("cpu", torch.float32).reshape(-1).numpy()
    if not np.isfinite(data).all():
        raise ValueError(f"refusing to write {path}: waveform contains NaN or Inf")
    data = np.clip(data, -1.0, 1.0)
    atomic_write(path, lambda f: sf.write(f, data, sample_rate, format="WAV", subtype="PCM_16"))


def pad_or_crop(
    wave: torch.Tensor,
    n_samples: int,
    policy: str = "byola",
    split: str = "train",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fit (..., S) to (..., n_samples) by an evaluation preset's rule (docs/protocol.md §1.3).

    byola: zero-pad both ends (floor half at the head); a random crop in every split.
    evar: zero-pad at the tail; a random crop for train/valid, the first n_samples for test.
    """
    if policy not in PAD_CROP_POLICIES:
        raise ValueError(f"policy must be one of {PAD_CROP_POLICIES}, got {policy!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    length = wave.shape[-1]
    if length < n_samples:
        deficit = n_samples - length
        head = deficit // 2 if policy == "byola" else 0
        return torch.nn.functional.pad(wave, (head, deficit - head))
    if length == n_samples:
        return wave
    if policy == "evar" and split == "test":
        return wave[..., :n_samples]
    offset = int(torch.randint(0, length - n_samples + 1, (1,), generator=generator))
    return wave[..., offset : offset + n_samples]


def _reason(e: Exception) -> str:
    text = str(e).strip()
    # libsndfile messages repeat the path; keep only the reason.
    return text.split(": ", 1)[-1] if ": " in text else (text or type(e).__name__)
