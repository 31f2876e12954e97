"""Audio I/O: read any soundfile format, mix to mono, resample to 16 kHz, pad/crop for evaluation."""

from __future__ import annotations

import errno
import io
import math
import os
import stat
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
# A decoded sample beyond this is not audio (60 dB over full scale): a broken float file whose log-mel would
# overflow to inf and turn every statistic computed over it into NaN.
MAX_ABS_AMPLITUDE = 1000.0
# Resampling by orig/g -> new/g (g their gcd) builds a kernel of about that product of taps; beyond this bound
# (no real-world rate pair comes near it: 44056 -> 16000 Hz is 1.1e7) the rate is refused, not allocated.
MAX_RESAMPLE_PRODUCT = 50_000_000


def printable_path(path: str | os.PathLike) -> str:
    """A path as text safe to print: itself, or its repr when it holds undecodable bytes or control characters."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return repr(text)  # lone surrogates stand for undecodable bytes (surrogateescape): show them escaped
    return text if text.isprintable() else repr(text)


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, or not finite. The message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{printable_path(self.path)}: {reason}")


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
    problem = file_problem(path)
    if problem:
        raise AudioError(path, problem)
    return _header(os.fsencode(path), path, on_disk=True)  # bytes: soundfile cannot encode a non-UTF-8 name


def audio_bytes_info(data: bytes, name: str) -> AudioInfo:
    """`audio_info` for an encoded audio file held in memory; `name` stands for it in the AudioError."""
    return _header(io.BytesIO(data), name)


def _header(source, path: str | os.PathLike, on_disk: bool = False) -> AudioInfo:
    """The checked header of `source` (what soundfile opens), AudioError naming `path` if it is unusable."""
    try:
        info = sf.info(source)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(path, f"unreadable audio ({_reason(e, Path(path) if on_disk else None)})") from None
    if info.frames < 0 or info.samplerate < 1 or info.channels < 1:
        raise AudioError(path, f"unreadable audio (header says {info.frames} frames, {info.samplerate} Hz, "
                               f"{info.channels} channels)")
    return AudioInfo(frames=int(info.frames), sample_rate=int(info.samplerate), channels=int(info.channels))


def file_problem(path: str | os.PathLike) -> str:
    """Why `path` cannot be opened as a file ("" if it can): missing, a symlink loop, a folder, no permission."""
    try:
        st = os.stat(path)
    except OSError as e:
        return _os_reason(e)
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a pipe, socket or device)"
    return ""


def _os_reason(e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return "file not found"
    if e.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return e.strerror or type(e).__name__


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
    return _decode_span(lambda **kw: sf.read(os.fsencode(path), **kw), path, info, sample_rate, start, duration,
                        on_disk=True)


def decode_audio(
    data: bytes,
    name: str,
    sample_rate: int = SAMPLE_RATE,
    start: float = 0.0,
    duration: float | None = None,
    info: AudioInfo | None = None,
) -> torch.Tensor:
    """`load_audio` for an encoded audio file held in memory (a tar member): mono float32 (S,).

    `name` stands for the file in every AudioError; `info`: its `audio_bytes_info`, if already read.
    """
    info = info or audio_bytes_info(data, name)
    return _decode_span(lambda **kw: sf.read(io.BytesIO(data), **kw), name, info, sample_rate, start, duration)


def _decode_span(read, path: str | os.PathLike, info: AudioInfo, sample_rate: int, start: float,
                 duration: float | None, on_disk: bool = False) -> torch.Tensor:
    """The checks and decode shared by `load_audio` and `decode_audio`; `read(**kw)` is `sf.read` on the source."""
    if info.frames == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if start < 0 or (duration is not None and duration <= 0):
        raise AudioError(path, f"invalid span start={start}, duration={duration}")
    first = int(round(start * info.sample_rate))
    if first >= info.frames:
        raise AudioError(path, f"start {start:.3f} s is past the end ({info.duration:.3f} s)")
    last = info.frames if duration is None else min(info.frames, first + int(round(duration * info.sample_rate)))
    try:
        data, sr = read(start=first, stop=last, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, MemoryError) as e:
        raise AudioError(path, f"cannot decode audio ({_reason(e, Path(path) if on_disk else None)})") from None
    if data.size == 0:
        raise AudioError(path, "empty audio (0 samples decoded)")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio contains NaN or Inf samples")
    peak = float(np.abs(data).max())
    if peak > MAX_ABS_AMPLITUDE:
        raise AudioError(path, f"sample values up to {peak:.3g}, not audio in [-1, 1] (limit {MAX_ABS_AMPLITUDE:g})")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if sr != sample_rate:
        if not resample_supported(sr, sample_rate):
            raise AudioError(path, f"unusual sample rate {sr} Hz: resampling it to {sample_rate} Hz is not supported")
        wave = resample(wave, sr, sample_rate)
    return wave


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling of (..., S) with torchaudio (scipy polyphase if torchaudio is unusable)."""
    if orig_sr == new_sr:
        return wave
    if not resample_supported(orig_sr, new_sr):
        raise ValueError(f"resampling {orig_sr} Hz to {new_sr} Hz is not supported (the filter would be too large)")
    resampler = _resampler(orig_sr, new_sr)
    if resampler is not None:
        return resampler.to(wave.device)(wave)
    from scipy.signal import resample_poly

    g = math.gcd(orig_sr, new_sr)
    out = resample_poly(wave.numpy(), new_sr // g, orig_sr // g, axis=-1)
    return torch.from_numpy(out.astype(np.float32))


def resampled_length(frames: int, orig_sr: int, new_sr: int) -> int:
    """Samples that `resample` makes of `frames` samples: ceil(frames * new_sr / orig_sr), as torchaudio gives."""
    return -(-frames * new_sr // orig_sr)


def resample_supported(orig_sr: int, new_sr: int) -> bool:
    """Whether `resample` takes this pair of rates: both >= 1 and a filter of at most MAX_RESAMPLE_PRODUCT taps."""
    if orig_sr < 1 or new_sr < 1:
        return False
    g = math.gcd(orig_sr, new_sr)
    return (orig_sr // g) * (new_sr // g) <= MAX_RESAMPLE_PRODUCT


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


def _reason(e: Exception, path: Path | None = None) -> str:
    if isinstance(e, MemoryError):
        return "the header asks for more memory than there is"
    text = str(e).strip()
    # libsndfile says "System error." when the OS refused the open, and "possibly a pipe?" when no format
    # matched: say what happened instead.
    if path is not None and ("System error" in text or "possibly a pipe" in text):
        try:
            with open(path, "rb"):
                pass
        except OSError as os_error:
            return _os_reason(os_error)
        return "not a recognised audio format, or corrupt data"
    # libsndfile messages repeat the path; keep only the reason.
    return text.split(": ", 1)[-1] if ": " in text else (text or type(e).__name__)
