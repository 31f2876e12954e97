"""Small real datasets in the shared data folder, as stand-ins for the official tasks in development and tests.

FSDD (spoken digits, 6 speakers x 10 digits x 50) stands in for Speech Commands (digits, split by speaker)
and VoxCeleb1 (speaker id, split by recording index); ESC-10 (10 classes x 40, 5 folds) for US8K.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from audiorq.data.tasks.assemble import Item, build_task
from audiorq.data.tasks.task import Task, TaskError

SHARED_DATA_ENV = "AUDIORQ_SHARED_DATA"
FSDD_UNIT_SEC = 1.0
ESC10_UNIT_SEC = 5.0
FSDD_SPEAKER_SPLITS = {"george": "train", "jackson": "train", "lucas": "train", "nicolas": "train",
                       "theo": "valid", "yweweler": "test"}
# Speaker id: recording index 0-34 train, 35-41 valid, 42-49 test (every speaker in every split).
FSDD_INDEX_SPLITS = ((35, "train"), (42, "valid"), (50, "test"))
FSDD_NAME = re.compile(r"^(\d+)_([A-Za-z]+)_(\d+)\.wav$")
ESC10_NAME = re.compile(r"^(\d+)-[^-]+-[^.]+\.(ogg|wav|flac)$")
ESC10_FOLDER = re.compile(r"^\d+ - (.+)$")
# The folder each stand-in reads inside the shared data root, so that the root itself is accepted too.
STANDIN_FOLDERS = {"fsdd_digits": "fsdd", "fsdd_speakers": "fsdd", "esc10": "esc10", "pool_drums": "pool",
                   "pool_voices": "pool"}


def shared_data_root() -> Path:
    """$AUDIORQ_SHARED_DATA, or ../shared/data beside the repository root (may not exist on a user's machine)."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (Path(__file__).resolve().parents[3] / ".." / "shared" / "data").resolve()


def default_standin_root() -> Path | None:
    """Where a stand-in task's data is when no folder is given: $AUDIORQ_SHARED_DATA, else ../shared/data
    beside the repository when it exists, else None."""
    root = shared_data_root()
    return root if os.environ.get(SHARED_DATA_ENV) or root.is_dir() else None


def _hint(task: str) -> str:
    folder = STANDIN_FOLDERS[task]
    return (f"give the {folder}/ folder itself or the shared data root that holds it "
            f"(e.g. --data ../shared/data, or set ${SHARED_DATA_ENV})")


def fsdd_digits(root: str | os.PathLike, *, check_files: bool = True, skip_missing: bool = False) -> Task:
    """FSDD digit classification (10 classes "0".."9"), split by speaker: 4 train, theo valid, yweweler test.

    `root` is the FSDD folder (holding `recordings/`), the recordings folder itself, or the shared data root
    holding `fsdd/`.
    """
    recordings, found = _fsdd_files(root, "fsdd_digits")
    items = []
    for name, digit, speaker, _ in found:
        split = FSDD_SPEAKER_SPLITS.get(speaker)
        if split is None:
            raise TaskError(f"fsdd_digits: {recordings / name}: speaker {speaker!r} has no split assigned")
        items.append(Item(name, digit, split=split))
    return build_task(
        "fsdd_digits",
        recordings,
        items,
        FSDD_UNIT_SEC,
        expected={"total": 3000, "train": 2000, "valid": 500, "test": 500, "classes": 10},
        check_files=check_files,
        skip_missing=skip_missing,
        info={"source": "FSDD", "split_rule": "by speaker", "speaker_splits": dict(FSDD_SPEAKER_SPLITS)},
    )


def fsdd_speakers(root: str | os.PathLike, *, check_files: bool = True, skip_missing: bool = False) -> Task:
    """FSDD speaker identification (6 classes), split by recording index: 0-34 train, 35-41 valid, 42-49 test."""
    recordings, found = _fsdd_files(root, "fsdd_speakers")
    items = []
    for name, _, speaker, index in found:
        split = next((s for end, s in FSDD_INDEX_SPLITS if index < end), None)
        if split is None:
            raise TaskError(f"fsdd_speakers: {recordings / name}: index {index} is outside 0-49")
        items.append(Item(name, speaker, split=split))
    return build_task(
        "fsdd_speakers",
        recordings,
        items,
        FSDD_UNIT_SEC,
        expected={"total": 3000, "train": 2100, "valid": 420, "test": 480, "classes": 6},
        check_files=check_files,
        skip_missing=skip_missing,
        info={"source": "FSDD", "split_rule": "by recording index 0-34/35-41/42-49"},
    )


def esc10(root: str | os.PathLike, *, check_files: bool = True, skip_missing: bool = False) -> Task:
    """ESC-10 (10 classes x 40 clips), 5-fold leave-one-fold-out; the fold is the file name's prefix.

    Class names are the folder names without the number ("001 - Dog bark" -> "Dog bark").
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise TaskError(f"esc10: {root} is not a folder; {_hint('esc10')}")
    if not any(ESC10_FOLDER.match(p.name) for p in root.iterdir() if p.is_dir()) and (root / "esc10").is_dir():
        root = root / "esc10"  # the shared data root
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        m = ESC10_FOLDER.match(folder.name)
        if m is None:
            continue
        for clip in sorted(folder.iterdir()):
            f = ESC10_NAME.match(clip.name)
            if f is not None:
                items.append(Item(f"{folder.name}/{clip.name}", m.group(1), fold=f.group(1)))
    if not items:
        raise TaskError(f"esc10: no '<NNN - Class>/<fold>-<id>-<take>.ogg' clips under {root}; {_hint('esc10')}")
    return build_task(
        "esc10",
        root,
        items,
        ESC10_UNIT_SEC,
        mode="folds",
        expected={"total": 400, "classes": 10, "folds": [80, 80, 80, 80, 80]},
        check_files=check_files,
        skip_missing=skip_missing,
        info={"source": "ESC-10"},
    )


def _fsdd_files(root: str | os.PathLike, task: str) -> tuple[Path, list[tuple[str, str, str, int]]]:
    root = Path(root).expanduser().resolve()
    # The recordings folder, the FSDD folder above it, or the shared data root above that.
    for recordings in (root / "fsdd" / "recordings", root / "recordings", root):
        if recordings.is_dir() and any(FSDD_NAME.match(n) for n in os.listdir(recordings)):
            break
    else:
        if not root.is_dir():
            raise TaskError(f"{task}: {root} is not a folder; {_hint(task)}")
        raise TaskError(f"{task}: no '<digit>_<speaker>_<index>.wav' files in {root}, {root / 'recordings'} "
                        f"or {root / 'fsdd' / 'recordings'}; {_hint(task)}")
    found = []
    for name in sorted(os.listdir(recordings)):
        m = FSDD_NAME.match(name)
        if m is not None:
            found.append((name, m.group(1), m.group(2), int(m.group(3))))
    return recordings, found
