"""Precomputed float16 log-mel shards (memory-mapped) and the dataset of random fixed-length crops from them.

Folder layout written by `audiorq.data.convert.prepare_logmel`:

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
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiorq.data.audio_folder import EpochCropDataset, StringTable
from audiorq.frontend import EPS

FORMAT_NAME = "audiorq-logmel-shards"
FORMAT_VERSION = 1
META_FILE = "meta.json"
INDEX_FILE = "index.npz"
PATHS_FILE = "paths.txt"
PLAN_FILE = "plan.json"
SHARD_DIR = "shards"
# Silence level of log(mel + eps): what an all-zero waveform gives.
SILENCE_LOG_MEL = float(np.log(np.float32(EPS)))
# Each open memory map holds a file descriptor; beyond this many the least recently used is closed.
MAX_OPEN_SHARDS = 256


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}"


def npy_frames(path: Path) -> int:
    """Leading dimension of a .npy file, read from its header only."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(f)
    return int(shape[0])


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
        if not meta_path.is_file():
            hint = " (preparation unfinished: run `audiorq prepare logmel` again)" if (self.root / PLAN_FILE).exists() else ""
            raise FileNotFoundError(f"{self.root} is not a finished log-mel shard folder: {META_FILE} missing{hint}")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: not a {FORMAT_NAME} v{FORMAT_VERSION} folder")
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
            raise ValueError(f"{self.root}: index ({len(self.offsets)}), {PATHS_FILE} ({len(self.paths)}) and "
                             f"{META_FILE} ({meta['n_clips']}) disagree on the number of clips")
        self.shard_files = [self.root / SHARD_DIR / f"{name}.npy" for name in meta["shards"]]
        for path, frames in zip(self.shard_files, meta["shard_frames"]):
            if not path.is_file():
                raise FileNotFoundError(f"{self.root}: shard {path.name} is missing")
            if npy_frames(path) != frames:
                raise ValueError(f"{path}: holds {npy_frames(path)} frames, the index expects {frames}")
        self._shards: OrderedDict[int, np.ndarray] = OrderedDict()

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
        n, size = int(self.n_frames[index]), self.crop_frames
        t0 = self.crop_offset(index, n - size)
        start = int(self.offsets[index]) + t0
        rows = np.asarray(self._shard(int(self.shard_ids[index]))[start : start + min(n, size)], dtype=np.float32)
        if n < size:
            # Pad with the log-mel of silence, log(eps), not 0: 0 in log units is a loud mel energy of 1.
            # This is exactly what zero-padding the waveform (the AudioFolder path) gives, at both ends.
            head = (size - n) // 2
            rows = np.pad(rows, ((head, size - n - head), (0, 0)), constant_values=SILENCE_LOG_MEL)
        return torch.from_numpy(np.ascontiguousarray(rows.T)).unsqueeze(0)

    def __getstate__(self) -> dict:
        # Memory maps would be pickled as full copies of the arrays; each process reopens its own.
        state = self.__dict__.copy()
        state["_shards"] = OrderedDict()
        return state

    def __repr__(self) -> str:
        return (f"LogMelShards({str(self.root)!r}, clips={len(self)}, shards={len(self.shard_files)}, "
                f"n_mels={self.n_mels}, crop_frames={self.crop_frames}, seed={self.seed})")
