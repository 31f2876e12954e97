"""Training loop: real steps on tiny data, run folder, exact resume, bad data, DDP on 2 CPU ranks, CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from torch.utils.data import Dataset

from audiorq.config import ConfigError, PretrainConfig, from_dict, load_config, recipe_names
from audiorq.models import AudioNTT2020
from audiorq.train import (
    BadDataError, ResumableSampler, RunDirError, Trainer, TrainingInterrupted, TrainingParts, load_checkpoint,
    pretrain,
)
from audiorq.train.metrics import RunLogger, StepRecord, read_metrics

REPO = Path(__file__).resolve().parents[1]
SAMPLES = 15200  # 0.95 s at 16 kHz -> 96 frames


class ToyWaves(Dataset):
    """Follows the AudioFolder protocol: (S,) float32 waveforms, None for `bad` indices, set_epoch, kind."""

    kind = "wave"

    def __init__(self, n: int = 8, bad: tuple[int, ...] = (), interrupt_at: int | None = None):
        self.n, self.bad, self.interrupt_at = n, set(bad), interrupt_at
        self.epoch, self.calls = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor | None:
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C while data loads
        if i in self.bad:
            return None
        # Harmonic tones whose pitch depends on the item, with a crop-like random offset per epoch.
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        t = torch.arange(SAMPLES) / 16000 + torch.rand(1, generator=g)
        f0 = 100.0 + 60.0 * (i % 7)
        wave = sum(torch.sin(2 * torch.pi * f0 * k * t) / k for k in range(1, 5))
        return (0.2 * wave + 0.01 * torch.randn(SAMPLES, generator=g)).float()


class ToyLogMel(Dataset):
    """LogMelShards protocol: (1, 64, 96) un-normalized log-mel items and dataset statistics."""

    kind = "logmel"
    stats = (-6.0, 3.0)

    def __init__(self, n: int = 8):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        return -6.0 + 3.0 * torch.randn(1, 64, 96, generator=g)


def tiny_config(out_dir: Path, *overrides: str) -> PretrainConfig:
    """CPU-sized config: d 32, heads 64 -> 16, batch 4, norm stats given (no stats pass)."""
    base = [
        f"out_dir={out_dir}", "device=cpu", "batch_size=4", "model.d=32", "model.hidden_dim=64",
        "model.proj_dim=16", "data.num_workers=0", "data.norm_stats=[-8.0, 4.0]", "log.tensorboard=false",
        "log.progress=false", "log.every_steps=1", "epochs=3", "optim.lr=1e-3",
    ]
    return load_config(PretrainConfig, None, base + list(overrides))


def learner_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoint.pt")["learner"]


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_one_real_step_writes_a_complete_run_folder(tmp_path):
    cfg = tiny_config(tmp_path / "run", "max_steps=2", "log.tensorboard=true")
    torch.manual_seed(cfg.seed)
    init = AudioNTT2020(64, 32).state_dict()
    run = pretrain(cfg, dataset=ToyWaves())
    ckpt = load_checkpoint(run / "checkpoint.pt")
    for key in ("encoder", "learner", "optimizer", "target", "epoch", "step", "rng", "norm_stats", "config", "augment"):
        assert key in ckpt, key
    assert ckpt["step"] == 2 and ckpt["epoch"] == 0 and ckpt["batch_in_epoch"] == 2
    assert ckpt["norm_stats"] == [-8.0, 4.0]
    assert ckpt["config"]["frontend"]["n_mels"] == 64
    # encoder.pth loads strictly into a fresh AudioNTT2020 with BYOL-A names, and training moved it.
    enc = AudioNTT2020(64, 32)
    enc.load_state_dict(torch.load(run / "encoder.pth", weights_only=True), strict=True)
    assert not torch.equal(enc.fc[0].weight, init["fc.0.weight"])
    assert_states_equal(enc.state_dict(), ckpt["encoder"])
    # The saved config reproduces the run's config.
    saved = from_dict(PretrainConfig, yaml.safe_load((run / "config.yaml").read_text()))
    assert saved == cfg
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["loss"] <= 8.0 and r["samples_per_s"] > 0 and 0 <= r["data_share"] <= 1 for r in rows)
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())


def test_refuses_to_overwrite_an_earlier_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("earlier run\n")
    with pytest.raises(RunDirError, match=r"already holds a run \(config.yaml\); pass resume=auto"):
        pretrain(tiny_config(run, "max_steps=1"), dataset=ToyWaves())
    assert (run / "config.yaml").read_text() == "earlier run\n" and not (run / "checkpoint.pt").exists()
    with pytest.raises(RunDirError, match="no such checkpoint"):
        pretrain(tiny_config(tmp_path / "new", f"resume={tmp_path}/missing.pt"), dataset=ToyWaves())


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """3 uninterrupted steps; 8 items / batch 4 = 2 steps per epoch, so step 3 is in the second epoch."""
    return pretrain(tiny_config(tmp_path_factory.mktemp("straight") / "a", "max_steps=3"), dataset=ToyWaves())


def test_resume_auto_is_bitwise_identical_to_a_straight_run(tmp_path, straight_run):
    straight = straight_run
    # Stops exactly at the end of epoch 0 (the edge case: all batches consumed, epoch not yet closed).
    pretrain(tiny_config(tmp_path / "b", "max_steps=2"), dataset=ToyWaves())
    resumed = pretrain(tiny_config(tmp_path / "b", "max_steps=3", "resume=auto"), dataset=ToyWaves())
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    assert a["step"] == b["step"] == 3 and a["epoch"] == b["epoch"] == 1
    assert_states_equal(a["learner"], b["learner"])
    assert_states_equal(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    assert torch.equal(a["rng"][0]["augment"], b["rng"][0]["augment"])


def test_resume_refuses_a_changed_experiment(tmp_path, straight_run):
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    with pytest.raises(ConfigError, match="augment.rq.bins"):
        pretrain(tiny_config(run, "max_steps=4", "resume=auto", "augment.rq.bins=3"), dataset=ToyWaves())


def test_cuda_graph_mode_compiles_with_it_marks_each_step_and_trains_the_same(tmp_path, straight_run, monkeypatch):
    # CPU stand-in for CUDA: torch.compile records its mode and returns the module; the parts act as on CUDA.
    modes, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    monkeypatch.setattr(TrainingParts, "cuda_graphs", property(lambda self: True))
    run = pretrain(tiny_config(tmp_path / "g", "max_steps=3", "compile=true", "compile_mode=reduce-overhead"),
                   dataset=ToyWaves())
    assert modes == ["reduce-overhead"] and len(marks) == 3
    # Cloning the outputs for the logger changes no number: same weights and logged losses as the plain run.
    assert_states_equal(learner_state(straight_run), learner_state(run))
    losses = [[(r["step"], r.get("loss")) for r in read_metrics(d / "metrics.jsonl")] for d in (run, straight_run)]
    assert losses[0] == losses[1]
    with pytest.raises(ConfigError, match="compile_mode"):
        tiny_config(tmp_path / "x", "compile_mode=cudagraphs")


def test_ctrl_c_saves_a_checkpoint_and_resume_matches(tmp_path, straight_run):
    # SIGINT arrives while item 7 loads (2nd batch): that batch is dropped (replayed on resume), step 1 is saved.
    with pytest.raises(TrainingInterrupted) as info:
        pretrain(tiny_config(tmp_path / "b", "max_steps=3"), dataset=ToyWaves(interrupt_at=7))
    ckpt = load_checkpoint(info.value.checkpoint)
    assert info.value.checkpoint == tmp_path / "b" / "checkpoint.pt"
    assert ckpt["step"] == 1 and ckpt["batch_in_epoch"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    summary = info.value.summary
    assert (summary.reason, summary.step, summary.epochs_done) == ("interrupted", 1, 0)
    assert "resume=auto" in summary.text() and (tmp_path / "b" / "loss.png").exists()
    resumed = pretrain(tiny_config(tmp_path / "b", "max_steps=3", "resume=auto"), dataset=ToyWaves())
    assert_states_equal(learner_state(straight_run), learner_state(resumed))


def test_bad_items_are_skipped_then_too_many_stop_the_run(tmp_path, caplog):
    run = pretrain(tiny_config(tmp_path / "ok", "max_steps=2", "data.bad_check_after=4",
                               "data.max_bad_fraction=0.3"), dataset=ToyWaves(bad=(3,)))
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["step"] == 2 and ckpt["rng"][0]["skipped"] == 1 and ckpt["rng"][0]["seen"] == 8
    assert "1 of" in caplog.text and "unreadable" in caplog.text
    with pytest.raises(BadDataError, match=r"items could not be read .*max_bad_fraction"):
        pretrain(tiny_config(tmp_path / "bad", "data.bad_check_after=4", "data.max_bad_fraction=0.3"),
                 dataset=ToyWaves(bad=(0, 1, 2, 3, 5, 6, 7)))


def test_logmel_dataset_uses_its_stats_and_lr_ema_schedules(tmp_path):
    cfg = tiny_config(tmp_path / "run", "data.norm_stats=null", "model.ema_schedule=cosine",
                      "optim.schedule=cosine", "optim.warmup_epochs=0.5", "epochs=2", "batch_size=2")
    trainer = Trainer(cfg, dataset=ToyLogMel(n=4))
    trainer.fit()
    parts = trainer.parts
    assert parts.norm_stats == [-6.0, 3.0] and parts.cfg.data.norm_stats == [-6.0, 3.0]
    assert cfg.data.norm_stats is None  # the caller's config is not written into
    assert load_checkpoint(trainer.run_dir / "checkpoint.pt")["norm_stats"] == [-6.0, 3.0]
    # 2 steps per epoch x 2 epochs; warmup 1 step.
    assert parts.total_steps == parts.schedule_steps == 4
    assert parts.learning_rate(0) == pytest.approx(1e-3)
    assert parts.learning_rate(1) == pytest.approx(1e-3)
    assert parts.learning_rate(3) == pytest.approx(1e-3 * (1 + torch.cos(torch.tensor(2 / 3 * torch.pi)).item()) / 2)
    assert parts.ema_decay(0) == pytest.approx(0.99) and parts.ema_decay(4) == pytest.approx(1.0)


def test_fp16_steps_use_a_grad_scaler_that_is_checkpointed(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "run", "max_steps=1", "precision=fp16"), dataset=ToyWaves())
    trainer.fit()
    assert trainer.parts.amp_dtype == torch.float16 and trainer.parts.scaler is not None
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["scaler"]["scale"] == trainer.parts.scaler.get_scale()
    assert all(torch.isfinite(v).all() for v in ckpt["learner"].values() if v.is_floating_point())


def test_sampler_splits_ranks_and_skips_batches():
    full = [list(ResumableSampler(22, 4, r, 2, seed=3)) for r in range(2)]
    assert all(len(f) == 8 for f in full)  # 11 per rank -> 2 full batches
    assert not set(full[0]) & set(full[1])
    s = ResumableSampler(22, 4, 1, 2, seed=3)
    s.set_epoch(0, start_batch=1)
    assert list(s) == full[1][4:] and len(s) == 4
    s.set_epoch(1)
    assert list(s) != full[1]


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(tiny_config(Path(out) / "run", "max_steps=2", "batch_size=8"), dataset=ToyWaves(n=24))
    trainer.fit()
    torch.save({"learner": trainer.parts.learner.state_dict(), "seen": trainer.parts.progress.seen},
               Path(out) / f"rank{rank}.pt")


def test_ddp_two_cpu_ranks_keep_identical_weights(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    # Parameters (online and EMA target) must agree bitwise. BatchNorm running statistics are rank-local
    # between steps (DDP broadcasts rank 0's at each forward), so rank 0's checkpoint is the reference.
    params = [k for k in r0["learner"] if "running_" not in k and "num_batches" not in k]
    assert len(params) > 20 and any(k.startswith("target_encoder.") for k in params)
    assert_states_equal({k: r0["learner"][k] for k in params}, {k: r1["learner"][k] for k in params})
    assert not torch.equal(r0["learner"]["encoder.features.1.running_mean"],
                           r1["learner"]["encoder.features.1.running_mean"])  # the ranks saw different data
    assert r0["seen"] == r1["seen"] == 8  # 2 steps x 4 items per rank: each rank saw its own half
    torch.manual_seed(0)
    init = AudioNTT2020(64, 32).state_dict()
    assert not torch.equal(r0["learner"]["encoder.fc.0.weight"], init["fc.0.weight"])
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert_states_equal(ckpt["learner"], r0["learner"])


def test_recipes_load_and_differ_from_the_paper_only_where_named():
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    names = {p.stem for p in recipes}
    assert {"byola_rq", "byola_mixup", "quick"} <= names
    paper = load_config(PretrainConfig, REPO / "recipes" / "byola_rq.yaml")
    assert paper == PretrainConfig(out_dir=paper.out_dir)  # the defaults are the paper's recipe
    assert paper.augment.chain == ["rrc", "rq"] and paper.augment.rq.bins == 5 and paper.model.d == 2048
    mixup = load_config(PretrainConfig, REPO / "recipes" / "byola_mixup.yaml")
    assert mixup.augment.chain == ["mixup", "rrc"]
    for p in recipes:
        cfg = load_config(PretrainConfig, p)
        assert cfg.out_dir.endswith(p.stem), p  # every recipe writes to its own run folder
        assert load_config(PretrainConfig, p.stem) == cfg  # a shipped recipe also resolves by name
    assert recipe_names() == sorted(names)
    with pytest.raises(ConfigError, match="recipe not found: nope .*byola_rq"):
        load_config(PretrainConfig, "nope")


def test_cli_pretrain_reports_config_errors(tmp_path):
    from click.testing import CliRunner

    from audiorq.cli import main

    result = CliRunner().invoke(main, ["pretrain", str(REPO / "recipes" / "quick.yaml"), f"out_dir={tmp_path}/r"])
    assert result.exit_code == 2 and "data.source" in result.output
    result = CliRunner().invoke(main, ["pretrain", str(REPO / "recipes" / "quick.yaml"), "model.dd=3"])
    assert result.exit_code == 2 and "model.dd" in result.output


def test_cli_pretrain_on_real_audio_files_with_a_bad_one(tmp_path, shared_data):
    from click.testing import CliRunner

    from audiorq.cli import main

    clips = sorted((shared_data / "fsdd" / "recordings").glob("*.wav"))[::300][:8]
    (tmp_path / "empty.wav").write_bytes(b"")
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(str(p) for p in [*clips, tmp_path / "empty.wav"]) + "\n")
    args = ["pretrain", str(REPO / "recipes" / "quick.yaml"), f"data.source={listing}", f"out_dir={tmp_path}/run",
            "device=cpu", "batch_size=4", "model.d=32", "model.hidden_dim=64", "model.proj_dim=16", "max_steps=1",
            "data.num_workers=1", "data.stats_items=9", f"data.cache_dir={tmp_path}/cache", "log.tensorboard=false",
            "data.max_bad_fraction=0.5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] == 1
    mean, std = ckpt["norm_stats"]
    assert -20 < mean < 5 and 0.5 < std < 20  # log-mel statistics of real speech
    enc = AudioNTT2020(64, 32)
    enc.load_state_dict(torch.load(tmp_path / "run" / "encoder.pth", weights_only=True))
    # The summary says why it stopped, where the encoder is and what to run next.
    run = tmp_path / "run"
    for text in ("pretraining stopped: max_steps=1 reached", f"encoder    {run / 'encoder.pth'}",
                 f"audiorq probe {run} --task esc10", f"audiorq export {run} model.safetensors"):
        assert text in result.output, text
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Running it again without resume=auto is refused with a clear message, exit code 2.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "resume=auto" in again.output
    # With resume=auto there is nothing left to do: it says so, exits 0 and leaves every file as it was.
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir() if p.is_file()}
    done = CliRunner().invoke(main, [*args, "resume=auto"])
    assert done.exit_code == 0 and f"nothing to do: {run} had already finished (1 of 1 steps)" in done.output
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir() if p.is_file()} == before


# --- progress, summary, loss.png ---------------------------------------------------------------------------

def record(step: int, epoch: int = 0, loss: float | None = 2.0) -> StepRecord:
    return StepRecord(step=step, epoch=epoch, loss=loss, lr=1e-3, ema_decay=0.99, samples=8, data_time=0.01,
                      step_time=0.1, seen=8 * step, skipped=0)


def test_the_bar_counts_the_runs_steps_and_log_lines_go_above_it(tmp_path, capsys):
    import logging

    from audiorq.config import LogConfig
    from audiorq.train.loop import _bar_safe_logging

    # max_steps=24 in epochs of 93 steps: the bar's total is the run's 24 steps (resumed at 4), not 93.
    logger = RunLogger(tmp_path / "m.jsonl", tmp_path / "tb", LogConfig(every_steps=5, tensorboard=False),
                       epochs=100, steps_per_epoch=93, total_steps=24, start_step=4)
    logger.start_epoch(0, 4)
    with _bar_safe_logging(True):
        for step in range(5, 25):
            logger.after_step(record(step, loss=None if step == 9 else 2.0))  # a skipped batch makes no step
            if step == 7:
                logging.getLogger("audiorq.train.loop").warning("signal 2: saving a checkpoint after this step")
    assert (logger.bar.n, logger.bar.total, logger.bar.desc) == (23, 24, "epoch 1/100")
    logger.close()
    err = capsys.readouterr().err
    assert "23/24" in err and "/93" not in err
    lines = re.split(r"[\r\n]", err)  # the warning has a line of its own, not the bar's
    assert any(line.endswith("signal 2: saving a checkpoint after this step") for line in lines)
    assert not any("step" in line.split("signal 2")[0] for line in lines if "signal 2" in line)
    assert [r["epoch"] for r in read_metrics(tmp_path / "m.jsonl")] == [1] * 5  # epochs numbered from 1


def test_without_a_bar_each_interval_is_a_log_line(tmp_path, caplog):
    from audiorq.config import LogConfig

    logger = RunLogger(tmp_path / "m.jsonl", tmp_path / "tb", LogConfig(every_steps=2, tensorboard=False, progress=False),
                       epochs=3, steps_per_epoch=2, total_steps=4)
    with caplog.at_level("INFO", logger="audiorq.train.metrics"):
        for epoch in range(2):
            logger.start_epoch(epoch, 0)
            for step in (2 * epoch + 1, 2 * epoch + 2):
                logger.after_step(record(step, epoch, loss=float(step)))
            logger.end_epoch(2 * epoch + 2)
        logger.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 2 and re.fullmatch(r"step 4/4 \(epoch 2/3\): loss 3\.5000, [\d.]+ samples/s, ETA 0:00:00", lines[1])
    rows = read_metrics(tmp_path / "m.jsonl")
    assert [(r.get("epoch"), r.get("epoch_end")) for r in rows] == [(1, None), (None, 1), (2, None), (None, 2)]


def test_a_run_draws_loss_png_summarizes_and_resuming_a_finished_run_does_nothing(tmp_path, straight_run):
    assert (straight_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_metrics(straight_run / "metrics.jsonl")
    assert [(r.get("epoch"), r.get("epoch_end")) for r in rows] == [(1, None), (1, None), (None, 1), (2, None)]
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir() if p.is_file()}
    trainer = Trainer(tiny_config(run, "max_steps=3", "resume=auto"), dataset=ToyWaves())
    assert trainer.fit() == run
    s = trainer.summary
    assert (s.reason, s.step, s.start_step, s.total_steps, s.final_loss) == ("nothing_to_do", 3, 3, 3, rows[-1]["loss"])
    assert f"nothing to do: {run} had already finished (3 of 3 steps)" in s.text()
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir() if p.is_file()} == before
    # One more step: it trains, and the summary says max_steps stopped it after one step.
    trainer = Trainer(tiny_config(run, "max_steps=4", "resume=auto"), dataset=ToyWaves())
    trainer.fit()
    s = trainer.summary
    assert (s.reason, s.step, s.start_step, s.epochs_done) == ("max_steps", 4, 3, 2)
    assert s.final_loss == read_metrics(run / "metrics.jsonl")[-1]["loss"]  # epoch 2's batches are all done
    assert s.loss_plot == run / "loss.png" and "max_steps=4 reached" in s.text() and "loss curve" in s.text()
