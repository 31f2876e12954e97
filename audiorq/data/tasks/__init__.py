"""Downstream tasks: the `Task` record and its checks (task.py), one module per dataset returning a Task.

`load_task(name, root, **options)` reads a dataset in its official download layout (or a prepared
copy, see `audiorq.data.prepare.prepare_task`); `TASKS` maps each name to its loader. Common options:
`unit_sec`, `check_files` (default True: missing files raise MissingFilesError listing them), `skip_missing`.
"""

from __future__ import annotations

import os
from typing import Callable

from audiorq.data.tasks.assemble import CountMismatchWarning, Item, build_task
from audiorq.data.tasks.csvfile import load_csv
from audiorq.data.tasks.devsets import (
    SHARED_DATA_ENV, STANDIN_FOLDERS, default_standin_root, esc10, fsdd_digits, fsdd_speakers, shared_data_root,
)
from audiorq.data.tasks.nsynth import load_nsynth
from audiorq.data.tasks.pool import pool_drums, pool_voices
from audiorq.data.tasks.spcv2 import load_spcv2, load_spcv2_12
from audiorq.data.tasks.task import (
    SPLITS,
    MissingFilesError,
    Split,
    Task,
    TaskError,
    check_splits,
    check_task,
    find_missing_files,
    restrict_task,
    subsample_task,
    task_fingerprint,
)
from audiorq.data.tasks.us8k import load_us8k
from audiorq.data.tasks.vc1 import load_vc1
from audiorq.data.tasks.voxforge import load_voxforge

TASKS: dict[str, Callable[..., Task]] = {
    "nsynth": load_nsynth,
    "us8k": load_us8k,
    "vc1": load_vc1,
    "voxforge": load_voxforge,
    "spcv2": load_spcv2,
    "spcv2_12": load_spcv2_12,
    "csv": load_csv,
    "fsdd_digits": fsdd_digits,
    "fsdd_speakers": fsdd_speakers,
    "esc10": esc10,
    "pool_drums": pool_drums,
    "pool_voices": pool_voices,
}


class TaskOptionError(TaskError, TypeError):
    """A reader option the task's reader does not take (a TypeError too, as a bad keyword argument is)."""


def load_task(name: str, root: str | os.PathLike, **options) -> Task:
    """Read task `name` from `root` (for "csv": the CSV file) with the loader's keyword options."""
    try:
        loader = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
    import inspect

    params = inspect.signature(loader).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TaskOptionError(f"{name}: unknown option(s) {', '.join(map(str, unknown))}; "
                                  f"valid: {', '.join(valid)}")
    return loader(root, **options)


__all__ = [
    "SHARED_DATA_ENV",
    "SPLITS",
    "STANDIN_FOLDERS",
    "TASKS",
    "CountMismatchWarning",
    "Item",
    "MissingFilesError",
    "Split",
    "Task",
    "TaskError",
    "build_task",
    "check_splits",
    "check_task",
    "default_standin_root",
    "esc10",
    "find_missing_files",
    "fsdd_digits",
    "fsdd_speakers",
    "load_csv",
    "load_nsynth",
    "load_spcv2",
    "load_spcv2_12",
    "load_task",
    "load_us8k",
    "load_vc1",
    "load_voxforge",
    "restrict_task",
    "shared_data_root",
    "subsample_task",
    "task_fingerprint",
]
