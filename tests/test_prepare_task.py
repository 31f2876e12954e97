"""`prepare_task` / `audiorq prepare task`: 16 kHz mono conversion, layout kept, metadata, resume, failures."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from audiorq.cli import main
from audiorq.data.prepare import prepare_task
from audiorq.data.tasks import load_task, shared_data_root
from tests.test_tasks import NOISE_SECONDS, make_spcv2, make_us8k

pytestmark = pytest.mark.filterwarnings("ignore::audiorq.data.tasks.CountMismatchWarning")


TONE_HZ, LEFT, RIGHT = 440.0, 0.5, 0.3


def write_stereo_tone(path: Path, seconds: float = 0.1, sr: int = 44100) -> None:
    t = np.arange(int(seconds * sr)) / sr
    tone = np.sin(2 * np.pi * TONE_HZ * t)
    sf.write(str(path), np.stack([LEFT * tone, RIGHT * tone], axis=1).astype(np.float32), sr, subtype="PCM_16")


def make_raw_us8k(root: Path) -> tuple[list, Path]:
    """US8K layout (3 folds x 3 clips) with 44.1 kHz stereo clips, as in the real download, and one corrupt file."""
    rows = make_us8k(root, per_fold=3, n_folds=3)
    for name, fold, _ in rows:
        write_stereo_tone(root / "audio" / f"fold{fold}" / name)
    corrupt = root / "audio" / "fold2" / rows[4][0]
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    return rows, corrupt


def test_prepare_us8k_converts_keeps_layout_and_reports_corrupt(tmp_path):
    src, dst = tmp_path / "UrbanSound8K", tmp_path / "us8k16k"
    rows, corrupt = make_raw_us8k(src)
    report = prepare_task("us8k", src, dst, workers=1, progress=False)
    assert report.n_files == 9 and report.converted == 8 and report.skipped == 0
    assert [p for p, _ in report.failed] == [str(corrupt)] and report.failed_list
    assert str(corrupt) in Path(report.failed_list).read_text()
    assert str(corrupt) in report.summary() and "failed 1" in report.summary()
    for name, fold, _ in rows:
        out = dst / "audio" / f"fold{fold}" / name
        if name == corrupt.name:
            assert not out.exists()
            continue
        info = sf.info(str(out))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames - 1600) <= 1
        # the channel mean of the source tone, resampled: compare with the tone computed at 16 kHz
        new, _ = sf.read(str(out))
        want = (LEFT + RIGHT) / 2 * np.sin(2 * np.pi * TONE_HZ * np.arange(len(new)) / 16000)
        assert np.abs(new - want)[100:-100].max() < 5e-3
    assert (dst / "metadata" / "UrbanSound8K.csv").read_bytes() == (src / "metadata" / "UrbanSound8K.csv").read_bytes()

    # The official reader works on the output (the corrupt file is missing there) ...
    with pytest.raises(Exception, match=r"1 of 9 listed files are missing"):
        load_task("us8k", dst)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        official = load_task("us8k", dst, skip_missing=True)
    # ... and so does the csv task on the written metadata, with the same items, labels and folds.
    via_csv = load_task("csv", report.metadata_csv, unit_sec=4.0)
    assert sorted(via_csv.files) == sorted(official.files)
    assert [s.name for s in via_csv.splits] == [s.name for s in official.splits]
    lab = {f: official.classes[y] for f, y in zip(official.files, official.labels)}
    assert all(lab[f] == via_csv.classes[y] for f, y in zip(via_csv.files, via_csv.labels))
    for a, b in zip(official.splits, via_csv.splits):
        assert {official.files[i] for i in a.test} == {via_csv.files[i] for i in b.test}


def test_prepare_resumes_without_redoing_work(tmp_path):
    src, dst = tmp_path / "UrbanSound8K", tmp_path / "out"
    rows, _ = make_raw_us8k(src)
    prepare_task("us8k", src, dst, workers=1, progress=False)
    done = dst / "audio" / "fold1" / rows[0][0]
    redo = dst / "audio" / "fold3" / rows[8][0]
    stamp = done.stat().st_mtime_ns
    redo.unlink()
    report = prepare_task("us8k", src, dst, workers=1, progress=False)
    assert report.converted == 1 and report.skipped == 7 and len(report.failed) == 1
    assert done.stat().st_mtime_ns == stamp and redo.is_file()
    assert not list(dst.rglob("*.tmp"))


def test_prepare_in_parallel_matches_serial(tmp_path):
    src = tmp_path / "UrbanSound8K"
    make_raw_us8k(src)
    serial = prepare_task("us8k", src, tmp_path / "a", workers=1, progress=False)
    parallel = prepare_task("us8k", src, tmp_path / "b", workers=2, progress=False)
    assert parallel.converted == serial.converted and parallel.failed == serial.failed
    for f in (tmp_path / "a").rglob("*.wav"):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
    assert Path(serial.metadata_csv).read_text() == Path(parallel.metadata_csv).read_text()


def test_prepare_spcv2_12_keeps_noise_and_windows(tmp_path):
    src, dst = tmp_path / "spc", tmp_path / "spc16k"
    make_spcv2(src)
    report = prepare_task("spcv2_12", src, dst, workers=1, progress=False)
    assert not report.failed and report.converted == 16 + len(NOISE_SECONDS)
    raw = load_task("spcv2_12", src)
    again = load_task("spcv2_12", dst)
    assert again.info["silence_windows"] == raw.info["silence_windows"]
    assert [Path(f).relative_to(dst) for f in again.files] == [Path(f).relative_to(src) for f in raw.files]
    assert np.array_equal(again.labels, raw.labels)
    # spcv2 works on the same prepared copy, and the csv carries the silence windows.
    assert len(load_task("spcv2", dst).files) == 16
    via_csv = load_task("csv", report.metadata_csv, unit_sec=1.0)
    assert np.array_equal(via_csv.spans, raw.spans, equal_nan=True)
    assert via_csv.classes == raw.classes


def test_prepare_csv_of_real_esc10_clips(tmp_path):
    esc = shared_data_root() / "esc10"
    if not esc.is_dir():
        pytest.skip("shared ESC-10 data not present")
    clips = sorted(esc.glob("00[12] - */1-*.ogg"))[:2] + sorted(esc.glob("00[12] - */2-*.ogg"))[:2]
    lines = ["path,label,fold"] + [f"{c.relative_to(esc)},{c.parent.name},{c.name[0]}" for c in clips]
    data = tmp_path / "data"
    for c in clips:
        (data / c.relative_to(esc)).parent.mkdir(parents=True, exist_ok=True)
        (data / c.relative_to(esc)).symlink_to(c)
    (data / "mine.csv").write_text("\n".join(lines) + "\n")
    report = prepare_task("csv", data / "mine.csv", tmp_path / "out", workers=1, progress=False)
    assert report.converted == 4 and not report.failed
    task = load_task("csv", report.metadata_csv)
    assert task.unit_sec == 5.0 and [s.name for s in task.splits] == ["fold1", "fold2"]
    for f in task.files:
        info = sf.info(f)
        assert f.endswith(".wav") and (info.samplerate, info.channels) == (16000, 1)
        assert abs(info.frames - 80000) <= 16


def test_prepare_refuses_output_inside_source(tmp_path):
    make_spcv2(tmp_path)
    with pytest.raises(ValueError, match=r"must not be the source folder or inside the source folder"):
        prepare_task("spcv2", tmp_path, tmp_path / "out", workers=1, progress=False)


def test_cli_prepare_task(tmp_path):
    src, dst = tmp_path / "UrbanSound8K", tmp_path / "out"
    _, corrupt = make_raw_us8k(src)
    runner = CliRunner()
    result = runner.invoke(main, ["prepare", "task", "us8k", str(src), str(dst), "-j", "1", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert f"FAILED {corrupt}" in result.output and "1 files could not be converted" in result.output
    assert (dst / "us8k.csv").is_file()
    bad = runner.invoke(main, ["prepare", "task", "nope", str(src), str(dst)])
    assert bad.exit_code == 2 and "unknown task 'nope'" in bad.output
    bad = runner.invoke(main, ["prepare", "task", "us8k", str(src), str(dst), "-o", "variant=a"])
    assert bad.exit_code == 2 and "variant" in bad.output
