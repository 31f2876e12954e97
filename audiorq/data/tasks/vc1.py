"""VoxCeleb1 (VC1): 1,251-speaker identification, official iden_split.txt (docs/protocol.md §4)."""

from __future__ import annotations

import os
from pathlib import Path

from audiorq.data.tasks.assemble import Item, build_task
from audiorq.data.tasks.task import Task, TaskError

UNIT_SEC = 8.2
SPLIT_FILE = "iden_split.txt"
SET_IDS = {"1": "train", "2": "valid", "3": "test"}
EXPECTED = {"total": 153_516, "train": 138_361, "valid": 6_904, "test": 8_251, "classes": 1_251}


def load_vc1(
    root: str | os.PathLike,
    *,
    split_file: str | os.PathLike | None = None,
    unit_sec: float = UNIT_SEC,
    check_files: bool = True,
    skip_missing: bool = False,
) -> Task:
    """Read `iden_split.txt` (lines `<1|2|3> <id/yt/n.wav>`: train/valid/test) and `root/wav/<id/yt/n.wav>`.

    Label = speaker id (the first path component). `split_file` defaults to `root/iden_split.txt`
    (download it from https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta/iden_split.txt).
    """
    root = Path(root).expanduser().resolve()
    lst = Path(split_file).expanduser().resolve() if split_file else root / SPLIT_FILE
    if not lst.is_file():
        raise TaskError(
            f"vc1: split list {lst} not found; download iden_split.txt from "
            "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta/iden_split.txt into the dataset folder"
        )
    items = []
    for n, line in enumerate(lst.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SET_IDS or "/" not in parts[1]:
            raise TaskError(f"vc1: {lst} line {n}: expected '<1|2|3> <speaker/video/file.wav>', got {line!r}")
        rel = parts[1].strip("/")
        items.append(Item(f"wav/{rel}", rel.split("/", 1)[0], split=SET_IDS[parts[0]]))
    return build_task(
        "vc1",
        root,
        items,
        unit_sec,
        expected=EXPECTED,
        check_files=check_files,
        skip_missing=skip_missing,
        info={"source": "VoxCeleb1 identification split", "metadata_files": [str(lst)]},
    )
