"""`prepare_webdataset`: a corpus as WebDataset tar shards of N clips each, of its audio files or their
float16 log-mel (resumable, parallel).

The tar files and their index are written by `audiorq.data.pretrain.webdataset_shards`, the one owner of
the format; this module decides which clips go to which shard, reads or computes their members and runs
the shard jobs.

Clips are shuffled (by `seed`) before they are cut into shards: a WebDataset reader only shuffles within a
buffer, so shards that each held one folder of the source would give batches of one kind of sound.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from audiorq.atomic import atomic_write_text, remove_temporaries
from audiorq.audio import AudioError, file_problem
from audiorq.config import FrontendConfig, from_dict, to_dict
from audiorq.data.prepare.logmel import clip_logmel, frontend_for
from audiorq.data.prepare.runner import (
    PrepareSummary, check_destination, default_workers, fix_plan, output_errors, run_shard_jobs,
)
from audiorq.data.pretrain.logmel_shards import clip_moments, merge_moments, merge_stats
from audiorq.data.pretrain.scan import scan_audio
from audiorq.data.pretrain.webdataset_shards import (
    CONTENTS, INDEX_FILE, LOGMEL_MEMBER, logmel_member, shard_name, write_index, write_tar_shard,
)

DEFAULT_CLIPS_PER_SHARD = 1000  # AudioSet's 2 M clips: 2,000 shards; 10 s clips: ~2.8 h of audio per shard
PLAN_FILE = "plan.json"  # which clips go to which shard, fixed on the first run, checked on resume
RECORD_DIR = "prepare"  # one record per finished shard: its presence (and a tar of its size) marks it done


def plan_webdataset(paths: list[str], clips_per_shard: int, seed: int) -> list[list[str]]:
    """`paths` shuffled by `seed` and cut into shards of `clips_per_shard` (the last one may be smaller)."""
    order = np.random.default_rng(seed).permutation(len(paths)) if seed >= 0 else np.arange(len(paths))
    shuffled = [paths[i] for i in order]
    return [shuffled[i : i + clips_per_shard] for i in range(0, len(shuffled), clips_per_shard)]


def _samples(root: Path, rels: list[str], first_key: int, content: str, config: dict | None,
             bad: list, moments: list):
    """The shard's samples, one clip each: key, the audio file's bytes or the clip's log-mel, and a .json."""
    frontend = frontend_for(config) if content == "logmel" else None
    for j, rel in enumerate(rels):
        path = root / rel
        try:
            if content == "audio":
                problem = file_problem(path)
                if problem:
                    raise AudioError(path, problem)
                try:
                    member = {Path(rel).suffix.lower().lstrip("."): path.read_bytes()}
                except OSError as e:
                    raise AudioError(path, e.strerror or type(e).__name__) from None
            else:
                lm = clip_logmel(frontend, path)
                moments.append(clip_moments(lm))
                member = {LOGMEL_MEMBER: logmel_member(lm)}
        except AudioError as e:
            bad.append([rel, e.reason])
            continue
        except (RuntimeError, ValueError) as e:  # a decoder or resampler failing on odd content
            bad.append([rel, f"{type(e).__name__}: {e}"])
            continue
        yield {"__key__": f"{first_key + j:09d}", **member, "json": json.dumps({"source": rel}).encode()}


def _build_shard(shard_id: int, root: str, rels: list[str], first_key: int, content: str, config: dict | None,
                 dst: str) -> dict:
    """Write shard `shard_id` and then its record; return the record."""
    bad: list = []
    moments: list = []
    name = shard_name(shard_id)
    n, size = write_tar_shard(Path(dst) / name, _samples(Path(root), rels, first_key, content, config,
                                                           bad, moments))
    count, mean, m2 = merge_moments(moments)
    record = {"shard": shard_id, "url": name, "nsamples": n, "filesize": size, "bad": bad,
              "count": count, "mean": mean, "m2": m2}
    atomic_write_text(Path(dst) / RECORD_DIR / f"{name}.json", json.dumps(record))
    return record


def _finished(dst: Path, shard_id: int) -> dict | None:
    """The shard's record if it and a tar of the recorded size exist, else None (the shard is then rebuilt)."""
    name = shard_name(shard_id)
    try:
        record = json.loads((dst / RECORD_DIR / f"{name}.json").read_text())
        if record["shard"] == shard_id and (dst / name).stat().st_size == record["filesize"]:
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def prepare_webdataset(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    content: str = "audio",
    frontend_config: FrontendConfig | dict | None = None,
    clips_per_shard: int = DEFAULT_CLIPS_PER_SHARD,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    max_new_shards: int | None = None,
) -> PrepareSummary:
    """Write every clip of `src` (folder or file list) into WebDataset tar shards in `dst`.

    `content` "audio": each sample holds the audio file as it is (flac, wav, ogg, mp3; no re-encoding);
    "logmel": the clip's float16 log-mel (frames, n_mels) by `frontend_config` as `.npy`. Each sample also
    has a `.json` naming its source file. Clips are shuffled by `seed` (-1: sorted order) and cut into
    shards of `clips_per_shard`. One worker process writes one shard under a temporary name, renames it,
    then writes its record; re-running resumes (finished shards are kept, the rest rebuilt, so the files
    equal an uninterrupted run's). `max_new_shards` stops after that many new shards. When every shard
    exists, shards.json is written last: the sample counts, content, frontend and log-mel statistics.
    """
    t_start = time.monotonic()
    src, dst = Path(src), Path(dst)
    check_destination(src, dst)
    if content not in CONTENTS:
        raise ValueError(f"content must be one of {CONTENTS}, got {content!r}")
    if clips_per_shard < 1:
        raise ValueError(f"clips_per_shard must be >= 1, got {clips_per_shard}")
    config = None
    if content == "logmel":
        frontend_config = frontend_config or FrontendConfig()
        if isinstance(frontend_config, dict):
            frontend_config = from_dict(FrontendConfig, frontend_config)
        frontend_config.validate()
        config = to_dict(frontend_config)
    workers = default_workers() if workers is None else int(workers)
    with output_errors(dst):
        return _prepare(src, dst, content, config, clips_per_shard, seed, workers, progress, max_new_shards, t_start)


def _prepare(src: Path, dst: Path, content: str, config: dict | None, clips_per_shard: int, seed: int,
             workers: int, progress: bool, max_new_shards: int | None, t_start: float) -> PrepareSummary:
    (dst / RECORD_DIR).mkdir(parents=True, exist_ok=True)
    scan = scan_audio(src, cache_dir=dst / RECORD_DIR)
    good = [e.path for e in scan.entries if not e.error]
    scan_bad = [[e.path, e.error] for e in scan.entries if e.error]
    groups = plan_webdataset(good, clips_per_shard, seed)
    plan = {"source": str(src.resolve()), "content": content, "frontend": config, "clips_per_shard": clips_per_shard,
            "seed": seed, "shards": groups}
    fix_plan(dst / PLAN_FILE, plan, {"shards": "files"})
    # What a killed run was writing (one run per destination at a time).
    names = [shard_name(i) for i in range(len(groups))]
    remove_temporaries(dst, names + [INDEX_FILE])
    remove_temporaries(dst / RECORD_DIR, [f"{name}.json" for name in names])

    firsts = np.cumsum([0] + [len(g) for g in groups]).tolist()
    records, n_done, n_skipped = run_shard_jobs(
        groups, lambda i: _finished(dst, i),
        lambda i: (_build_shard, (i, str(scan.root), groups[i], firsts[i], content, config, str(dst))),
        lambda record: record["nsamples"] + len(record["bad"]), workers, progress, "prepare webdataset",
        max_new_shards)

    bad = [(str(scan.root / p), r) for p, r in scan_bad]
    bad += [(str(scan.root / p), r) for i in sorted(records) for p, r in records[i]["bad"]]
    complete = len(records) == len(groups)
    stats = None
    if complete:
        ordered = [records[i] for i in range(len(groups))]
        if not any(r["nsamples"] for r in ordered):
            raise ValueError(f"no usable audio in {src}: all {len(bad)} files are bad")
        meta: dict = {"content": content, "source": str(scan.root), "clips_per_shard": clips_per_shard, "seed": seed,
                      "n_samples": sum(r["nsamples"] for r in ordered), "frontend": config, "stats": None,
                      "n_bad": len(bad), "bad": [list(b) for b in bad]}
        if content == "logmel":
            count, mean, std = merge_stats((r["count"], r["mean"], r["m2"]) for r in ordered)
            stats = (mean, std)
            meta["stats"] = {"mean": mean, "std": std, "count": count,
                             "over": "all stored frames and mel bins (float16)"}
        write_index(dst, [{"url": r["url"], "nsamples": r["nsamples"], "filesize": r["filesize"]} for r in ordered],
                    meta)
    return PrepareSummary(str(src), str(dst), len(scan.entries), n_done, n_skipped, len(bad), bad, complete,
                          time.monotonic() - t_start, n_shards=len(groups), stats=stats)

