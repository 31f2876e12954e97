"""`prepare_wav`: 16 kHz mono 16-bit wav copies of a corpus, same relative layout (resumable, parallel)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from audiorq.atomic import atomic_write_text
from audiorq.audio import AudioError, load_audio, save_audio
from audiorq.config import SAMPLE_RATE
from audiorq.data.prepare.runner import (
    PrepareSummary, check_destination, default_workers, is_output_error, output_errors, progress_bar, run_jobs,
)
from audiorq.data.pretrain.scan import list_audio_files, name_problem
from audiorq.data.pretrain.scan import unusable_reason

BATCH_FILES = 16  # files per job: enough to amortize sending a job to a worker, few enough to balance load


def wav_name(rel: str) -> str:
    """Output path of a source file: the same relative path with a .wav suffix."""
    return str(Path(rel).with_suffix(".wav"))


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> None:
    """Read any soundfile-readable audio, mix to mono, resample to `sample_rate`, write 16-bit WAV atomically."""
    save_audio(dst, load_audio(src, sample_rate), sample_rate)


def _convert_wav_batch(src: str, dst: str, rels: list[str], sample_rate: int) -> list[tuple[str, str]]:
    """Convert each file; returns (rel, "" or the reason it was skipped)."""
    out = []
    for rel in rels:
        try:
            convert_file(Path(src) / rel, Path(dst) / wav_name(rel), sample_rate)
            out.append((rel, ""))
        except (AudioError, OSError, ValueError) as e:
            if is_output_error(e):
                raise  # disk full: every later file would fail too
            out.append((rel, unusable_reason(e) if isinstance(e, AudioError) else str(e)))
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
    check_destination(src, dst)
    workers = default_workers() if workers is None else int(workers)
    rels, _ = list_audio_files(src)
    bad: list[tuple[str, str]] = []
    owner: dict[str, str] = {}
    todo: list[str] = []
    n_skipped = 0
    for rel in rels:
        out = wav_name(rel)
        problem = name_problem(rel)
        if problem:
            bad.append((str(src / rel), problem))
            continue
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
    bar = progress_bar(len(rels), n_skipped, "prepare wav", "file", progress)

    def on_result(results: list[tuple[str, str]]) -> None:
        nonlocal n_done
        for rel, reason in results:
            if reason:
                bad.append((str(src / rel), reason))
            else:
                n_done += 1
        bar.update(len(results))
        bar.set_postfix(bad=len(bad))

    jobs = ((_convert_wav_batch, (str(src), str(dst), todo[i : i + BATCH_FILES], sample_rate))
            for i in range(0, len(todo), BATCH_FILES))
    with output_errors(dst):
        try:
            run_jobs(jobs, workers, on_result)
        finally:
            bar.close()
        bad.sort()
        summary = PrepareSummary(str(src), str(dst), len(rels), n_done, n_skipped, len(bad), bad,
                                 complete=True, seconds=time.monotonic() - t_start)
        # Only the fields a wav conversion has: n_shards and stats belong to prepare logmel.
        fields = {k: v for k, v in dataclasses.asdict(summary).items() if k not in ("n_shards", "stats")}
        atomic_write_text(dst / "prepare_wav_summary.json", json.dumps(fields, indent=1))
    return summary
