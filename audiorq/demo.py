"""The built-in end-to-end demo: a labeled corpus -> RQ pretraining -> linear probe vs baselines -> listen.

With no data it synthesizes the corpus (`audiorq.synth.CORPUS_CLASSES`), so it needs no download.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from audiorq.atomic import atomic_write_text
from audiorq.audio import save_audio
from audiorq.compare import Comparison, Variant, compare, comparison_table
from audiorq.config import SAMPLE_RATE
from audiorq.data.pretrain import AUDIO_EXTENSIONS, list_audio_files
from audiorq.data.tasks import Task, load_csv, load_task
from audiorq.listen import ListenResult, listen
from audiorq.runs import RunFolder
from audiorq.synth import CORPUS_CLASSES, corpus_clip
from audiorq.train import load_pretrain_config

RECIPE = "quick"  # a shipped recipe, resolved by name (audiorq/recipes/quick.yaml)
# Sized for ~3 minutes of pretraining on 2 CPU cores (about 1.2 s per step of 32 clips), whatever the data.
DEMO_STEPS = 120
VARIANTS = [
    Variant("rq", "RQ-pretrained (RRC → RQ, 5 bins)", ("augment.chain=[rrc,rq]", "augment.rq.bins=5")),
    Variant("random", "random init (same network)", baseline="random:d={d},seed={seed}"),
    Variant("logmel", "log-mel mean+std+max", baseline="logmel"),
]


@dataclass
class DemoResult:
    """What the demo measured and where it wrote everything."""

    out_dir: Path
    task: Task
    data: Path  # the labeled audio the demo used
    comparison: Comparison
    listen: ListenResult
    seconds: dict[str, float] = field(default_factory=dict)

    def scores_table(self) -> str:
        """Linear-probe accuracy of the three encoders on the held-out split, markdown."""
        return comparison_table(self.comparison, VARIANTS, [self.task.name])

    def table(self) -> str:
        """Artifacts as a markdown table."""
        run_dir = self.comparison.run_dirs["rq"][0]
        rows = [
            ("labeled audio", self.data),
            ("pretraining run (config, checkpoint, metrics, TensorBoard)", run_dir),
            ("pretrained encoder", RunFolder(run_dir).encoder),
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


def run_demo(out_dir: str | os.PathLike = "demo_out", data: str | os.PathLike | None = None, seed: int = 0,
             steps: int = DEMO_STEPS, device: str = "cpu", progress: bool = True) -> DemoResult:
    """Pretrain with RQ for `steps` steps on a labeled corpus (synthetic unless `data`), probe the encoder
    against random init and log-mel on the held-out split, and write `audiorq listen` views of one clip,
    all under a fresh `out_dir`."""
    out = fresh_dir(out_dir)
    out.mkdir(parents=True)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    task, data_path = demo_task(out, data, seed, progress)
    seconds["corpus"] = time.perf_counter() - start

    # Whole epochs over the corpus that cover `steps` (the schedules span them), stopped at `steps`.
    steps_per_epoch = max(1, len(task.files) // load_pretrain_config(RECIPE).batch_size)
    overrides = [f"max_steps={steps}", f"epochs={math.ceil(steps / steps_per_epoch)}", "data.stats_items=300"]
    comparison = compare(VARIANTS, [task], out / "compare", RECIPE, overrides, seeds=(seed,), runs=3, device=device,
                         progress=progress)
    seconds["pretrain"] = sum(comparison.pretrain_seconds.values())
    seconds["probe"] = sum(comparison.probe_seconds.values())

    start = time.perf_counter()
    # The first test clip of the first class: one the encoder was evaluated on.
    test_index = int(next(i for i in task.splits[0].test if task.labels[i] == 0))
    heard = listen(task.files[test_index], augs=("rq", "rrc", "mixup"), views=2, seed=seed,
                   out_dir=out / "listen", device=device)
    seconds["listen"] = time.perf_counter() - start
    result = DemoResult(out_dir=out, task=task, data=data_path, comparison=comparison, listen=heard, seconds=seconds)
    atomic_write_text(out / "summary.md", summary_text(result))
    return result


def summary_text(result: DemoResult) -> str:
    """The demo's report: probe scores, time per stage, artifacts (markdown)."""
    task, split = result.task, result.task.splits[0]
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    return "\n".join([
        f"Linear probe on {task.name} ({task.n_classes} classes; {len(split.train)} train, {len(split.test)} "
        f"held-out test clips), accuracy % mean ± std over 3 classifier runs:",
        "", result.scores_table(), "", f"Time: {times}.", "", result.table(), "",
    ])

