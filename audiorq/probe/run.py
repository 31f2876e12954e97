"""`linear_probe`: encoder + task -> embeddings (cached) -> classifier runs per fold -> rows, summary, files."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from pathlib import Path

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from audiorq.audio import printable_path
from audiorq.data.tasks import (
    SHARED_DATA_ENV, STANDIN_FOLDERS, Task, check_task, default_standin_root, load_task, subsample_task,
)
from audiorq.device import resolve_device
from audiorq.probe.classifier import ClassifierRun, train_linear_classifier
from audiorq.probe.embed import ProbeError, TaskEmbeddings, embed_task
from audiorq.probe.encoders import EncoderInfo, load_encoder
from audiorq.probe.presets import ProbeConfig, probe_config
from audiorq.probe.report import format_table, summarize, write_results

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ProbeResult:
    """Per-run rows (one per fold x run), the per-task summary (mean/std over runs) and where files went."""

    rows: list[dict]
    summary: list[dict]
    embeddings: TaskEmbeddings
    runs: list[list[ClassifierRun]]  # [fold][run]
    scores_csv: Path | None = None
    table_md: Path | None = None
    bad: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, reason) left out by skip_bad

    @property
    def mean(self) -> float:
        """Mean over runs of the test accuracy (each run averaged over folds)."""
        return self.summary[0]["mean"]

    @property
    def std(self) -> float:
        """Std over runs of the test accuracy (each run averaged over folds)."""
        return self.summary[0]["std"]

    def table(self) -> str:
        """The markdown table of the summary beside the paper's."""
        return format_table(self.summary)


def new_probe_id() -> str:
    """A sortable id for one probe invocation: UTC time + random suffix."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def linear_probe(
    encoder: str | tuple[nn.Module, EncoderInfo],
    task: Task,
    preset: str | ProbeConfig = "byola",
    runs: int | None = None,
    device: str | torch.device | None = "cpu",
    out_dir: str | os.PathLike | None = "results",
    cache_dir: str | os.PathLike | None = None,
    skip_missing: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    frontend_overrides: list[str] | tuple[str, ...] = (),
    max_per_class: int | None = None,
    workers: int = 0,
    progress: bool = True,
    probe_id: str | None = None,
    skip_bad: bool = False,
) -> ProbeResult:
    """Linear-probe `encoder` (a spec for `load_encoder`, or an already loaded (module, info)) on `task`.

    preset: "byola" | "evar" or a ProbeConfig; `overrides` (``key=value``) and `runs` change it.
    cache_dir: embedding cache (default out_dir/cache; None with out_dir None = no cache).
    out_dir: scores.csv gets one row per fold x run appended; table.md is rewritten from it. None: no files.
    max_per_class: evaluate a per-class subset (`subsample_task`), for smoke tests only; >= 1 (None: all).
    skip_bad: leave out clips that cannot be decoded (listed in `ProbeResult.bad`, each logged once at INFO
    on the ``audiorq.probe.run`` logger) instead of stopping with a ProbeError that names the first.
    device: "cpu", "cuda", "cuda:N", or None / "auto" (CUDA when available); see `audiorq.device.resolve_device`.
    """
    if max_per_class is not None and (isinstance(max_per_class, bool) or int(max_per_class) < 1):
        raise ProbeError(f"max_per_class (--max-per-class) must be >= 1, or None for every clip; got {max_per_class!r}")
    config = probe_config(preset, overrides, runs=runs)
    device = resolve_device(device)
    if isinstance(encoder, str):
        module, info = load_encoder(encoder, device, frontend_overrides)
    else:
        module, info = encoder
        module.to(device)
    if cache_dir is None and out_dir is not None:
        cache_dir = Path(out_dir) / "cache"

    task = check_task(task, skip_missing=skip_missing)
    if max_per_class:
        task = subsample_task(task, max_per_class, seed=config.seed)
    embeddings = embed_task(module, info, task, config, device, cache_dir, workers, progress, skip_bad=skip_bad)
    bad = [(task.files[i], reason) for i, reason in sorted(embeddings.bad.items())]
    if bad:
        # INFO, not a warning: the caller asked for skip_bad and gets the list in ProbeResult.bad (the CLI prints
        # it once); a warning here would report every file a second time.
        for p, r in bad:
            log.info("%s: skipped %s: %s", task.name, printable_path(p), r)
        log.info("%s: skipped %d of %d clips that cannot be decoded", task.name, len(bad), len(task.files))
        embeddings = embeddings.without_bad()
        task = embeddings.task

    lr = config.lr_for(task.name)
    probe_id = probe_id or new_probe_id()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows: list[dict] = []
    all_runs: list[list[ClassifierRun]] = []
    # disable=None: no bar when stderr is not a terminal, so redirected logs get no escape codes.
    for split in tqdm(task.splits, desc=f"{task.name} classifier, per fold", unit="fold",
                      disable=None if progress and len(task.splits) > 1 else True, leave=False):
        data = embeddings.split_data(split)
        (x_tr, y_tr), (x_te, y_te) = data["train"], data["test"]
        x_va, y_va = data["valid"] if data["valid"] is not None else (None, None)
        fold_runs = train_linear_classifier(
            x_tr, y_tr, x_va, y_va, x_te, y_te, task.n_classes, seeds=config.seeds, lr=lr,
            weight_decay=config.weight_decay, batch_size=config.batch_size, max_epochs=config.max_epochs,
            patience=config.patience, loss=config.loss, valid_fraction=config.valid_fraction, device=device,
            progress=progress,
            desc=f"{task.name} classifier" + (f", fold {split.name}" if len(task.splits) > 1 else ""),
        )
        all_runs.append(fold_runs)
        for r, run in enumerate(fold_runs):
            rows.append({
                "probe_id": probe_id, "time": stamp, "model": info.name, "ckpt": info.source,
                "encoder_hash": info.weights_hash[:16], "d": info.d, "preset": config.preset, "task": task.name,
                "variant": task.variant, "unit_sec": task.unit_sec, "fold": split.name, "run": r,
                "seed": run.seed, "lr": lr, "best_epoch": run.best_epoch, "epochs": run.epochs,
                "val_acc": round(run.val_acc, 6), "test_acc": round(run.test_acc, 6), "n_train": run.n_train,
                "n_valid": run.n_valid, "n_test": run.n_test, "n_classes": task.n_classes,
                "norm_mean": round(embeddings.norm_mean, 6), "norm_std": round(embeddings.norm_std, 6),
                "device": device.type, "quick_look": max_per_class or "",
            })
    result = ProbeResult(rows=rows, summary=summarize(rows), embeddings=embeddings, runs=all_runs, bad=bad)
    if out_dir is not None:
        result.scores_csv, result.table_md = write_results(rows, out_dir)
    return result


def _standin_data(names: list[str], tasks: str) -> str:
    """The data root for stand-in tasks given without --data: $AUDIORQ_SHARED_DATA or ../shared/data."""
    if tasks == "all" or not names:
        raise ProbeError("--task all needs --data: a YAML file or task=folder,... map")
    others = [t for t in names if t not in STANDIN_FOLDERS]
    if others:
        raise ProbeError(f"--data is required for task(s) {', '.join(others)} (the task's folder, a YAML file or "
                         f"a task=folder,... map); only {', '.join(STANDIN_FOLDERS)} default to "
                         f"${SHARED_DATA_ENV}")
    root = default_standin_root()
    if root is None:
        raise ProbeError(f"no --data given and ${SHARED_DATA_ENV} is not set: pass --data, the shared data root "
                         f"holding {'/, '.join(sorted(set(STANDIN_FOLDERS.values())))}/ or the dataset folder itself")
    return str(root)


def parse_task_data(tasks: str, data: str | None) -> dict[str, dict]:
    """Which task reads which data: {task: {"root": path, **options}}.

    `data` is a folder (one task named by `tasks`, or several stand-in tasks read from one shared data root),
    a YAML file mapping task -> folder (or -> mapping with "root" and reader options), or
    ``task=folder[,task=folder...]``; None for stand-in tasks only (fsdd_digits, fsdd_speakers, esc10), which
    then read $AUDIORQ_SHARED_DATA (else ../shared/data beside the repository). `tasks` is a name, a comma
    list, or "all" (every task `data` names).
    """
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if data is None:
        data = _standin_data(names, tasks)
        if len(names) > 1:
            return {t: {"root": data} for t in names}
    if Path(data).suffix in (".yaml", ".yml") and Path(data).is_file():
        try:
            mapping = yaml.safe_load(Path(data).read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
            first = str(getattr(e, "problem", None) or getattr(e, "strerror", None) or e).strip().splitlines()[0]
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise ProbeError(f"{data}: not a valid YAML task map: {first}{where}") from None
        if not isinstance(mapping, dict):
            raise ProbeError(f"{data}: expected a mapping of task name -> data folder")
    elif "=" in data and not Path(data).exists():
        mapping = {}
        for part in filter(None, (p.strip() for p in data.split(","))):
            key, eq, value = part.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise ProbeError(f"--data {data!r}: {part!r} is not task=folder")
            mapping[key.strip()] = value.strip()
    elif tasks != "all" and len(names) > 1 and all(t in STANDIN_FOLDERS for t in names):
        mapping = {t: data for t in names}  # one shared data root holds every stand-in's folder
    else:
        if tasks == "all" or len(names) != 1:
            raise ProbeError(f"--task {tasks} needs --data as a YAML file or task=folder,... map, got {data!r}")
        mapping = {names[0]: data}
    spec = {}
    for name, value in mapping.items():
        entry = dict(value) if isinstance(value, dict) else {"root": value}
        if "root" not in entry:
            raise ProbeError(f"--data: task {name!r} has no 'root'")
        if not isinstance(entry["root"], (str, os.PathLike)) or not str(entry["root"]).strip():
            raise ProbeError(f"--data: the root of task {name!r} must be a folder or file path, got {entry['root']!r}")
        spec[str(name)] = entry
    names = list(spec) if tasks == "all" else names
    unknown = [t for t in names if t not in spec]
    if unknown:
        raise ProbeError(f"no data given for task(s) {unknown}; --data names {list(spec)}")
    return {t: spec[t] for t in names}


def probe_tasks(
    encoder: str,
    tasks: str,
    data: str | None,
    task_options: dict | None = None,
    skip_missing: bool = False,
    device: str | torch.device | None = "auto",
    frontend_overrides: list[str] | tuple[str, ...] = (),
    name: str | None = None,
    **probe_options,
) -> list[ProbeResult]:
    """Load each task `parse_task_data` names with `audiorq.data.tasks.load_task` and `linear_probe` it with
    one loaded encoder (shown as `name` in the results when given); all rows share one probe id."""
    device = resolve_device(device)
    task_data = parse_task_data(tasks, data)  # a bad --data is refused before the encoder is loaded
    loaded = load_encoder(encoder, device, frontend_overrides, name=name)
    probe_id = new_probe_id()
    results = []
    for task_name, entry in task_data.items():
        options = {**{k: v for k, v in entry.items() if k != "root"}, **(task_options or {})}
        task = load_task(task_name, entry["root"], skip_missing=skip_missing, **options)
        results.append(linear_probe(loaded, task, device=device, skip_missing=skip_missing, probe_id=probe_id,
                                    **probe_options))
    return results

