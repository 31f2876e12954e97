"""One-time corpus preparation: 16 kHz mono wav copies, and float16 log-mel shards (resumable, parallel)."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import struct
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from audiorq.atomic import atomic_write, atomic_write_text
from audiorq.audio import SAMPLE_RATE, AudioError, load_audio, save_audio
from audiorq.config import FrontendConfig, from_dict, to_dict
from audiorq.data.audio_folder import list_audio_files, scan_audio
from audiorq.data.logmel_shards import (
    FORMAT_NAME, FORMAT_VERSION, INDEX_FILE, META_FILE, PATHS_FILE, PLAN_FILE, SHARD_DIR, npy_frames, shard_name,
)
from audiorq.frontend import LogMelSpectrogram

# 8,388,608 frames = 1 GiB at 64 mels in float16, ~23 h of audio: AudioSet (~2e9 frames) fits in ~240 shards,
# few enough that a reader can keep all of them memory-mapped (each map holds a file descriptor).
DEFAULT_SHARD_SIZE_FRAMES = 1 << 23
LONG_CLIP_CHUNK_FRAMES = 6000  # log-mel of long clips is computed 60 s at a time to bound memory


@dataclasses.dataclass
class PrepareSummary:
    """What a preparation run did. `bad` lists (path, reason) of every file skipped as unusable."""

    src: str
    dst: str
    n_files: int  # audio files found in src
    n_done: int  # files (clips) processed in this run
    n_skipped: int  # files (clips) already finished by an earlier run
    n_bad: int
    bad: list[tuple[str, str]]
    complete: bool  # everything is finished (False after a run stopped by max_new_shards)
    seconds: float
    n_shards: int = 0
    stats: tuple[float, float] | None = None  # (mean, std) of the log-mel, for prepare_logmel

    def __str__(self) -> str:
        lines = [
            f"{self.src} -> {self.dst}: {self.n_files} files, {self.n_done} done now, "
            f"{self.n_skipped} already done, {self.n_bad} bad, {self.seconds:.1f} s"
            + ("" if self.complete else " (unfinished: run again to continue)")
        ]
        if self.n_shards:
            lines.append(f"shards: {self.n_shards}")
        if self.stats is not None:
            lines.append(f"log-mel mean {self.stats[0]:.6f}, std {self.stats[1]:.6f}")
        for path, reason in self.bad[:20]:
            lines.append(f"  bad: {path}: {reason}")
        if len(self.bad) > 20:
            lines.append(f"  ... and {len(self.bad) - 20} more bad files")
        return "\n".join(lines)


def _init_worker() -> None:
    # One process per core already: torch's own threads would oversubscribe the CPU.
    torch.set_num_threads(1)


def _executor(workers: int) -> Executor | None:
    if workers <= 1:
        return None
    # forkserver: workers fork from a clean single-threaded server, not from a parent that may hold threads
    # (torch's pools, tqdm's monitor) which fork() does not copy safely; the preload imports torch only once.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([__name__])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker)


def _run_jobs(
    jobs: Iterable[tuple[Callable, tuple]], workers: int, on_result: Callable[[Any], None]
) -> None:
    """Run fn(*args) for each job, in worker processes if workers > 1, calling on_result in this process as
    each finishes (completion order). At most 2 * workers jobs are in flight, so memory stays bounded."""
    pool = _executor(workers)
    if pool is None:
        for fn, args in jobs:
            on_result(fn(*args))
        return
    pending: set[Future] = set()

    def collect(block_until_fewer_than: int) -> None:
        nonlocal pending
        while len(pending) >= block_until_fewer_than and pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                on_result(future.result())

    try:
        for fn, args in jobs:
            pending.add(pool.submit(fn, *args))
            collect(2 * workers)
        collect(1)
    except BaseException:
        # A failed job or Ctrl-C: drop what has not started; finished work is already on disk.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _progress(total: int, initial: int, desc: str, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _check_dst(src: Path, dst: Path) -> None:
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or (src_r.is_dir() and src_r in dst_r.parents):
        raise ValueError(f"destination {dst} must not be the source folder or inside it ({src})")


# ----------------------------------------------------------------------------------------------
# prepare wav


def wav_name(rel: str) -> str:
    """Output path of a source file: the same relative path with a .wav suffix."""
    return str(Path(rel).with_suffix(".wav"))


def _convert_wav_batch(src: str, dst: str, rels: list[str], sample_rate: int) -> list[tuple[str, str]]:
    """Convert each file; returns (rel, "" or the reason it was skipped)."""
    out = []
    for rel in rels:
        try:
            wave = load_audio(Path(src) / rel, sample_rate)
            save_audio(Path(dst) / wav_name(rel), wave, sample_rate)
            out.append((rel, ""))
        except (AudioError, OSError, ValueError) as e:
            out.append((rel, getattr(e, "reason", None) or str(e)))
    return out


def prepare_wav(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Convert every audio file under `src` to `sample_rate` mono 16-bit wav at the same relative path in `dst`.

    Only the suffix changes (a/b.flac -> a/b.wav). Resumable: an output newer than its source is kept (outputs
    are written atomically, so one that exists is whole). Unusable files are skipped and listed in the summary,
    as are two sources that would map to the same output (a/x.mp3 and a/x.ogg). A JSON copy of the summary is
    written to dst/prepare_wav_summary.json.
    """
    t_start = time.monotonic()
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    _check_dst(src, dst)
    workers = _default_workers() if workers is None else int(workers)
    rels, _ = list_audio_files(src)
    bad: list[tuple[str, str]] = []
    owner: dict[str, str] = {}
    todo: list[str] = []
    n_skipped = 0
    for rel in rels:
        out = wav_name(rel)
        if out in owner:
            bad.append((str(src / rel), f"output {out} is also the output of {owner[out]}"))
            continue
        owner[out] = rel
        out_path = dst / out
        if out_path.is_file() and out_path.stat().st_mtime_ns >= (src / rel).stat().st_mtime_ns:
            n_skipped += 1
        else:
            todo.append(rel)

    n_done = 0
    bar = _progress(len(rels), n_skipped, "prepare wav", "file", progress)

    def on_result(results: list[tuple[str, str]]) -> None:
        nonlocal n_done
        for rel, reason in results:
            if reason:
                bad.append((str(src / rel), reason))
            else:
                n_done += 1
        bar.update(len(results))
        bar.set_postfix(bad=len(bad))

    batch = 16
    jobs = ((_convert_wav_batch, (str(src), str(dst), todo[i : i + batch], sample_rate))
            for i in range(0, len(todo), batch))
    try:
        _run_jobs(jobs, workers, on_result)
    finally:
        bar.close()
    bad.sort()
    summary = PrepareSummary(str(src), str(dst), len(rels), n_done, n_skipped, len(bad), bad,
                             complete=True, seconds=time.monotonic() - t_start)
    atomic_write_text(dst / "prepare_wav_summary.json", json.dumps(dataclasses.asdict(summary), indent=1))
    return summary


# ----------------------------------------------------------------------------------------------
# prepare logmel


def logmel_frames(frontend: LogMelSpectrogram, wave: torch.Tensor, chunk_frames: int = LONG_CLIP_CHUNK_FRAMES) -> torch.Tensor:
    """Log-mel of a whole clip as (T, n_mels) float32, T = 1 + S // hop, computed chunk_frames at a time.

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


def _frontend(config: dict) -> LogMelSpectrogram:
    key = json.dumps(config, sort_keys=True)
    if key not in _FRONTENDS:
        _FRONTENDS[key] = LogMelSpectrogram.from_config(from_dict(FrontendConfig, config))
    return _FRONTENDS[key]


NPY_HEADER_BYTES = 128  # fixed .npy header size, so the shape can be filled in after streaming the data


def npy_header(shape: tuple[int, ...], descr: str = "<f2") -> bytes:
    """A version 1.0 .npy header of exactly NPY_HEADER_BYTES bytes for a C-order array."""
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (descr, tuple(int(n) for n in shape))
    pad = NPY_HEADER_BYTES - 10 - len(text) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} does not fit a {NPY_HEADER_BYTES}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", NPY_HEADER_BYTES - 10) + (text + " " * pad + "\n").encode("latin1")


def _clip_logmel(frontend: LogMelSpectrogram, path: Path) -> np.ndarray:
    wave = load_audio(path, frontend.sample_rate)
    if wave.shape[0] <= frontend.n_fft // 2:
        raise AudioError(path, f"too short ({wave.shape[0]} samples) for n_fft={frontend.n_fft}")
    with torch.no_grad():
        return logmel_frames(frontend, wave).numpy().astype(np.float16)


def _build_shard(shard_id: int, root: str, rels: list[str], config: dict, shard_dir: str) -> dict:
    """Compute the log-mel of `rels`, write shard `shard_id` (.npy, then its .json index); return the index.

    Clips are streamed to the (temporary) file as they are computed, so a worker holds one clip in memory,
    not the shard; the header with the final shape is written last.
    """
    frontend = _frontend(config)
    n_frames, kept, bad, parts = [], [], [], []

    def write(f) -> None:
        f.write(b"\0" * NPY_HEADER_BYTES)
        for rel in rels:
            try:
                lm = _clip_logmel(frontend, Path(root) / rel)
            except AudioError as e:
                bad.append([rel, e.reason])
                continue
            except (RuntimeError, ValueError) as e:  # a decoder or resampler failing on odd content
                bad.append([rel, f"{type(e).__name__}: {e}"])
                continue
            f.write(np.ascontiguousarray(lm).tobytes())
            n_frames.append(int(lm.shape[0]))
            kept.append(rel)
            # Statistics of the stored (float16) values, as (count, mean, M2) for an exact merge.
            values = lm.astype(np.float64)
            mean = float(values.mean())
            parts.append((values.size, mean, float(np.square(values - mean).sum())))
        f.seek(0)
        f.write(npy_header((sum(n_frames), frontend.n_mels)))
        f.seek(0, os.SEEK_END)

    name = shard_name(shard_id)
    atomic_write(Path(shard_dir) / f"{name}.npy", write)
    count, mean, m2 = merge_moments(parts)
    index = {"shard": shard_id, "paths": kept, "n_frames": n_frames, "bad": bad, "frames": sum(n_frames),
             "count": count, "mean": mean, "m2": m2}
    atomic_write_text(Path(shard_dir) / f"{name}.json", json.dumps(index))
    return index


def _expected_frames(frames: int, rate: int, sample_rate: int, hop: int) -> int:
    return 1 + (-(-frames * sample_rate // rate)) // hop


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


def _shard_done(shard_dir: Path, shard_id: int) -> dict | None:
    """The shard's index if both its files are complete and agree, else None (it is then rebuilt)."""
    name = shard_name(shard_id)
    try:
        index = json.loads((shard_dir / f"{name}.json").read_text())
        if index["shard"] == shard_id and npy_frames(shard_dir / f"{name}.npy") == index["frames"]:
            return index
    except (OSError, ValueError, KeyError):
        pass
    return None


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

    Layout: see `audiorq.data.logmel_shards`. Consecutive clips (sorted order) are grouped into shards of about
    `shard_size_frames` frames using the header lengths; one worker process builds one shard in memory and
    writes it under a temporary name, then renames it, then writes the shard's own index. Re-running resumes:
    finished shards are kept, anything else is rebuilt, so an interrupted run ends with the same files as an
    uninterrupted one. `max_new_shards` stops after that many new shards (work in installments). When all
    shards exist, the index, paths and mean/std over all stored frames are written, meta.json last.
    """
    t_start = time.monotonic()
    src, dst = Path(src), Path(dst)
    _check_dst(src, dst)
    if frontend_config is None:
        frontend_config = FrontendConfig()
    if isinstance(frontend_config, dict):
        frontend_config = from_dict(FrontendConfig, frontend_config)
    frontend_config.validate()
    config = to_dict(frontend_config)
    if shard_size_frames < 1:
        raise ValueError(f"shard_size_frames must be >= 1, got {shard_size_frames}")
    workers = _default_workers() if workers is None else int(workers)

    dst.mkdir(parents=True, exist_ok=True)
    shard_dir = dst / SHARD_DIR
    shard_dir.mkdir(exist_ok=True)
    # Temporary files of shards a killed run was writing (one run per destination at a time).
    for leftover in shard_dir.glob(".shard-*.tmp"):
        leftover.unlink(missing_ok=True)
    scan = scan_audio(src, cache_dir=dst)
    good = [e for e in scan.entries if not e.error]
    scan_bad = [[e.path, e.error] for e in scan.entries if e.error]
    for e in good:
        if "\n" in e.path:
            raise ValueError(f"{src}: file name with a line break is not supported: {e.path!r}")
    expected = [_expected_frames(e.frames, e.sample_rate, frontend_config.sample_rate, frontend_config.hop_length)
                for e in good]
    groups = [[good[i].path for i in group] for group in plan_shards(expected, shard_size_frames)]
    plan = {"source": str(src.resolve()), "frontend": config, "shard_size_frames": int(shard_size_frames),
            "shards": groups}
    plan_path = dst / PLAN_FILE
    if plan_path.exists():
        old = json.loads(plan_path.read_text())
        if old != plan:
            what = [k for k in ("source", "frontend", "shard_size_frames", "shards") if old.get(k) != plan[k]]
            what = ["files" if k == "shards" else k for k in what]
            raise ValueError(
                f"{dst} was started with a different {', '.join(what)}; finish it with the same settings "
                f"or use a new destination folder"
            )
    else:
        atomic_write_text(plan_path, json.dumps(plan))

    indexes: dict[int, dict] = {}
    for shard_id in range(len(groups)):
        index = _shard_done(shard_dir, shard_id)
        if index is not None:
            indexes[shard_id] = index
    todo = [i for i in range(len(groups)) if i not in indexes]
    if max_new_shards is not None:
        todo = todo[: max(0, int(max_new_shards))]
    n_skipped = sum(len(groups[i]) for i in indexes)
    n_done = 0
    bar = _progress(len(good), n_skipped, "prepare logmel", "clip", progress)

    def on_result(index: dict) -> None:
        nonlocal n_done
        indexes[index["shard"]] = index
        n_done += len(index["paths"]) + len(index["bad"])
        bar.update(len(index["paths"]) + len(index["bad"]))

    jobs = ((_build_shard, (i, str(scan.root), groups[i], config, str(shard_dir))) for i in todo)
    try:
        _run_jobs(jobs, workers, on_result)
    finally:
        bar.close()

    bad = [(str(scan.root / p), r) for p, r in scan_bad]
    bad += [(str(scan.root / p), r) for i in sorted(indexes) for p, r in indexes[i]["bad"]]
    complete = len(indexes) == len(groups)
    stats = None
    if complete:
        stats = _finish(dst, scan.root, groups, indexes, config, bad, shard_size_frames)
    return PrepareSummary(str(src), str(dst), len(scan.entries), n_done, n_skipped, len(bad), bad, complete,
                          time.monotonic() - t_start, n_shards=len(groups), stats=stats)


def _finish(dst: Path, root: Path, groups: list, indexes: dict[int, dict], config: dict,
            bad: list[tuple[str, str]], shard_size_frames: int) -> tuple[float, float]:
    shard_col, offset_col, frames_col, paths = [], [], [], []
    for shard_id in range(len(groups)):
        index = indexes[shard_id]
        offset = 0
        for rel, n in zip(index["paths"], index["n_frames"]):
            shard_col.append(shard_id)
            offset_col.append(offset)
            frames_col.append(n)
            paths.append(rel)
            offset += n
    count, mean, std = merge_stats((indexes[i]["count"], indexes[i]["mean"], indexes[i]["m2"]) for i in range(len(groups)))
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
        "shards": [shard_name(i) for i in range(len(groups))],
        "shard_frames": [int(indexes[i]["frames"]) for i in range(len(groups))],
        "n_clips": len(paths), "n_frames": int(sum(frames_col)),
        "stats": {"mean": mean, "std": std, "count": count, "over": "all stored frames and mel bins (float16)"},
        "n_bad": len(bad), "bad": [list(b) for b in bad],
    }
    atomic_write_text(dst / META_FILE, json.dumps(meta, indent=1))
    return mean, std
