"""BYOL pretraining: `pretrain(cfg) -> run folder`, on CPU, one GPU, or many under torchrun.

Modules, one job each: `build` (everything made from the config before the first step), `loop` (the
step and the training loop), `state` (checkpoint state and resume checks), `metrics` (progress bar,
metrics.jsonl, TensorBoard), `monitor` (online kNN / linear evaluation, collapse health), `summary` (the end-of-run report), `distributed` (process group glue),
`schedules` (pure functions of the step).
The run folder's files belong to `audiorq.runs`.

Multi-GPU / multi-node: launch the same command with `torchrun`; the process group is read from the
environment (NCCL on CUDA, gloo on CPU), `batch_size` is the global batch split across ranks, and rank 0
alone logs and writes files.
"""

from __future__ import annotations

import os

from audiorq.atomic import FileWriteError
from audiorq.config import PretrainConfig, load_config
from audiorq.data.pretrain import ResumableSampler
from audiorq.runs import load_checkpoint
from audiorq.train.build import TrainingParts, ViewMaker, build_dataset, build_optimizer, build_training
from audiorq.train.loop import BadDataError, Trainer, TrainingInterrupted, make_loader, pretrain, train_step
from audiorq.train.state import RunDirError
from audiorq.train.summary import RunSummary


def load_pretrain_config(recipe: str | os.PathLike | None,
                         overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """A recipe (path or shipped name) plus ``key=value`` overrides -> validated PretrainConfig.

    Without a recipe the defaults are the paper's recipe (`byola_rq`).
    """
    return load_config(PretrainConfig, recipe, overrides)


__all__ = [
    "BadDataError", "FileWriteError", "PretrainConfig", "ResumableSampler", "RunDirError", "RunSummary", "Trainer",
    "TrainingInterrupted",
    "TrainingParts", "ViewMaker", "build_dataset", "build_optimizer", "build_training", "load_checkpoint",
    "load_pretrain_config", "make_loader", "pretrain", "train_step",
]
