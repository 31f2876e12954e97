"""Two labeled tasks derived from the pool corpus's folders and file names (docs/protocol.md §13).

The pool (../shared/data/pool in development, see its README) is unlabeled 16 kHz audio; its names carry
labels that ask different things of an encoder, with splits that are disjoint in the group that would
otherwise leak:
- `pool_drums`: drum-piece type (kick, snare, hihat, tom, cymbal) from the file name, 5 folds of whole
  kits (leave-kits-out): a kit's recording chain and room are never seen in training.
- `pool_voices`: voice-pack identity (the character / actor) from the folder, 5 folds of spoken lines
  ("Jump1", "Jump2" are line "jump"): the words of a test clip are never heard in training.
Byte-identical files that appear more than once (several packs ship the same clip) are left out, so no
clip is in two splits or under two labels. No pack is a copy of another (checked with SHA-256: Classic shares
18 of its 55 files with Default, Default_uk 8 of 64, Russian_pl 2 of 48 with Default_pl), so none is merged.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from audiorq.data.tasks.assemble import Item, build_task
from audiorq.data.tasks.task import Task, TaskError

DRUMS_UNIT_SEC = 1.0  # median clip 0.8 s (95 % under 8 s, long cymbal tails); attack + first second identify a piece
VOICES_UNIT_SEC = 2.0  # median line 1.0 s, 95 % under 2.1 s
N_FOLDS = 5
VOICES_FOLDER = Path("game_sounds") / "Sounds" / "voices"
# Tokens of a drum file name (split at non-letters and case changes) that name each piece. A name
# matching no class (claps, percussion, numbered loops) or two classes is left out.
DRUM_CLASSES: dict[str, tuple[str, ...]] = {
    "kick": ("kick", "bassdrum", "bd", "k"),
    "snare": ("snare", "jsnare", "rsnare", "sd", "sr"),
    "hihat": ("hihat", "hhat", "hat", "hh", "hhclosed", "hhopen", "hhpedal", "ho", "ohh", "closehihat",
              "openhat", "pedalhihat"),
    "tom": ("tom", "floortom", "ft", "t1", "t2"),
    "cymbal": ("crash", "ride", "china", "splash", "cymbal", "cc", "rc"),
}
_TOKEN = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|t\d")


def _pool_root(root: str | os.PathLike, task: str) -> Path:
    """The pool folder itself, or the shared data root holding pool/; TaskError with a hint otherwise."""
    root = Path(root).expanduser().resolve()
    for candidate in (root, root / "pool"):
        if (candidate / "drums").is_dir() and (candidate / VOICES_FOLDER).is_dir():
            return candidate
    raise TaskError(f"{task}: {root} holds no pool corpus (drums/ and {VOICES_FOLDER}/); give the pool/ folder "
                    f"or the shared data root that holds it (e.g. --data ../shared/data, or set $AUDIORQ_SHARED_DATA)")


def drum_piece(stem: str) -> str | None:
    """The drum piece a file stem names ("EE_Kick_Hard_1" -> "kick"), None if none or ambiguous."""
    tokens = {t.lower() for t in _TOKEN.findall(stem)} | {stem.lower().split("-")[0].split("_")[0]}
    found = {name for name, words in DRUM_CLASSES.items() if tokens & set(words)}
    return found.pop() if len(found) == 1 else None


def voice_line(stem: str) -> str:
    """The spoken line of a voice file stem: lower case, trailing take numbers removed ("Jump2" -> "jump")."""
    return re.sub(r"\d+$", "", stem).lower()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unique_files(files: list[Path]) -> list[Path]:
    """`files` without every byte-identical copy of a file that appears more than once."""
    digests = {f: _digest(f) for f in files}
    counts: dict[str, int] = {}
    for d in digests.values():
        counts[d] = counts.get(d, 0) + 1
    return [f for f in files if counts[digests[f]] == 1]


def _balanced_folds(group_sizes: dict[str, int]) -> dict[str, str]:
    """Assign groups to N_FOLDS folds, largest first to the currently smallest fold (ties: lowest fold)."""
    totals = [0] * N_FOLDS
    fold_of = {}
    for group in sorted(group_sizes, key=lambda g: (-group_sizes[g], g)):
        k = min(range(N_FOLDS), key=lambda i: (totals[i], i))
        fold_of[group] = f"fold{k + 1}"
        totals[k] += group_sizes[group]
    return fold_of


def pool_drums(root: str | os.PathLike, *, check_files: bool = True, skip_missing: bool = False) -> Task:
    """Drum-piece type (cymbal, hihat, kick, snare, tom) of pool/drums clips, 5 folds of whole kits."""
    pool = _pool_root(root, "pool_drums")
    files = sorted((pool / "drums").glob("*/*.flac"))
    labeled = [(f, drum_piece(f.stem)) for f in _unique_files(files)]
    labeled = [(f, label) for f, label in labeled if label is not None]
    sizes: dict[str, int] = {}
    for f, _ in labeled:
        sizes[f.parent.name] = sizes.get(f.parent.name, 0) + 1
    fold_of = _balanced_folds(sizes)
    items = [Item(str(f.relative_to(pool)), label, fold=fold_of[f.parent.name]) for f, label in labeled]
    return build_task(
        "pool_drums", pool, items, DRUMS_UNIT_SEC, mode="folds", check_files=check_files, skip_missing=skip_missing,
        expected={"total": 328, "classes": 5, "folds": [95, 90, 47, 48, 48]},
        info={"source": "pool/drums", "split_rule": "folds of whole kits", "kit_folds": fold_of},
    )


def pool_voices(root: str | os.PathLike, *, check_files: bool = True, skip_missing: bool = False) -> Task:
    """Voice-pack identity of pool voice clips (one class per pack), 5 folds of spoken lines."""
    pool = _pool_root(root, "pool_voices")
    files = _unique_files(sorted((pool / VOICES_FOLDER).glob("*/*.flac")))
    lines = sorted({voice_line(f.stem) for f in files})
    # Lines in sorted order, dealt round-robin: every fold gets lines from the whole alphabet.
    fold_of = {line: f"fold{i % N_FOLDS + 1}" for i, line in enumerate(lines)}
    items = [Item(str(f.relative_to(pool)), f.parent.name, fold=fold_of[voice_line(f.stem)]) for f in files]
    return build_task(
        "pool_voices", pool, items, VOICES_UNIT_SEC, mode="folds", check_files=check_files, skip_missing=skip_missing,
        expected={"total": 753, "classes": 15, "folds": [130, 161, 138, 171, 153]},
        info={"source": "pool voices", "split_rule": "folds of spoken lines"},
    )
