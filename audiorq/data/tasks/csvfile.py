"""Any dataset given as a CSV list: `path,label,split` (or `fold`) columns — how users bring their own data."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from audiorq.data.tasks.assemble import Item, build_task, normalize_split
from audiorq.data.tasks.task import Task, TaskError

PATH_COLUMNS = ("path", "file_name")  # file_name: EVAR's metadata spelling


def read_metadata_csv(csv_path: str | os.PathLike, task_name: str = "csv") -> tuple[list[Item], str]:
    """Read a metadata CSV into items and its mode ("official" if it has splits, "folds" if folds).

    Columns: `path` (or `file_name`), `label`, and `split` (train/valid/test; val/validation accepted)
    or `fold` (any names; leave-one-fold-out). Optional `start`, `duration` (seconds) make an item a
    window of its file. Other columns are ignored. Paths stay as written (relative or absolute).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise TaskError(f"{task_name}: metadata CSV {csv_path} not found")
    try:
        return _read_rows(csv_path, task_name)
    except (csv.Error, UnicodeDecodeError) as e:
        raise TaskError(f"{task_name}: {csv_path} is not a readable UTF-8 CSV file ({e})") from None
    except OSError as e:
        raise TaskError(f"{task_name}: cannot read {csv_path}: {e.strerror or e}") from None


def _read_rows(csv_path: Path, task_name: str) -> tuple[list[Item], str]:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [(h or "").strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        path_col = next((c for c in PATH_COLUMNS if c in header), None)
        if path_col is None or "label" not in header:
            raise TaskError(
                f"{task_name}: {csv_path} needs columns path (or file_name) and label, and split or fold; "
                f"found {header}"
            )
        has_split, has_fold = "split" in header, "fold" in header
        if not (has_split or has_fold):
            raise TaskError(f"{task_name}: {csv_path} needs a split or a fold column; found {header}")
        rows = list(reader)
    if not rows:
        raise TaskError(f"{task_name}: {csv_path} has no rows")
    use_split = has_split and any((r.get("split") or "").strip() for r in rows)
    if not use_split and not has_fold:
        raise TaskError(f"{task_name}: {csv_path}: the split column is empty in every row")
    items = []
    for line, row in enumerate(rows, start=2):
        where = f"{csv_path} line {line}"
        path = (row.get(path_col) or "").strip()
        label = (row.get("label") or "").strip()
        if not path or not label:
            raise TaskError(f"{task_name}: {where}: empty {path_col if not path else 'label'}")
        split = fold = ""
        if use_split:
            value = (row.get("split") or "").strip()
            if not value:
                raise TaskError(f"{task_name}: {where}: empty split (other rows have one)")
            split = normalize_split(value, f"{task_name}: {where}")
        else:
            fold = (row.get("fold") or "").strip()
            if not fold:
                raise TaskError(f"{task_name}: {where}: empty fold")
        start = _seconds(row.get("start"), 0.0, f"{task_name}: {where}: start")
        duration = _seconds(row.get("duration"), math.nan, f"{task_name}: {where}: duration")
        items.append(Item(path, label, split=split, fold=fold, start=start, duration=duration))
    return items, ("official" if use_split else "folds")


def load_csv(
    root: str | os.PathLike,
    *,
    unit_sec: float | None = None,
    name: str | None = None,
    check_files: bool = True,
    skip_missing: bool = False,
) -> Task:
    """A task from a CSV file `root` (see `read_metadata_csv`); relative paths resolve against its folder.

    With a split column: one "official" split (valid None when no row is valid). With only a fold
    column: leave-one-fold-out like US8K. unit_sec defaults to the median duration of the training files
    (all files for folds), rounded to 0.1 s, read from the audio headers (soundfile); pass it to skip that.
    The median, not the mean, so that a few very long files do not pad every clip to their length.
    """
    csv_path = Path(root).expanduser().resolve()
    task_name = name or csv_path.stem
    items, mode = read_metadata_csv(csv_path, task_name)
    task = build_task(
        task_name,
        csv_path.parent,
        items,
        unit_sec if unit_sec is not None else 1.0,  # placeholder until the files are known to exist
        mode=mode,
        check_files=check_files,
        skip_missing=skip_missing,
        info={"source": "csv", "metadata_files": [str(csv_path)]},
    )
    if unit_sec is None:
        unit_sec = median_train_duration(task)
        task.info["unit_sec_source"] = "median duration of the training files, rounded to 0.1 s"
    else:
        task.info["unit_sec_source"] = "given"
    return dataclasses.replace(task, unit_sec=float(unit_sec))


def median_train_duration(task: Task) -> float:
    """Median duration (s) of the task's training items (every item for fold tasks), rounded to 0.1 s.

    TaskError naming the file if a header cannot be read.
    """
    from audiorq.audio import AudioError, audio_info

    split = task.splits[0]
    idx = split.train if len(task.splits) == 1 else np.arange(len(task.files))
    durations = []
    for i in idx.tolist():
        try:
            info = audio_info(task.files[i])
        except AudioError as e:
            raise TaskError(f"{task.name}: cannot read the length of {e}; fix or drop the file, or pass "
                            "unit_sec to skip reading the headers") from None
        start, duration = task.span(i)
        length = max(0.0, info.duration - start)
        durations.append(length if duration is None else min(duration, length))
    return max(0.1, round(float(np.median(durations)), 1))


def _seconds(value: str | None, default: float, where: str) -> float:
    if value is None or not value.strip():
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise TaskError(f"{where}: {value!r} is not a number of seconds") from None
    if seconds < 0 or math.isinf(seconds):
        raise TaskError(f"{where}: {value!r} must be a finite number >= 0")
    return seconds
