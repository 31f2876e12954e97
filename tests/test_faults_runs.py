"""Faults around the run folder and result files: concurrent appends, kill -9, double Ctrl-C, disk full, umask."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
import yaml

from audiorq import atomic
from audiorq.atomic import FileWriteError, append_csv_rows, atomic_torch_save, atomic_write_text, file_lock
from audiorq.config import ConfigError
from audiorq.runs import RunFolder, load_checkpoint
from audiorq.train import TrainingInterrupted, pretrain
from audiorq.train.metrics import cut_metrics, read_metrics

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from test_train import ToyWaves, tiny_config  # noqa: E402

# 16 mel bins keep a step cheap. (a) 12 items / batch 4 = 3 steps per epoch x 2 epochs; checkpoints at 3
# (epoch end), 4, 6. (b) 8 items = 2 steps per epoch x 2 epochs; checkpoints at the epoch ends 2, 4.
LONG = ("frontend.n_mels=16", "epochs=2", "checkpoint_every_steps=4")
SHORT = ("frontend.n_mels=16", "epochs=2")


class Crash(Exception):
    """Stands in for a crash: nothing after it runs, as after kill -9 (no checkpoint is saved)."""


class FaultyWaves(ToyWaves):
    """ToyWaves that, at the `at`-th item load, crashes, sends two SIGINTs, or kills its own process."""

    def __init__(self, n: int, at: int, fault: str):
        super().__init__(n=n)
        self.at, self.fault = at, fault

    def __getitem__(self, i: int) -> torch.Tensor | None:
        if self.calls + 1 == self.at:
            if self.fault == "crash":
                raise Crash
            if self.fault == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.fault == "double_sigint":
                os.kill(os.getpid(), signal.SIGINT)  # saves a checkpoint after this step ...
                os.kill(os.getpid(), signal.SIGINT)  # ... unless pressed again: stop now
        return super().__getitem__(i)


def rows_of(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields, which no two runs share."""
    keys = ("epoch_end", "step", "epoch", "loss", "lr", "ema_decay", "seen", "skipped")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in keys if k in r} for r in rows]


def assert_consistent(rows: list[dict]) -> None:
    steps = [r["step"] for r in rows if "epoch_end" not in r]
    assert steps == sorted(set(steps)), steps  # strictly increasing: nothing logged twice
    ends = [r["epoch_end"] for r in rows if "epoch_end" in r]
    assert ends == list(range(1, len(ends) + 1)), ends


def assert_same(a, b, where: str = "") -> None:
    """Bitwise equality of two checkpoint values (tensors, containers, numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_run(run: Path, reference: Path) -> None:
    a, b = load_checkpoint(run / "checkpoint.pt"), load_checkpoint(reference / "checkpoint.pt")
    assert_same({k: v for k, v in a.items() if k != "config"}, {k: v for k, v in b.items() if k != "config"})
    rows = rows_of(run)
    assert_consistent(rows)
    assert rows == rows_of(reference)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, Path]:
    """The uninterrupted runs the faulty ones must reproduce."""
    root = tmp_path_factory.mktemp("straight")
    return {
        "long": pretrain(tiny_config(root / "long", *LONG), dataset=ToyWaves(n=12)),
        "short": pretrain(tiny_config(root / "short", *SHORT), dataset=ToyWaves(n=8)),
    }


# --- concurrent appends -------------------------------------------------------------------------------

APPENDER = """
import sys, time
from pathlib import Path
from audiorq.atomic import append_csv_rows
path, me, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
while not go.exists():
    time.sleep(0.001)
for k in range(n):
    append_csv_rows(path, [{"proc": me, "n": k, f"col{me}": k}], ["proc", "n", f"col{me}"])
"""


def test_concurrent_appends_from_processes_keep_every_row(tmp_path):
    path, go, n, procs = tmp_path / "scores.csv", tmp_path / "go", 60, 3
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    workers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(p), str(n), str(go)], env=env)
               for p in range(procs)]
    go.touch()
    assert [w.wait(timeout=120) for w in workers] == [0] * procs
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert set(reader.fieldnames) == {"proc", "n", "col0", "col1", "col2"}  # the union of every column
    keys = [(int(r["proc"]), int(r["n"])) for r in rows]
    assert sorted(keys) == [(p, k) for p in range(procs) for k in range(n)]  # all rows, none twice
    for p in range(procs):  # each process's rows keep their order and their own column
        mine = [r for r in rows if r["proc"] == str(p)]
        assert [int(r["n"]) for r in mine] == list(range(n)) and all(r[f"col{p}"] == r["n"] for r in mine)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["go", "scores.csv"]  # no lock or temporary left


def test_concurrent_appends_from_threads_and_a_reentrant_lock(tmp_path):
    path = tmp_path / "scores.csv"

    def work(t: int) -> None:
        for k in range(25):
            append_csv_rows(path, [{"t": t, "k": k}], ["t", "k"])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list(csv.DictReader(path.open()))) == 100
    with file_lock(path):  # what probe.report does: append and rewrite table.md under one lock
        append_csv_rows(path, [{"t": 9, "k": 0}], ["t", "k"])
        assert (tmp_path / ".scores.csv.lock").exists()
    assert not (tmp_path / ".scores.csv.lock").exists() and len(list(csv.DictReader(path.open()))) == 101


PROBER = """
import importlib.util, sys, time
from pathlib import Path
# report.py alone (numpy + atomic), without audiorq.probe's torch-heavy package import.
spec = importlib.util.spec_from_file_location("report", sys.argv[5])
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)
write_results = report.write_results
out, me, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
while not go.exists():
    time.sleep(0.001)
for k in range(n):
    row = {"probe_id": f"{k:04d}-{me}", "model": f"m{me}", "preset": "byola", "task": "us8k", "variant": "",
           "fold": "", "run": 0, "test_acc": (k + 1) / 100}
    write_results([row], out)
"""


def test_concurrent_probes_into_one_out_dir_keep_scores_and_table_in_step(tmp_path):
    from audiorq.probe.report import format_table, latest_summaries, read_scores

    go, n = tmp_path / "go", 8
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    report = TESTS.parent / "audiorq" / "probe" / "report.py"
    workers = [subprocess.Popen([sys.executable, "-c", PROBER, str(tmp_path / "out"), str(p), str(n), str(go),
                                 str(report)], env=env) for p in range(2)]
    go.touch()
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    rows = read_scores(tmp_path / "out" / "scores.csv")
    assert sorted(r["probe_id"] for r in rows) == sorted(f"{k:04d}-{p}" for k in range(n) for p in range(2))
    table = (tmp_path / "out" / "table.md").read_text()
    assert format_table(latest_summaries(rows)) in table and "8.0 ± 0.0" in table  # the table of every row


# --- permissions ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "b.pt")
        append_csv_rows(tmp_path / "c.csv", [{"a": 1}], ["a"])
        (tmp_path / "d.txt").write_text("old")
        os.chmod(tmp_path / "d.txt", 0o600)  # e.g. written by audiorq 0.1, which made everything 0600
        atomic_write_text(tmp_path / "d.txt", "new")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == expected  # what a plain open() gives
    for name in ("a.txt", "b.pt", "c.csv", "d.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name


# --- temporaries left by a kill ---------------------------------------------------------------------------

def test_temporaries_left_by_killed_writes_are_removed_when_a_run_starts(tmp_path):
    fd, name = atomic._create_temporary(tmp_path / "checkpoint.pt")
    os.close(fd)
    assert atomic.temporary_pattern("checkpoint.pt").fullmatch(name.name)  # the pattern matches real names
    fd, old = tempfile.mkstemp(dir=tmp_path, prefix=".checkpoint.pt.", suffix=".tmp")  # ... and audiorq 0.1's
    os.close(fd)
    assert atomic.temporary_pattern("checkpoint.pt").fullmatch(Path(old).name)
    run = tmp_path / "run"
    run.mkdir()
    own = [".checkpoint.pt.a1b2c3d4.tmp", ".encoder.pth.zz_99xyz.tmp", ".metrics.jsonl.qwertyui.tmp"]
    foreign = [".checkpoint.pt.tmp", ".other.pt.abcdefgh.tmp", "checkpoint.pt.abcdefgh.tmp", "notes.tmp",
               ".checkpoint.pt.ABCDEFGH.tmp"]
    for n in own + foreign:
        (run / n).write_bytes(b"partial")
    (run / "sub").mkdir()
    (run / "sub" / own[0]).write_bytes(b"not the run's own file")
    pretrain(tiny_config(run, *SHORT, "max_steps=1"), dataset=ToyWaves(n=8))
    left = sorted(p.name for p in run.iterdir())
    assert not set(own) & set(left) and set(foreign) <= set(left) and (run / "sub" / own[0]).exists()
    (run / own[0]).write_bytes(b"killed again")  # and on resume
    pretrain(tiny_config(run, *SHORT, "max_steps=2", "resume=auto"), dataset=ToyWaves(n=8))
    assert not (run / own[0]).exists()


# --- kill -9, crash before the first checkpoint, double Ctrl-C --------------------------------------------

KILLED_RUN = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_faults_runs import LONG, FaultyWaves
from test_train import tiny_config
from audiorq.train import pretrain
pretrain(tiny_config(Path(sys.argv[2]), *LONG), dataset=FaultyWaves(n=12, at=int(sys.argv[3]), fault="sigkill"))
"""


def test_kill_9_mid_epoch_then_resume_auto_equals_an_uninterrupted_run(tmp_path, straight):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    # Killed while loading step 6's batch: checkpoint at step 4, inside epoch 2; a row at step 5 logged after it.
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, str(TESTS), str(run), "22"], env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4
    assert [r["step"] for r in rows_of(run) if "epoch_end" not in r] == [1, 2, 3, 4, 5]
    pretrain(tiny_config(run, *LONG, "resume=auto"), dataset=ToyWaves(n=12))
    assert_same_run(run, straight["long"])  # row 5 is not repeated; epoch 2's mean covers steps 4-6


def test_crash_before_the_first_checkpoint_restarts_cleanly(tmp_path, straight):
    run = tmp_path / "run"
    with pytest.raises(Crash):  # in step 2's batch: step 1 logged, no checkpoint yet
        pretrain(tiny_config(run, *SHORT), dataset=FaultyWaves(n=8, at=6, fault="crash"))
    assert not (run / "checkpoint.pt").exists() and [r["step"] for r in rows_of(run)] == [1]
    config_before, metrics_before = (run / "config.yaml").read_text(), (run / "metrics.jsonl").read_text()
    # A changed experiment is refused, naming the keys and the file, and nothing is touched.
    with pytest.raises(ConfigError, match=r"config.yaml: cannot restart .*no checkpoint yet.*differs in augment.rq.bins, model.d; only"):
        pretrain(tiny_config(run, *SHORT, "resume=auto", "augment.rq.bins=3", "model.d=64"), dataset=ToyWaves(n=8))
    assert (run / "config.yaml").read_text() == config_before
    assert (run / "metrics.jsonl").read_text() == metrics_before
    # The same experiment restarts from step 0, the old row removed (norm stats come from config.yaml).
    pretrain(tiny_config(run, *SHORT, "resume=auto", "data.norm_stats=null"), dataset=ToyWaves(n=8))
    assert_same_run(run, straight["short"])


def test_double_ctrl_c_stops_at_once_then_resume_matches(tmp_path, straight):
    run = tmp_path / "run"
    data = FaultyWaves(n=8, at=15, fault="double_sigint")  # while loading step 4's batch
    with pytest.raises(KeyboardInterrupt) as info:
        pretrain(tiny_config(run, *SHORT), dataset=data)
    assert not isinstance(info.value, TrainingInterrupted)  # no checkpoint on the second Ctrl-C ...
    assert data.calls == 14  # ... and not one more item loaded
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2  # the epoch-end one before it
    assert [r["step"] for r in rows_of(run)] == [1, 2, 2, 3]
    pretrain(tiny_config(run, *SHORT, "resume=auto"), dataset=ToyWaves(n=8))
    assert_same_run(run, straight["short"])


def test_tensorboard_keeps_the_checkpoint_step_and_hides_redone_ones(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    with pytest.raises(Crash):  # checkpoint at step 2, step 3 logged, crash in step 4's batch
        pretrain(tiny_config(run, *SHORT, "log.tensorboard=true"), dataset=FaultyWaves(n=8, at=14, fault="crash"))
    pretrain(tiny_config(run, *SHORT, "log.tensorboard=true", "resume=auto", "max_steps=4"), dataset=ToyWaves(n=8))
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    rows = [r for r in rows_of(run) if "epoch_end" not in r]
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in rows], rel=1e-6)


# --- disk full --------------------------------------------------------------------------------------------

def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, straight, monkeypatch):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    run, real, calls = tmp_path / "run", atomic._create_temporary, []

    def full_disk(path: Path) -> tuple[int, Path]:
        fd, tmp = real(path)
        if path.name == "checkpoint.pt":
            calls.append(tmp)
            if len(calls) >= 2:  # the second checkpoint (step 2) meets a full disk: every write fails ENOSPC
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
        return fd, tmp

    monkeypatch.setattr(atomic, "_create_temporary", full_disk)
    with pytest.raises(FileWriteError) as info:
        pretrain(tiny_config(run, *SHORT, "checkpoint_every_steps=1"), dataset=ToyWaves(n=8))
    message = str(info.value)
    assert "\n" not in message and "checkpoint.pt" in message and "No space left on device" in message
    assert "previous version is unchanged" in message
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 1  # intact, and the one before the failure
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # the temporary went with the error
    pretrain(tiny_config(run, *SHORT, "resume=auto"), dataset=ToyWaves(n=8))
    assert_same_run(run, straight["short"])


def test_cut_metrics_drops_later_rows_torn_lines_and_later_epoch_ends(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "epoch": 1, "loss": 1.0}, {"step": 2, "epoch": 1, "loss": 0.5},
            {"epoch_end": 1, "step": 2, "loss": 0.75}, {"step": 3, "epoch": 2, "loss": 0.25}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    assert cut_metrics(path, step=3, epochs_done=1) == rows  # only the torn line goes
    assert read_metrics(path) == rows
    # A checkpoint written at step 2 inside the loop, before the epoch was closed, had not seen its end.
    assert cut_metrics(path, step=2, epochs_done=0) == rows[:2]
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:2]
    assert cut_metrics(path, step=0, epochs_done=0) == [] and path.read_text() == ""
    assert cut_metrics(tmp_path / "absent.jsonl", 5, 1) == []


def test_metrics_of_audiorq_0_1_are_read_and_resumed_with_epochs_from_1(tmp_path):
    path = tmp_path / "metrics.jsonl"
    old = [{"step": 1, "epoch": 0, "loss": 1.0}, {"epoch_end": 1, "step": 1, "loss": 1.0},
           {"step": 2, "epoch": 1, "loss": 0.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    new = [{**r, "epoch": r["epoch"] + 1} if "epoch" in r else r for r in old]
    assert read_metrics(path) == new and path.read_text().count('"epoch": 0') == 1  # reading changes nothing
    assert cut_metrics(path, step=2, epochs_done=1) == new  # a resume renumbers the file, so appends continue it
    assert read_metrics(path) == new and '"epoch": 0' not in path.read_text()


def test_run_folder_reads_its_config_or_names_it(tmp_path):
    run = RunFolder(tmp_path)
    (tmp_path / "config.yaml").write_text("seed: [unclosed\n")
    with pytest.raises(ValueError, match="config.yaml: cannot read"):
        run.read_config()
    (tmp_path / "config.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="config.yaml: not a config mapping"):
        run.read_config()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"seed": 1}))
    assert run.read_config() == {"seed": 1}
