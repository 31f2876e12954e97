"""The paper's comparison in miniature: RQ vs Mixup vs RRC-only vs random init vs log-mel, bins sweep, RQ order.

Pretrains the same encoder (recipe, default recipes/quick.yaml) with each augmentation variant on the
unlabeled audio of the tasks, then linear-probes every encoder on FSDD digits (speaker-disjoint split),
FSDD speaker identification (split by recording index) and ESC-10 (5-fold leave-one-fold-out), and prints
one markdown table per question. Interrupt it and run the same command again: it resumes.

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

from audiorq.atomic import atomic_write_text
from audiorq.compare import Comparison, Variant, compare, comparison_table, loss_curves
from audiorq.data.tasks import load_task
from audiorq.data.tasks.devsets import shared_data_root
from audiorq.probe.run import parse_task_data

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {
    v.name: v for v in [
        Variant("rq", "RRC → RQ, 5 bins (paper)", ("augment.chain=[rrc,rq]", "augment.rq.bins=5")),
        Variant("mixup", "Mixup → RRC (BYOL-A)", ("augment.chain=[mixup,rrc]",)),
        Variant("rrc_only", "RRC only", ("augment.chain=[rrc]",)),
        Variant("random", "random init (no training)", baseline="random:d={d},seed={seed}"),
        Variant("logmel", "log-mel mean+std+max (no network)", baseline="logmel"),
        *(Variant(f"rq_bins{b}", f"RRC → RQ, {b} bin{'s' if b > 1 else ''}",
                  ("augment.chain=[rrc,rq]", f"augment.rq.bins={b}"))
          for b in (1, 3, 8, 15)),
        Variant("rq_before_rrc", "RQ → RRC, 5 bins", ("augment.chain=[rq,rrc]", "augment.rq.bins=5")),
    ]
}
MAIN = ["rq", "mixup", "rrc_only", "random", "logmel"]
SWEEP = ["rq_bins1", "rq_bins3", "rq", "rq_bins8", "rq_bins15"]
ORDER = ["rq", "rq_before_rrc"]
DEV_TASKS = {"fsdd_digits": "fsdd", "fsdd_speakers": "fsdd", "esc10": "esc10"}
TASK_LABELS = {"fsdd_digits": "FSDD digits", "fsdd_speakers": "FSDD speakers", "esc10": "ESC-10 (5-fold)"}


def report(result: Comparison, tasks: list[str], variants: list[str], args: argparse.Namespace,
           seconds: float) -> str:
    """The markdown report: the three tables (those with two or more of `variants`), losses, time per stage."""
    def table(title: str, names: list[str]) -> list[str]:
        chosen = [VARIANTS[n] for n in names if n in variants]
        return [f"### {title}", comparison_table(result, chosen, tasks, TASK_LABELS), ""] if len(chosen) > 1 else []

    cpu = f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    lines = [
        f"Command: `python eval/mini_benchmark.py {' '.join(sys.argv[1:])}`",
        f"Machine: {cpu}; device {args.device}; torch {torch.__version__}",
        f"Recipe: {' '.join([args.recipe, *args.overrides])}; pretraining seeds {args.seeds} (main table), "
        f"{args.sweep_seeds} (bins sweep, order; the 5-bin row is the main table's RQ); "
        f"probe preset {args.preset}, {args.runs} classifier runs per seed; accuracy % as mean ± std over "
        f"seeds × runs (each run averaged over folds)",
        "",
        *table("RQ vs Mixup vs RRC only vs no pretraining", MAIN),
        *table("Bins sweep (RRC → RQ)", SWEEP),
        *table("RQ before vs after RRC", ORDER),
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


def int_list(text: str) -> list[int]:
    """'0,1' -> [0, 1] (argparse type)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="root holding fsdd/ and esc10/ (default $AUDIORQ_SHARED_DATA or ../shared/data)")
    parser.add_argument("--tasks", default=None,
                        help="YAML mapping task -> data folder (default: the three development tasks)")
    parser.add_argument("--pretrain-data", default=None,
                        help="pretraining audio folder / file list / shards (default: the tasks' audio)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "mini_benchmark")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "quick.yaml"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
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
            parser.error(f"data folder(s) {missing} not found: pass --data ROOT (holding fsdd/ and esc10/) or --tasks")
        tasks = [load_task(name, root / folder) for name, folder in DEV_TASKS.items()]

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
