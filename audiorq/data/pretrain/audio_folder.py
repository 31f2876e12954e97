"""Pretraining dataset over a folder (or file list) of audio: random fixed-length crops read by partial decode."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from audiorq.audio import AudioError, load_audio, pad_or_crop, printable_path, resampled_length
from audiorq.config import SAMPLE_RATE
from audiorq.data.pretrain.scan import AUDIO_EXTENSIONS, DataSourceError, scan_audio

log = logging.getLogger(__name__)
MAX_LISTED = 20  # bad files named one per line; beyond that only counted
# Paths already reported by this process: a run builds its dataset more than once (statistics, training,
# probing), and each bad file should be named once, not once per build or per epoch.
_reported: set[str] = set()


def report_bad_file(path: str | os.PathLike, reason: str) -> bool:
    """Log one line for a bad file, the first time this process meets it; whether it was logged now."""
    key = os.fspath(path)
    if key in _reported:
        return False
    _reported.add(key)
    log.warning("skipping %s: %s", printable_path(key), reason)
    return True


# Native samples decoded on each side of a crop before resampling, so the resampling filter sees the same
# neighbourhood as in a full decode and the crop equals the matching slice of the fully decoded clip.
RESAMPLE_MARGIN_SEC = 0.01


_MASK64 = (1 << 64) - 1
SHARD_META_FILE = "meta.json"  # = logmel_shards.META_FILE (that module imports this one, so the name is here too)
SHARD_FORMAT_NAME = "audiorq-logmel-shards"


def is_logmel_shards(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder of log-mel shards (its meta.json names the shard format)."""
    meta = Path(path) / SHARD_META_FILE
    try:
        return json.loads(meta.read_text()).get("format") == SHARD_FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _mix64(x: int) -> int:
    # splitmix64 finalizer: a bijection on 64-bit ints whose outputs look independent for nearby inputs.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def crop_offset(seed: int, epoch: int, index: int, max_offset: int) -> int:
    """Crop start in [0, max_offset], a pure function of (seed, epoch, index).

    A hash of the triple, never process-global random state, so the crop of an item does not depend on the
    number of DataLoader workers, which worker reads it, or in what order. (The hash costs ~6 us where seeding
    a numpy generator per item costs ~60 us; the modulo bias is below 2**-40 for any real clip length.)
    """
    if max_offset <= 0:
        return 0
    h = _mix64(_mix64(_mix64(int(seed) & _MASK64) ^ (int(epoch) & _MASK64)) ^ (int(index) & _MASK64))
    return h % (max_offset + 1)


def read_crop(load: Callable[[float, float | None], torch.Tensor], frames: int, rate: int, sample_rate: int,
              size: int, offset: int) -> torch.Tensor:
    """Samples [offset, offset + size) at `sample_rate` of a clip of `frames` samples at `rate`: (size,).

    `load(start_s, duration_s)` decodes a span (None: to the end) at `sample_rate`, as `load_audio` does. Only
    the span is decoded; with resampling, the read starts on a native sample that maps to a whole output sample
    (a multiple of rate/gcd) with a margin on each side, so the crop equals the slice of a full decode. A clip
    shorter than `size` is zero-padded at both ends (floor half at the head, as BYOL-A).
    """
    if resampled_length(frames, rate, sample_rate) <= size:
        return pad_or_crop(load(0.0, None)[:size], size, policy="byola")
    if rate == sample_rate:
        wave = load(offset / rate, size / rate)
    else:
        g = math.gcd(rate, sample_rate)
        step_in, step_out = rate // g, sample_rate // g
        margin = int(math.ceil(RESAMPLE_MARGIN_SEC * rate))
        first = max(0, (offset * rate // sample_rate - margin) // step_in * step_in)
        last = min(frames, -(-(offset + size) * rate // sample_rate) + margin)
        chunk = load(first / rate, (last - first) / rate)
        head = offset - first // step_in * step_out
        wave = chunk[head : head + size]
    if wave.shape[0] < size:  # the header promised more samples than the file holds
        wave = torch.nn.functional.pad(wave, (0, size - wave.shape[0]))
    return wave[:size]


class EpochCropDataset(Dataset):
    """Base of the pretraining datasets: crops drawn by `crop_offset(seed, epoch, index)`.

    The epoch lives in a one-element shared-memory tensor, so `set_epoch` in the main process also reaches
    DataLoader workers that were started earlier (``persistent_workers=True``): call it before ``iter(loader)``.
    """

    kind: str = ""
    epoch_in_shared_memory = True  # so the training loop may keep its DataLoader workers across epochs

    def __init__(self, seed: int = 0):
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.n_bad_seen = 0  # bad items met by this process (each DataLoader worker counts its own)

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of `epoch` (non-negative int)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        """The epoch whose crops items give now."""
        return int(self._epoch[0])

    def crop_offset(self, index: int, max_offset: int) -> int:
        """Crop start for item `index` in the current epoch."""
        return crop_offset(self.seed, self.epoch, index, max_offset)

    def _warn_bad(self, error: Exception) -> None:
        self.n_bad_seen += 1
        if isinstance(error, AudioError):
            report_bad_file(error.path, error.reason)
        else:
            log.warning("skipping bad audio: %s", error)


# ----------------------------------------------------------------------------------------------


class StringTable:
    """An immutable list of strings packed in two numpy arrays (utf-8 bytes + offsets).

    Millions of Python str objects in a Dataset get copied page by page into every forked DataLoader worker
    as their reference counts are touched; two numpy arrays are shared for good.
    """

    def __init__(self, strings: list[str]):
        # surrogateescape: a name with undecodable bytes round-trips instead of failing the whole table.
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} strings")
        index %= len(self)
        return self._bytes[self._offsets[index] : self._offsets[index + 1]].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class AudioFolder(EpochCropDataset):
    """Random `crop_sec` crops of every audio file under a folder or in a file list: item (S,) float32.

    S = int(crop_sec * sample_rate). Only the cropped span is decoded. Clips shorter than the crop are
    zero-padded at both ends (floor half at the head, as BYOL-A). The crop of item i in epoch e is a pure
    function of (seed, e, i). A bad file (unreadable, empty, not finite) gives None after a warning naming
    it; `collate_skipping` drops those and counts them.
    """

    kind = "wave"

    def __init__(
        self,
        source: str | os.PathLike,
        crop_sec: float = 0.95,
        sample_rate: int = SAMPLE_RATE,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
    ):
        super().__init__(seed)
        if not 0 < crop_sec < math.inf:
            raise ValueError(f"crop_sec must be a finite number > 0, got {crop_sec}")
        if is_logmel_shards(source):
            raise DataSourceError(f"{printable_path(source)} is a folder of log-mel shards, not audio: "
                                  f"add data.kind=logmel")
        self.source = Path(source)
        self.crop_sec = float(crop_sec)
        self.sample_rate = int(sample_rate)
        self.crop_samples = int(crop_sec * sample_rate)
        scan = scan_audio(source, cache_dir)
        self.root = scan.root
        self.cache_path, self.cache_status, self.n_probed = scan.cache_path, scan.cache_status, scan.n_probed
        self.paths = StringTable([e.path for e in scan.entries])  # as listed: relative to root, or absolute
        self.frames = np.array([e.frames for e in scan.entries], dtype=np.int64)
        self.native_rates = np.array([e.sample_rate for e in scan.entries], dtype=np.int64)
        self.errors: dict[int, str] = {i: e.error for i, e in enumerate(scan.entries) if e.error}
        if not len(self.paths):
            raise DataSourceError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found in "
                                  f"{printable_path(self.source)}")
        if len(self.errors) == len(self):
            raise DataSourceError(f"{printable_path(self.source)}: none of its {len(self)} audio files is usable, e.g. "
                                  f"{printable_path(self.path(0))}: {self.errors[0]}")
        if self.errors:
            new = [(i, e) for i, e in self.errors.items() if str(self.path(i)) not in _reported]
            for i, e in new[:MAX_LISTED]:
                report_bad_file(self.path(i), e)
            _reported.update(str(self.path(i)) for i, _ in new[MAX_LISTED:])
            if new:  # the count last, once per process, after the files it counts
                more = f" ({len(new) - MAX_LISTED} not listed)" if len(new) > MAX_LISTED else ""
                log.warning("%s: %d of %d files are unusable and will be skipped%s", printable_path(self.source),
                            len(self.errors), len(self), more)

    def path(self, index: int) -> Path:
        """Absolute path of item `index`."""
        return self.root / self.paths[index]  # an absolute entry stays absolute

    @property
    def files(self) -> list[Path]:
        """Absolute paths of all items (built on each call)."""
        return [self.path(i) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self.paths)

    def duration(self, index: int) -> float:
        """Duration in seconds from the header (0 for a bad file)."""
        rate = self.native_rates[index]
        return float(self.frames[index] / rate) if rate else 0.0

    def __getitem__(self, index: int) -> torch.Tensor | None:
        if index in self.errors:
            self._warn_bad(AudioError(self.path(index), self.errors[index]))
            return None
        try:
            return self._read_crop(index)
        except AudioError as e:
            self._warn_bad(e)
            return None

    def _read_crop(self, index: int) -> torch.Tensor:
        path, frames, rate = self.path(index), int(self.frames[index]), int(self.native_rates[index])
        offset = self.crop_offset(index, resampled_length(frames, rate, self.sample_rate) - self.crop_samples)
        return read_crop(lambda start, duration: load_audio(path, self.sample_rate, start, duration), frames, rate,
                         self.sample_rate, self.crop_samples, offset)

    def __repr__(self) -> str:
        return (
            f"AudioFolder({str(self.source)!r}, files={len(self)}, crop_sec={self.crop_sec}, "
            f"sample_rate={self.sample_rate}, seed={self.seed})"
        )
