"""The `Task` record every downstream dataset reader returns, and the checks and subsets the probe applies to it.

One validation path: `build_task` (assemble.py) and `check_task` both go through `drop_missing_files` and
`check_splits`, so a task is held to the same rules, with the same `TaskError` messages, wherever it comes from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

SPLITS = ("train", "valid", "test")
N_EXAMPLES_SHOWN = 5


class TaskError(ValueError):
    """A task's data cannot be used as given (bad layout, bad metadata, a class absent from train, ...)."""


class MissingFilesError(TaskError):
    """Files listed by a task's metadata are not on disk; `.missing` holds their absolute paths."""

    def __init__(self, task_name: str, missing: Sequence[str], n_total: int):
        self.task_name = task_name
        self.missing = list(missing)
        self.n_total = n_total
        shown = "\n  ".join(self.missing[:N_EXAMPLES_SHOWN])
        more = f"\n  ... and {len(self.missing) - N_EXAMPLES_SHOWN} more" if len(self.missing) > N_EXAMPLES_SHOWN else ""
        super().__init__(
            f"{task_name}: {len(self.missing)} of {n_total} listed files are missing, e.g.\n  {shown}{more}\n"
            "(pass skip_missing=True / --skip-missing to drop them and go on)"
        )


@dataclass(frozen=True)
class Split:
    """One train/valid/test arrangement of a task's items, as index arrays into `Task.files`.

    `valid` is None when the protocol carves validation out of `train` (US8K/ESC folds).
    """

    name: str  # "official" or "fold3" etc.
    train: np.ndarray
    valid: np.ndarray | None
    test: np.ndarray


@dataclass(frozen=True)
class Task:
    """A labeled downstream dataset: files, integer labels, clip length and its split(s)."""

    name: str
    classes: tuple[str, ...]
    unit_sec: float
    files: tuple[str, ...]  # absolute paths
    labels: np.ndarray  # (N,) int64 indices into `classes`
    splits: tuple[Split, ...]  # one for train/valid/test tasks, one per held-out fold for LOOCV tasks
    variant: str = ""  # e.g. the SPCV2/12 silence variant; recorded in results
    info: dict = field(default_factory=dict)  # free-form provenance (source dir, counts checked, ...)
    # (N, 2) float64 (start_sec, duration_sec) per item, for items that are a window of a longer file
    # (SPCV2/12 silence clips); duration NaN = to the end of the file. None: every item is a whole file.
    spans: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def span(self, i: int) -> tuple[float, float | None]:
        """(start, duration) in seconds of item i, as `audiorq.audio.load_audio` takes them."""
        if self.spans is None:
            return 0.0, None
        start, duration = (float(v) for v in self.spans[i])
        return start, (None if duration != duration else duration)


# ----------------------------------------------------------------------------------------------
# Checks shared by build_task and check_task


def find_missing_files(paths: Iterable[str]) -> list[str]:
    """The paths that are not existing files, in input order.

    Lists each parent folder once instead of stat-ing every file, which is much faster on network
    file systems for datasets of 100k+ files.
    """
    paths = list(paths)
    by_dir: dict[str, set[str] | None] = {}
    missing = []
    for p in paths:
        parent, name = os.path.split(p)
        if parent not in by_dir:
            by_dir[parent] = _listed_files(parent)
        present = by_dir[parent]
        if present is None:
            # A folder that cannot be listed (search permission only) may still hold the file: stat it.
            if not os.path.isfile(p):
                missing.append(p)
        elif name not in present:
            missing.append(p)
    return missing


def _listed_files(folder: str) -> set[str] | None:
    """Names in `folder` that are not folders: empty if it is absent or a loop, None if it cannot be listed."""
    try:
        entries = list(os.scandir(folder or "."))
    except PermissionError:
        return None
    except OSError:  # missing, not a folder, a symlink loop: none of its files exist
        return set()
    names = set()
    for e in entries:
        try:
            if not e.is_dir():
                names.add(e.name)
        except OSError:  # a symlink loop beside the listed files is no file of the task
            pass
    return names


def drop_missing_files(name: str, files: Sequence[str], skip_missing: bool) -> list[str]:
    """The missing files among `files` (each once, first-seen order): MissingFilesError naming them unless
    `skip_missing`, which only warns; the caller drops them."""
    missing = find_missing_files(dict.fromkeys(files))  # windows of one file share a path
    if missing and not skip_missing:
        raise MissingFilesError(name, missing, len(set(files)))
    if missing:
        # stacklevel 4: past this helper and build_task/check_task, to whoever called the reader or the probe.
        warnings.warn(f"{name}: skipping {len(missing)} missing files, e.g. {missing[:N_EXAMPLES_SHOWN]}",
                      stacklevel=4)
    return missing


def check_splits(name: str, classes: Sequence[str], labels: np.ndarray, splits: Sequence[Split]) -> None:
    """TaskError unless every split has a non-empty train and test set and every class occurs in its train set
    (a linear classifier cannot learn a class it never sees); labels (N,) int64 indices into `classes`."""
    for split in splits:
        for part in ("train", "test"):
            if len(getattr(split, part)) == 0:
                raise TaskError(f"{name}: the {part} set of split {split.name!r} is empty")
        present = set(labels[split.train].tolist())
        absent = [c for c in range(len(classes)) if c not in present]
        if absent:
            found = [part for part in ("valid", "test") if getattr(split, part) is not None
                     and not present.issuperset(labels[getattr(split, part)].tolist())]
            where = f"occur in {' and '.join(found)} but not in train" if found else "have no train items"
            raise TaskError(f"{name}: classes {[classes[c] for c in absent]} {where} of split {split.name!r}; "
                            "a linear classifier cannot learn them")


# ----------------------------------------------------------------------------------------------
# Operations on a Task


def check_task(task: Task, skip_missing: bool = False) -> Task:
    """The task, checked like `build_task` checks it: missing files raise MissingFilesError unless
    `skip_missing` (then they are dropped), and every class must occur in each split's train set."""
    missing = drop_missing_files(task.name, task.files, skip_missing)
    if missing:
        gone = set(missing)
        return restrict_task(task, np.array([f not in gone for f in task.files]))
    check_splits(task.name, task.classes, task.labels, task.splits)
    return task


def restrict_task(task: Task, keep: np.ndarray) -> Task:
    """The task with only the items where `keep` (N,) bool is True; split indices are renumbered, and the
    result is checked with `check_splits`."""
    keep = np.asarray(keep, dtype=bool)
    new_index = np.cumsum(keep) - 1

    def remap(idx: np.ndarray | None) -> np.ndarray | None:
        if idx is None:
            return None
        idx = np.asarray(idx)
        return new_index[idx[keep[idx]]].astype(np.int64)

    splits = tuple(
        Split(s.name, train=remap(s.train), valid=remap(s.valid), test=remap(s.test)) for s in task.splits
    )
    kept = np.flatnonzero(keep)
    labels = task.labels[kept]
    check_splits(task.name, task.classes, labels, splits)
    changes = dict(
        files=tuple(task.files[i] for i in kept), labels=labels, splits=splits,
        info={**task.info, "n_dropped": int((~keep).sum())},
    )
    if task.spans is not None:
        changes["spans"] = task.spans[kept]
    return dataclasses.replace(task, **changes)


def subsample_task(task: Task, max_per_class: int, seed: int = 0) -> Task:
    """A quick-look subset: at most `max_per_class` items per class in each set of the first split.

    For fold tasks (first split train + test = every item) this keeps about `max_per_class` per class per
    held-out fold on average. Meant for smoke tests and dry runs, not for reported numbers.
    """
    rng = np.random.default_rng(seed)
    first = task.splits[0]
    keep = np.zeros(len(task.files), dtype=bool)
    for idx in (first.train, first.valid, first.test):
        if idx is None:
            continue
        for c in range(task.n_classes):
            members = idx[task.labels[idx] == c]
            keep[rng.permutation(members)[:max_per_class]] = True
    return restrict_task(task, keep)


def task_fingerprint(task: Task) -> str:
    """sha256 of what identifies a task's clips: name, variant, unit_sec, files, labels, spans, splits."""
    h = hashlib.sha256()
    h.update(f"{task.name}|{task.variant}|{task.unit_sec}|{len(task.files)}|".encode())
    h.update("\n".join(task.files).encode())
    h.update(np.ascontiguousarray(task.labels, dtype=np.int64).tobytes())
    if task.spans is not None:
        h.update(np.ascontiguousarray(task.spans, dtype=np.float64).tobytes())
    for s in task.splits:
        h.update(s.name.encode())
        for idx in (s.train, s.valid, s.test):
            h.update(b"none" if idx is None else np.ascontiguousarray(idx, dtype=np.int64).tobytes())
    return h.hexdigest()
