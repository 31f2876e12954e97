"""NSynth (NS): 11 instrument families, official train/valid/test (docs/protocol.md §2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from audiorq.data.tasks.assemble import Item, build_task
from audiorq.data.tasks.task import Task, TaskError

UNIT_SEC = 4.0
SPLIT_FOLDERS = {"train": "nsynth-train", "valid": "nsynth-valid", "test": "nsynth-test"}
EXPECTED = {"total": 305_979, "train": 289_205, "valid": 12_678, "test": 4_096, "classes": 11}


def load_nsynth(
    root: str | os.PathLike,
    *,
    unit_sec: float = UNIT_SEC,
    check_files: bool = True,
    skip_missing: bool = False,
) -> Task:
    """Read `root/nsynth-{train,valid,test}/examples.json` + `audio/<note_id>.wav`; label = instrument family.

    Classes are sorted family names; synth_lead has no valid/test examples officially.
    """
    root = Path(root).expanduser().resolve()
    items = []
    metadata_files = []
    for split, folder in SPLIT_FOLDERS.items():
        meta = root / folder / "examples.json"
        if not meta.is_file():
            raise TaskError(f"nsynth: {meta} not found (unpack nsynth-{split}.jsonwav.tar.gz into {root})")
        try:
            examples = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TaskError(f"nsynth: {meta} is not valid JSON ({e})") from None
        if not isinstance(examples, dict):
            raise TaskError(f"nsynth: {meta} should hold a JSON object keyed by note id")
        metadata_files.append(str(meta))
        for note_id, fields in examples.items():
            family = fields.get("instrument_family_str") if isinstance(fields, dict) else None
            if not family:
                raise TaskError(f"nsynth: {meta}: note {note_id!r} has no instrument_family_str")
            items.append(Item(f"{folder}/audio/{note_id}.wav", family, split=split))
    return build_task(
        "nsynth",
        root,
        items,
        unit_sec,
        expected=EXPECTED,
        check_files=check_files,
        skip_missing=skip_missing,
        info={"source": "NSynth jsonwav", "metadata_files": metadata_files},
    )
