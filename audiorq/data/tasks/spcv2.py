"""Speech Commands V2: 35 words (SPCV2, docs/protocol.md §6) and the 12-class task (SPCV2/12, §7)."""

from __future__ import annotations

import os
from pathlib import Path

from audiorq.data.tasks.assemble import Item, build_task, check_counts
from audiorq.data.tasks.task import Task, TaskError

UNIT_SEC = 1.0
VALID_LIST = "validation_list.txt"
TEST_LIST = "testing_list.txt"
NOISE_FOLDER = "_background_noise_"
EXPECTED_35 = {"total": 105_829, "train": 84_843, "valid": 9_981, "test": 11_005, "classes": 35}

WORDS_12 = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE, UNKNOWN = "_silence_", "_unknown_"
VARIANTS = {"a": "byola-relabel", "b": "tfds"}
# Silence windows: 1 s cut every 0.5 s, as TFDS does; window starts stay strictly below (length - 1 s).
WINDOW_SEC, HOP_SEC = 1.0, 0.5
# Variant a needs disjoint noise files per split and none was published: running_tap goes to valid as
# in TFDS, pink_noise to test (a documented choice), the other four to train.
NOISE_SPLITS_A = {"running_tap": "valid", "pink_noise": "test"}
# Variant b (TFDS speech_commands 0.0.3): running_tap to valid, every other noise file to train.
NOISE_SPLITS_B = {"running_tap": "valid"}
TEST_SET_CANDIDATES = ("speech_commands_test_set_v0.02", "test_set")
EXPECTED_12_B = {"train": 85_511, "valid": 10_102, "test": 4_890}


def load_spcv2(
    root: str | os.PathLike,
    *,
    unit_sec: float = UNIT_SEC,
    check_files: bool = True,
    skip_missing: bool = False,
) -> Task:
    """Read `root/<word>/*.wav` (35 words) with `validation_list.txt` / `testing_list.txt`; the rest is train."""
    root = Path(root).expanduser().resolve()
    words, lists = _word_items(root, "spcv2")
    task = build_task(
        "spcv2",
        root,
        words,
        unit_sec,
        expected=EXPECTED_35,
        check_files=check_files,
        skip_missing=skip_missing,
        info={"source": "Speech Commands v0.02", "metadata_files": lists},
    )
    return task


def load_spcv2_12(
    root: str | os.PathLike,
    *,
    variant: str = "a",
    test_root: str | os.PathLike | None = None,
    unit_sec: float = UNIT_SEC,
    check_files: bool = True,
    skip_missing: bool = False,
) -> Task:
    """12 classes: the 10 words, `_unknown_` (the other 25 words) and `_silence_` (noise windows).

    variant "a" (byola-relabel, default): the official v2 lists relabeled; silence = 1 s windows (0.5 s
    hop) of `_background_noise_` files, running_tap -> valid, pink_noise -> test, the rest -> train.
    variant "b" (tfds): train = all words not in either list + windows of every noise file except
    running_tap (-> valid); valid = validation_list; test = the separate 12-class test set
    (`speech_commands_test_set_v0.02.tar.gz` unpacked into `test_root`, default
    `root/speech_commands_test_set_v0.02`). Silence items are windows: see `Task.spans`.
    """
    key = str(variant).lower()
    key = {"byola-relabel": "a", "tfds": "b"}.get(key, key)
    if key not in VARIANTS:
        raise ValueError(f"spcv2_12: variant must be 'a' (byola-relabel) or 'b' (tfds), got {variant!r}")
    root = Path(root).expanduser().resolve()
    words, lists = _word_items(root, "spcv2_12")
    word_counts = {s: sum(1 for it in words if it.split == s) for s in ("train", "valid", "test")}
    word_check = check_counts("spcv2_12 (word clips)", word_counts, {k: EXPECTED_35[k] for k in word_counts})
    items = [Item(it.path, it.label if it.label in WORDS_12 else UNKNOWN, split=it.split) for it in words]
    noise_splits = NOISE_SPLITS_A if key == "a" else NOISE_SPLITS_B
    silence = _silence_windows(root, noise_splits)
    metadata_files = list(lists)
    info = {"source": "Speech Commands v0.02", "word_counts": word_counts, "word_count_mismatches": word_check}
    if key == "b":
        # The official test list belongs to neither split in TFDS; the separate test set replaces it.
        items = [it for it in items if it.split != "test"]
        test_dir = _test_set_dir(root, test_root)
        test_items = _test_set_items(test_dir)
        items += test_items
        info["test_root"] = str(test_dir)
        expected = dict(EXPECTED_12_B)
    else:
        expected = {}
    items += silence
    info["silence_windows"] = {s: sum(1 for it in silence if it.split == s) for s in ("train", "valid", "test")}
    info["noise_splits"] = {Path(it.path).stem: it.split for it in silence}
    info["metadata_files"] = metadata_files
    expected.update({"classes": 12, "classes_per_split": {"train": 12, "valid": 12, "test": 12}})
    return build_task(
        "spcv2_12",
        root,
        items,
        unit_sec,
        variant=VARIANTS[key],
        expected=expected,
        check_files=check_files,
        skip_missing=skip_missing,
        info=info,
    )


def _word_items(root: Path, task_name: str) -> tuple[list[Item], list[str]]:
    """Every `<word>/*.wav` with its split from the two list files (everything unlisted is train)."""
    if not root.is_dir():
        raise TaskError(f"{task_name}: {root} is not a folder")
    lists = {}
    for split, name in (("valid", VALID_LIST), ("test", TEST_LIST)):
        path = root / name
        if not path.is_file():
            raise TaskError(f"{task_name}: {path} not found (it ships in speech_commands_v0.02.tar.gz)")
        lists[split] = {ln.strip() for ln in path.read_text().splitlines() if ln.strip()}
    overlap = lists["valid"] & lists["test"]
    if overlap:
        raise TaskError(f"{task_name}: {len(overlap)} files are in both lists, e.g. {sorted(overlap)[:3]}")
    items = []
    for word_dir in sorted(os.scandir(root), key=lambda e: e.name):
        # Word folders are lowercase letters only: skips _background_noise_ and an unpacked test set folder.
        if not (word_dir.is_dir() and word_dir.name.isascii() and word_dir.name.isalpha() and word_dir.name.islower()):
            continue
        for entry in sorted(os.scandir(word_dir.path), key=lambda e: e.name):
            if entry.name.endswith(".wav") and entry.is_file():
                rel = f"{word_dir.name}/{entry.name}"
                split = "valid" if rel in lists["valid"] else "test" if rel in lists["test"] else "train"
                items.append(Item(rel, word_dir.name, split=split))
    return items, [str(root / VALID_LIST), str(root / TEST_LIST)]


def _silence_windows(root: Path, noise_splits: dict[str, str]) -> list[Item]:
    from audiorq.audio import AudioError, audio_info

    folder = root / NOISE_FOLDER
    noise_files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    if not noise_files:
        raise TaskError(f"spcv2_12: no noise files in {folder}; the _silence_ class is cut from them")
    items = []
    for path in noise_files:
        try:
            info = audio_info(path)
        except AudioError as e:
            raise TaskError(f"spcv2_12: {e}") from None
        split = noise_splits.get(path.stem, "train")
        win, hop = int(round(WINDOW_SEC * info.sample_rate)), int(round(HOP_SEC * info.sample_rate))
        for first in range(0, info.frames - win, hop):
            items.append(
                Item(f"{NOISE_FOLDER}/{path.name}", SILENCE, split=split, start=first / info.sample_rate,
                     duration=WINDOW_SEC)
            )
    return items


def _test_set_dir(root: Path, test_root: str | os.PathLike | None) -> Path:
    if test_root is not None:
        path = Path(test_root).expanduser().resolve()
    else:
        path = next((root / c for c in TEST_SET_CANDIDATES if (root / c).is_dir()), root / TEST_SET_CANDIDATES[0])
    if not path.is_dir():
        raise TaskError(
            f"spcv2_12 variant b: test set folder {path} not found; unpack speech_commands_test_set_v0.02.tar.gz "
            "there or pass test_root=PATH"
        )
    return path


def _test_set_items(test_dir: Path) -> list[Item]:
    expected = set(WORDS_12) | {SILENCE, UNKNOWN}
    items = []
    for label_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        if label_dir.name not in expected:
            raise TaskError(f"spcv2_12 variant b: unexpected folder {label_dir} in the test set (labels: {sorted(expected)})")
        for wav in sorted(label_dir.glob("*.wav")):
            items.append(Item(str(wav), label_dir.name, split="test"))
    return items
