"""`prepare_logmel`: the float16 log-mel of every clip of a corpus, in shards (resumable, parallel).

The shard files themselves are written by `audiorq.data.pretrain.logmel_shards`, the one owner of the format;
this module decides which clips go to which shard, computes their log-mel and runs the shard jobs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from audiorq.audio import AudioError, load_audio, resampled_length
from audiorq.config import FrontendConfig, from_dict, to_dict
from audiorq.data.prepare.runner import (
    PrepareSummary, check_destination, default_workers, fix_plan, output_errors, run_shard_jobs,
)
from audiorq.data.pretrain.scan import scan_audio
from audiorq.data.pretrain.logmel_shards import (
    PLAN_FILE, SHARD_DIR, finished_shard, remove_partial_shards, write_meta, write_shard,
)
from audiorq.frontend import LogMelSpectrogram

# 8,388,608 frames = 1 GiB at 64 mels in float16, ~23 h of audio: AudioSet (~2e9 frames) fits in ~240 shards,
# few enough that a reader can keep all of them memory-mapped (each map holds a file descriptor).
DEFAULT_SHARD_SIZE_FRAMES = 1 << 23
LONG_CLIP_CHUNK_FRAMES = 6000  # log-mel of long clips is computed 60 s at a time to bound memory


def logmel_frames(frontend: LogMelSpectrogram, wave: torch.Tensor, chunk_frames: int = LONG_CLIP_CHUNK_FRAMES) -> torch.Tensor:
    """Log-mel of a whole clip (S,) as (T, n_mels) float32, T = 1 + S // hop, computed chunk_frames at a time.

    Equal to ``frontend(wave)[0, 0].T``: each chunk is cut from the waveform with enough context that the
    frames kept never see the chunk's own reflect padding, so only the clip's true ends are padded.
    """
    hop, half = frontend.hop_length, frontend.n_fft // 2
    total = 1 + wave.shape[-1] // hop
    if total <= chunk_frames:
        return frontend(wave)[0, 0].T
    if chunk_frames < 2:
        raise ValueError(f"chunk_frames must be >= 2, got {chunk_frames}")
    context = -(-half // hop)  # frames whose window reaches back past a chunk's first sample
    parts = []
    for t0 in range(0, total, chunk_frames):
        t1 = min(total, t0 + chunk_frames)
        first = max(0, t0 - context)  # chunk frame j is clip frame first + j when the slice starts at first*hop
        end = min(wave.shape[-1], (t1 - 1) * hop + half)
        lm = frontend(wave[first * hop : end])[0, 0]
        parts.append(lm[:, t0 - first : t1 - first].T)
    return torch.cat(parts)


_FRONTENDS: dict[str, LogMelSpectrogram] = {}


def frontend_for(config: dict) -> LogMelSpectrogram:
    """The frontend of a config dict, one per worker process and config (its filterbank costs more than a clip)."""
    key = json.dumps(config, sort_keys=True)
    if key not in _FRONTENDS:
        _FRONTENDS[key] = LogMelSpectrogram.from_config(from_dict(FrontendConfig, config))
    return _FRONTENDS[key]


def clip_logmel(frontend: LogMelSpectrogram, path: Path) -> np.ndarray:
    """The float16 log-mel (T, n_mels) of a whole clip; AudioError for one that is unusable or too short."""
    wave = load_audio(path, frontend.sample_rate)
    if wave.shape[0] <= frontend.n_fft // 2:
        raise AudioError(path, f"too short ({wave.shape[0]} samples) for n_fft={frontend.n_fft}")
    with torch.no_grad():
        return logmel_frames(frontend, wave).numpy().astype(np.float16)


def _clips(frontend: LogMelSpectrogram, root: str, rels: list[str]) -> Iterator[tuple[str, np.ndarray | str]]:
    """(rel, float16 log-mel (T, n_mels)) per clip, or (rel, reason) for one that cannot be used."""
    for rel in rels:
        try:
            yield rel, clip_logmel(frontend, Path(root) / rel)
        except AudioError as e:
            yield rel, e.reason
        except (RuntimeError, ValueError) as e:  # a decoder or resampler failing on odd content
            yield rel, f"{type(e).__name__}: {e}"


def _build_shard(shard_id: int, root: str, rels: list[str], config: dict, shard_dir: str) -> dict:
    """Compute the log-mel of `rels` and write them as shard `shard_id`; return the shard's index."""
    frontend = frontend_for(config)
    return write_shard(shard_dir, shard_id, frontend.n_mels, _clips(frontend, root, rels))


def _expected_frames(frames: int, rate: int, sample_rate: int, hop: int) -> int:
    return 1 + resampled_length(frames, rate, sample_rate) // hop


def plan_shards(clip_frames: list[int], shard_size_frames: int) -> list[list[int]]:
    """Group consecutive clips into shards of at most shard_size_frames frames (a longer clip gets its own)."""
    shards: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, frames in enumerate(clip_frames):
        if current and size + frames > shard_size_frames:
            shards.append(current)
            current, size = [], 0
        current.append(i)
        size += frames
    if current:
        shards.append(current)
    return shards


def prepare_logmel(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    frontend_config: FrontendConfig | dict | None = None,
    shard_size_frames: int = DEFAULT_SHARD_SIZE_FRAMES,
    workers: int | None = None,
    progress: bool = True,
    max_new_shards: int | None = None,
) -> PrepareSummary:
    """Precompute the float16 log-mel of every clip of `src` (folder or file list) into shards in `dst`.

    Layout: see `audiorq.data.pretrain.logmel_shards`. Consecutive clips (sorted order) are grouped into shards
    of about `shard_size_frames` frames using the header lengths; one worker process builds one shard and
    writes it under a temporary name, then renames it, then writes the shard's own index. Re-running resumes:
    finished shards are kept, anything else is rebuilt, so an interrupted run ends with the same files as an
    uninterrupted one. `max_new_shards` stops after that many new shards (work in installments). When all
    shards exist, the index, paths and mean/std over all stored frames are written, meta.json last.
    """
    t_start = time.monotonic()
    src, dst = Path(src), Path(dst)
    check_destination(src, dst)
    if frontend_config is None:
        frontend_config = FrontendConfig()
    if isinstance(frontend_config, dict):
        frontend_config = from_dict(FrontendConfig, frontend_config)
    frontend_config.validate()
    config = to_dict(frontend_config)
    if shard_size_frames < 1:
        raise ValueError(f"shard_size_frames must be >= 1, got {shard_size_frames}")
    workers = default_workers() if workers is None else int(workers)

    with output_errors(dst):
        return _prepare(src, dst, frontend_config, config, shard_size_frames, workers, progress, max_new_shards,
                        t_start)


def _prepare(src: Path, dst: Path, frontend_config: FrontendConfig, config: dict, shard_size_frames: int,
             workers: int, progress: bool, max_new_shards: int | None, t_start: float) -> PrepareSummary:
    dst.mkdir(parents=True, exist_ok=True)
    shard_dir = dst / SHARD_DIR
    shard_dir.mkdir(exist_ok=True)
    remove_partial_shards(shard_dir)
    scan = scan_audio(src, cache_dir=dst)
    # Unusable names (not UTF-8, a line break: paths.txt holds one UTF-8 path per line) are scan errors.
    good = [e for e in scan.entries if not e.error]
    scan_bad = [[e.path, e.error] for e in scan.entries if e.error]
    expected = [_expected_frames(e.frames, e.sample_rate, frontend_config.sample_rate, frontend_config.hop_length)
                for e in good]
    groups = [[good[i].path for i in group] for group in plan_shards(expected, shard_size_frames)]
    plan = {"source": str(src.resolve()), "frontend": config, "shard_size_frames": int(shard_size_frames),
            "shards": groups}
    fix_plan(dst / PLAN_FILE, plan, {"shards": "files"})

    indexes, n_done, n_skipped = run_shard_jobs(
        groups, lambda i: finished_shard(shard_dir, i),
        lambda i: (_build_shard, (i, str(scan.root), groups[i], config, str(shard_dir))),
        lambda index: len(index["paths"]) + len(index["bad"]), workers, progress, "prepare logmel", max_new_shards)

    bad = [(str(scan.root / p), r) for p, r in scan_bad]
    bad += [(str(scan.root / p), r) for i in sorted(indexes) for p, r in indexes[i]["bad"]]
    complete = len(indexes) == len(groups)
    stats = None
    if complete:
        stats = write_meta(dst, scan.root, [indexes[i] for i in range(len(groups))], config, bad, shard_size_frames)
    return PrepareSummary(str(src), str(dst), len(scan.entries), n_done, n_skipped, len(bad), bad, complete,
                          time.monotonic() - t_start, n_shards=len(groups), stats=stats)
