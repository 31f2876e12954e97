"""Pretrain one encoder per augmentation variant, then linear-probe every encoder (and baselines) on tasks.

The engine behind `audiorq demo` and `eval/mini_benchmark.py`: each (variant, seed) is a normal
`audiorq pretrain` run folder, each (encoder, task) a normal `linear_probe` call. Finished stages are
appended to ``stages.jsonl`` in the output folder, so an interrupted comparison resumes where it stopped:
done stages are skipped, an unfinished pretraining run resumes from its checkpoint (bit-exact on CPU).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np
from audiorq.atomic import atomic_write_text
from audiorq.data.tasks import Task
from audiorq.plots import loss_curves  # noqa: F401  (compare.loss_curves: the one drawing, in plots)
from audiorq.probe.encoders import load_encoder
from audiorq.probe.run import linear_probe
from audiorq.runs import RunFolder
from audiorq.train import load_pretrain_config, pretrain
from audiorq.train.metrics import read_metrics

log = logging.getLogger(__name__)

STAGES = "stages.jsonl"


@dataclasses.dataclass(frozen=True)
class Variant:
    """An encoder to compare: pretrained with recipe `overrides`, or a `baseline` encoder spec (no training).

    A baseline spec may hold ``{d}`` and ``{seed}``, filled from the recipe's model width and the seed.
    """

    name: str
    label: str
    overrides: tuple[str, ...] = ()
    baseline: str | None = None


@dataclasses.dataclass
class Comparison:
    """Test accuracy per run (mean over folds), pooled over seeds: scores[variant][task] -> list of floats."""

    scores: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)
    pretrain_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    probe_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    final_loss: dict[str, float] = dataclasses.field(default_factory=dict)
    run_dirs: dict[str, list[Path]] = dataclasses.field(default_factory=dict)
    # The same scores per pretraining seed: seed_scores[variant][seed][task] -> list of floats.
    seed_scores: dict[str, dict[int, dict[str, list[float]]]] = dataclasses.field(default_factory=dict)
    out_dir: Path | None = None

    def update(self, other: "Comparison") -> "Comparison":
        """Add `other`'s variants (a comparison of more variants, run with other seeds) to this one."""
        for field in ("scores", "pretrain_seconds", "probe_seconds", "final_loss", "run_dirs", "seed_scores"):
            getattr(self, field).update(getattr(other, field))
        return self

    def mean_std(self, variant: str, task: str) -> tuple[float, float] | None:
        """Mean and std (ddof 0) in % of the pooled run scores, None if not measured."""
        values = self.scores.get(variant, {}).get(task)
        if not values:
            return None
        return 100 * float(np.mean(values)), 100 * float(np.std(values))


def corpus_file_list(tasks: list[Task], path: str | os.PathLike, extra: Iterable[str] = ()) -> Path:
    """Write every distinct audio file of `tasks` (labels unused) and `extra` to a text file of paths, one per line."""
    files = sorted({f for task in tasks for f in task.files} | set(extra))
    atomic_write_text(path, "".join(f"{f}\n" for f in files))
    return Path(path)


def _read_stages(path: Path) -> list[dict]:
    if not path.exists():
        return []
    stages = []
    for line in path.read_text().splitlines():
        try:
            stages.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash mid-append: that stage simply runs again
            continue
    return stages


def _append_stage(path: Path, record: dict) -> None:
    # One short line per write, flushed and fsynced: a crash loses at most the line being written.
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_scores(rows: list[dict]) -> list[float]:
    """Per run: test accuracy averaged over folds (the US8K / ESC-10 leave-one-fold-out convention)."""
    per_run: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        per_run[int(row["run"])].append(float(row["test_acc"]))
    return [float(np.mean(per_run[r])) for r in sorted(per_run)]


def _final_loss(run_dir: Path) -> float:
    records = read_metrics(RunFolder(run_dir).metrics)
    return float(records[-1]["loss"]) if records else float("nan")


def compare(
    variants: list[Variant],
    tasks: list[Task],
    out_dir: str | os.PathLike,
    recipe: str | os.PathLike,
    overrides: list[str] | tuple[str, ...] = (),
    pretrain_source: str | os.PathLike | None = None,
    seeds: tuple[int, ...] = (0,),
    preset: str = "byola",
    runs: int = 3,
    probe_overrides: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
    progress: bool = True,
) -> Comparison:
    """Pretrain each non-baseline variant per seed (recipe + `overrides` + the variant's overrides) on
    `pretrain_source` (default: every file of `tasks`, unlabeled), then probe each encoder on each task.

    Results go under `out_dir` (pretrain/<variant>-s<seed>/, probe/, stages.jsonl); a finished stage with the
    same settings is never redone, and nothing already written is overwritten.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages_path = out / STAGES
    done = {s["key"]: s for s in _read_stages(stages_path)}
    if pretrain_source is None:
        pretrain_source = corpus_file_list(tasks, out / "pretrain_files.txt")
    result = Comparison(out_dir=out)

    for variant in variants:
        scores: dict[str, list[float]] = defaultdict(list)
        result.pretrain_seconds[variant.name] = 0.0
        result.probe_seconds[variant.name] = 0.0
        losses = []
        for seed in seeds:
            cfg = load_pretrain_config(recipe, [
                *overrides, *variant.overrides, f"seed={seed}", f"device={device}", "resume=auto",
                f"data.source={pretrain_source}", f"out_dir={out / 'pretrain' / f'{variant.name}-s{seed}'}",
                f"log.progress={str(progress).lower()}",
            ])
            if variant.baseline is not None:
                spec = variant.baseline.format(d=cfg.model.d, seed=seed)
                encoder_id = spec
            else:
                run_dir = Path(cfg.out_dir)
                stage_key = _key("pretrain", dataclasses.asdict(cfg))
                if stage_key not in done:
                    log.info("pretraining %s (seed %d) in %s", variant.label, seed, run_dir)
                    start = time.perf_counter()
                    pretrain(cfg)
                    record = {"key": stage_key, "stage": "pretrain", "variant": variant.name, "seed": seed,
                              "seconds": time.perf_counter() - start, "final_loss": _final_loss(run_dir)}
                    _append_stage(stages_path, record)
                    done[stage_key] = record
                result.pretrain_seconds[variant.name] += done[stage_key]["seconds"]
                losses.append(done[stage_key]["final_loss"])
                result.run_dirs.setdefault(variant.name, []).append(run_dir)
                spec = str(RunFolder(run_dir).encoder)
                encoder_id = stage_key  # the trained weights are a function of the resolved config
            encoder = None
            for task in tasks:
                stage_key = _key("probe", encoder_id, task.name,
                                 list(task.files), preset, runs, list(probe_overrides))
                if stage_key not in done:
                    encoder = encoder or load_encoder(spec, device, name=f"{variant.name}-s{seed}")
                    start = time.perf_counter()
                    probe = linear_probe(encoder, task, preset=preset, runs=runs, device=device,
                                         out_dir=out / "probe", overrides=probe_overrides, progress=progress)
                    record = {"key": stage_key, "stage": "probe", "variant": variant.name, "seed": seed,
                              "task": task.name, "scores": _run_scores(probe.rows),
                              "seconds": time.perf_counter() - start}
                    _append_stage(stages_path, record)
                    done[stage_key] = record
                scores[task.name] += done[stage_key]["scores"]
                result.seed_scores.setdefault(variant.name, {}).setdefault(seed, {})[task.name] = done[stage_key]["scores"]
                result.probe_seconds[variant.name] += done[stage_key]["seconds"]
        result.scores[variant.name] = dict(scores)
        if losses:
            result.final_loss[variant.name] = float(np.mean(losses))
    return result


def comparison_table(result: Comparison, variants: list[Variant], tasks: list[str],
                     task_labels: dict[str, str] | None = None, average: bool = True) -> str:
    """Markdown: one row per variant, accuracy % mean ± std per task and (`average`) the mean of the task means."""
    task_labels = task_labels or {}
    header = ["Encoder", *(task_labels.get(t, t) for t in tasks), *(["Avg"] if average else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in variants:
        cells, means = [], []
        for task in tasks:
            ms = result.mean_std(variant.name, task)
            cells.append("–" if ms is None else f"{ms[0]:.1f} ± {ms[1]:.1f}")
            if ms is not None:
                means.append(ms[0])
        avg = f"{np.mean(means):.1f}" if len(means) == len(tasks) else "–"
        lines.append("| " + " | ".join([variant.label, *cells, *([avg] if average else [])]) + " |")
    return "\n".join(lines)

