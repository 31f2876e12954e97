"""AudioFolder: recursive scan + cache, partial-read crops, deterministic per-(seed, epoch, index) offsets,
bad files, collate_skipping, compute_norm_stats."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from audiorq.audio import load_audio
from audiorq.data.pretrain import (
    AudioFolder, StringTable, collate_skipping, compute_norm_stats, crop_offset, scan_audio,
)
from audiorq.frontend import LogMelSpectrogram

SR = 16000
CROP = int(0.95 * SR)
RAMP_SAMPLES = 3 * SR


def write_corpus(root: Path) -> dict[str, Path]:
    """A small mixed corpus: ramp wav (sample n has value n / RAMP_SAMPLES, so a crop reveals its offset),
    noise flac in a nested folder, 44.1 kHz ogg, a clip shorter than the crop, a corrupt and an empty file,
    and files the scan must ignore."""
    rng = np.random.default_rng(0)
    files = {
        "ramp": root / "speech" / "ramp.wav",
        "noise": root / "env" / "deep" / "noise.flac",
        "ogg": root / "env" / "tone.ogg",
        "short": root / "short.wav",
        "corrupt": root / "bad" / "corrupt.wav",
        "empty": root / "bad" / "empty.flac",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(files["ramp"], (np.arange(RAMP_SAMPLES) / RAMP_SAMPLES).astype(np.float32), SR, subtype="FLOAT")
    sf.write(files["noise"], (0.2 * rng.standard_normal(int(1.5 * SR))).astype(np.float32), SR)
    t = np.arange(int(1.3 * 44100)) / 44100
    ogg = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    sf.write(files["ogg"], ogg.astype(np.float32), 44100, format="OGG", subtype="VORBIS")
    sf.write(files["short"], np.linspace(0.1, 0.5, int(0.4 * SR), dtype=np.float32), SR, subtype="FLOAT")
    files["corrupt"].write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really a wav file at all" * 4)
    files["empty"].write_bytes(b"")
    (root / "notes.txt").write_text("not audio")
    sf.write(root / "speech" / ".hidden.wav", np.zeros(SR, np.float32), SR)
    return files


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, dict[str, Path], Path]:
    root = tmp_path / "corpus"
    files = write_corpus(root)
    return root, files, tmp_path / "cache"


def make_folder(root, cache, **kwargs) -> AudioFolder:
    return AudioFolder(root, cache_dir=cache, **kwargs)  # its 2 bad files are logged (once per process)


def index_of(ds: AudioFolder, path: Path) -> int:
    return ds.files.index(path)


def test_scan_finds_supported_files_recursively_and_caches(corpus):
    root, files, cache = corpus
    ds = make_folder(root, cache)
    assert sorted(ds.files) == sorted(files.values())
    assert ds.cache_status == "new" and ds.n_probed == 6
    assert ds.frames[index_of(ds, files["ramp"])] == RAMP_SAMPLES
    assert ds.native_rates[index_of(ds, files["ogg"])] == 44100
    assert ds.errors[index_of(ds, files["empty"])] == "empty file (0 bytes)"
    assert "unreadable" in ds.errors[index_of(ds, files["corrupt"])]

    again = make_folder(root, cache)
    assert again.cache_status == "hit" and again.n_probed == 0
    assert again.files == ds.files and (again.frames == ds.frames).all()

    # Adding a file changes its folder's mtime: only the new file's header is read.
    time.sleep(0.01)
    added = root / "env" / "deep" / "more.wav"
    sf.write(added, np.zeros(SR, np.float32), SR)
    os.utime(added.parent, ns=(time.time_ns(), time.time_ns() + 10**9))  # coarse-mtime file systems
    grown = make_folder(root, cache)
    assert grown.cache_status == "updated" and grown.n_probed == 1
    assert len(grown) == len(ds) + 1 and added in grown.files


def test_file_list_source_is_relative_to_list_folder(corpus, tmp_path):
    root, files, cache = corpus
    listing = root / "train.txt"
    listing.write_text("# comment\nspeech/ramp.wav\n\nenv/tone.ogg\nmissing.wav\n")
    ds = AudioFolder(listing, cache_dir=cache)
    assert ds.files == [files["ramp"], files["ogg"], root / "missing.wav"]
    assert ds.errors[2] == "file not found"
    assert AudioFolder(listing, cache_dir=cache).cache_status == "hit"


def test_crop_is_the_matching_slice_of_the_full_decode(corpus):
    root, files, cache = corpus
    ds = make_folder(root, cache)
    assert ds.kind == "wave" and ds.sample_rate == SR and ds.crop_samples == CROP
    ramp = index_of(ds, files["ramp"])
    full = load_audio(files["ramp"])
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        crop = ds[ramp]
        assert crop.dtype == torch.float32 and crop.shape == (CROP,)
        offset = int(round(float(crop[0]) * RAMP_SAMPLES))  # the ramp encodes time
        assert offset == crop_offset(0, epoch, ramp, RAMP_SAMPLES - CROP)
        torch.testing.assert_close(crop, full[offset : offset + CROP], rtol=0, atol=0)
        seen.add(offset)
    assert len(seen) == 6  # a different crop every epoch


def test_resampled_crop_matches_full_decode(corpus):
    """A 44.1 kHz ogg: partial decode + resampling of the span equals the slice of the resampled whole."""
    root, files, cache = corpus
    ds = make_folder(root, cache)
    i = index_of(ds, files["ogg"])
    full = load_audio(files["ogg"])
    for epoch in range(4):
        ds.set_epoch(epoch)
        offset = crop_offset(0, epoch, i, full.shape[0] - CROP)
        torch.testing.assert_close(ds[i], full[offset : offset + CROP], rtol=0, atol=1e-5)


def test_short_clip_is_zero_padded_at_both_ends(corpus):
    root, files, cache = corpus
    ds = make_folder(root, cache)
    crop = ds[index_of(ds, files["short"])]
    n = int(0.4 * SR)
    head = (CROP - n) // 2
    assert crop.shape == (CROP,)
    torch.testing.assert_close(crop[head : head + n], load_audio(files["short"]))
    assert crop[:head].abs().max() == 0 and crop[head + n :].abs().max() == 0


def test_crops_are_a_pure_function_of_seed_epoch_index(corpus):
    root, files, cache = corpus
    a, b = make_folder(root, cache, seed=3), make_folder(root, cache, seed=3)
    ramp = index_of(a, files["ramp"])
    b.set_epoch(5)
    x5 = b[ramp]
    for _ in range(3):  # other reads in between do not change it
        b[index_of(b, files["noise"])]
    a.set_epoch(5)
    torch.testing.assert_close(a[ramp], x5, rtol=0, atol=0)
    a.set_epoch(6)
    assert not torch.equal(a[ramp], x5)
    other_seed = make_folder(root, cache, seed=4)
    other_seed.set_epoch(5)
    assert not torch.equal(other_seed[ramp], x5)
    # Items of one epoch get different offsets.
    offsets = {crop_offset(3, 5, i, 10**6) for i in range(100)}
    assert len(offsets) > 95


def test_crop_offsets_are_uniform_and_independent_across_epochs():
    draws = np.array([crop_offset(0, epoch, i, 9) for epoch in range(20) for i in range(1000)])
    counts = np.bincount(draws, minlength=10)
    chi2 = float(((counts - 2000) ** 2 / 2000).sum())
    assert chi2 < 27.88  # the 0.999 quantile of chi-square with 9 degrees of freedom
    a = [crop_offset(1, 0, i, 10**6) for i in range(5000)]
    b = [crop_offset(1, 1, i, 10**6) for i in range(5000)]
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05
    assert crop_offset(0, 0, 0, 0) == 0 and crop_offset(0, 0, 0, -5) == 0


def test_string_table_round_trip():
    strings = ["a/b.wav", "", "ünïcode/ß.flac", "/abs/path.ogg"]
    table = StringTable(strings)
    assert len(table) == 4 and list(table) == strings and table[-1] == strings[-1]
    with pytest.raises(IndexError):
        table[4]


def _epoch_batches(loader: DataLoader, ds: AudioFolder, epoch: int) -> tuple[torch.Tensor, int]:
    ds.set_epoch(epoch)
    items, n_bad = [], 0
    for batch, bad in loader:
        items.append(batch)
        n_bad += bad
    return torch.cat(items), n_bad


def test_same_crops_with_zero_or_two_workers_across_epochs(corpus):
    root, files, cache = corpus
    ds = make_folder(root, cache, seed=1)
    serial = DataLoader(ds, batch_size=3, num_workers=0, collate_fn=collate_skipping)
    # persistent workers keep their dataset copy: set_epoch must still reach them (shared-memory epoch).
    parallel = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_skipping, persistent_workers=True)
    results = {}
    for epoch in (0, 1):
        results[epoch] = _epoch_batches(serial, ds, epoch)
        x, n_bad = _epoch_batches(parallel, ds, epoch)
        assert n_bad == results[epoch][1] == 2
        torch.testing.assert_close(x, results[epoch][0], rtol=0, atol=0)
    assert not torch.equal(results[0][0], results[1][0])


def test_bad_files_give_none_and_are_logged_once_with_a_count(corpus, caplog):
    root, files, cache = corpus
    with caplog.at_level(logging.WARNING, logger="audiorq.data.pretrain"):
        ds = make_folder(root, cache)
        make_folder(root, cache)  # a second build of the same data (statistics, then training) names nothing again
        for name in ("corrupt", "empty"):
            assert ds[index_of(ds, files[name])] is None
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if str(files["corrupt"]) in m] == [f"skipping {files['corrupt']}: "
                                                                    f"{ds.errors[index_of(ds, files['corrupt'])]}"]
    assert [m for m in messages if str(files["empty"]) in m] == [f"skipping {files['empty']}: empty file (0 bytes)"]
    assert messages[-1] == f"{root}: 2 of 6 files are unusable and will be skipped" and len(messages) == 3
    assert ds.n_bad_seen == 2
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in caplog.records)  # one line each


def test_decode_failure_after_a_good_header_is_skipped(corpus, caplog):
    """A header that reads fine but data that does not decode: None + warning, not a crash."""
    root, files, cache = corpus
    ds = make_folder(root, cache)
    i = index_of(ds, files["ramp"])
    sf.write(files["ramp"], np.full(RAMP_SAMPLES, np.nan, np.float32), SR, subtype="FLOAT")  # NaN samples
    with caplog.at_level(logging.WARNING, logger="audiorq.data.pretrain"):
        assert ds[i] is None
        assert ds[i] is None  # met again (the next epoch): not reported again
    assert len([r for r in caplog.records if "NaN" in r.getMessage()]) == 1


def test_collate_skipping_stacks_good_items_and_counts_bad():
    a, b = torch.ones(4), torch.zeros(4)
    batch, n_bad = collate_skipping([a, None, b, None])
    assert n_bad == 2 and torch.equal(batch, torch.stack([a, b]))
    assert collate_skipping([None, None]) == (None, 2)
    batch, n_bad = collate_skipping([a])
    assert n_bad == 0 and batch.shape == (1, 4)


def test_compute_norm_stats_matches_direct_computation(corpus):
    root, files, cache = corpus
    ds = make_folder(root, cache)
    frontend = LogMelSpectrogram()
    mean, std = compute_norm_stats(ds, frontend, n_items=100, batch_size=2)
    good = [ds[i] for i in range(len(ds)) if i not in ds.errors]
    lm = frontend(torch.stack(good)).double()
    assert mean == pytest.approx(float(lm.mean()), rel=1e-6)
    assert std == pytest.approx(float(lm.std(unbiased=False)), rel=1e-6)
    # A subsample: drawn by the seed, reproducible.
    assert compute_norm_stats(ds, frontend, n_items=3, seed=7) == compute_norm_stats(ds, frontend, n_items=3, seed=7)


def test_scan_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_audio(tmp_path / "nowhere", cache_dir=tmp_path)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        AudioFolder(tmp_path / "empty_dir", cache_dir=tmp_path)


def test_real_clips_from_a_file_list_with_absolute_paths(real_clips, tmp_path):
    """FSDD (8 kHz wav, mostly shorter than the crop) and ESC-10 (44.1 kHz ogg): crops = slices of a full decode."""
    listing = tmp_path / "real.txt"
    listing.write_text("".join(f"{p}\n" for p in real_clips))
    ds = AudioFolder(listing, cache_dir=tmp_path / "cache", seed=11)
    assert ds.files == list(real_clips)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i, path in enumerate(real_clips):
            full = load_audio(path)
            crop = ds[i]
            assert crop.shape == (CROP,)
            if full.shape[0] <= CROP:
                head = (CROP - full.shape[0]) // 2
                torch.testing.assert_close(crop[head : head + full.shape[0]], full, rtol=0, atol=1e-5)
            else:
                offset = crop_offset(11, epoch, i, full.shape[0] - CROP)
                torch.testing.assert_close(crop, full[offset : offset + CROP], rtol=0, atol=1e-5)
