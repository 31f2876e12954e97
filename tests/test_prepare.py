"""prepare_wav / prepare_logmel: outputs, resume after interruption, parallel == serial, stats, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from audiorq.audio import load_audio
from audiorq.cli import main
from audiorq.config import FrontendConfig
from audiorq.data.prepare import logmel_frames, plan_shards, prepare_logmel, prepare_wav
from audiorq.data.pretrain.logmel_shards import (
    INDEX_FILE, META_FILE, NPY_HEADER_BYTES, PATHS_FILE, SHARD_DIR, merge_stats, npy_header,
)
from audiorq.frontend import LogMelSpectrogram

SR = 16000


def write_source(root: Path) -> list[str]:
    """Six usable clips (16 kHz, 8 kHz, 44.1 kHz stereo, flac, ogg, a 1 s one) + a corrupt and an empty one."""
    rng = np.random.default_rng(1)
    specs = [
        ("a/one.wav", SR, 1.2, 1),
        ("a/b/two.wav", 8000, 0.9, 1),
        ("a/b/stereo.wav", 44100, 0.7, 2),
        ("c/three.flac", SR, 1.6, 1),
        ("c/four.ogg", 44100, 1.1, 1),
        ("five.wav", 22050, 1.0, 1),
    ]
    for rel, sr, seconds, channels in specs:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        n = int(seconds * sr)
        t = np.arange(n) / sr
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.05 * rng.standard_normal(n)
        data = np.stack([tone, -0.5 * tone], axis=1) if channels == 2 else tone
        sf.write(path, data.astype(np.float32), sr)
    (root / "c" / "corrupt.mp3").write_bytes(b"ID3 this is no mp3" * 10)
    (root / "c" / "empty.wav").write_bytes(b"")
    return [rel for rel, *_ in specs]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("src")
    return root, write_source(root)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a prepared folder except the scan cache (it records mtimes), by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("scan-")
    }


# ---------------------------------------------------------------------------------------------- wav


def test_prepare_wav_keeps_relative_paths_and_writes_16k_mono(source, tmp_path):
    src, rels = source
    dst = tmp_path / "wav"
    summary = prepare_wav(src, dst, workers=1, progress=False)
    assert summary.n_files == 8 and summary.n_done == 6 and summary.n_bad == 2 and summary.n_skipped == 0
    assert sorted(p for p, _ in summary.bad) == [str(src / "c" / "corrupt.mp3"), str(src / "c" / "empty.wav")]
    outputs = sorted(str(p.relative_to(dst)) for p in dst.rglob("*.wav"))
    assert outputs == sorted(str(Path(r).with_suffix(".wav")) for r in rels)
    for rel in rels:
        out = dst / Path(rel).with_suffix(".wav")
        info = sf.info(str(out))
        assert info.samplerate == SR and info.channels == 1 and info.subtype == "PCM_16"
        expected = load_audio(src / rel)
        got = load_audio(out)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected.clamp(-1, 1), rtol=0, atol=1.0 / 32768 + 1e-6)
    written = json.loads((dst / "prepare_wav_summary.json").read_text())
    assert written["n_bad"] == 2 and "n_shards" not in written and "stats" not in written  # wav fields only
    assert dict(written["bad"])[str(src / "c" / "empty.wav")] == "empty file (0 bytes)"  # as the scan words it

    # Resume: finished outputs are skipped, a missing one is redone.
    (dst / "a" / "one.wav").unlink()
    again = prepare_wav(src, dst, workers=1, progress=False)
    assert again.n_done == 1 and again.n_skipped == 5 and again.n_bad == 2


def test_prepare_wav_parallel_and_name_collisions(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("x.wav", "x.flac", "y.flac"):
        sf.write(src / name, np.zeros(SR // 2, np.float32), SR)
    summary = prepare_wav(src, tmp_path / "out", workers=2, progress=False)
    assert summary.n_done == 2 and summary.n_bad == 1
    assert "x.wav is also the output of x.flac" in summary.bad[0][1]
    with pytest.raises(ValueError, match="must not be the source folder"):
        prepare_wav(src, src / "inside", workers=1, progress=False)


# ---------------------------------------------------------------------------------------------- logmel


def test_chunked_logmel_equals_whole_clip():
    frontend = LogMelSpectrogram()
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(SR + 77).astype(np.float32)) * 0.1
    whole = frontend(wave)[0, 0].T
    for chunk in (2, 7, 40):
        torch.testing.assert_close(logmel_frames(frontend, wave, chunk_frames=chunk), whole, rtol=1e-4, atol=1e-4)


def test_streamed_npy_header_is_read_by_numpy(tmp_path):
    assert len(npy_header((10**12, 128))) == NPY_HEADER_BYTES  # room for any real shard
    for shape in ((0, 64), (7, 3)):
        data = np.arange(shape[0] * shape[1], dtype=np.float16).reshape(shape)
        path = tmp_path / "a.npy"
        path.write_bytes(npy_header(shape) + data.tobytes())
        loaded = np.load(path)
        assert loaded.dtype == np.float16
        np.testing.assert_array_equal(loaded, data)


def test_plan_and_merge_stats_helpers():
    assert plan_shards([5, 5, 5, 20, 1], 10) == [[0, 1], [2], [3], [4]]
    rng = np.random.default_rng(0)
    parts = [rng.normal(3, 2, size=n) for n in (10, 1, 0, 57)]
    stats = [(p.size, p.mean() if p.size else 0.0, ((p - p.mean()) ** 2).sum() if p.size else 0.0) for p in parts]
    n, mean, std = merge_stats(stats)
    allv = np.concatenate(parts)
    assert n == allv.size and mean == pytest.approx(allv.mean()) and std == pytest.approx(allv.std())


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory) -> Path:
    src, _ = source
    dst = tmp_path_factory.mktemp("logmel")
    summary = prepare_logmel(src, dst, FrontendConfig(), shard_size_frames=250, workers=1, progress=False)
    assert summary.complete and summary.n_bad == 2 and summary.n_shards > 2
    return dst


def test_shards_agree_with_frontend_on_original_clips(source, prepared):
    src, rels = source
    meta = json.loads((prepared / META_FILE).read_text())
    assert meta["n_clips"] == 6 and meta["n_bad"] == 2 and meta["frontend"]["n_mels"] == 64
    paths = (prepared / PATHS_FILE).read_text().splitlines()
    assert sorted(paths) == sorted(rels)
    index = np.load(prepared / INDEX_FILE)
    frontend = LogMelSpectrogram()
    for i, rel in enumerate(paths):
        shard = np.load(prepared / SHARD_DIR / f"{meta['shards'][index['shard'][i]]}.npy", mmap_mode="r")
        assert shard.dtype == np.float16 and shard.shape[1] == 64
        stored = torch.from_numpy(np.array(shard[index["offset"][i] : index["offset"][i] + index["n_frames"][i]]))
        reference = frontend(load_audio(src / rel))[0, 0].T
        assert stored.shape == reference.shape
        # float16 keeps 11 significant bits: relative rounding error <= 2**-11.
        torch.testing.assert_close(stored.float(), reference, rtol=2**-11, atol=1e-4)


def test_stats_match_direct_computation(source, prepared):
    src, rels = source
    meta = json.loads((prepared / META_FILE).read_text())
    frontend = LogMelSpectrogram()
    values = torch.cat([frontend(load_audio(src / rel)).flatten() for rel in rels]).double()
    assert meta["stats"]["count"] == values.numel()
    assert meta["stats"]["mean"] == pytest.approx(float(values.mean()), abs=2e-3)
    assert meta["stats"]["std"] == pytest.approx(float(values.std(unbiased=False)), abs=2e-3)
    # Exactly the statistics of what is stored.
    stored = np.concatenate([np.load(p).astype(np.float64).ravel() for p in sorted((prepared / SHARD_DIR).glob("*.npy"))])
    assert meta["stats"]["mean"] == pytest.approx(stored.mean(), rel=1e-9)
    assert meta["stats"]["std"] == pytest.approx(stored.std(), rel=1e-9)


def test_resume_after_interruption_gives_identical_files(source, prepared, tmp_path):
    src, _ = source
    dst = tmp_path / "resumed"
    first = prepare_logmel(src, dst, shard_size_frames=250, workers=1, progress=False, max_new_shards=2)
    assert not first.complete and not (dst / META_FILE).exists()
    shard_dir = dst / SHARD_DIR
    # A crash mid-write: a leftover temporary file, and a truncated shard without its index.
    (shard_dir / ".shard-00003.npy.abc.tmp").write_bytes(b"partial")
    (shard_dir / "shard-00002.npy").write_bytes(b"\x93NUMPY truncated")
    # A crash between the shard's rename and its index: shard 1's index is gone, so it is rebuilt.
    (shard_dir / "shard-00001.json").unlink()
    second = prepare_logmel(src, dst, shard_size_frames=250, workers=1, progress=False)
    assert second.complete and second.n_skipped > 0 and second.n_done > 0
    assert not (shard_dir / ".shard-00003.npy.abc.tmp").exists()  # leftovers are cleaned up
    assert tree_bytes(dst) == tree_bytes(prepared)

    # Running again when complete does nothing new.
    third = prepare_logmel(src, dst, shard_size_frames=250, workers=1, progress=False)
    assert third.n_done == 0 and third.complete and tree_bytes(dst) == tree_bytes(prepared)

    with pytest.raises(ValueError, match="different shard_size_frames"):
        prepare_logmel(src, dst, shard_size_frames=400, workers=1, progress=False)
    with pytest.raises(ValueError, match="different frontend"):
        prepare_logmel(src, dst, FrontendConfig(mel_scale="htk"), shard_size_frames=250, workers=1, progress=False)


KILL_SCRIPT = """
import os, signal, sys
import audiorq.data.prepare.logmel as logmel
real, calls = logmel.clip_logmel, [0]
def dying(frontend, path):
    calls[0] += 1
    if calls[0] == int(sys.argv[3]):  # killed in the middle of writing a shard
        os.kill(os.getpid(), signal.SIGKILL)
    return real(frontend, path)
logmel.clip_logmel = dying
logmel.prepare_logmel(sys.argv[1], sys.argv[2], shard_size_frames=250, workers=1, progress=False)
"""


def test_resume_after_sigkill_gives_identical_files(source, prepared, tmp_path):
    import signal
    import subprocess
    import sys

    src, _ = source
    dst = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(src), str(dst), "4"], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (dst / META_FILE).exists() and list((dst / SHARD_DIR).glob(".shard-*.tmp"))  # a partial shard
    resumed = prepare_logmel(src, dst, shard_size_frames=250, workers=1, progress=False)
    assert resumed.complete and resumed.n_skipped > 0
    assert tree_bytes(dst) == tree_bytes(prepared)


def test_parallel_prepare_equals_serial(source, prepared, tmp_path):
    src, _ = source
    dst = tmp_path / "parallel"
    summary = prepare_logmel(src, dst, shard_size_frames=250, workers=2, progress=False)
    assert summary.complete and summary.n_bad == 2
    assert tree_bytes(dst) == tree_bytes(prepared)


def test_cli_prepare_wav_and_logmel(source, tmp_path):
    src, _ = source
    runner = CliRunner()
    result = runner.invoke(main, ["prepare", "wav", str(src), str(tmp_path / "w"), "-j", "1", "--no-progress"])
    assert result.exit_code == 1, result.output  # as prepare task: some files could not be converted
    assert "6 done now" in result.output and "2 bad" in result.output and "corrupt.mp3" in result.output
    assert "2 files could not be converted" in result.output
    result = runner.invoke(main, ["prepare", "logmel", str(tmp_path / "w"), str(tmp_path / "lm"), "n_mels=32",
                                  "--shard-size", "1000", "-j", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "shards: 1" in result.output and "mean" in result.output
    assert np.load(tmp_path / "lm" / SHARD_DIR / "shard-00000.npy").shape[1] == 32
    result = runner.invoke(main, ["prepare", "logmel", str(src), str(tmp_path / "x"), "mel_scale=bark"])
    assert result.exit_code == 2 and "mel_scale" in result.output


def test_every_stage_runs_its_jobs_with_the_one_start_method(source, tmp_path, monkeypatch):
    import audiorq.data.prepare
    from audiorq.data.prepare import prepare_task, runner

    # Only the runner starts processes ...
    for path in Path(audiorq.data.prepare.__file__).parent.glob("*.py"):
        if path.name != "runner.py":
            assert "multiprocessing" not in path.read_text() and "ProcessPool" not in path.read_text(), path.name
    # ... and every stage's parallel run gets its pool from it, started the same (fork-free) way.
    started = []
    real_pool = runner.ProcessPoolExecutor

    def spy(*args, mp_context, **kwargs):
        started.append(mp_context.get_start_method())
        return real_pool(*args, mp_context=mp_context, **kwargs)

    monkeypatch.setattr(runner, "ProcessPoolExecutor", spy)
    src, rels = source
    (src / "task.csv").write_text("path,label,split\n" + "".join(
        f"{rel},{'ab'[k % 2]},{'train' if k < 4 else 'test'}\n" for k, rel in enumerate(rels)))
    try:
        assert prepare_wav(src, tmp_path / "wav", workers=2, progress=False).n_done == 6
        assert prepare_logmel(src, tmp_path / "lm", shard_size_frames=250, workers=2, progress=False).complete
        assert prepare_task("csv", src / "task.csv", tmp_path / "task", workers=2, progress=False).converted == 6
    finally:
        (src / "task.csv").unlink()
    assert runner.START_METHOD in ("forkserver", "spawn") and started == [runner.START_METHOD] * 3


def test_progress_bars_stay_out_of_redirected_logs():
    import sys

    from audiorq.data.prepare.runner import progress_bar

    bar = progress_bar(3, 0, "prepare wav", "file", True)
    assert bar.disable == (not sys.stderr.isatty())  # tqdm disable=None: no carriage returns in a log file
    bar.close()
    assert progress_bar(3, 0, "prepare wav", "file", False).disable
