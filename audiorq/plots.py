"""Training curves of run folders as PNG: the BYOL loss against step, and the online monitor's curves if logged.

One drawing (`loss_curves`) serves every caller: each run folder's loss.png (redrawn at each checkpoint),
`audiorq plot RUN [RUN ...]`, the demo's summary and the comparison benchmarks.
"""

from __future__ import annotations

import os
from pathlib import Path

from audiorq.atomic import atomic_write
from audiorq.runs import RunFolder
from audiorq.train.metrics import read_rows

# Keys of metrics.jsonl rows written by the online monitor; each one found gets its own panel.
MONITOR_KEYS = ("knn_acc", "linear_acc", "effective_rank")
MONITOR_LABELS = {"knn_acc": "kNN accuracy", "linear_acc": "linear accuracy", "effective_rank": "effective rank"}


class PlotError(ValueError):
    """A run folder with nothing to plot; names it."""


def _series(rows: list[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of the rows that log `key`; the BYOL loss from interval rows only (not epoch means)."""
    points = []
    for r in rows:
        value, step = r.get(key), r.get("step")
        if key == "loss" and "epoch_end" in r:
            continue
        if isinstance(value, (int, float)) and isinstance(step, (int, float)):
            points.append((step, value))
    return points


def loss_curves(run_dirs: dict[str, list[Path]], path: str | os.PathLike,
                labels: dict[str, str] | None = None, title: str | None = None) -> Path:
    """PNG of the loss against step (and monitor curves below it), a colour per name, a line per run folder."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = labels or {}
    rows = {name: [read_rows(RunFolder(d).metrics) for d in dirs] for name, dirs in run_dirs.items()}
    keys = ["loss"] + [k for k in MONITOR_KEYS
                       if any(_series(r, k) for runs in rows.values() for r in runs)]
    fig = Figure(figsize=(7.0, 2.2 + 1.8 * len(keys)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        for i, (name, runs) in enumerate(rows.items()):
            for j, run_rows in enumerate(runs):
                points = _series(run_rows, key)
                if points:
                    ax.plot(*zip(*points), color=f"C{i % 10}", linewidth=1.0, alpha=0.9 if j == 0 else 0.5,
                            marker="." if len(points) < 3 else None,
                            label=labels.get(name, name) if j == 0 and key == "loss" else None)
        ax.set_ylabel("BYOL loss (logged steps)" if key == "loss" else MONITOR_LABELS[key], fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("step")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    if title:
        axes[0].set_title(title, fontsize=9)
    # Fixed margins: a layout engine costs more than the drawing, and this runs at every checkpoint.
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.12, right=0.97, top=1 - (0.35 if title else 0.15) / height, bottom=0.5 / height,
                        hspace=0.15)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return Path(path)


def plot_run(run_dir: str | os.PathLike) -> Path:
    """Redraw a run folder's loss.png from its metrics.jsonl; returns its path."""
    run = RunFolder(run_dir)
    return loss_curves({run.path.name or str(run.path): [run.path]}, run.loss_plot, title=str(run.path))


def plot_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike | None = None) -> Path:
    """Overlay the curves of run folders in one PNG (default: the one run's loss.png, else ./loss_curves.png).

    PlotError if a folder has no metrics.jsonl with logged steps.
    """
    runs = [RunFolder(d) for d in run_dirs]
    if not runs:
        raise PlotError("no run folder given")
    for run in runs:
        if not _series(read_rows(run.metrics), "loss"):
            what = "no logged steps in" if run.metrics.exists() else "no"
            raise PlotError(f"{run.path}: {what} {run.metrics.name} (not a run folder, or no step done yet)")
    names = [run.path.name or str(run.path) for run in runs]
    if len(set(names)) < len(names):  # runs/a/rq and runs/b/rq: the folder names alone would merge them
        names = [str(run.path) for run in runs]
    if out is None:
        out = runs[0].loss_plot if len(runs) == 1 else Path("loss_curves.png")
    return loss_curves({name: [run.path] for name, run in zip(names, runs)}, out)
