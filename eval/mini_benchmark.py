"""The paper's comparison in miniature (harness v2): does pretraining beat the same network untrained?

Pretrains the same encoder (recipe, default recipes/quick.yaml) with each augmentation variant on 16 kHz
real audio, unlabeled: every clip of the pool corpus (drum kits, game music and effects, voice packs,
spoken words) plus ESC-10, with the online monitor on (kNN / linear accuracy on ESC-10 fold 1 during
training, label-free health). Then it linear-probes every encoder, a random-init network (plain and with
BatchNorm statistics calibrated on each task's audio) and log-mel statistics on three tasks fixed before
any trained encoder was probed: ESC-10 (5-fold), pool drum-piece type (split by kit) and pool voice-pack
identity (split by spoken line). It prints one markdown table per question, the per-seed margin over the
calibrated random network, and draws the loss and monitor curves. Interrupt it and run the same command
again: it resumes.

    python eval/mini_benchmark.py [--data ../shared/data] [--out runs/mini_benchmark] [--seeds 0,1]
        [--variants rq,mixup,...] [--runs 3] [--recipe recipes/quick.yaml] [key=value ...]

Full-size reproduction of Table 9 (official datasets, paper recipe, GPU): eval/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

import numpy as np

from audiorq.atomic import atomic_write_text
from audiorq.compare import Comparison, Variant, compare, comparison_table, corpus_file_list, loss_curves
from audiorq.data.tasks import load_task
from audiorq.data.tasks.devsets import shared_data_root
from audiorq.probe.run import parse_task_data
from audiorq.runs import RunFolder
from audiorq.train.metrics import read_rows

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {
    v.name: v for v in [
        Variant("rq", "RRC → RQ, 5 bins (paper)", ("augment.chain=[rrc,rq]", "augment.rq.bins=5")),
        Variant("mixup", "Mixup → RRC (BYOL-A)", ("augment.chain=[mixup,rrc]",)),
        Variant("rrc_only", "RRC only", ("augment.chain=[rrc]",)),
        Variant("random", "random init (no training)", baseline="random:d={d},seed={seed}"),
        Variant("random_cal", "random init, BN calibrated on the task", baseline="random:d={d},seed={seed},calibrate=true"),
        Variant("logmel", "log-mel mean+std+max (no network)", baseline="logmel"),
        *(Variant(f"rq_bins{b}", f"RRC → RQ, {b} bin{'s' if b > 1 else ''}",
                  ("augment.chain=[rrc,rq]", f"augment.rq.bins={b}"))
          for b in (1, 3, 8, 15)),
        Variant("rq_before_rrc", "RQ → RRC, 5 bins", ("augment.chain=[rq,rrc]", "augment.rq.bins=5")),
        # The BYOL-A-faithful step, one change at a time back to audiorq 0.1's (docs/architecture.md §6).
        Variant("rq_joint_bn", "RRC → RQ, both views in one BN batch", ("augment.chain=[rrc,rq]", "model.bn_views=joint")),
        Variant("rq_per_view_norm", "RRC → RQ, post-norm per view", ("augment.chain=[rrc,rq]", "augment.post_norm=per_view")),
    ]
}
MAIN = ["rq", "mixup", "rrc_only", "random", "random_cal", "logmel"]
TRAINED_MAIN = ["rq", "mixup", "rrc_only"]
SWEEP = ["rq_bins1", "rq_bins3", "rq", "rq_bins8", "rq_bins15"]
ORDER = ["rq", "rq_before_rrc"]
STEP = ["rq", "rq_joint_bn", "rq_per_view_norm"]
# The default run: the target's two encoders, both baselines, log-mel, and the bins sweep (seed 0).
DEFAULT_VARIANTS = ["rq", "mixup", "random", "random_cal", "logmel", "rq_bins1", "rq_bins3", "rq_bins8", "rq_bins15"]
DEV_TASKS = {"esc10": "esc10", "pool_drums": "pool", "pool_voices": "pool"}
TASK_LABELS = {"esc10": "ESC-10 (5-fold)", "pool_drums": "drum piece (by kit)", "pool_voices": "voice pack (by line)"}
# The online monitor of every pretraining run: ESC-10's first fold, every MONITOR_EVERY steps and each epoch end.
MONITOR_EVERY = 60
# Three epochs of pool + ESC-10 (363 steps of 32 clips) is what fits the 90-minute budget on 2 CPU cores
# with the default variants (measured: eval/RESULTS.md); recipe overrides on the command line come after.
DEFAULT_OVERRIDES = ("epochs=3",)
TARGET_MARGIN = 3.0  # points over the calibrated random network, on the task average, for each seed
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3")


def margins(result: Comparison, tasks: list[str], variants: list[str]) -> list[str]:
    """Per trained main variant and seed: task-average accuracy minus the calibrated random network's, same seed."""
    base = result.seed_scores.get("random_cal", {})
    lines = ["| Encoder | seed | task average | calibrated random | margin | target (+3.0) |", "|---|---|---|---|---|---|"]

    def average(scores: dict[str, list[float]]) -> float | None:
        means = [100 * float(np.mean(scores[t])) for t in tasks if scores.get(t)]
        return float(np.mean(means)) if len(means) == len(tasks) else None

    for name in TRAINED_MAIN:
        for seed, scores in sorted(result.seed_scores.get(name, {}).items()):
            mine, theirs = average(scores), average(base.get(seed, {}))
            if mine is None or theirs is None or name not in variants:
                continue
            margin = mine - theirs
            lines.append(f"| {VARIANTS[name].label} | {seed} | {mine:.1f} | {theirs:.1f} | {margin:+.1f} | "
                         f"{'met' if margin >= TARGET_MARGIN else 'missed'} |")
    return lines if len(lines) > 2 else []


def monitor_lines(result: Comparison) -> list[str]:
    """Per pretraining run: the monitor's last kNN / linear accuracy and its share of the run's time."""
    lines = ["| Run | steps | kNN first → last | linear first → last | best kNN (step) | monitor time share |",
             "|---|---|---|---|---|---|"]
    for name, dirs in result.run_dirs.items():
        for run_dir in dirs:
            rows = read_rows(RunFolder(run_dir).metrics)
            evals = [r for r in rows if "knn_acc" in r]
            intervals = [r for r in rows if "step_time_s" in r]
            if not evals or not intervals:
                continue
            steps, previous, train_s = intervals[-1]["step"], 0, 0.0
            for r in intervals:
                train_s += r["step_time_s"] * (r["step"] - previous)
                previous = r["step"]
            monitor_s = sum(r["monitor_time_s"] for r in evals)
            best = max(evals, key=lambda r: r["knn_acc"])
            lines.append(f"| {run_dir.name} | {steps} | {evals[0]['knn_acc']:.1f} → {evals[-1]['knn_acc']:.1f} | "
                         f"{evals[0]['linear_acc']:.1f} → {evals[-1]['linear_acc']:.1f} | "
                         f"{best['knn_acc']:.1f} ({best['step']}) | {100 * monitor_s / (train_s + monitor_s):.1f} % |")
    return lines if len(lines) > 2 else []


def report(result: Comparison, tasks: list[str], variants: list[str], args: argparse.Namespace,
           seconds: float) -> str:
    """The markdown report: the tables (those with two or more of `variants`), margins, monitor, losses, time."""
    def table(title: str, names: list[str]) -> list[str]:
        chosen = [VARIANTS[n] for n in names if n in variants]
        return [f"### {title}", comparison_table(result, chosen, tasks, TASK_LABELS), ""] if len(chosen) > 1 else []

    cpu = f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    margin = margins(result, tasks, variants)
    monitor = monitor_lines(result)
    lines = [
        f"Command: `python eval/mini_benchmark.py {' '.join(sys.argv[1:])}`",
        f"Machine: {cpu}; device {args.device}; torch {torch.__version__}",
        f"Recipe: {' '.join([args.recipe, *args.overrides])}; pretraining seeds {args.seeds} (main table), "
        f"{args.sweep_seeds} (bins sweep, order; the 5-bin row is the main table's RQ); "
        f"probe preset {args.preset}, {args.runs} classifier runs per seed; accuracy % as mean ± std over "
        f"seeds × runs (each run averaged over folds)",
        "",
        *table("RQ vs Mixup vs no pretraining", MAIN),
        *(["### Margin over the calibrated random network (per pretraining seed)", *margin, ""] if margin else []),
        *table("Bins sweep (RRC → RQ)", SWEEP),
        *table("RQ before vs after RRC", ORDER),
        *table("The BYOL-A-faithful step, one change undone at a time (RRC → RQ, 5 bins)", STEP),
        *(["### Online monitor (ESC-10 fold 1) during pretraining", *monitor, ""] if monitor else []),
        "### Time and final BYOL loss",
        "| Encoder | pretrain | probe (all tasks) | final loss |",
        "|---|---|---|---|",
    ]
    for name in variants:
        loss = result.final_loss.get(name)
        lines.append(f"| {VARIANTS[name].label} | {result.pretrain_seconds[name] / 60:.1f} min | "
                     f"{result.probe_seconds[name] / 60:.1f} min | {'–' if loss is None else f'{loss:.3f}'} |")
    lines.append(f"\nTotal (this invocation, stages already done are not re-timed): {seconds / 60:.1f} min")
    return "\n".join(lines)


def pretraining_corpus(root: Path, tasks: list, path: Path) -> Path:
    """Write the unlabeled pretraining list: every audio file under root/pool plus the tasks' files."""
    pool = (str(p) for p in (root / "pool").rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    return corpus_file_list(tasks, path, extra=pool)


def int_list(text: str) -> list[int]:
    """'0,1' -> [0, 1] (argparse type)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="root holding esc10/ and pool/ (default $AUDIORQ_SHARED_DATA or ../shared/data)")
    parser.add_argument("--tasks", default=None,
                        help="YAML mapping task -> data folder (default: the three development tasks)")
    parser.add_argument("--pretrain-data", default=None,
                        help="pretraining audio folder / file list / shards (default: all of pool/ plus ESC-10)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "mini_benchmark")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "quick.yaml"))
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma list of " + ", ".join(VARIANTS) + f" (default {','.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--no-monitor", action="store_true", help="pretrain without the online kNN / linear monitor")
    # Comma lists, not nargs="+": a list option would swallow the trailing key=value overrides.
    parser.add_argument("--seeds", type=int_list, default=[0, 1],
                        help="comma list of pretraining seeds of the main comparison (RQ, Mixup, RRC only, random init)")
    parser.add_argument("--sweep-seeds", type=int_list, default=[0],
                        help="comma list of pretraining seeds of the bins sweep and the RQ-order variants")
    parser.add_argument("--preset", default="byola")
    parser.add_argument("--runs", type=int, default=3, help="linear classifier runs per encoder and task")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="recipe key=value overrides for every pretraining run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")

    if args.tasks:
        spec = parse_task_data("all", args.tasks)
        tasks = [load_task(name, e["root"], **{k: v for k, v in e.items() if k != "root"}) for name, e in spec.items()]
    else:
        root = args.data or shared_data_root()
        missing = [str(root / d) for d in sorted(set(DEV_TASKS.values())) if not (root / d).is_dir()]
        if missing:
            parser.error(f"data folder(s) {missing} not found: pass --data ROOT (holding esc10/ and pool/) or --tasks")
        tasks = [load_task(name, root / folder) for name, folder in DEV_TASKS.items()]
        args.out.mkdir(parents=True, exist_ok=True)
        if args.pretrain_data is None:
            args.pretrain_data = str(pretraining_corpus(root, tasks, args.out / "pretrain_files.txt"))
        if not args.no_monitor:
            # The monitor only reads the encoder: a run learns the same with or without it (tested).
            args.overrides = ["monitor.task=esc10", f"monitor.data={root / 'esc10'}",
                              f"monitor.every_steps={MONITOR_EVERY}", *args.overrides]
    args.overrides = [*DEFAULT_OVERRIDES, *args.overrides]

    start = time.perf_counter()
    # The main comparison gets more seeds than the sweeps; logmel has no randomness (one seed).
    groups = [([v for v in variants if v in MAIN and v != "logmel"], args.seeds),
              ([v for v in variants if v == "logmel"], [0]),
              ([v for v in variants if v not in MAIN], args.sweep_seeds)]
    result = Comparison(out_dir=args.out)
    for names, seeds in groups:
        if names:
            result.update(compare(
                [VARIANTS[v] for v in names], tasks, args.out, args.recipe, args.overrides,
                pretrain_source=args.pretrain_data, seeds=tuple(seeds), preset=args.preset, runs=args.runs,
                device=args.device, progress=not args.no_progress,
            ))
    text = report(result, [t.name for t in tasks], variants, args, time.perf_counter() - start)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    # A new report file per invocation: earlier reports in the same folder are kept.
    atomic_write_text(args.out / f"report-{stamp}.md", text + "\n")
    atomic_write_text(args.out / f"scores-{stamp}.json", json.dumps(result.scores, indent=1) + "\n")
    figure = loss_curves(result.run_dirs, args.out / f"loss-{stamp}.png", {n: v.label for n, v in VARIANTS.items()})
    print(text)
    print(f"\nreport: {args.out / f'report-{stamp}.md'}; loss curves: {figure} "
          f"(logged per run in {args.out}/pretrain/*/metrics.jsonl)")


if __name__ == "__main__":
    main()
