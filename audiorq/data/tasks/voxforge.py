"""VoxForge (VF): 6-language identification, split by EVAR's metadata CSV (docs/protocol.md §5)."""

from __future__ import annotations

import os
from pathlib import Path

from audiorq.data.tasks.assemble import build_task
from audiorq.data.tasks.csvfile import read_metadata_csv
from audiorq.data.tasks.task import Task, TaskError

UNIT_SEC = 5.8
METADATA_CANDIDATES = ("voxforge.csv", "metadata/voxforge.csv")
EXPECTED = {"total": 176_428, "classes": 6}


def load_voxforge(
    root: str | os.PathLike,
    *,
    metadata: str | os.PathLike | None = None,
    unit_sec: float = UNIT_SEC,
    check_files: bool = True,
    skip_missing: bool = False,
) -> Task:
    """Read EVAR's `voxforge.csv` (columns file_name,label,split; file_name relative to `root`).

    The split is defined by that list (submission-level 70/15/15), so it is required: `metadata`
    defaults to `root/voxforge.csv` or `root/metadata/voxforge.csv`. Label = language code.
    """
    root = Path(root).expanduser().resolve()
    if metadata is not None:
        meta = Path(metadata).expanduser().resolve()
    else:
        meta = next((root / c for c in METADATA_CANDIDATES if (root / c).is_file()), root / METADATA_CANDIDATES[0])
    if not meta.is_file():
        raise TaskError(
            f"voxforge: metadata CSV {meta} not found; VoxForge's split is defined by EVAR's "
            "evar/metadata/voxforge.csv (columns file_name,label,split): put it there or pass metadata=PATH"
        )
    items, mode = read_metadata_csv(meta, "voxforge")
    if mode != "official":
        raise TaskError(f"voxforge: {meta} has no split column values (expected train/valid/test)")
    return build_task(
        "voxforge",
        root,
        items,
        unit_sec,
        expected=EXPECTED,
        check_files=check_files,
        skip_missing=skip_missing,
        info={"source": "VoxForge (EVAR metadata)", "metadata_files": [str(meta)]},
    )
