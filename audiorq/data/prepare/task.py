"""`prepare_task`: a raw task download as 16 kHz mono WAV with the same relative layout, plus a metadata CSV.

Resumable (outputs that exist and read as 16 kHz mono are kept), atomic per file, parallel. The
task's own metadata files (examples.json, list files, ...) are copied too, so the task reader works on
the output folder; `<dst>/<name>.csv` (path,label,split|fold[,start,duration]) also makes it a `csv` task.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from audiorq.atomic import atomic_write, atomic_write_text
from audiorq.audio import AudioError, audio_info
from audiorq.config import SAMPLE_RATE
from audiorq.data.prepare.runner import (
    check_destination, default_workers, is_output_error, output_errors, progress_bar, run_jobs,
)
from audiorq.data.prepare.wav import convert_file
from audiorq.data.pretrain.scan import unusable_reason
from audiorq.data.tasks import TASKS, Task, TaskError, load_task

# Every wav of a Speech Commands download is converted (not only the task's items), so that both
# spcv2 and spcv2_12 (which cuts _silence_ from _background_noise_) can be read from one prepared copy.
CONVERT_ALL_WAVS = ("spcv2", "spcv2_12")
MAX_BATCH_FILES = 64  # files per job at most; fewer for small tasks, so every worker gets several jobs


@dataclass
class PrepareReport:
    """What `prepare_task` did; `failed` holds (source path, reason) for corrupt/unreadable files."""

    task: str
    src: str
    dst: str
    metadata_csv: str = ""
    n_files: int = 0
    converted: int = 0
    skipped: int = 0  # already complete from an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # listed by the metadata but absent in src
    failed_list: str = ""  # file listing the failures, if any

    def summary(self) -> str:
        """Multi-line human-readable summary (the CLI prints it)."""
        lines = [
            f"{self.task}: {self.n_files} audio files -> {self.dst}",
            f"  converted {self.converted}, already done {self.skipped}, failed {len(self.failed)}, "
            f"missing in source {len(self.missing)}",
            f"  metadata: {self.metadata_csv}",
        ]
        for path, reason in self.failed[:20]:
            lines.append(f"  FAILED {path}: {reason}")
        if len(self.failed) > 20:
            lines.append(f"  ... and {len(self.failed) - 20} more failures")
        for path in self.missing[:5]:
            lines.append(f"  MISSING {path}")
        if len(self.missing) > 5:
            lines.append(f"  ... and {len(self.missing) - 5} more missing")
        if self.failed_list:
            lines.append(f"  all failures listed in {self.failed_list}")
        return "\n".join(lines)


def prepare_task(
    name: str,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    workers: int | None = None,
    progress: bool = True,
    **options,
) -> PrepareReport:
    """Convert task `name`'s audio under `src` (for "csv": the CSV file) to 16 kHz mono WAV under `dst`.

    options go to the task loader (e.g. variant, metadata, split_file, test_root). Files listed but
    absent in `src` are reported, not fatal; files that fail to decode are reported by path and left out
    of `<dst>/<name>.csv` and listed in `<dst>/<name>-failed.txt`. workers: processes (default: CPUs).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    src = Path(src).expanduser().resolve()
    dst = Path(dst).expanduser().resolve()
    options = {k: v for k, v in options.items() if k not in ("check_files", "skip_missing")}
    if name == "csv":
        options.setdefault("unit_sec", 1.0)  # not needed here; skips reading every file's header
    with warnings.catch_warnings():
        # Missing files are reported in the PrepareReport instead.
        warnings.simplefilter("ignore", UserWarning)
        task = load_task(name, src, check_files=True, skip_missing=True, **options)
    base = src.parent if name == "csv" else Path(task.info["root"])
    check_destination(base, dst)

    sources = list(dict.fromkeys(task.files))
    if name in CONVERT_ALL_WAVS:
        sources = list(dict.fromkeys(sources + sorted(str(p) for p in base.rglob("*.wav"))))
    outputs = {s: _output_path(s, base, dst) for s in sources}
    _check_collisions(outputs)

    report = PrepareReport(task=name, src=str(src), dst=str(dst), n_files=len(sources),
                           missing=list(task.info.get("missing", [])))
    todo = []
    for s in sources:
        if _is_complete(outputs[s]):
            report.skipped += 1
        else:
            todo.append((s, str(outputs[s])))
    with output_errors(dst):
        return _finish(task, name, src, dst, base, outputs, todo, report, workers, progress)


def _finish(task: Task, name: str, src: Path, dst: Path, base: Path, outputs: dict[str, Path],
            todo: list[tuple[str, str]], report: PrepareReport, workers: int | None, progress: bool) -> PrepareReport:
    failed = _convert_all(todo, workers, progress, name)
    report.failed = sorted(failed.items())
    report.converted = len(todo) - len(failed)

    if name != "csv":
        for meta in task.info.get("metadata_files", []):
            _copy_file(Path(meta), _output_path(meta, base, dst, keep_suffix=True))
    stem = Path(src).stem if name == "csv" else name
    report.metadata_csv = str(dst / f"{stem}.csv")
    _write_metadata_csv(task, Path(report.metadata_csv), outputs, set(failed), dst)
    failed_path = dst / f"{stem}-failed.txt"
    if report.failed:
        atomic_write_text(failed_path, "".join(f"{p}\t{r}\n" for p, r in report.failed))
        report.failed_list = str(failed_path)
    else:
        failed_path.unlink(missing_ok=True)  # a stale list from an earlier run no longer holds
    return report


def _convert_batch(pairs: list[tuple[str, str]]) -> tuple[int, list[tuple[str, str]]]:
    """Convert each (source, output) pair; returns the number of pairs and (source, reason) of each failure."""
    failed = []
    for src, dst in pairs:
        try:
            convert_file(src, dst)
        except (ValueError, OSError, RuntimeError) as e:  # AudioError is a ValueError
            if is_output_error(e):
                raise  # disk full: every later file would fail too
            # The reason alone (the path is the first field), worded as every other command words it.
            failed.append((src, unusable_reason(e) if isinstance(e, AudioError) else str(e)))
    return len(pairs), failed


def _convert_all(todo: list[tuple[str, str]], workers: int | None, progress: bool, name: str) -> dict[str, str]:
    """Convert every (source, output) pair with the job runner; {source: reason} of the failures."""
    workers = default_workers() if not workers else max(1, int(workers))
    if len(todo) < 2:
        workers = 1
    batch = 1 if workers == 1 else max(1, min(MAX_BATCH_FILES, len(todo) // (workers * 8)))
    failed: dict[str, str] = {}
    bar = progress_bar(len(todo), 0, f"prepare {name}", "file", progress and bool(todo))

    def on_result(result: tuple[int, list[tuple[str, str]]]) -> None:
        size, failures = result
        failed.update(failures)
        bar.update(size)

    jobs = ((_convert_batch, (todo[i : i + batch],)) for i in range(0, len(todo), batch))
    try:
        # Inline, intra-op threads only add synchronisation cost on one short clip (measured 4x slower).
        run_jobs(jobs, workers, on_result, inline_threads=1)
    finally:
        bar.close()
    return failed


def _output_path(path: str | os.PathLike, base: Path, dst: Path, keep_suffix: bool = False) -> Path:
    path = Path(path)
    try:
        rel = path.relative_to(base)
    except ValueError:
        if keep_suffix:  # a metadata file kept elsewhere (e.g. split_file=...): put it at the top of dst
            return dst / path.name
        raise TaskError(f"prepare: {path} is outside the source folder {base}; put it under the source folder") from None
    return dst / (rel if keep_suffix else rel.with_suffix(".wav"))


def _check_collisions(outputs: dict[str, Path]) -> None:
    seen: dict[Path, str] = {}
    for s, out in outputs.items():
        if out in seen:
            raise TaskError(f"prepare: {seen[out]} and {s} would both be written to {out}")
        seen[out] = s


def _is_complete(path: Path) -> bool:
    # Outputs are renamed into place only when fully written, so a readable 16 kHz mono header means done.
    if not path.is_file():
        return False
    try:
        info = audio_info(path)
    except AudioError:
        return False
    return info.sample_rate == SAMPLE_RATE and info.channels == 1 and info.frames > 0


def _copy_file(src: Path, dst: Path) -> None:
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
        return
    with open(src, "rb") as f:
        atomic_write(dst, lambda out: shutil.copyfileobj(f, out))


def _write_metadata_csv(task: Task, path: Path, outputs: dict[str, Path], failed: set[str], dst: Path) -> None:
    folds = len(task.splits) > 1 or task.splits[0].name != "official"
    where = [""] * len(task.files)
    for split in task.splits:
        if folds:
            for i in split.test.tolist():
                where[i] = split.name
        else:
            for s in ("train", "valid", "test"):
                idx = getattr(split, s)
                for i in ([] if idx is None else idx.tolist()):
                    where[i] = s
    columns = ["path", "label", "fold" if folds else "split"] + (["start", "duration"] if task.spans is not None else [])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for i, f in enumerate(task.files):
        if f in failed:
            continue
        row = [outputs[f].relative_to(dst).as_posix(), task.classes[task.labels[i]], where[i]]
        if task.spans is not None:
            start, duration = task.span(i)
            row += [repr(start), "" if duration is None else repr(duration)]
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())
