"""The built-in end-to-end demo: a labeled corpus -> RQ pretraining -> linear probe vs baselines -> listen.

With no data it synthesizes the corpus (`audiorq.synth.CORPUS_CLASSES`), so it needs no download.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from audiorq.atomic import atomic_write_text
from audiorq.audio import save_audio
from audiorq.compare import Comparison, Variant, compare, comparison_table, loss_curves
from audiorq.config import SAMPLE_RATE
from audiorq.device import resolve_device
from audiorq.data.pretrain import AUDIO_EXTENSIONS, list_audio_files
from audiorq.data.tasks import Task, load_csv, load_task
from audiorq.listen import ListenResult, listen
from audiorq.runs import RunFolder
from audiorq.synth import CORPUS_CLASSES, corpus_clip
from audiorq.train import load_pretrain_config

RECIPE = "quick"  # a shipped recipe, resolved by name (audiorq/recipes/quick.yaml)
# Sized for ~2.5 minutes of demo on 2 idle CPU cores (measured 2 min 30 s; ~1.2 s per step of 32 clips).
DEMO_STEPS = 120
PROBE_RUNS = 3
MIN_CLIPS_PER_CLASS = 9  # _split_of puts the 9th and 10th clip of every 10 in test

VARIANTS = [
    Variant("rq", "RQ-pretrained (RRC → RQ, 5 bins)", ("augment.chain=[rrc,rq]", "augment.rq.bins=5")),
    Variant("random", "random init (same network)", baseline="random:d={d},seed={seed}"),
    Variant("logmel", "log-mel mean+std+max", baseline="logmel"),
]


class DemoDataError(ValueError):
    """Labeled data the demo cannot use (missing, unreadable, or a class without train or test clips)."""


@dataclass
class DemoResult:
    """What the demo measured and where it wrote everything."""

    out_dir: Path
    task: Task
    data: Path  # the labeled audio the demo used
    comparison: Comparison
    listen: ListenResult
    seconds: dict[str, float] = field(default_factory=dict)
    steps: int = DEMO_STEPS
    epochs: int = 1
    loss_figure: Path | None = None

    def scores_table(self) -> str:
        """Linear-probe accuracy of the three encoders on the held-out split, markdown."""
        # One task: an "Avg" column would only repeat the score.
        return comparison_table(self.comparison, VARIANTS, [self.task.name], average=False)

    def table(self) -> str:
        """Artifacts as a markdown table."""
        run_dir = self.comparison.run_dirs["rq"][0]
        rows = [
            ("labeled audio", self.data),
            ("pretraining run (config, checkpoint, metrics, TensorBoard)", run_dir),
            ("pretrained encoder", RunFolder(run_dir).encoder),
            *((("pretraining loss curve", self.loss_figure),) if self.loss_figure else ()),
            ("probe scores (one row per run)", self.out_dir / "compare" / "probe" / "scores.csv"),
            ("listen: original, inverted", self.listen.original),
            *((f"listen: {v.aug} view {v.index}", v.path) for v in self.listen.views),
            ("listen: figure", self.listen.figure),
            ("summary", self.out_dir / "summary.md"),
        ]
        return "\n".join(["| artifact | path |", "|---|---|"] + [f"| {name} | {path} |" for name, path in rows])


def fresh_dir(base: str | os.PathLike) -> Path:
    """`base` if it does not exist yet, else `base-2`, `base-3`, ...: earlier results are never overwritten."""
    base = Path(base)
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _write_metadata(rows: list[tuple[str, str, str]], path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "split"])
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    return path


def _split_of(index: int) -> str:
    """70 % train, 10 % valid, 20 % test, interleaved over a class's clips in order."""
    return "train" if index % 10 < 7 else "valid" if index % 10 == 7 else "test"


def synth_corpus(out_dir: str | os.PathLike, clips_per_class: int = 50, seconds: float = 1.0, seed: int = 0,
                 progress: bool = True) -> Path:
    """Write `clips_per_class` clips of each `CORPUS_CLASSES` class as WAVs and a metadata.csv; returns the CSV."""
    out = Path(out_dir)
    rows = []
    jobs = [(label, i) for label in CORPUS_CLASSES for i in range(clips_per_class)]
    for n, (label, i) in enumerate(tqdm(jobs, desc="synthesizing corpus", unit="clip", disable=not progress)):
        path = out / label / f"{label}_{i:03d}.wav"
        save_audio(path, torch.from_numpy(corpus_clip(label, seconds, seed=seed * 1_000_003 + n)), SAMPLE_RATE)
        rows.append((str(path.relative_to(out)), label, _split_of(i)))
    return _write_metadata(rows, out / "metadata.csv")


def folder_metadata(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """A metadata CSV for a folder of class subfolders of audio (label = subfolder), split like the corpus."""
    root = Path(root).resolve()
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files, _ = list_audio_files(class_dir)  # sorted paths relative to class_dir
        rows += [(str(class_dir / f), class_dir.name, _split_of(i)) for i, f in enumerate(files)]
    if not rows:
        raise ValueError(f"{root}: no class subfolders with audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return _write_metadata(rows, Path(path))


def demo_task(out: Path, data: str | os.PathLike | None, seed: int, progress: bool) -> tuple[Task, Path]:
    """The demo's labeled task and where its audio is: synthetic by default; else FSDD digits (`data` holds
    fsdd/, like ../shared/data), a metadata CSV, or a folder of class subfolders."""
    if data is None:
        csv_path = synth_corpus(out / "corpus", seed=seed, progress=progress)
        return load_csv(csv_path, name="synthetic_sounds", unit_sec=1.0), csv_path.parent
    data = Path(data)
    if (data / "fsdd").is_dir():
        return load_task("fsdd_digits", data / "fsdd"), data / "fsdd"
    if data.is_file():
        return load_csv(data), data
    if data.is_dir():
        return load_csv(folder_metadata(data, out / "metadata.csv"), name=data.name), data
    raise FileNotFoundError(f"--data {data}: no such file or folder")


def check_task(task: Task, data: str | os.PathLike) -> None:
    """Refuse a task where some class has no train or no test clip (the probe and listen need both)."""
    split = task.splits[0]
    missing = {kind: [task.classes[c] for c in range(task.n_classes) if not (task.labels[idx] == c).any()]
               for kind, idx in (("train", split.train), ("test", split.test))}
    problems = [f"{len(names)} of {task.n_classes} classes have no {kind} clip ({_shown(names)})"
                for kind, names in missing.items() if names]
    if not problems:
        return
    how = (f"a folder of class subfolders needs at least {MIN_CLIPS_PER_CLASS} clips per class (of every 10, "
           "clips 1-7 train, 8 valid, 9-10 test)" if Path(data).is_dir() else "give every class train and test rows")
    raise DemoDataError(f"--data {data}: {'; '.join(problems)}; {how}")


def _shown(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def run_demo(out_dir: str | os.PathLike = "demo_out", data: str | os.PathLike | None = None, seed: int = 0,
             steps: int = DEMO_STEPS, device: str = "auto", progress: bool = True) -> DemoResult:
    """Pretrain with RQ for `steps` steps on a labeled corpus (synthetic unless `data`), probe the encoder
    against random init and log-mel on the held-out split, and write `audiorq listen` views of one clip,
    all under a fresh `out_dir`. Raises DemoDataError, before any training, for data it cannot use."""
    device = str(resolve_device(device))  # "auto" -> cpu / cuda:N once, for every stage
    out = fresh_dir(out_dir)
    out.mkdir(parents=True)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    try:
        task, data_path = demo_task(out, data, seed, progress)
        check_task(task, data_path if data is not None else out)
    except (OSError, ValueError) as e:
        shutil.rmtree(out)  # ours (fresh_dir): leave no half-made demo folder behind
        raise e if isinstance(e, DemoDataError) else DemoDataError(str(e)) from e
    seconds["corpus"] = time.perf_counter() - start

    # Whole epochs over the corpus that cover `steps` (the schedules span them), stopped at `steps`.
    steps_per_epoch = max(1, len(task.files) // load_pretrain_config(RECIPE).batch_size)
    epochs = math.ceil(steps / steps_per_epoch)
    overrides = [f"max_steps={steps}", f"epochs={epochs}", "data.stats_items=300"]
    comparison = compare(VARIANTS, [task], out / "compare", RECIPE, overrides, seeds=(seed,), runs=PROBE_RUNS,
                         device=device, progress=progress)
    seconds["pretrain"] = sum(comparison.pretrain_seconds.values())
    seconds["probe"] = sum(comparison.probe_seconds.values())

    start = time.perf_counter()
    # The first test clip of the first class: one the encoder was evaluated on.
    test_index = int(next(i for i in task.splits[0].test if task.labels[i] == 0))
    heard = listen(task.files[test_index], augs=("rq", "rrc", "mixup"), views=2, seed=seed,
                   out_dir=out / "listen", device=device)
    seconds["listen"] = time.perf_counter() - start
    figure = loss_curves({"rq": comparison.run_dirs["rq"]}, out / "loss.png", {"rq": VARIANTS[0].label})
    result = DemoResult(out_dir=out, task=task, data=data_path, comparison=comparison, listen=heard, seconds=seconds,
                        steps=steps, epochs=epochs, loss_figure=figure)
    atomic_write_text(out / "summary.md", summary_text(result))
    return result


def summary_text(result: DemoResult) -> str:
    """The demo's report: probe scores, pretraining loss, what the numbers mean, what to run next, artifacts."""
    task, split = result.task, result.task.splits[0]
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    loss = result.comparison.final_loss.get("rq", float("nan"))
    curve = f" (curve: {result.loss_figure})" if result.loss_figure else ""
    return "\n".join([
        "# audiorq demo", "",
        f"Linear probe on {task.name} ({task.n_classes} classes; {len(split.train)} train, {len(split.test)} "
        f"held-out test clips), accuracy % mean ± std over {PROBE_RUNS} classifier runs "
        f"(chance {100 / task.n_classes:.1f} %):",
        "", result.scores_table(), "",
        f"Pretraining: {result.steps} steps of batch {load_pretrain_config(RECIPE).batch_size} "
        f"({result.epochs} pass{'es' if result.epochs != 1 else ''} over {len(task.files)} clips), recipe `{RECIPE}` with RRC → RQ; "
        f"final BYOL loss {loss:.4f}{curve}.", "",
        "## What these numbers mean", "", reading(result), "",
        "## Next", "", *next_commands(result), "",
        f"Time: {times}.", "", result.table(), "",
    ])


def reading(result: DemoResult) -> str:
    """A paragraph on what the scores say at the demo's scale (and what they do not)."""
    mean = {v.name: (result.comparison.mean_std(v.name, result.task.name) or (float("nan"), 0.0))[0]
            for v in VARIANTS}
    text = (f"This run checks that the whole pipeline works; it is not a measurement of RQ. {result.steps} "
            "steps are a tiny fraction of real pretraining (the paper: 100 epochs of AudioSet). At this scale "
            "the log-mel mean+std+max baseline is strong on small tasks, the untrained network's random "
            "convolutional features are a known strong baseline for a linear probe, and a short pretraining "
            "can move the encoder away from those features before it learns better ones.")
    if mean["rq"] < mean["random"]:
        text += " So the RQ-pretrained encoder scoring below random init here is expected, not a bug."
    if mean["rq"] < mean["logmel"]:
        text += " Beating log-mel needs far longer pretraining on far more audio."
    text += (" What to check: every encoder is above chance, and the loss curve goes down. For a comparison "
             "that means something, pretrain longer and on more data (below).")
    return text


def next_commands(result: DemoResult) -> list[str]:
    """Markdown bullets: the commands to run after the demo, filled in with this run's paths."""
    run_dir = result.comparison.run_dirs["rq"][0]
    files = result.comparison.out_dir / "pretrain_files.txt"
    if result.task.name == "fsdd_digits":
        task, data = "fsdd_digits", result.data
    else:  # a metadata CSV: the one given, or the one the demo wrote for a folder or its corpus
        task = "csv"
        data = result.data if result.data.is_file() else next(
            p for p in (result.out_dir / "metadata.csv", result.data / "metadata.csv") if p.is_file())
    return [
        "- The full CPU recipe on the same audio (2 epochs), then probe it:",
        f"  `audiorq pretrain {RECIPE} data.source={files} out_dir=runs/{RECIPE}` and "
        f"`audiorq probe runs/{RECIPE} --task {task} --data {data}`",
        "- The paper's comparison at CPU scale (RQ vs Mixup vs RRC only, bins sweep; FSDD and ESC-10 from "
        "../shared/data): `.venv/bin/python eval/mini_benchmark.py --out runs/mini_benchmark`",
        f"- Share this encoder as one file: `audiorq export {run_dir} demo_encoder.safetensors`",
    ]
