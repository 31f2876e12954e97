"""Pretraining dataset over a folder (or file list) of audio: random fixed-length crops read by partial decode."""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from audiorq.atomic import atomic_write_text
from audiorq.audio import AudioError, audio_info, load_audio, pad_or_crop
from audiorq.config import SAMPLE_RATE

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SCAN_CACHE_VERSION = 1
# Native samples decoded on each side of a crop before resampling, so the resampling filter sees the same
# neighbourhood as in a full decode and the crop equals the matching slice of the fully decoded clip.
RESAMPLE_MARGIN_SEC = 0.01


_MASK64 = (1 << 64) - 1


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


class EpochCropDataset(Dataset):
    """Base of the pretraining datasets: crops drawn by `crop_offset(seed, epoch, index)`.

    The epoch lives in a one-element shared-memory tensor, so `set_epoch` in the main process also reaches
    DataLoader workers that were started earlier (``persistent_workers=True``): call it before ``iter(loader)``.
    """

    kind: str = ""

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
        warnings.warn(
            f"skipping bad audio ({self.n_bad_seen} so far in this process): {error}", RuntimeWarning, stacklevel=3
        )


# ----------------------------------------------------------------------------------------------
# Scanning: the list of files and their header info, cached.


@dataclass
class ScanEntry:
    """One file of a scan: header info, or the reason it is unusable (`error`, frames 0)."""

    path: str  # as given: relative to the scan root, or absolute
    size: int
    mtime_ns: int
    frames: int
    sample_rate: int
    error: str = ""


@dataclass
class AudioScan:
    """Result of scanning a folder / file list: entries in a deterministic (sorted or listed) order."""

    root: Path  # folder the relative paths are relative to
    entries: list[ScanEntry]
    cache_path: Path | None
    cache_status: str  # "hit" (nothing re-read), "updated" (some headers re-read), "new" (no usable cache)
    n_probed: int  # headers read in this call

    def absolute(self, entry: ScanEntry) -> Path:
        """Absolute path of a scanned entry."""
        return Path(entry.path) if os.path.isabs(entry.path) else self.root / entry.path


def default_cache_dir() -> Path:
    """$AUDIORQ_CACHE_DIR, else ~/.cache/audiorq (a data folder may be read-only, so not next to the data)."""
    env = os.environ.get("AUDIORQ_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "audiorq"


def is_audio_file(name: str) -> bool:
    """Whether a file name is one the scan takes: an audio extension, not hidden."""
    # Hidden names are skipped too: atomic writes leave ".name.xxx.tmp" files while in progress.
    return not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS)


def list_audio_files(root: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """Audio files under `root` (recursive, symlinks followed once), sorted relative paths, and the
    mtime_ns of every folder visited (keyed by relative path; adding/removing a file changes its folder's)."""
    root = Path(root)
    files: list[str] = []
    dir_mtimes: dict[str, int] = {}
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        rel_dir = os.path.relpath(dirpath, root)
        dir_mtimes[rel_dir] = os.stat(dirpath).st_mtime_ns
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if is_audio_file(name):
                files.append(os.path.normpath(os.path.join(rel_dir, name)))
    files.sort()
    return files, dir_mtimes


def _read_file_list(list_path: Path) -> list[str]:
    paths = []
    for line in list_path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            paths.append(line)
    return paths


def _probe(root: Path, rel: str) -> ScanEntry:
    path = Path(rel) if os.path.isabs(rel) else root / rel
    try:
        st = path.stat()
    except OSError:
        return ScanEntry(rel, -1, -1, 0, 0, "file not found")
    if st.st_size == 0:
        return ScanEntry(rel, 0, st.st_mtime_ns, 0, 0, "empty file (0 bytes)")
    try:
        info = audio_info(path)
    except AudioError as e:
        return ScanEntry(rel, st.st_size, st.st_mtime_ns, 0, 0, e.reason)
    error = "" if info.frames > 0 else "empty audio (0 samples)"
    return ScanEntry(rel, st.st_size, st.st_mtime_ns, info.frames, info.sample_rate, error)


def _stat_matches(root: Path, entry: ScanEntry) -> bool:
    path = Path(entry.path) if os.path.isabs(entry.path) else root / entry.path
    try:
        st = path.stat()
    except OSError:
        return entry.size == -1
    return st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns


def scan_audio(source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> AudioScan:
    """Scan a folder (recursive) or a text file list (one path per line, relative to the list's folder).

    Headers are read with soundfile (no decoding). The result is cached in `cache_dir` under a name derived
    from the source's absolute path. The cache is reused as is while every scanned folder (or the list file)
    keeps its mtime; otherwise the tree is listed again and only new or changed files (by size and mtime)
    have their headers re-read. Editing a file in place without touching its folder is not noticed: delete
    the cache file (`AudioScan.cache_path`) then.
    """
    source = Path(source).expanduser().resolve()
    if source.is_dir():
        root, source_kind = source, "dir"
    elif source.is_file():
        root, source_kind = source.parent, "list"
    else:
        raise FileNotFoundError(f"audio source not found: {source}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha1(str(source).encode()).hexdigest()[:16]
    cache_path = cache_dir / f"scan-{source.name or 'root'}-{key}.json"
    cached = _load_cache(cache_path, source, source_kind)

    if source_kind == "dir":
        fingerprint = None
        if cached is not None and _dirs_unchanged(root, cached["dirs"]):
            return AudioScan(root, cached["entries"], cache_path, "hit", 0)
        paths, fingerprint = list_audio_files(root)
    else:
        st = source.stat()
        fingerprint = {"list": [st.st_size, st.st_mtime_ns]}
        if cached is not None and cached["dirs"] == fingerprint:
            return AudioScan(root, cached["entries"], cache_path, "hit", 0)
        paths = _read_file_list(source)

    old = {e.path: e for e in cached["entries"]} if cached is not None else {}
    entries: list[ScanEntry | None] = []
    to_probe: list[int] = []
    for i, rel in enumerate(paths):
        entry = old.get(rel)
        if entry is not None and _stat_matches(root, entry):
            entries.append(entry)
        else:
            entries.append(None)
            to_probe.append(i)
    if to_probe:
        from tqdm.auto import tqdm

        # soundfile releases the GIL while reading headers, so threads overlap the file system latency.
        with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
            probed = pool.map(lambda i: _probe(root, paths[i]), to_probe, chunksize=64)
            for i, entry in zip(to_probe, tqdm(probed, total=len(to_probe), desc="scan", unit="file",
                                               disable=len(to_probe) < 5000 or None, leave=False)):
                entries[i] = entry
    scan_entries = [e for e in entries if e is not None]
    status = "new" if cached is None else ("updated" if to_probe or len(old) != len(scan_entries) else "hit")
    try:
        _save_cache(cache_path, source, source_kind, fingerprint, scan_entries)
    except OSError as e:
        warnings.warn(f"could not write the scan cache {cache_path}: {e}", RuntimeWarning, stacklevel=2)
        cache_path = None
    return AudioScan(root, scan_entries, cache_path, status, len(to_probe))


def _dirs_unchanged(root: Path, dirs: dict[str, int]) -> bool:
    for rel, mtime in dirs.items():
        try:
            if os.stat(root / rel).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def _load_cache(path: Path, source: Path, source_kind: str) -> dict | None:
    try:
        data = json.loads(path.read_text())
        if data.get("version") != SCAN_CACHE_VERSION or data["source"] != str(source) or data["kind"] != source_kind:
            return None
        cols = data["entries"]
        entries = [
            ScanEntry(p, s, m, f, r, e)
            for p, s, m, f, r, e in zip(
                cols["path"], cols["size"], cols["mtime_ns"], cols["frames"], cols["sample_rate"], cols["error"]
            )
        ]
        return {"dirs": data["dirs"], "entries": entries}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable cache: scan again


def _save_cache(path: Path, source: Path, source_kind: str, dirs: dict, entries: list[ScanEntry]) -> None:
    # Column lists keep the file compact for millions of entries.
    cols = {name: [getattr(e, name) for e in entries] for name in ("path", "size", "mtime_ns", "frames",
                                                                     "sample_rate", "error")}
    data = {"version": SCAN_CACHE_VERSION, "source": str(source), "kind": source_kind, "dirs": dirs, "entries": cols}
    atomic_write_text(path, json.dumps(data, separators=(",", ":")))


# ----------------------------------------------------------------------------------------------


class StringTable:
    """An immutable list of strings packed in two numpy arrays (utf-8 bytes + offsets).

    Millions of Python str objects in a Dataset get copied page by page into every forked DataLoader worker
    as their reference counts are touched; two numpy arrays are shared for good.
    """

    def __init__(self, strings: list[str]):
        encoded = [s.encode() for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} strings")
        index %= len(self)
        return self._bytes[self._offsets[index] : self._offsets[index + 1]].tobytes().decode()

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
        if crop_sec <= 0:
            raise ValueError(f"crop_sec must be > 0, got {crop_sec}")
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
            raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found in {self.source}")
        if self.errors:
            first = "; ".join(f"{self.path(i)}: {e}" for i, e in list(self.errors.items())[:5])
            warnings.warn(
                f"{self.source}: {len(self.errors)} of {len(self)} files are unusable and will be skipped: {first}",
                RuntimeWarning,
                stacklevel=2,
            )

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
        size = self.crop_samples
        # Length after resampling, as torchaudio produces it: ceil(frames * new / orig).
        length = -(-frames * self.sample_rate // rate)
        offset = self.crop_offset(index, length - size)
        if length <= size:
            wave = load_audio(path, self.sample_rate)
            return pad_or_crop(wave[:size], size, policy="byola")
        if rate == self.sample_rate:
            wave = load_audio(path, self.sample_rate, start=offset / rate, duration=size / rate)
        else:
            wave = self._read_resampled(path, frames, rate, offset)
        if wave.shape[0] < size:  # header promised more samples than the file holds
            wave = torch.nn.functional.pad(wave, (0, size - wave.shape[0]))
        return wave[:size]

    def _read_resampled(self, path: Path, frames: int, rate: int, offset: int) -> torch.Tensor:
        # Start the read on a native sample that maps to a whole output sample (a multiple of rate/gcd), so
        # the resampler's phase matches the full-clip decode and the crop equals the slice of a full decode.
        g = math.gcd(rate, self.sample_rate)
        step_in, step_out = rate // g, self.sample_rate // g
        margin = int(math.ceil(RESAMPLE_MARGIN_SEC * rate))
        first = max(0, (offset * rate // self.sample_rate - margin) // step_in * step_in)
        last = min(frames, -(-(offset + self.crop_samples) * rate // self.sample_rate) + margin)
        chunk = load_audio(path, self.sample_rate, start=first / rate, duration=(last - first) / rate)
        head = offset - first // step_in * step_out
        return chunk[head : head + self.crop_samples]

    def __repr__(self) -> str:
        return (
            f"AudioFolder({str(self.source)!r}, files={len(self)}, crop_sec={self.crop_sec}, "
            f"sample_rate={self.sample_rate}, seed={self.seed})"
        )
