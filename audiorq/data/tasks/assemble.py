"""Turn a dataset reader's item list into a checked `Task`: class indexing, splits, missing files, counts."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from audiorq.data.tasks.task import N_EXAMPLES_SHOWN, SPLITS, Split, Task, TaskError, check_splits, drop_missing_files

# Spellings of split names found in published metadata (BYOL-A v1 writes "val", TFDS "validation").
SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "dev": "valid",
                 "test": "test", "eval": "test", "evaluation": "test"}


class CountMismatchWarning(UserWarning):
    """A task's counts differ from the official sanity counts (docs/protocol.md §10), e.g. a subset."""


@dataclass(frozen=True, slots=True)
class Item:
    """One labeled clip as a reader finds it: a path (relative to the task root, or absolute), a label,
    and either an official split name or a fold name; optionally a window [start, start + duration) s."""

    path: str
    label: str
    split: str = ""
    fold: str = ""
    start: float = 0.0
    duration: float = math.nan


def normalize_split(value: str, where: str) -> str:
    """Map a split spelling (train/valid/val/validation/test...) to train|valid|test; TaskError otherwise."""
    name = SPLIT_ALIASES.get(value.strip().lower())
    if name is None:
        raise TaskError(f"{where}: unknown split {value!r} (expected one of train, valid, test)")
    return name


def class_order(labels: Iterable[str]) -> tuple[str, ...]:
    """Distinct labels sorted; numerically when every label is an integer (so "10" comes after "9")."""
    distinct = set(labels)
    try:
        return tuple(sorted(distinct, key=lambda s: (int(s), s)))
    except ValueError:
        return tuple(sorted(distinct))


def check_counts(task_name: str, counts: dict, expected: dict | None) -> list[str]:
    """Compare counts with the official ones; warn (CountMismatchWarning) with both numbers on mismatch.

    A warning rather than an error because users may hold a subset. Returns the mismatch lines.
    """
    mismatches = []
    for key, want in (expected or {}).items():
        have = counts.get(key)
        if have != want:
            mismatches.append(f"{key}: found {have}, official {want}")
    if mismatches:
        warnings.warn(
            f"{task_name}: counts differ from the official ones (a subset or a different download?): "
            + "; ".join(mismatches),
            CountMismatchWarning,
            stacklevel=3,
        )
    return mismatches


def build_task(
    name: str,
    root: str | os.PathLike,
    items: Sequence[Item],
    unit_sec: float,
    *,
    mode: str = "official",
    variant: str = "",
    expected: dict | None = None,
    check_files: bool = True,
    skip_missing: bool = False,
    info: dict | None = None,
    classes: Sequence[str] | None = None,
) -> Task:
    """Assemble a checked Task from items.

    mode "official": items carry split train|valid|test -> one Split "official" (valid None if empty).
    mode "folds": items carry a fold -> one Split "fold<k>" per fold: test = fold k, train = the rest,
    valid None (the probe carves a class-covering 10 % of train, as for US8K).
    check_files: look for every file; missing ones raise MissingFilesError unless skip_missing, which
    drops them with a warning and records them in info["missing"].
    classes: a fixed class order; default sorted (`class_order`).
    """
    root = Path(root).expanduser().resolve()
    info = dict(info or {})
    info.setdefault("root", str(root))
    if not items:
        raise TaskError(f"{name}: no items found under {root}")
    if mode not in ("official", "folds"):
        raise ValueError(f"mode must be 'official' or 'folds', got {mode!r}")
    if not unit_sec or unit_sec <= 0 or not math.isfinite(unit_sec):
        raise TaskError(f"{name}: unit_sec must be a positive number of seconds, got {unit_sec!r}")

    files = _absolute_paths((it.path for it in items), root)
    info["n_listed"] = len(files)
    missing: list[str] = []
    if check_files:
        missing = drop_missing_files(name, files, skip_missing)
        if missing:
            gone = set(missing)
            kept = [i for i, f in enumerate(files) if f not in gone]
            items = [items[i] for i in kept]
            files = [files[i] for i in kept]
            if not items:
                raise TaskError(f"{name}: every listed file is missing under {root}")
    info["missing"] = missing
    info["n_missing"] = len(missing)
    info["files_checked"] = bool(check_files)

    if classes is None:
        classes = class_order(it.label for it in items)
    classes = tuple(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({it.label for it in items} - index.keys())
    if unknown:
        raise TaskError(f"{name}: labels {unknown[:N_EXAMPLES_SHOWN]} are not among the task's classes {classes}")
    labels = np.fromiter((index[it.label] for it in items), dtype=np.int64, count=len(items))

    if mode == "official":
        splits, counts = _official_split(name, items, labels)
    else:
        splits, counts = _fold_splits(name, items)
    check_splits(name, classes, labels, splits)
    counts["total"] = len(items)
    counts["classes"] = len(classes)
    info["counts"] = counts
    info["expected_counts"] = dict(expected or {})
    info["count_mismatches"] = check_counts(name, counts, expected)

    spans = None
    if any(it.start != 0.0 or not math.isnan(it.duration) for it in items):
        spans = np.array([(it.start, it.duration) for it in items], dtype=np.float64)
    return Task(
        name=name,
        classes=classes,
        unit_sec=float(unit_sec),
        files=tuple(files),
        labels=labels,
        splits=tuple(splits),
        variant=variant,
        info=info,
        spans=spans,
    )


def _absolute_paths(paths: Iterable[str], root: Path) -> list[str]:
    # Plain string joins: pathlib costs ~20 us per path, seconds for NSynth's 306k files.
    prefix = str(root) + os.sep
    out = []
    for p in paths:
        full = p if os.path.isabs(p) else prefix + p
        if "/." in full or "//" in full or (os.altsep and os.altsep in full):
            full = os.path.normpath(full)
        out.append(full)
    return out


def _official_split(name: str, items: Sequence[Item], labels: np.ndarray):
    where = np.array([it.split for it in items])
    bad = sorted(set(where.tolist()) - set(SPLITS))
    if bad:
        raise TaskError(f"{name}: items with split {bad} (expected train, valid, test)")
    idx = {s: np.flatnonzero(where == s).astype(np.int64) for s in SPLITS}
    per_split_classes = {s: len(set(labels[idx[s]].tolist())) for s in SPLITS}
    counts = {s: len(idx[s]) for s in SPLITS}
    counts["classes_per_split"] = per_split_classes
    split = Split("official", train=idx["train"], valid=idx["valid"] if len(idx["valid"]) else None, test=idx["test"])
    return [split], counts


def _fold_splits(name: str, items: Sequence[Item]):
    folds = np.array([str(it.fold) for it in items])
    if any(f == "" for f in folds.tolist()):
        raise TaskError(f"{name}: some items have no fold")
    fold_names = class_order(folds.tolist())
    if len(fold_names) < 2:
        raise TaskError(f"{name}: leave-one-fold-out needs at least 2 folds, found {list(fold_names)}")
    splits = []
    sizes = {}
    for f in fold_names:
        test = np.flatnonzero(folds == f).astype(np.int64)
        train = np.flatnonzero(folds != f).astype(np.int64)
        label = f if f.startswith("fold") else f"fold{f}"
        splits.append(Split(label, train=train, valid=None, test=test))
        sizes[label] = len(test)
    counts = {"folds": [sizes[s.name] for s in splits], "fold_names": [s.name for s in splits]}
    return splits, counts

