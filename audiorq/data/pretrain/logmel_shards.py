"""The float16 log-mel shard format: its writer (used by `audiorq.data.prepare.prepare_logmel`) and its
reader, `LogMelShards`, the dataset of random fixed-length crops from memory-mapped shards.

Folder layout:

    meta.json             written last: format, frontend config, shard names, stats, bad files
    index.npz             per clip, in paths.txt order: shard (int32), offset (int64), n_frames (int64)
    paths.txt             source path of each clip, relative to the source root, one per line
    plan.json             which source files go to which shard (fixed on the first run, checked on resume)
    shards/shard-NNNNN.npy       (frames, n_mels) float16, all clips of the shard back to back in time
    shards/shard-NNNNN.json      the shard's own index and partial statistics; its presence marks it done

Frames are the leading axis so that a crop is one contiguous read of crop_frames * n_mels values.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from audiorq.atomic import atomic_write, atomic_write_text
from audiorq.data.pretrain.audio_folder import SHARD_FORMAT_NAME, SHARD_META_FILE, EpochCropDataset, StringTable
from audiorq.data.pretrain.scan import DataSourceError, MissingSourceError
from audiorq.frontend import EPS

FORMAT_NAME = SHARD_FORMAT_NAME
FORMAT_VERSION = 1
META_FILE = SHARD_META_FILE
INDEX_FILE = "index.npz"
PATHS_FILE = "paths.txt"
PLAN_FILE = "plan.json"
SHARD_DIR = "shards"
# Silence level of log(mel + eps): what an all-zero waveform gives.
SILENCE_LOG_MEL = float(np.log(np.float32(EPS)))
# Each open memory map holds a file descriptor; beyond this many the least recently used is closed.
MAX_OPEN_SHARDS = 256
NPY_HEADER_BYTES = 128  # fixed .npy header size, so the shape can be filled in after streaming the data


def shard_name(shard_id: int) -> str:
    """File stem of shard `shard_id`: shard-NNNNN."""
    return f"shard-{shard_id:05d}"


def npy_layout(path: Path) -> tuple[tuple[int, ...], int]:
    """(shape, the file size the header promises: header + data bytes) of a .npy file, from its header."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        data_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return tuple(int(n) for n in shape), f.tell() + data_bytes


# ----------------------------------------------------------------------------------------------
# Writing


def npy_header(shape: tuple[int, ...], descr: str = "<f2") -> bytes:
    """A version 1.0 .npy header of exactly NPY_HEADER_BYTES bytes for a C-order array."""
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (descr, tuple(int(n) for n in shape))
    pad = NPY_HEADER_BYTES - 10 - len(text) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} does not fit a {NPY_HEADER_BYTES}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", NPY_HEADER_BYTES - 10) + (text + " " * pad + "\n").encode("latin1")


def clip_moments(lm: np.ndarray) -> tuple[int, float, float]:
    """(count, mean, M2) of the stored (float16) values of one clip's log-mel, for an exact merge."""
    values = lm.astype(np.float64)
    mean = float(values.mean())
    return values.size, mean, float(np.square(values - mean).sum())


def merge_moments(parts: Iterable[tuple[int, float, float]]) -> tuple[int, float, float]:
    """Merge partial (count, mean, M2) moments (Chan et al.'s parallel update) into one (count, mean, M2)."""
    n, mean, m2 = 0, 0.0, 0.0
    for nb, mb, m2b in parts:
        if nb == 0:
            continue
        delta = mb - mean
        total = n + nb
        mean += delta * nb / total
        m2 += m2b + delta * delta * n * nb / total
        n = total
    return n, mean, m2


def merge_stats(parts: Iterable[tuple[int, float, float]]) -> tuple[int, float, float]:
    """Merge partial (count, mean, M2) moments; returns (count, mean, std) with the population std."""
    n, mean, m2 = merge_moments(parts)
    return n, mean, math.sqrt(m2 / n) if n else 0.0


def remove_partial_shards(shard_dir: Path) -> None:
    """Delete the temporary files of shards a killed run was writing (one run per destination at a time)."""
    for leftover in Path(shard_dir).glob(".shard-*.tmp"):
        leftover.unlink(missing_ok=True)


def write_shard(shard_dir: str | os.PathLike, shard_id: int, n_mels: int,
                clips: Iterable[tuple[str, np.ndarray | str]]) -> dict:
    """Write shard `shard_id` (.npy, then its .json index) from `clips` and return the index.

    `clips` yields (path, log-mel (frames, n_mels) float16) or (path, reason) for a clip that is bad. It is
    consumed while the (temporary) file is written, so only one clip is in memory at a time; the header with
    the final shape is written last.
    """
    n_frames, kept, bad, parts = [], [], [], []

    def write(f) -> None:
        f.write(b"\0" * NPY_HEADER_BYTES)
        for rel, lm in clips:
            if isinstance(lm, str):
                bad.append([rel, lm])
                continue
            f.write(np.ascontiguousarray(lm).tobytes())
            n_frames.append(int(lm.shape[0]))
            kept.append(rel)
            parts.append(clip_moments(lm))
        f.seek(0)
        f.write(npy_header((sum(n_frames), n_mels)))
        f.seek(0, os.SEEK_END)

    name = shard_name(shard_id)
    atomic_write(Path(shard_dir) / f"{name}.npy", write)
    count, mean, m2 = merge_moments(parts)
    index = {"shard": shard_id, "paths": kept, "n_frames": n_frames, "bad": bad, "frames": sum(n_frames),
             "count": count, "mean": mean, "m2": m2}
    atomic_write_text(Path(shard_dir) / f"{name}.json", json.dumps(index))
    return index


def finished_shard(shard_dir: Path, shard_id: int) -> dict | None:
    """The shard's index if both its files are complete and agree, else None (it is then rebuilt)."""
    name = shard_name(shard_id)
    try:
        index = json.loads((shard_dir / f"{name}.json").read_text())
        npy = shard_dir / f"{name}.npy"
        shape, size = npy_layout(npy)
        # A shard shorter than its header promises (a damaged copy) is rebuilt, not trusted.
        if index["shard"] == shard_id and shape[0] == index["frames"] and npy.stat().st_size >= size:
            return index
    except (OSError, ValueError, KeyError):
        pass
    return None


def write_meta(dst: Path, root: Path, indexes: list[dict], config: dict, bad: list[tuple[str, str]],
               shard_size_frames: int) -> tuple[float, float]:
    """Write index.npz, paths.txt and, last, meta.json from the shard indexes (in shard order); (mean, std)."""
    shard_col, offset_col, frames_col, paths = [], [], [], []
    for shard_id, index in enumerate(indexes):
        offset = 0
        for rel, n in zip(index["paths"], index["n_frames"]):
            shard_col.append(shard_id)
            offset_col.append(offset)
            frames_col.append(n)
            paths.append(rel)
            offset += n
    count, mean, std = merge_stats((index["count"], index["mean"], index["m2"]) for index in indexes)
    if count == 0:
        raise ValueError(f"no usable audio in {root}: all {len(bad)} files are bad")

    def write_index(f) -> None:
        np.savez(f, shard=np.asarray(shard_col, np.int32), offset=np.asarray(offset_col, np.int64),
                 n_frames=np.asarray(frames_col, np.int64))

    atomic_write(dst / INDEX_FILE, write_index)
    atomic_write_text(dst / PATHS_FILE, "".join(p + "\n" for p in paths))
    meta = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "source": str(root), "frontend": config,
        "n_mels": int(config["n_mels"]), "dtype": "float16", "shard_size_frames": int(shard_size_frames),
        "shards": [shard_name(i) for i in range(len(indexes))],
        "shard_frames": [int(index["frames"]) for index in indexes],
        "n_clips": len(paths), "n_frames": int(sum(frames_col)),
        "stats": {"mean": mean, "std": std, "count": count, "over": "all stored frames and mel bins (float16)"},
        "n_bad": len(bad), "bad": [list(b) for b in bad],
    }
    atomic_write_text(dst / META_FILE, json.dumps(meta, indent=1))
    return mean, std


# ----------------------------------------------------------------------------------------------
# Reading


def logmel_crop(clip: np.ndarray, size: int, start: int) -> torch.Tensor:
    """Frames [start, start + size) of a clip's log-mel (n, n_mels) as (1, n_mels, size) float32.

    A clip shorter than `size` is padded at both ends (floor half at the head) with the log-mel of silence,
    log(eps), not 0: 0 in log units is a loud mel energy of 1. That is exactly what zero-padding the
    waveform (the AudioFolder path) gives. Only the rows used are read from a memory-mapped `clip`.
    """
    n = clip.shape[0]
    rows = np.asarray(clip[start : start + min(n, size)], dtype=np.float32)
    if n < size:
        head = (size - n) // 2
        rows = np.pad(rows, ((head, size - n - head), (0, 0)), constant_values=SILENCE_LOG_MEL)
    return torch.from_numpy(np.ascontiguousarray(rows.T)).unsqueeze(0)


class LogMelShards(EpochCropDataset):
    """Random `crop_frames` crops of precomputed log-mel clips: item (1, n_mels, crop_frames) float32.

    Values are un-normalized log(mel + eps) as the frontend gives them (stored as float16); `.stats` holds
    the (mean, std) computed over all stored frames at prepare time. The crop of item i in epoch e is a pure
    function of (seed, e, i). Shards are opened lazily with np.memmap in each process that reads them.
    """

    kind = "logmel"

    def __init__(self, root: str | os.PathLike, crop_frames: int = 96, seed: int = 0):
        super().__init__(seed)
        if crop_frames < 1:
            raise ValueError(f"crop_frames must be >= 1, got {crop_frames}")
        self.root = Path(root)
        self.crop_frames = int(crop_frames)
        meta_path = self.root / META_FILE
        if not self.root.exists():
            raise MissingSourceError(f"log-mel shard folder not found: {self.root}")
        if not meta_path.is_file():
            hint = (" (preparation unfinished: run `audiorq prepare logmel` again)" if (self.root / PLAN_FILE).exists()
                    else " (make one with `audiorq prepare logmel SRC DST`, or read audio with data.kind=wave)")
            raise MissingSourceError(f"{self.root} is not a finished log-mel shard folder: {META_FILE} missing{hint}")
        try:
            self._open(meta_path)
        except DataSourceError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError) as e:
            raise DataSourceError(f"{self.root}: damaged log-mel shard folder ({type(e).__name__}: {e}); prepare it "
                                  "again with `audiorq prepare logmel`") from None
        self._shards: OrderedDict[int, np.ndarray] = OrderedDict()

    def _open(self, meta_path: Path) -> None:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            raise DataSourceError(f"{meta_path}: not a {FORMAT_NAME} v{FORMAT_VERSION} folder")
        self.meta = meta
        self.frontend_config: dict[str, Any] = dict(meta["frontend"])
        self.n_mels = int(meta["n_mels"])
        self.stats: tuple[float, float] = (float(meta["stats"]["mean"]), float(meta["stats"]["std"]))
        with np.load(self.root / INDEX_FILE) as index:
            self.shard_ids = index["shard"].astype(np.int64)
            self.offsets = index["offset"].astype(np.int64)
            self.n_frames = index["n_frames"].astype(np.int64)
        self.paths = StringTable((self.root / PATHS_FILE).read_text().splitlines())  # relative to meta["source"]
        if not len(self.paths) == len(self.offsets) == int(meta["n_clips"]):
            raise DataSourceError(f"{self.root}: index ({len(self.offsets)}), {PATHS_FILE} ({len(self.paths)}) and "
                             f"{META_FILE} ({meta['n_clips']}) disagree on the number of clips")
        self.shard_files = [self.root / SHARD_DIR / f"{name}.npy" for name in meta["shards"]]
        for path, frames in zip(self.shard_files, meta["shard_frames"]):
            if not path.is_file():
                raise MissingSourceError(f"{self.root}: shard {path.name} is missing")
            shape, size = npy_layout(path)
            if shape[0] != frames:
                raise DataSourceError(f"{path}: holds {shape[0]} frames, the index expects {frames}")
            if path.stat().st_size < size:
                raise DataSourceError(f"{path}: truncated ({path.stat().st_size} of {size} bytes); prepare the "
                                      "folder again with `audiorq prepare logmel`")

    def __len__(self) -> int:
        return len(self.offsets)

    def _shard(self, shard_id: int) -> np.ndarray:
        shard = self._shards.get(shard_id)
        if shard is None:
            if len(self._shards) >= MAX_OPEN_SHARDS:
                self._shards.popitem(last=False)
            shard = self._shards[shard_id] = np.load(self.shard_files[shard_id], mmap_mode="r")
        else:
            self._shards.move_to_end(shard_id)
        return shard

    def clip(self, index: int) -> np.ndarray:
        """Whole stored log-mel of clip `index`: (n_frames, n_mels) float16 (a memory-mapped view)."""
        start = self.offsets[index]
        return self._shard(int(self.shard_ids[index]))[start : start + self.n_frames[index]]

    def __getitem__(self, index: int) -> torch.Tensor:
        n = int(self.n_frames[index])
        return logmel_crop(self.clip(index), self.crop_frames, self.crop_offset(index, n - self.crop_frames))

    def __getstate__(self) -> dict:
        # Memory maps would be pickled as full copies of the arrays; each process reopens its own.
        state = self.__dict__.copy()
        state["_shards"] = OrderedDict()
        return state

    def __repr__(self) -> str:
        return (f"LogMelShards({str(self.root)!r}, clips={len(self)}, shards={len(self.shard_files)}, "
                f"n_mels={self.n_mels}, crop_frames={self.crop_frames}, seed={self.seed})")
