"""The `Task` record every downstream dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
        return len(self.classes)

    def span(self, i: int) -> tuple[float, float | None]:
        """(start, duration) in seconds of item i, as `audiorq.audio.load_audio` takes them."""
        if self.spans is None:
            return 0.0, None
        start, duration = (float(v) for v in self.spans[i])
        return start, (None if duration != duration else duration)
