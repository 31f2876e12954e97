"""Fault suite (issue 15): every bad input is a one-line error naming the file or key, exit status 2, no
traceback, and nothing that existed before is changed; bad files inside a corpus are skipped and counted."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from audiorq.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["device=cpu", "batch_size=4", "model.d=32", "model.hidden_dim=64", "model.proj_dim=16", "epochs=1",
        "max_steps=1", "data.num_workers=0", "data.stats_items=4", "log.tensorboard=false", "log.progress=false"]
PROBE = ["--device", "cpu", "--no-progress", "--runs", "1", "--workers", "0"]


def write_wav(path: Path, seconds: float = 0.5, sr: int = 16000, amp: float = 0.3, subtype: str = "PCM_16",
              freq: float = 440.0) -> Path:
    """A sine tone as a wav file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, subtype=subtype)
    return path


def snapshot(root: Path) -> dict[str, str]:
    """sha1 of every file under `root`, by relative path."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """A workspace: a small corpus, a finished run folder, log-mel shards, a CSV task, a probe result folder."""
    root = tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIORQ_CACHE_DIR", str(root / "cache"))  # scan caches outside the snapshot
        yield _workspace(root)


def _workspace(root: Path) -> dict[str, Path]:
    w = {"root": root, "data": root / "data", "out": root / "out", "cache": root / "cache"}
    src = w["src"] = w["data"] / "src"
    for i in range(6):
        write_wav(src / f"c{i}.wav", freq=300.0 + 100 * i)
    runner = CliRunner()
    run = w["run"] = w["data"] / "run"
    res = runner.invoke(main, ["pretrain", "quick", f"data.source={src}", f"out_dir={run}", *TINY,
                               f"data.cache_dir={w['cache']}"])
    assert res.exit_code == 0, res.output
    shards = w["shards"] = w["data"] / "shards"
    res = runner.invoke(main, ["prepare", "logmel", str(src), str(shards), "-j", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    csv = w["csv"] = w["data"] / "task.csv"
    csv.write_text("path,label,split\n" + "".join(
        f"src/c{i}.wav,{'ab'[i % 2]},{'train' if i < 4 else 'test'}\n" for i in range(6)))
    results = w["results"] = w["data"] / "results"
    res = runner.invoke(main, ["probe", "random:d=32", "--task", "csv", "--data", str(csv), "--out", str(results),
                               *PROBE])
    assert res.exit_code == 0, res.output
    # Damaged inputs, each beside the good ones.
    for kind, data in [("truncated", None), ("random", os.urandom(4096)), ("empty", b"")]:
        folder = w["data"] / f"resume_{kind}"
        shutil.copytree(run, folder)
        ckpt = folder / "checkpoint.pt"
        ckpt.write_bytes(ckpt.read_bytes()[:5000] if data is None else data)
    (w["data"] / "empty_folder").mkdir()
    (w["data"] / "a_file").write_text("not a folder\n")
    truncated = w["data"] / "shards_truncated"
    shutil.copytree(shards, truncated)
    shard = sorted((truncated / "shards").glob("*.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:300])
    (w["data"] / "bad_recipe.yaml").write_text("frontend: [a, b\n")
    (w["data"] / "tasks.yaml").write_text("csv: [a\n")
    (w["data"] / "random.pth").write_bytes(os.urandom(3000))
    undecodable = w["data"] / "undecodable"
    shutil.copytree(src, undecodable / "src")
    (undecodable / "src" / "c5.wav").write_bytes(b"RIFF" + os.urandom(2000))
    shutil.copy(csv, undecodable / "task.csv")
    (w["data"] / "garbage.mp3").write_bytes(os.urandom(3000))
    return w


def invoke(args: list[str]):
    """Run the CLI in this process; returns the click Result."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(main, [str(a) for a in args])


def pretrain_args(w: dict[str, Path], *extra: str, source: Path | None = None, out: str = "run_new") -> list[str]:
    """`pretrain quick` on the workspace corpus into a fresh out_dir, with `extra` overrides."""
    return ["pretrain", "quick", f"data.source={source or w['src']}", f"out_dir={w['out'] / out}", *TINY,
            f"data.cache_dir={w['cache']}", *extra]


def probe_args(w: dict[str, Path], *extra: str, encoder: str = "random:d=32", csv: Path | None = None,
               workers: int = 0) -> list[str]:
    """`probe` of the workspace CSV task into a fresh folder, decoding in `workers` DataLoader workers."""
    return ["probe", encoder, "--task", "csv", "--data", str(csv or w["csv"]), "--out", str(w["out"] / "probe"),
            *PROBE[:-1], str(workers), *extra]


# (case id, CLI args from the workspace, text the message must contain)
CASES = [
    ("empty data.source folder", lambda w: pretrain_args(w, source=w["data"] / "empty_folder"), "no audio files"),
    ("optim.lr=.nan", lambda w: pretrain_args(w, "optim.lr=.nan"), "optim.lr"),
    ("data.crop_sec=.inf", lambda w: pretrain_args(w, "data.crop_sec=.inf"), "data.crop_sec"),
    ("frontend.hop_length=0", lambda w: pretrain_args(w, "frontend.hop_length=0"), "frontend.hop_length"),
    ("seed=-1", lambda w: pretrain_args(w, "seed=-1"), "seed"),
    ("out_dir is a file", lambda w: pretrain_args(w, f"out_dir={w['data'] / 'a_file'}"), "a_file"),
    ("override with invalid YAML", lambda w: pretrain_args(w, "augment.chain=[rrc,rq"), "augment.chain"),
    ("augment.rq.bins huge", lambda w: pretrain_args(w, "augment.rq.bins=1000000000"), "augment.rq.bins"),
    ("resume from truncated checkpoint",
     lambda w: pretrain_args(w, "resume=auto", f"out_dir={w['data'] / 'resume_truncated'}"), "checkpoint.pt"),
    ("resume from random-bytes checkpoint",
     lambda w: pretrain_args(w, "resume=auto", f"out_dir={w['data'] / 'resume_random'}"), "checkpoint.pt"),
    ("resume from 0-byte checkpoint",
     lambda w: pretrain_args(w, "resume=auto", f"out_dir={w['data'] / 'resume_empty'}"), "checkpoint.pt"),
    ("resume=encoder.pth", lambda w: pretrain_args(w, f"resume={w['run'] / 'encoder.pth'}"), "encoder.pth"),
    ("logmel source that is not shards", lambda w: pretrain_args(w, "data.kind=logmel"), "data.kind=wave"),
    ("shard folder without data.kind=logmel", lambda w: pretrain_args(w, source=w["shards"]), "data.kind=logmel"),
    ("truncated shard", lambda w: pretrain_args(w, "data.kind=logmel", source=w["data"] / "shards_truncated"),
     "shard-00000.npy"),
    ("prepare logmel --recipe invalid YAML",
     lambda w: ["prepare", "logmel", w["src"], w["out"] / "lm", "--recipe", w["data"] / "bad_recipe.yaml", "-j", "1",
                "--no-progress"], "bad_recipe.yaml"),
    ("prepare logmel override with invalid YAML",
     lambda w: ["prepare", "logmel", w["src"], w["out"] / "lm", "n_mels=[64", "-j", "1", "--no-progress"], "n_mels"),
    ("listen --bins huge",
     lambda w: ["listen", w["src"] / "c0.wav", "--bins", "1000000000", "--out", w["out"] / "listen", "--device", "cpu"],
     "bins"),
    ("listen garbage mp3",
     lambda w: ["listen", w["data"] / "garbage.mp3", "--out", w["out"] / "listen", "--device", "cpu"],
     "not a recognised audio format"),
    ("probe decode error in a DataLoader worker",
     lambda w: probe_args(w, csv=w["data"] / "undecodable" / "task.csv", workers=1), "c5.wav"),
    ("probe invalid tasks.yaml",
     lambda w: ["probe", "random:d=32", "--task", "all", "--data", w["data"] / "tasks.yaml", "--out",
                w["out"] / "probe", *PROBE], "tasks.yaml"),
    ("probe random-bytes encoder", lambda w: probe_args(w, encoder=str(w["data"] / "random.pth")), "random.pth"),
    ("probe --max-per-class 0", lambda w: probe_args(w, "--max-per-class", "0"), "max-per-class"),
    ("probe --max-per-class -3", lambda w: probe_args(w, "--max-per-class", "-3"), "max-per-class"),
    ("probe unknown task option", lambda w: probe_args(w, "--task-option", "bogus=1"), "bogus"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_one_line_error(ws, case):
    _, make_args, needle = case
    before = snapshot(ws["data"])
    result = invoke(make_args(ws))
    assert result.exit_code == 2, result.output
    assert needle in result.output, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.strip()]
    assert len(errors) == 1, result.output  # one line
    assert snapshot(ws["data"]) == before  # nothing that existed changed
    # A refused run leaves nothing behind that would block a plain rerun.
    assert not (ws["out"] / "run_new" / "config.yaml").exists()


def test_bad_files_in_a_corpus_are_skipped_and_counted(ws, tmp_path, caplog):
    corpus = tmp_path / "corpus"
    for i in range(4):
        write_wav(corpus / f"c{i}.wav")
    write_wav(corpus / "tmp.wav")
    os.rename(bytes(corpus / "tmp.wav"), bytes(corpus) + b"/x\xff.wav")  # not UTF-8
    write_wav(corpus / "new\nline.wav")
    write_wav(corpus / "loud.wav", subtype="FLOAT", amp=1e20)
    for command in ("wav", "logmel"):
        result = invoke(["prepare", command, corpus, tmp_path / command, "-j", "1", "--no-progress"])
        assert result.exit_code == 1, result.output  # done, but some files could not be used: both commands
        assert "3 bad" in result.output and "3 files could not be" in result.output
        assert r"x\udcff.wav" in result.output and "not valid UTF-8" in result.output
        assert r"new\nline.wav" in result.output and "line break" in result.output
        assert "loud.wav: sample values up to 1e+20" in result.output
    from audiorq.data.pretrain import AudioFolder

    with caplog.at_level(logging.WARNING, logger="audiorq.data.pretrain"):
        folder = AudioFolder(corpus, cache_dir=tmp_path / "cache")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[-1].endswith("2 of 7 files are unusable and will be skipped")
    assert sum(r"x\udcff.wav" in m for m in messages) == 1  # each bad file named once
    assert sum(folder[i] is None for i in range(len(folder))) == 3  # the loud one is found on decode
    rerun = invoke(pretrain_args(ws, "data.stats_items=7", source=corpus, out="corpus_run"))
    assert rerun.exit_code == 0, rerun.output


def test_probe_skip_bad_counts_and_lists(ws):
    args = probe_args(ws, "--skip-bad", csv=ws["data"] / "undecodable" / "task.csv", workers=1)
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "skipped 1 undecodable files" in result.output and result.output.count("c5.wav") == 1  # once
    again = invoke(args)  # from the cache, which remembers the bad file
    assert again.exit_code == 0 and "skipped 1 undecodable files" in again.output
    strict = invoke([a for a in args if a != "--skip-bad"])
    assert strict.exit_code == 2 and "c5.wav" in strict.output and "--skip-bad" in strict.output


def test_probe_survives_symlink_loops_beside_listed_files(ws, tmp_path):
    shutil.copytree(ws["src"], tmp_path / "src")
    (tmp_path / "src" / "loop").symlink_to(tmp_path / "src" / "loop")
    csv = tmp_path / "task.csv"
    csv.write_text(ws["csv"].read_text())
    assert invoke(probe_args(ws, "--skip-missing", csv=csv)).exit_code == 0
    csv.write_text(ws["csv"].read_text() + "src/loop/x.wav,a,train\n")
    result = invoke(probe_args(ws, csv=csv))
    assert result.exit_code == 2 and "src/loop/x.wav" in result.output and "--skip-missing" in result.output
    assert invoke(probe_args(ws, "--skip-missing", csv=csv)).exit_code == 0


def test_probe_recomputes_a_norm_cache_that_is_not_a_mapping(ws, tmp_path):
    out = tmp_path / "results"
    args = ["probe", "random:d=32", "--task", "csv", "--data", ws["csv"], "--out", out, *PROBE]
    assert invoke(args).exit_code == 0
    for f in (out / "cache" / "norm").glob("*.json"):
        f.write_text("[1, 2]")
    result = invoke(args)
    assert result.exit_code == 0 and "Traceback" not in result.output


# ----------------------------------------------------------------------------------------------
# prepare: disk full and kill -9


def _failing_atomic_write(real, fail_on: int):
    """An atomic_write whose `fail_on`-th call writes a little and then finds the disk full."""
    calls = {"n": 0}

    def atomic_write(path, write, mode="wb"):
        calls["n"] += 1
        if calls["n"] != fail_on:
            return real(path, write, mode)

        def full(f):
            f.write(b"\0" * 10 if "b" in mode else "x")
            raise OSError(errno.ENOSPC, "No space left on device")

        return real(path, full, mode)

    return atomic_write


def _no_temp_files(root: Path) -> bool:
    return not any(name.endswith(".tmp") for _, _, names in os.walk(root) for name in names)


@pytest.mark.parametrize("command", ["wav", "logmel"])
def test_prepare_disk_full_is_one_line_and_writes_nothing_half(ws, tmp_path, monkeypatch, command):
    corpus = tmp_path / "corpus"
    for i in range(6):
        write_wav(corpus / f"c{i}.wav", freq=200.0 + 50 * i)
    extra = ["--shard-size", "60"] if command == "logmel" else []
    args = ["prepare", command, corpus, tmp_path / "out", "-j", "1", "--no-progress", *extra]
    if command == "wav":
        import audiorq.audio as target
    else:
        import audiorq.data.pretrain.logmel_shards as target
    monkeypatch.setattr(target, "atomic_write", _failing_atomic_write(target.atomic_write, fail_on=3))
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output and _no_temp_files(tmp_path / "out")
    monkeypatch.undo()
    assert invoke(args).exit_code == 0  # the rerun finishes the job ...
    clean = invoke([*args[:3], tmp_path / "clean", *args[4:]])
    assert clean.exit_code == 0
    skip = {"prepare_wav_summary.json"}  # holds timings and counts of its own run
    got = {k: v for k, v in snapshot(tmp_path / "out").items() if k not in skip}
    assert got == {k: v for k, v in snapshot(tmp_path / "clean").items() if k not in skip}  # ... identically


@pytest.mark.parametrize("command", ["wav", "logmel"])
def test_prepare_killed_then_rerun_equals_an_uninterrupted_run(tmp_path, command):
    corpus = tmp_path / "corpus"
    for i in range(60):
        write_wav(corpus / f"d{i // 20}" / f"c{i:03d}.wav", seconds=0.5, sr=44100, freq=100.0 + 10 * i)
    extra = ["--shard-size", "200"] if command == "logmel" else []
    args = ["prepare", command, str(corpus), str(tmp_path / "out"), "-j", "1", "--no-progress", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "audiorq.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = "d0/*.wav" if command == "wav" else "shards/*.json"  # some outputs are finished
    deadline = time.monotonic() + 300  # a hang guard: a slow machine only waits longer
    while not list((tmp_path / "out").glob(marker)):
        assert proc.poll() is None and time.monotonic() < deadline, "prepare ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = "prepare_wav_summary.json" if command == "wav" else "meta.json"
    assert not (tmp_path / "out" / finished).exists(), "the run finished before the kill"
    assert invoke(args).exit_code == 0
    assert invoke([*args[:3], tmp_path / "clean", *args[4:]]).exit_code == 0

    def outputs(root: Path) -> dict[str, str]:
        # Leftover temp files of the killed write are not outputs (hidden, never read back).
        return {k: v for k, v in snapshot(root).items()
                if not Path(k).name.startswith(".") and Path(k).name != "prepare_wav_summary.json"}

    assert outputs(tmp_path / "out") == outputs(tmp_path / "clean")


# ----------------------------------------------------------------------------------------------
# Fuzzing: random input never raises anything but the documented error


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from audiorq.audio import AudioError, audio_info, load_audio  # noqa: E402
from audiorq.config import ConfigError, PretrainConfig, load_config, to_dict  # noqa: E402

# AUDIORQ_FUZZ_EXAMPLES=3000 for a longer hunt; the default keeps the suite fast.
FUZZ = settings(max_examples=int(os.environ.get("AUDIORQ_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=list(HealthCheck))


def _keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


CONFIG_KEYS = _keys(to_dict(PretrainConfig()))
YAMLISH = st.sampled_from(["", "0", "-1", "1", "3", "1e9", "1000000000", ".nan", ".inf", "-.inf", "no", "yes",
                           "true", "off", "null", "~", "[", "[1, 2]", "[a, b]", "{a: 1}", "a,b", "rrc", "'x'",
                           "2020-01-01", "0x10", "1.5", "-0.0", "!!binary aGk=", "&a [*a]", "cuda:x", "auto"])


@FUZZ
@given(st.lists(st.tuples(st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=12)),
                          st.one_of(YAMLISH, st.text(max_size=12))), max_size=3))
def test_fuzz_config_overrides_give_a_valid_config_or_config_error(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(PretrainConfig, None, overrides)
    except ConfigError:
        return
    cfg.validate()
    assert isinstance(cfg.resume, str) and isinstance(cfg.seed, int)


CSV_TOKENS = st.sampled_from(["path", "label", "split", "fold", "file_name", "start", "duration", "train", "test",
                              "valid", "val", "a.wav", "/abs.wav", "x", "1", "-1", "nan", "inf", "1e400", ",", ",",
                              "\n", "\n", "\r\n", '"', "\ufeff", "\x00", " ", "é"])


@FUZZ
@given(st.one_of(st.lists(CSV_TOKENS, max_size=40).map("".join), st.binary(max_size=200)))
def test_fuzz_csv_manifests_give_a_task_or_task_error(tmp_path_factory, text):
    from audiorq.data.tasks import TaskError, load_task

    path = tmp_path_factory.mktemp("csv") / "m.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        task = load_task("csv", path, unit_sec=1.0, check_files=False)
    except TaskError:
        return
    assert len(task.files) == len(task.labels) > 0


def _wav_header(channels: int, rate: int, bits: int, fmt: int, data_size: int, riff_size: int) -> bytes:
    import struct

    block = max(1, channels * bits // 8) & 0xFFFF
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVEfmt " + struct.pack("<I", 16) + fmt_chunk
            + b"data" + struct.pack("<I", data_size))


@FUZZ
@given(channels=st.integers(0, 65535), rate=st.integers(0, 2**32 - 1),
       bits=st.sampled_from([0, 1, 8, 16, 24, 32, 64, 65535]),
       fmt=st.sampled_from([0, 1, 3, 6, 7, 0xFFFE, 12345]), data_size=st.integers(0, 2**32 - 1),
       riff_size=st.integers(0, 2**32 - 1), body=st.binary(max_size=256), garbage=st.booleans())
def test_fuzz_wav_headers_give_audio_or_audio_error(tmp_path_factory, channels, rate, bits, fmt, data_size,
                                                     riff_size, body, garbage):
    path = tmp_path_factory.mktemp("wav") / "x.wav"
    head = body if garbage else _wav_header(channels, rate, bits, fmt, data_size, riff_size)
    path.write_bytes(head + body)
    try:
        info = audio_info(path)
        wave = load_audio(path, start=0.0, duration=1.0)
    except AudioError as e:
        assert str(path) in str(e) and "possibly a pipe" not in str(e)
        return
    assert info.frames > 0 and wave.ndim == 1 and wave.dtype.is_floating_point


# ----------------------------------------------------------------------------------------------
# The smaller cases: reasons that say what happened, YAML booleans, counted skips, robust defaults


def test_resume_no_is_no_in_overrides_and_recipes(tmp_path):
    assert load_config(PretrainConfig, None, ["resume=no"]).resume == "no"
    assert load_config(PretrainConfig, None, ["resume=auto"]).resume == "auto"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("resume: no\n")
    assert load_config(PretrainConfig, recipe).resume == "no"
    with pytest.raises(ConfigError, match="resume must be no, auto or a checkpoint path"):
        load_config(PretrainConfig, None, ["resume=yes"])
    with pytest.raises(ConfigError, match="device must be"):
        load_config(PretrainConfig, None, ["device=off"])


def test_rq_bins_have_a_documented_upper_bound():
    from audiorq.config import MAX_RQ_BINS, check_rq_options

    check_rq_options(MAX_RQ_BINS, "channel", 1.0)
    with pytest.raises(ConfigError, match=f"<= {MAX_RQ_BINS}"):
        check_rq_options(MAX_RQ_BINS + 1, "channel", 1.0)


def test_audio_reasons_say_what_happened(tmp_path, monkeypatch):
    loop = tmp_path / "loop.wav"
    loop.symlink_to(loop)
    with pytest.raises(AudioError, match="symbolic link loop"):
        audio_info(loop)
    with pytest.raises(AudioError, match="is a folder"):
        audio_info(tmp_path)
    with pytest.raises(AudioError, match="file not found"):
        audio_info(tmp_path / "nope.wav")
    garbage = tmp_path / "g.mp3"
    garbage.write_bytes(os.urandom(3000))
    with pytest.raises(AudioError, match="not a recognised audio format"):
        audio_info(garbage)
    good = write_wav(tmp_path / "ok.wav")
    real_stat = os.stat

    def no_permission(path, *args, **kwargs):
        if os.fspath(path) == str(good):
            raise PermissionError(errno.EACCES, "Permission denied", str(good))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", no_permission)
    with pytest.raises(AudioError, match="ok.wav: permission denied"):
        audio_info(good)


def test_non_utf8_names_are_readable_and_printable(tmp_path):
    from audiorq.audio import printable_path

    write_wav(tmp_path / "t.wav")
    os.rename(bytes(tmp_path / "t.wav"), bytes(tmp_path) + b"/\xff.wav")
    path = os.fsdecode(bytes(tmp_path) + b"/\xff.wav")
    assert load_audio(path).shape == (8000,)  # soundfile gets the name as bytes
    assert printable_path(path) == repr(path) and printable_path("a/b.wav") == "a/b.wav"
    assert printable_path("a\nb") == repr("a\nb")


@pytest.fixture
def locked_folders(monkeypatch):
    """os.scandir refuses every folder named `locked`, as for a folder without read permission (root ignores modes)."""
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_subfolders_are_counted(tmp_path, locked_folders, caplog):
    from audiorq.data.pretrain import list_audio_files

    write_wav(tmp_path / "a" / "x.wav")
    write_wav(tmp_path / "locked" / "y.wav")
    with caplog.at_level(logging.WARNING, logger="audiorq.data.pretrain"):
        files, _ = list_audio_files(tmp_path)
    assert files == ["a/x.wav"]
    assert any(re.search(r"skipped 1 folder\(s\) that cannot be listed: .*locked", r.getMessage())
               for r in caplog.records)


def test_missing_file_check_survives_unlistable_folders(tmp_path, locked_folders):
    from audiorq.data.tasks import find_missing_files

    present = write_wav(tmp_path / "locked" / "y.wav")
    # Search permission without read permission: the file is there though its folder cannot be listed.
    absent = str(tmp_path / "locked" / "z.wav")
    assert find_missing_files([str(present), absent]) == [absent]


def test_csv_unit_sec_is_the_median_so_one_long_clip_does_not_pad_all(tmp_path):
    from audiorq.data.tasks import load_task

    for i in range(4):
        write_wav(tmp_path / f"c{i}.wav", seconds=1.0, sr=8000)
    write_wav(tmp_path / "long.wav", seconds=1200.0, sr=1000)  # 20 minutes
    (tmp_path / "m.csv").write_text("path,label,split\nc0.wav,a,train\nc1.wav,b,train\nc2.wav,a,train\n"
                                    "long.wav,b,train\nc3.wav,a,test\n")
    task = load_task("csv", tmp_path / "m.csv")
    assert task.unit_sec == 1.0 and "median" in task.info["unit_sec_source"]


def test_shard_folders_are_recognised(ws):
    from audiorq.data.pretrain import is_logmel_shards

    assert is_logmel_shards(ws["shards"]) and not is_logmel_shards(ws["src"])
    assert not is_logmel_shards(ws["data"] / "a_file")


def test_scan_names_a_symlink_loop(tmp_path):
    from audiorq.data.pretrain import scan_audio

    write_wav(tmp_path / "src" / "a.wav")
    (tmp_path / "src" / "loop.wav").symlink_to(tmp_path / "src" / "loop.wav")
    scan = scan_audio(tmp_path / "src", cache_dir=tmp_path / "cache")
    assert {e.path: e.error for e in scan.entries} == {"a.wav": "", "loop.wav": "symbolic link loop (too many levels "
                                                                              "of symbolic links)"}


def test_unreadable_file_says_permission_denied_not_system_error(tmp_path, monkeypatch):
    import audiorq.audio as audio

    path = write_wav(tmp_path / "locked.wav")

    def info(_):
        raise RuntimeError(f"Error opening {str(path)!r}: System error.")

    def no_read(p, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    monkeypatch.setattr(audio.sf, "info", info)
    monkeypatch.setattr(audio, "open", no_read, raising=False)
    with pytest.raises(AudioError, match=r"locked.wav: unreadable audio \(permission denied\)"):
        audio_info(path)
