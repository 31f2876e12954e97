"""Result rows, summaries and the markdown table beside the paper's Table 9."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from audiorq.atomic import append_csv_rows, atomic_write_text, file_lock

# Table 9 of the RQ paper (linear probe accuracy, %), docs/architecture.md.
PAPER_TASKS = ("nsynth", "us8k", "vc1", "voxforge", "spcv2_12", "spcv2")
TASK_COLUMNS = {"nsynth": "NS", "us8k": "US8K", "vc1": "VC1", "voxforge": "VF", "spcv2_12": "SPCV2/12",
                "spcv2": "SPCV2"}
PAPER_TABLE9 = {
    "BYOL-A (paper: RRC + Mixup)": {"nsynth": 74.1, "us8k": 79.1, "vc1": 40.1, "voxforge": 90.2, "spcv2_12": 91.0,
                                    "spcv2": 92.2, "avg": 77.8},
    "RQ (paper: RRC + RQ, 5 bins)": {"nsynth": 74.2, "us8k": 78.0, "vc1": 45.7, "voxforge": 92.6, "spcv2_12": 95.1,
                                     "spcv2": 92.1, "avg": 79.6},
}

SCORE_FIELDS = [
    "probe_id", "time", "model", "ckpt", "encoder_hash", "d", "preset", "task", "variant", "unit_sec", "fold",
    "run", "seed", "lr", "best_epoch", "epochs", "val_acc", "test_acc", "n_train", "n_valid", "n_test",
    "n_classes", "norm_mean", "norm_std", "device", "quick_look",
]
# quick_look: the --max-per-class cap of a quick-look row (a per-class subset, not a reportable number);
# empty for a full evaluation, and in rows written before the column existed.


def quick_look_of(row: dict) -> int | None:
    """The per-class cap a row was computed with, or None for a full evaluation."""
    value = row.get("quick_look")
    return int(value) if value not in (None, "", "0") else None


def _label(model: str, preset: str, quick: int | None) -> str:
    return f"{model} [{preset}]" + (f" (quick look: ≤{quick} per class)" if quick else "")


def summarize(rows: list[dict]) -> list[dict]:
    """Per (probe_id, model, preset, task): score of each run = mean over folds; mean and std (ddof 0) over runs.

    Returns dicts with model, preset, task, variant, mean, std (fractions), runs, folds, probe_id, quick_look.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["probe_id"], row["model"], row["preset"], row["task"], quick_look_of(row))].append(row)
    out = []
    for (probe_id, model, preset, task, quick), group in groups.items():
        per_run: dict[str, list[float]] = defaultdict(list)
        for row in group:
            per_run[str(row["run"])].append(float(row["test_acc"]))
        scores = np.array([np.mean(v) for v in per_run.values()])
        out.append({
            "probe_id": probe_id, "model": model, "preset": preset, "task": task, "variant": group[0]["variant"],
            "mean": float(scores.mean()), "std": float(scores.std()), "runs": len(scores),
            "folds": len({str(r["fold"]) for r in group}), "quick_look": quick,
        })
    return out


def latest_summaries(rows: list[dict]) -> list[dict]:
    """`summarize`, keeping for each (model, preset, task, quick look or not) only its latest probe invocation."""
    latest: dict[tuple, dict] = {}
    for s in summarize(rows):  # probe ids sort by time
        # A quick look never hides the full evaluation of the same model and task, nor the other way round.
        key = (s["model"], s["preset"], s["task"], s.get("quick_look"))
        if key not in latest or s["probe_id"] > latest[key]["probe_id"]:
            latest[key] = s
    return list(latest.values())


def format_table(summaries: list[dict], paper: bool = True) -> str:
    """Markdown: the paper-task table (the paper's Table 9 rows when `paper`, then one row per (model, preset),
    mean ± std in %, Avg over the six), then the other tasks (stand-ins, csv) in a table of their own."""
    ours = [s for s in summaries if s["task"] in PAPER_TASKS]
    others = [s for s in summaries if s["task"] not in PAPER_TASKS]
    parts = []
    if ours or not others:
        parts.append(_paper_table(ours, paper))
    if others:
        parts.append("Other tasks (development stand-ins and csv tasks; not in the paper's table):\n\n"
                     + _task_table(others, sorted({s["task"] for s in others}), avg=False))
    return "\n".join(parts)


def _paper_table(summaries: list[dict], paper: bool) -> str:
    tasks = [t for t in PAPER_TASKS if paper or any(s["task"] == t for s in summaries)]
    text = _task_table(summaries, tasks, avg=True)
    if not paper:
        return text
    lines = text.splitlines()
    rows = []
    for name, scores in PAPER_TABLE9.items():
        cells = [f"{scores[t]:.1f}" if t in scores else "" for t in tasks]
        rows.append("| " + " | ".join([name, *cells, f"{scores['avg']:.1f}"]) + " |")
    return "\n".join(lines[:2] + rows + lines[2:]) + "\n"


def _task_table(summaries: list[dict], tasks: list[str], avg: bool) -> str:
    header = ["Model", *(TASK_COLUMNS.get(t, t) for t in tasks)] + (["Avg"] if avg else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_model: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for s in summaries:
        by_model[(s["model"], s["preset"], s.get("quick_look"))][s["task"]] = s
    for (model, preset, quick), scores in by_model.items():
        cells = [
            f"{100 * scores[t]['mean']:.1f} ± {100 * scores[t]['std']:.1f}" if t in scores else "–" for t in tasks
        ]
        if avg:
            have_all = all(t in scores for t in PAPER_TASKS)
            cells.append(f"{100 * np.mean([scores[t]['mean'] for t in PAPER_TASKS]):.1f}" if have_all else "–")
        lines.append("| " + " | ".join([_label(model, preset, quick), *cells]) + " |")
    return "\n".join(lines) + "\n"


def read_scores(path: str | os.PathLike) -> list[dict]:
    """Rows of a scores.csv (empty list when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_results(rows: list[dict], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Append rows to out_dir/scores.csv (earlier rows kept) and rewrite out_dir/table.md from every row in it
    (latest invocation per model, preset and task), atomically. Returns both paths."""
    out_dir = Path(out_dir)
    scores = out_dir / "scores.csv"
    table = out_dir / "table.md"
    # One lock around the append and the table: a concurrent probe writing the same out_dir can neither
    # lose rows nor leave a table.md older than scores.csv.
    with file_lock(scores):
        append_csv_rows(scores, rows, SCORE_FIELDS)
        text = (
            "# Linear-probe accuracy (%), mean ± std over classifier runs\n\n"
            "Paper rows: RQ paper Table 9 (BYOL-A protocol). Ours: the latest run per model/preset/task in "
            "scores.csv. Rows marked quick look used --max-per-class (a per-class subset): not reportable "
            "numbers.\n\n" + format_table(latest_summaries(read_scores(scores)))
        )
        atomic_write_text(table, text)
    return scores, table
