"""UrbanSound8K (US8K): 10 classes, official 10-fold leave-one-fold-out CV (docs/protocol.md §3)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from audiorq.data.tasks.assemble import Item, build_task
from audiorq.data.tasks.task import Task, TaskError

UNIT_SEC = 4.0
METADATA = "metadata/UrbanSound8K.csv"
EXPECTED = {"total": 8_732, "classes": 10, "folds": [873, 888, 925, 990, 936, 823, 838, 806, 816, 837]}


def load_us8k(
    root: str | os.PathLike,
    *,
    unit_sec: float = UNIT_SEC,
    check_files: bool = True,
    skip_missing: bool = False,
) -> Task:
    """Read `root/metadata/UrbanSound8K.csv` and `root/audio/fold<k>/<slice_file_name>`; label = class.

    `root` is the unpacked `UrbanSound8K/` folder (or its parent). Splits "fold1".."fold10": test = that
    fold, train = the other nine, valid None.
    """
    root = Path(root).expanduser().resolve()
    if not (root / METADATA).is_file() and (root / "UrbanSound8K" / METADATA).is_file():
        root = root / "UrbanSound8K"
    meta = root / METADATA
    if not meta.is_file():
        raise TaskError(f"us8k: {meta} not found (unpack UrbanSound8K.tgz and pass its UrbanSound8K/ folder)")
    items = []
    with open(meta, newline="") as f:
        reader = csv.DictReader(f)
        need = {"slice_file_name", "fold", "class"}
        if not need <= set(reader.fieldnames or []):
            raise TaskError(f"us8k: {meta} lacks columns {sorted(need - set(reader.fieldnames or []))}")
        for line, row in enumerate(reader, start=2):
            fold = row["fold"].strip()
            if not fold.isdigit():
                raise TaskError(f"us8k: {meta} line {line}: fold {fold!r} is not a number")
            items.append(Item(f"audio/fold{fold}/{row['slice_file_name'].strip()}", row["class"].strip(), fold=fold))
    return build_task(
        "us8k",
        root,
        items,
        unit_sec,
        mode="folds",
        expected=EXPECTED,
        check_files=check_files,
        skip_missing=skip_missing,
        info={"source": "UrbanSound8K", "metadata_files": [str(meta)]},
    )
