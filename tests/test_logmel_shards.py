"""LogMelShards: crops agree with the shard contents, silence padding, determinism across workers, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from audiorq.config import FrontendConfig, to_dict
from audiorq.data.prepare import prepare_logmel
from audiorq.data.pretrain import LogMelShards, collate_skipping, compute_norm_stats, crop_offset
from audiorq.data.pretrain.logmel_shards import (
    META_FILE, SHARD_DIR, SILENCE_LOG_MEL, finished_shard, write_meta, write_shard,
)
from audiorq.frontend import EPS

SR = 16000
CLIP_SECONDS = (2.0, 1.3, 0.5, 3.1, 0.3)  # frames: 201, 131, 51 (< 96), 311, 31 (< 96)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(2)
    for k, seconds in enumerate(CLIP_SECONDS):
        n = int(seconds * SR)
        chirp = np.sin(2 * np.pi * np.cumsum(np.linspace(100, 6000, n)) / SR)
        sf.write(src / f"clip{k}.wav", (0.3 * chirp + 0.01 * rng.standard_normal(n)).astype(np.float32), SR)
    dst = tmp_path_factory.mktemp("shards")
    summary = prepare_logmel(src, dst, shard_size_frames=300, workers=1, progress=False)
    assert summary.complete and summary.n_shards == 4  # [201], [131, 51], [311], [31]
    return dst


def test_shard_writer_and_reader_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    clips = [rng.normal(-5, 2, size=(n, 8)).astype(np.float16) for n in (120, 7, 40)]
    shard_dir = tmp_path / SHARD_DIR
    bad = [("bad.wav", "unreadable audio")]
    indexes = [
        write_shard(shard_dir, 0, 8, iter([("a.wav", clips[0]), bad[0]])),
        write_shard(shard_dir, 1, 8, iter([("b/c.wav", clips[1]), ("d.wav", clips[2])])),
    ]
    assert finished_shard(shard_dir, 1) == indexes[1] and indexes[0]["bad"] == [list(bad[0])]
    stats = write_meta(tmp_path, tmp_path, indexes, to_dict(FrontendConfig(n_mels=8)), bad, 1000)

    ds = LogMelShards(tmp_path, crop_frames=32)
    assert list(ds.paths) == ["a.wav", "b/c.wav", "d.wav"] and ds.n_mels == 8 and ds.stats == stats
    for i, clip in enumerate(clips):
        np.testing.assert_array_equal(ds.clip(i), clip)
    assert ds[1].shape == (1, 8, 32)  # the 7-frame clip, padded
    values = np.concatenate([c.astype(np.float64).ravel() for c in clips])
    assert stats == pytest.approx((values.mean(), values.std()), rel=1e-12)
    assert ds.meta["bad"] == [list(bad[0])] and ds.meta["shard_frames"] == [120, 47]
    # The streamed shard files are plain .npy arrays.
    np.testing.assert_array_equal(np.load(shard_dir / "shard-00001.npy"), np.concatenate(clips[1:]))


def test_attributes(shards):
    ds = LogMelShards(shards)
    assert ds.kind == "logmel" and len(ds) == len(CLIP_SECONDS) and ds.n_mels == 64 and ds.crop_frames == 96
    assert ds.frontend_config == to_dict(FrontendConfig())
    meta = json.loads((shards / META_FILE).read_text())
    assert ds.stats == (meta["stats"]["mean"], meta["stats"]["std"])
    assert list(ds.n_frames) == [1 + int(s * SR) // 160 for s in CLIP_SECONDS]
    assert SILENCE_LOG_MEL == pytest.approx(float(np.log(EPS)))


def test_crops_are_slices_of_the_shard_contents(shards):
    ds = LogMelShards(shards, seed=5)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in (0, 1, 3):
            item = ds[i]
            assert item.dtype == torch.float32 and item.shape == (1, 64, 96)
            t0 = crop_offset(5, epoch, i, int(ds.n_frames[i]) - 96)
            clip = np.asarray(ds.clip(i), dtype=np.float32)
            np.testing.assert_array_equal(item[0].numpy(), clip[t0 : t0 + 96].T)


def test_crops_read_the_right_shard_bytes(shards):
    """Independent of the dataset's own helpers: locate clip 3 in the raw shard files via the index."""
    ds = LogMelShards(shards)
    index = np.load(shards / "index.npz")
    i = 3
    raw = np.load(shards / SHARD_DIR / f"shard-{index['shard'][i]:05d}.npy")
    clip = raw[index["offset"][i] : index["offset"][i] + index["n_frames"][i]].astype(np.float32)
    t0 = crop_offset(0, 0, i, clip.shape[0] - 96)
    np.testing.assert_array_equal(ds[i][0].numpy(), clip[t0 : t0 + 96].T)


def test_open_shard_limit(shards, monkeypatch):
    import audiorq.data.pretrain.logmel_shards as module

    monkeypatch.setattr(module, "MAX_OPEN_SHARDS", 2)
    ds = LogMelShards(shards)
    expected = [ds[i] for i in range(len(ds))]  # clips of 4 shards
    assert len(ds._shards) == 2
    again = [ds[i] for i in reversed(range(len(ds)))][::-1]
    for a, b in zip(expected, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_short_clips_are_padded_with_silence_level(shards):
    ds = LogMelShards(shards)
    for i in (2, 4):
        n = int(ds.n_frames[i])
        head = (96 - n) // 2
        item = ds[i][0].numpy()
        np.testing.assert_array_equal(item[:, head : head + n], np.asarray(ds.clip(i), np.float32).T)
        assert (item[:, :head] == np.float32(SILENCE_LOG_MEL)).all()
        assert (item[:, head + n :] == np.float32(SILENCE_LOG_MEL)).all()


def test_crop_is_function_of_seed_epoch_index_and_workers_do_not_matter(shards):
    ds = LogMelShards(shards, seed=1)
    ds.set_epoch(4)
    first = torch.stack([ds[i] for i in range(len(ds))])
    ds.set_epoch(5)
    assert not torch.equal(first[0], ds[0])
    ds.set_epoch(4)
    torch.testing.assert_close(ds[0], first[0], rtol=0, atol=0)

    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_skipping)
    batches = [batch for batch, n_bad in loader]
    torch.testing.assert_close(torch.cat(batches), first, rtol=0, atol=0)


def test_norm_stats_of_logmel_dataset_use_items_directly(shards):
    ds = LogMelShards(shards)
    mean, std = compute_norm_stats(ds, None, n_items=100, batch_size=2)
    items = torch.stack([ds[i] for i in range(len(ds))]).double()
    assert mean == pytest.approx(float(items.mean()), rel=1e-9)
    assert std == pytest.approx(float(items.std(unbiased=False)), rel=1e-9)


def test_unfinished_or_damaged_folders_are_refused(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json missing"):
        LogMelShards(tmp_path)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for p in shards.rglob("*"):
        if p.is_file():
            target = damaged / p.relative_to(shards)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(p.read_bytes())
    last = sorted((damaged / SHARD_DIR).glob("*.npy"))[-1]
    np.save(last, np.zeros((3, 64), np.float16))
    with pytest.raises(ValueError, match=f"{last.name}: holds 3 frames"):
        LogMelShards(damaged)
    last.unlink()
    with pytest.raises(FileNotFoundError, match=f"{last.name} is missing"):
        LogMelShards(damaged)
