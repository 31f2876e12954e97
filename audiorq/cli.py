"""Command line: a thin layer that parses options and calls library functions."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click

from audiorq import __version__
from audiorq.config import FrontendConfig, SAMPLE_RATE


def _user_error(command: str, error: BaseException) -> NoReturn:
    """A user mistake: one line naming the file or key, exit status 2, never a traceback."""
    click.echo(f"audiorq {command}: {error}", err=True)
    sys.exit(2)


def _exit_if_bad(command: str, n_bad: int, verb: str, rest: str) -> None:
    """Exit status 1 when a preparation job had files it could not use (they were listed above)."""
    if n_bad:
        click.echo(f"audiorq {command}: {n_bad} files could not be {verb} (listed above); {rest}", err=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="audiorq")
def main() -> None:
    """audiorq: BYOL-A style audio representations with randomized quantization."""


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def pretrain(args: tuple[str, ...]) -> None:
    """Pretrain an encoder: RECIPE [key=value ...].

    \b
    RECIPE is a YAML file or the name of a shipped recipe (quick, byola_rq, byola_mixup, ablation_*);
    key=value pairs override it, e.g.
      audiorq pretrain byola_rq data.source=/data/audioset out_dir=runs/rq
      audiorq pretrain quick data.source=../shared/data/fsdd/recordings resume=auto
      audiorq pretrain my_recipe.yaml data.source=/data/clips
    Multi-GPU: torchrun --nproc_per_node=8 -m audiorq.cli pretrain RECIPE ...
    Ctrl-C saves a checkpoint after the current step (a second Ctrl-C stops at once); resume=auto
    continues from it. At the end a summary says why the run stopped and what to run next; the run
    folder's loss.png shows the loss curve (redrawn at each checkpoint).
    """
    import logging

    from audiorq.config import ConfigError
    from audiorq.runs import RunFileError
    from audiorq.train import BadDataError, RunDirError, Trainer, TrainingInterrupted, load_pretrain_config

    if not args or "=" in args[0]:
        raise click.UsageError("usage: audiorq pretrain RECIPE [key=value ...]  (RECIPE: a .yaml file or a "
                               "shipped name such as quick or byola_rq)")
    rank0 = os.environ.get("RANK", "0") == "0"
    if rank0:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    trainer = None
    try:
        cfg = load_pretrain_config(args[0], list(args[1:]))
        trainer = Trainer(cfg)
        trainer.fit()
    except (ConfigError, RunDirError, BadDataError, RunFileError, ValueError, OSError) as e:
        # ValueError: every bad-input error (AudioError, DataSourceError, ...); OSError: out_dir, a full disk.
        _user_error("pretrain", e)
    except TrainingInterrupted as e:
        if rank0 and e.summary is not None:
            click.echo(e.summary.text())
        click.echo(f"audiorq pretrain: interrupted; checkpoint saved at {e.checkpoint}; "
                   f"continue with the same command plus resume=auto", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("audiorq pretrain: stopped at once (second Ctrl-C), without a new checkpoint; resume=auto "
                   "continues from the last one", err=True)
        sys.exit(130)
    if rank0 and trainer.summary is not None:
        click.echo(trainer.summary.text())


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False), metavar="RUN...")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="PNG to write [default: RUN/loss.png for one run, ./loss_curves.png for several].")
def plot(runs: tuple[str, ...], out: str | None) -> None:
    """Draw the loss curves (and monitor curves, if logged) of run folders, overlaid: RUN [RUN ...].

    \b
      audiorq plot runs/quick                      redraws runs/quick/loss.png
      audiorq plot runs/rq runs/mixup --out rq_vs_mixup.png
    """
    from audiorq.plots import plot_runs

    try:
        path = plot_runs(list(runs), out)
    except (ValueError, OSError) as e:  # PlotError (no metrics), unreadable files, a full disk
        _user_error("plot", e)
    click.echo(f"wrote {path}")


def _task_names() -> str:
    """Every task the registry knows, for the help text."""
    from audiorq.data.tasks import TASKS

    return ", ".join(TASKS)


@main.command()
@click.argument("encoder")
@click.option("--task", "tasks", required=True,
              help=f"Task name ({_task_names()}), a comma list, or 'all' (every task --data names).")
@click.option("--data", default=None,
              help="The task's data folder; for several tasks a YAML file or task=folder[,task=folder] map. "
                   "fsdd_digits, fsdd_speakers and esc10 also take the shared data root holding fsdd/ and esc10/ "
                   "(e.g. ../shared/data), and default to $AUDIORQ_SHARED_DATA.")
@click.option("--name", default=None,
              help="Display name of the encoder in scores.csv and table.md [default: the run folder's name, "
                   "else the file's folder-stem, or the baseline's name such as logmel-mean+std+max].")
@click.option("--preset", type=click.Choice(["byola", "evar"]), default="byola", show_default=True,
              help="Protocol: byola (BYOL-A IJCNN / RQ paper) or evar (EVAR).")
@click.option("--runs", type=int, default=None, help="Classifier runs per task (preset: byola 10, evar 3).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", "out_dir", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Folder for scores.csv (appended) and table.md.")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False),
              help="Embedding cache folder [default: OUT/cache].")
@click.option("--skip-missing", is_flag=True, help="Evaluate without missing files instead of stopping.")
@click.option("--skip-bad", is_flag=True,
              help="Evaluate without files that cannot be decoded (counted and listed) instead of stopping.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Probe setting override, e.g. lr=1e-4, patience=20, norm_files=5000 (repeatable).")
@click.option("--frontend", "frontend_overrides", multiple=True, metavar="KEY=VALUE",
              help="Log-mel frontend override, e.g. mel_scale=htk for a BYOL-A v1 model (repeatable).")
@click.option("--task-option", "task_options", multiple=True, metavar="KEY=VALUE",
              help="Task reader option, e.g. variant=b for spcv2_12 (repeatable).")
@click.option("--max-per-class", type=int, default=None,
              help="Quick look: at most N clips per class and split; rows are marked as quick looks in "
                   "scores.csv (quick_look=N) and table.md (not for reported numbers).")
@click.option("--workers", type=int, default=None,
              help="Audio decoding worker processes [default: min(8, CPU count)]; 0 = decode in the main process.")
@click.option("--threads", type=int, default=None,
              help="torch CPU threads (e.g. 1 on a busy shared machine) [default: torch's choice].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
def probe(
    encoder: str, tasks: str, data: str | None, name: str | None, preset: str, runs: int | None, device: str,
    out_dir: str, cache_dir: str | None, skip_missing: bool, skip_bad: bool, overrides: tuple[str, ...],
    frontend_overrides: tuple[str, ...], task_options: tuple[str, ...], max_per_class: int | None,
    workers: int | None, threads: int | None,
    progress: bool,
) -> None:
    """Linear-probe ENCODER: checkpoint.pt, encoder.pth, a run folder, a BYOL-A .pth, 'random' or 'logmel'.

    \b
    Appends one row per fold x run to OUT/scores.csv and prints the paper's Table 9 beside ours (other tasks,
    such as the stand-ins, in a table of their own), e.g.
      audiorq probe runs/rq/checkpoint.pt --task spcv2 --data /data/spcv2 --device cuda
      audiorq probe runs/rq --task all --data tasks.yaml --preset evar
      audiorq probe random:d=2048,seed=0 --task us8k --data /data/UrbanSound8K
      audiorq probe runs/quick --task fsdd_digits,esc10 --data ../shared/data --max-per-class 10
    """
    import torch

    from audiorq.audio import printable_path
    from audiorq.config import apply_overrides
    from audiorq.data.messages import one_line_warnings
    from audiorq.probe import format_table, probe_tasks

    if threads:
        torch.set_num_threads(threads)
    try:
        with one_line_warnings():
            results = probe_tasks(
                encoder, tasks, data, task_options=apply_overrides({}, task_options), skip_missing=skip_missing,
                device=device, frontend_overrides=frontend_overrides, name=name, preset=preset, runs=runs,
                out_dir=out_dir, cache_dir=cache_dir, overrides=overrides, max_per_class=max_per_class,
                workers=min(8, os.cpu_count() or 1) if workers is None else workers,
                progress=progress, skip_bad=skip_bad,
            )
    except (ValueError, OSError) as e:  # bad input (ProbeError, TaskError, AudioError, ...): no traceback
        click.echo(f"audiorq probe: error: {e}", err=True)
        sys.exit(2)
    summaries = [s for r in results for s in r.summary]
    for r in results:  # each bad file once, one line each, then the count
        for p, why in r.bad:
            click.echo(f"skipped {printable_path(p)}: {why}", err=True)
        if r.bad:
            click.echo(f"{r.summary[0]['task']}: skipped {len(r.bad)} undecodable files (listed above)", err=True)
    if max_per_class:
        click.echo(f"quick look (--max-per-class {max_per_class}): a per-class subset, not a reportable number")
    for s in summaries:
        click.echo(f"{s['task']}: {100 * s['mean']:.2f} ± {100 * s['std']:.2f} % "
                   f"({s['runs']} runs x {s['folds']} fold(s))" + (" [quick look]" if s.get("quick_look") else ""))
    click.echo(format_table(summaries))
    click.echo(f"rows appended to {results[0].scores_csv}; table in {results[0].table_md}")


@main.command()
@click.argument("audio", type=click.Path(dir_okay=False))
@click.option("--aug", "aug", default="rq", show_default=True, metavar="NAMES",
              help="Comma-separated rows: rq, mixup, rrc, none, or RECIPE.yaml (its augment: chain).")
@click.option("--bins", type=int, default=5, show_default=True, help="RQ bins (for --aug rq).")
@click.option("--views", type=int, default=3, show_default=True, help="Augmented views per augmentation.")
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed gives the same views.")
@click.option("--start", type=float, default=0.0, show_default=True, help="Start of the span, seconds.")
@click.option("--duration", type=float, default=None,
              help="Length of the span, seconds (default: to the end, at most 10 s).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: listen_<audio name>_<aug names>).")
@click.option("--overwrite", is_flag=True, help="Replace outputs of an earlier listen run in --out.")
@click.option("--iters", type=int, default=32, show_default=True, help="Griffin-Lim iterations.")
@click.option("--mixup-with", "mixup_with", multiple=True, metavar="self|noise|FILE",
              help="Mixup memory bank: self (time-shifted copies of the clip; default), noise, or audio "
                   "files (repeatable).")
@click.option("--frontend-recipe", "frontend_recipe", default=None, metavar="RECIPE",
              help="Take the log-mel settings from this recipe's frontend: section (a .yaml file or a shipped "
                   "recipe name; default: the standard frontend).")
# The old name of --frontend-recipe, kept working; `probe --frontend` takes KEY=VALUE, hence the rename.
@click.option("--frontend", "frontend_alias", default=None, hidden=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def listen(audio: str, aug: str, bins: int, views: int, seed: int, start: float, duration: float | None,
           out_dir: str | None, overwrite: bool, iters: int, mixup_with: tuple[str, ...],
           frontend_recipe: str | None, frontend_alias: str | None, device: str) -> None:
    """Hear and see augmented log-mel spectrograms (Griffin-Lim inversion + figure).

    \b
    Writes original.wav, view1.wav ... (or <aug>_view1.wav ... with several --aug; one view for none),
    views.png and listen.json to --out (default listen_<audio name>_<aug names>), and prints the
    inversion quality of each file, e.g.
      audiorq listen clip.wav --aug rq --bins 5 --views 3 --seed 0 --out listen_rq
      audiorq listen long.ogg --aug rq,mixup,rrc --start 30 --duration 5
    """
    from audiorq.audio import AudioError
    from audiorq.config import ConfigError, recipe_section
    from audiorq.listen import ListenError, default_out_dir, listen as run

    if frontend_alias is not None:
        if frontend_recipe is not None:
            click.echo("audiorq listen: give --frontend-recipe only (--frontend is its old name)", err=True)
            sys.exit(2)
        click.echo("note: --frontend is now --frontend-recipe (the old name still works)", err=True)
        frontend_recipe = frontend_alias

    mixup_source: str | list[str] = "self"
    if len(mixup_with) == 1 and mixup_with[0] in ("self", "noise"):
        mixup_source = mixup_with[0]
    elif mixup_with:
        mixup_source = list(mixup_with)
    try:
        frontend = recipe_section(FrontendConfig, frontend_recipe, "frontend") if frontend_recipe else None
        result = run(
            audio, augs=[a for a in aug.split(",") if a.strip()], views=views, seed=seed,
            out_dir=out_dir or default_out_dir(audio, aug), bins=bins, start=start, duration=duration,
            overwrite=overwrite, n_iter=iters, frontend=frontend, mixup_with=mixup_source, device=device,
            announce=lambda line: click.echo(f"note: {line}", err=True),
        )
    except (AudioError, ConfigError, ListenError, OSError) as e:
        _user_error("listen", e)
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {result.out_dir}/: {result.original.name}, "
               f"{', '.join(v.path.name for v in result.views)}, {result.figure.name}, {result.manifest.name}")
    click.echo(f"span [{result.start:.2f}, {result.start + result.duration:.2f}) s at {result.sample_rate} Hz; "
               "log-mel error = mean |log-mel of the inverted audio (before loudness matching) - its target| "
               "over bins within 40 dB of the peak")
    click.echo(result.table())


@main.command()
@click.option("--out", "out_dir", default="demo_out", show_default=True,
              help="Output folder (a fresh -2, -3, ... sibling if it exists).")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Real labeled audio instead of the synthetic corpus: a root holding fsdd/ (e.g. ../shared/data: "
                   "FSDD digits), a metadata CSV (path,label,split), or a folder of class subfolders.")
@click.option("--steps", type=int, default=None,
              help="Pretraining steps of batch 32 [default: 120; the whole demo ~2.5 min on 2 idle CPU cores].")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def demo(out_dir: str, data: str | None, steps: int | None, seed: int, device: str, progress: bool) -> None:
    """End to end on a built-in default (no downloads): synthesize a labeled corpus, pretrain with RQ, probe
    against random init and log-mel on a held-out split, write `listen` views of one clip."""
    import logging

    from audiorq.config import ConfigError
    from audiorq.demo import DEMO_STEPS, DemoDataError, run_demo

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_demo(out_dir, data=data, seed=seed, steps=steps or DEMO_STEPS, device=device,
                          progress=progress)
    except (DemoDataError, ConfigError) as e:  # refused before any work: bad data or device
        _user_error("demo", e)
    click.echo("\n" + (result.out_dir / "summary.md").read_text())


@main.group()
def prepare() -> None:
    """One-time dataset conversion (16 kHz wav, task metadata, log-mel shards)."""


@prepare.command("task")
@click.argument("name")
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.option("--workers", "-j", type=int, default=None, help="Parallel processes (default: all CPUs).")
@click.option("--variant", default=None, help="spcv2_12 only: a (byola-relabel, default) or b (tfds).")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="Task loader option, e.g. -o metadata=voxforge.csv, -o split_file=iden_split.txt, "
                   "-o test_root=DIR. Repeatable.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def prepare_task_command(name: str, src: str, dst: str, workers: int | None, variant: str | None,
                         options: tuple[str, ...], progress: bool) -> None:
    """Convert a task's raw download SRC to 16 kHz mono WAV in DST (resumable), with a metadata CSV.

    NAME: nsynth, us8k, vc1, voxforge, spcv2, spcv2_12, csv (SRC = the CSV file), fsdd_digits,
    fsdd_speakers, esc10. Exit status 1 if some files could not be converted (they are listed).
    """
    from audiorq.data.prepare import prepare_task
    from audiorq.data.tasks import TASKS, TaskError

    if name not in TASKS:
        raise click.BadParameter(f"unknown task {name!r}; known: {', '.join(TASKS)}", param_hint="NAME")
    kwargs: dict[str, str] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--option")
        kwargs[key.strip()] = float(value) if key.strip() == "unit_sec" else value
    if variant is not None:
        kwargs["variant"] = variant
    from audiorq.data.messages import one_line_warnings

    try:
        with one_line_warnings():
            report = prepare_task(name, src, dst, workers=workers, progress=progress, **kwargs)
    except (TaskError, TypeError, ValueError, OSError) as e:
        _user_error("prepare task", e)
    click.echo(report.summary())
    _exit_if_bad("prepare task", len(report.failed), "converted", "the others are done")


@prepare.command("wav")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("dst", type=click.Path())
@click.option("--workers", "-j", type=int, default=None, help="Parallel processes (default: all CPUs).")
@click.option("--sample-rate", type=int, default=SAMPLE_RATE, show_default=True, help="Output sample rate.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def prepare_wav_command(src: str, dst: str, workers: int | None, sample_rate: int, progress: bool) -> None:
    """Convert every audio file under SRC to mono 16-bit WAV at the same relative path in DST (resumable).

    Unreadable or empty files are skipped and listed; the summary is also written to
    DST/prepare_wav_summary.json. Exit status 1 if some files could not be converted.
    """
    from audiorq.data.messages import one_line_warnings
    from audiorq.data.prepare import prepare_wav

    try:
        with one_line_warnings():
            summary = prepare_wav(src, dst, sample_rate=sample_rate, workers=workers, progress=progress)
    except (ValueError, OSError) as e:
        _user_error("prepare wav", e)
    click.echo(str(summary))
    _exit_if_bad("prepare wav", summary.n_bad, "converted", "the others are done")


@prepare.command("logmel", context_settings={"ignore_unknown_options": True})
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--workers", "-j", type=int, default=None, help="Parallel processes (default: all CPUs).")
@click.option("--shard-size", type=int, default=None,
              help="Frames per shard (default 8388608 = 1 GiB at 64 mels, about 23 h of audio).")
@click.option("--recipe", default=None, metavar="RECIPE",
              help="Take the frontend settings from this recipe's `frontend:` section (file or shipped name).")
@click.option("--max-shards", type=int, default=None, help="Stop after this many new shards (run again to go on).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def prepare_logmel_command(src: str, dst: str, overrides: tuple[str, ...], workers: int | None,
                           shard_size: int | None, recipe: str | None, max_shards: int | None, progress: bool) -> None:
    """Precompute float16 log-mel of every clip in SRC (folder or file list) into shards in DST (resumable).

    OVERRIDES are frontend settings as key=value (e.g. mel_scale=htk n_mels=64), applied after --recipe.
    Unusable files are skipped and listed; exit status 1 if there were any.
    """
    from audiorq.data.messages import one_line_warnings
    from audiorq.data.prepare import DEFAULT_SHARD_SIZE_FRAMES, prepare_logmel

    try:
        config = _frontend_settings(recipe, overrides)
        with one_line_warnings():
            summary = prepare_logmel(src, dst, config, shard_size_frames=shard_size or DEFAULT_SHARD_SIZE_FRAMES,
                                     workers=workers, progress=progress, max_new_shards=max_shards)
    except (ValueError, OSError) as e:
        _user_error("prepare logmel", e)
    click.echo(str(summary))
    _exit_if_bad("prepare logmel", summary.n_bad, "used", "the shards hold the others")


@prepare.command("webdataset", context_settings={"ignore_unknown_options": True})
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--content", type=click.Choice(["audio", "logmel"]), default="audio", show_default=True,
              help="audio: the files as they are (flac, wav, ogg, mp3); logmel: their float16 log-mel as .npy.")
@click.option("--clips-per-shard", type=int, default=None, help="Clips per tar shard (default 1000).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Shuffles the clips before they are cut into shards (-1: keep the sorted order).")
@click.option("--workers", "-j", type=int, default=None, help="Parallel processes (default: all CPUs).")
@click.option("--recipe", default=None, metavar="RECIPE",
              help="logmel: take the frontend settings from this recipe's `frontend:` section.")
@click.option("--max-shards", type=int, default=None, help="Stop after this many new shards (run again to go on).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def prepare_webdataset_command(src: str, dst: str, overrides: tuple[str, ...], content: str,
                               clips_per_shard: int | None, seed: int, workers: int | None, recipe: str | None,
                               max_shards: int | None, progress: bool) -> None:
    """Write every clip of SRC (folder or file list) into WebDataset tar shards in DST (resumable).

    Train on them with data.kind=webdataset data.source=DST. OVERRIDES (logmel) are frontend settings as
    key=value, applied after --recipe. Unusable files are skipped and listed; exit status 1 if there were any.
    """
    from audiorq.data.messages import one_line_warnings
    from audiorq.data.prepare import DEFAULT_CLIPS_PER_SHARD, prepare_webdataset

    try:
        config = None
        if content == "logmel":
            config = _frontend_settings(recipe, overrides)
        elif overrides or recipe:
            raise ValueError("frontend settings (--recipe, key=value) only apply to --content logmel")
        with one_line_warnings():
            summary = prepare_webdataset(src, dst, content, config, clips_per_shard or DEFAULT_CLIPS_PER_SHARD,
                                         seed=seed, workers=workers, progress=progress, max_new_shards=max_shards)
    except (ValueError, OSError) as e:
        _user_error("prepare webdataset", e)
    click.echo(str(summary))
    _exit_if_bad("prepare webdataset", summary.n_bad, "used", "the shards hold the others")


def _frontend_settings(recipe: str | None, overrides: tuple[str, ...]) -> FrontendConfig:
    """The frontend of `prepare`: the recipe's `frontend:` section (or the defaults), then key=value overrides."""
    from audiorq.config import apply_overrides, from_dict, recipe_section

    if recipe is not None:
        return recipe_section(FrontendConfig, recipe, "frontend", list(overrides))
    config = from_dict(FrontendConfig, apply_overrides({}, list(overrides)), prefix="frontend.")
    config.validate()
    return config


def _norm_stats_option(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        mean, std = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected MEAN,STD (two numbers), got {text!r}", param_hint="--norm-stats") from None
    return mean, std


@main.command("export")
@click.argument("src")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--norm-stats", default=None, metavar="MEAN,STD",
              help="Log-mel normalization statistics, for a bare state dict (e.g. a BYOL-A .pth) that has none.")
@click.option("--frontend", "frontend_overrides", multiple=True, metavar="KEY=VALUE",
              help="Log-mel frontend override, e.g. mel_scale=htk for a BYOL-A v1 model (repeatable).")
@click.option("--name", default=None, help="Model name in the model card [default: OUT's stem].")
@click.option("--license", "license_", default="unspecified", show_default=True, help="License field of the card.")
@click.option("--scores", "scores_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A probe scores.csv: this encoder's rows go into the model card.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT and its card.")
def export_command(src: str, out: str, norm_stats: str | None, frontend_overrides: tuple[str, ...], name: str | None,
                   license_: str, scores_csv: str | None, overwrite: bool) -> None:
    """Export a trained encoder as one shareable file: OUT.safetensors (or OUT.onnx) plus a model card OUT.md.

    \b
    SRC: a run folder, checkpoint.pt, encoder.pth, a BYOL-A .pth (with --norm-stats) or a .safetensors file.
      audiorq export runs/rq models/rq.safetensors --license CC-BY-4.0 --scores results/scores.csv
      audiorq export runs/rq models/rq.onnx          # waveform -> embedding, log-mel inside the graph
    """
    from audiorq.export import export_model
    from audiorq.model import ModelError

    try:
        path, card = export_model(src, out, norm_stats=_norm_stats_option(norm_stats),
                                  frontend_overrides=frontend_overrides, name=name, license=license_,
                                  scores_csv=scores_csv, overwrite=overwrite)
    except (ModelError, ValueError, OSError) as e:
        _user_error("export", e)
    click.echo(f"wrote {path} and its model card {card}")


@main.command("embed")
@click.argument("model")
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output file: .npz (or .parquet with pyarrow installed).")
@click.option("--frames", is_flag=True, help="Also store frame embeddings and their times (ms).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Clips per batch.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--norm-stats", default=None, metavar="MEAN,STD", help="For a bare state dict without statistics.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
def embed_command(model: str, sources: tuple[str, ...], out: str, frames: bool, batch_size: int, device: str,
                  norm_stats: str | None, overwrite: bool, progress: bool) -> None:
    """Embed audio files with MODEL (run folder, checkpoint, encoder.pth, .safetensors): SOURCES are files or
    folders (scanned recursively); unreadable files are skipped, counted and listed."""
    from audiorq.embed import EmbedError, embed_files
    from audiorq.model import ModelError, load_model

    try:
        loaded = load_model(model, device=device, norm_stats=_norm_stats_option(norm_stats))
        result = embed_files(loaded, sources, out, frames=frames, batch_size=batch_size, overwrite=overwrite,
                             progress=progress)
    except (ModelError, EmbedError, ValueError, OSError) as e:
        _user_error("embed", e)
    for path, reason in result.bad[:20]:
        click.echo(f"skipped {path}: {reason}", err=True)
    if len(result.bad) > 20:
        click.echo(f"... and {len(result.bad) - 20} more skipped files", err=True)
    click.echo(f"embedded {len(result.files)} files ({result.embeddings.shape[1]}-d), skipped {len(result.bad)}; "
               f"wrote {result.out}")


if __name__ == "__main__":
    main()
