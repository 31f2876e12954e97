"""WebDataset tar shards: the epoch plan, reading audio and log-mel members, bad members, prepare (resumable,
parallel), foreign shards, training and exact mid-epoch resume, coverage and DDP training on 2 gloo ranks."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner
from torch.utils.data import DataLoader

from audiorq.audio import load_audio
from audiorq.cli import main
from audiorq.config import ConfigError, FrontendConfig
from audiorq.data.prepare import prepare_webdataset
from audiorq.data.prepare.logmel import logmel_frames
from audiorq.data.pretrain import DataSourceError, WebDatasetShards, crop_offset
from audiorq.data.pretrain.webdataset_shards import (
    INDEX_FILE, ShardSlice, batches_per_epoch, logmel_member, plan_epoch, shard_table, stream_batches,
    write_tar_shard,
)
from audiorq.frontend import LogMelSpectrogram
from audiorq.train import Trainer, load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import assert_states_equal, tiny_config  # noqa: E402


def write_corpus(root: Path, n: int = 23) -> list[Path]:
    """n short FLAC tones: most 16 kHz 1.3 s, every 5th at 8 kHz, every 7th shorter than a 0.95 s crop."""
    paths = []
    for i in range(n):
        rate = 8000 if i % 5 == 4 else 16000
        seconds = 0.6 if i % 7 == 6 else 1.3
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.01 * np.random.default_rng(i).standard_normal(t.size)
        path = root / f"{'ab'[i % 2]}" / f"clip{i:02d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), rate)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root)
    return root


@pytest.fixture(scope="module")
def audio_shards(corpus, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("wds") / "audio"
    summary = prepare_webdataset(corpus, dst, "audio", clips_per_shard=5, workers=1, progress=False)
    assert summary.complete and summary.n_bad == 0 and summary.n_shards == 5
    return dst


def id_shards(root: Path, counts: list[int], n_mels: int = 8, frames: int = 12) -> Path:
    """Log-mel shards whose sample k is the constant array k: a batch tells which samples it holds."""
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    for s, n in enumerate(counts):
        samples = []
        for _ in range(n):
            samples.append({"__key__": f"{k:06d}", "npy": logmel_member(np.full((frames, n_mels), k, np.float16))})
            k += 1
        write_tar_shard(root / f"part-{s:03d}.tar", samples)
    return root


def batch_ids(batch: torch.Tensor) -> list[int]:
    return [int(v) for v in batch[:, 0, 0, 0].tolist()]


# ----------------------------------------------------------------------------------------------
# The plan


@pytest.mark.parametrize("world,streams", [(1, 1), (2, 3), (3, 2)])
def test_plan_gives_every_rank_equal_whole_batches_and_each_sample_once(world, streams):
    counts = [7, 0, 13, 5, 9, 1, 11]
    batch = 3
    seen: list[tuple[int, int]] = []
    n_batches = batches_per_epoch(sum(counts), batch, world)
    for rank in range(world):
        plan = plan_epoch(counts, seed=4, epoch=2, batch_size=batch, rank=rank, world_size=world, n_streams=streams)
        assert plan == plan_epoch(counts, 4, 2, batch, rank, world, streams)  # a pure function
        assert [sum(s.stop - s.start for s in stream) for stream in plan] == \
            [b * batch for b in stream_batches(n_batches, streams)]
        for stream in plan:
            for piece in stream:
                assert 0 <= piece.start < piece.stop <= counts[piece.shard]
                seen += [(piece.shard, j) for j in range(piece.start, piece.stop)]
    assert len(seen) == len(set(seen)) == world * n_batches * batch  # disjoint, and only the remainder is left
    assert sum(counts) - len(seen) < world * batch
    other = [s for r in range(world) for stream in plan_epoch(counts, 4, 3, batch, r, world, streams) for s in stream]
    assert other != [s for r in range(world) for stream in plan_epoch(counts, 4, 2, batch, r, world, streams)
                     for s in stream]  # another epoch, another shard order
    assert stream_batches(7, 3) == [3, 2, 2]


def test_plan_cuts_a_border_shard_between_ranks():
    plan = [plan_epoch([10], seed=0, epoch=0, batch_size=5, rank=r, world_size=2)[0] for r in range(2)]
    assert plan == [[ShardSlice(0, 0, 5)], [ShardSlice(0, 5, 10)]]


# ----------------------------------------------------------------------------------------------
# Reading


def test_audio_crops_equal_slices_of_the_decoded_source(corpus, audio_shards):
    ds = WebDatasetShards(audio_shards, crop_sec=0.95, seed=3, shuffle_buffer=0)
    assert ds.kind == "wave" and len(ds) == 23 and ds.content == "audio"
    index = json.loads((audio_shards / INDEX_FILE).read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and sum(e["nsamples"] for e in index["shardlist"]) == 23
    ds.configure(batch_size=1)
    ds.set_epoch(1)
    plan = plan_epoch(ds.counts, 3, 1, 1)[0]
    checked = {"resampled": 0, "padded": 0, "cropped": 0}
    for (batch, n_bad), item in zip(ds, [(p.shard, j) for p in plan for j in range(p.start, p.stop)]):
        assert n_bad == 0 and batch.shape == (1, 15200)
        with tarfile.open(ds.files[item[0]]) as tar:
            meta = json.loads(tar.extractfile(tar.getmembers()[2 * item[1] + 1]).read())
        full = load_audio(corpus / meta["source"], 16000)
        if full.shape[0] <= 15200:
            head = (15200 - full.shape[0]) // 2
            assert torch.equal(batch[0, head : head + full.shape[0]], full)
            checked["padded"] += 1
        else:
            offset = crop_offset(3, 1, (item[0] << 32) | item[1], full.shape[0] - 15200)
            torch.testing.assert_close(batch[0], full[offset : offset + 15200], atol=1e-6, rtol=0)
            checked["resampled" if sf.info(corpus / meta["source"]).samplerate != 16000 else "cropped"] += 1
    assert all(checked.values()), checked


def test_logmel_shards_hold_the_frontend_log_mel_and_its_statistics(corpus, tmp_path):
    config = FrontendConfig()
    summary = prepare_webdataset(corpus, tmp_path / "lm", "logmel", config, clips_per_shard=10, workers=1,
                                 progress=False)
    table = shard_table(tmp_path / "lm")
    assert table.content == "logmel" and table.frontend_config["n_mels"] == 64 and table.counts == [10, 10, 3]
    frontend = LogMelSpectrogram.from_config(config)
    everything = []
    for path in sorted(corpus.rglob("*.flac")):
        with torch.no_grad():
            everything.append(logmel_frames(frontend, load_audio(path, 16000)).numpy().astype(np.float16))
    values = np.concatenate([lm.ravel() for lm in everything]).astype(np.float64)
    assert summary.stats[0] == pytest.approx(values.mean(), abs=1e-9)
    assert summary.stats[1] == pytest.approx(values.std(), rel=1e-9)
    ds = WebDatasetShards(tmp_path / "lm", crop_frames=40, n_mels=64, shuffle_buffer=0)
    assert ds.kind == "logmel" and ds.stats == pytest.approx(summary.stats)
    ds.configure(batch_size=23)
    (batch, n_bad), = list(ds)
    assert n_bad == 0 and batch.shape == (23, 1, 64, 40)
    # Each crop is a window of one source clip's stored log-mel.
    for crop in batch[:, 0]:
        assert any(np.array_equal(crop.T.numpy(), lm[t : t + 40].astype(np.float32))
                   for lm in everything for t in range(lm.shape[0] - 39))


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_worker_streams_give_one_order_and_resume_at_any_batch(tmp_path):
    ds = WebDatasetShards(id_shards(tmp_path / "ids", [9, 4, 11, 5]), crop_frames=8, shuffle_buffer=6)
    ds.configure(batch_size=2, n_streams=3)
    assert ds.batches_per_epoch == 14  # streams of 5, 5 and 4 batches: the last turn is short
    ds.set_epoch(1)
    inline = [batch_ids(b) for b, _ in ds]
    loader = DataLoader(ds, batch_size=None, num_workers=3)
    assert [batch_ids(b) for b, _ in loader] == inline  # the DataLoader's workers give the same order
    ids = [i for b in inline for i in b]
    assert len(ids) == len(set(ids)) == 28 and ids != sorted(ids)  # each sample once, shuffled
    for start in (1, 5, 11, 13):
        ds.set_epoch(1, start)
        assert [batch_ids(b) for b, _ in loader] == inline[start:], start


def test_bad_members_count_as_bad_items_and_keep_the_batch_count(tmp_path, caplog):
    root = tmp_path / "bad"
    good = logmel_member(np.zeros((20, 8), np.float16))
    write_tar_shard(root / "a.tar", [
        {"__key__": "s0", "npy": good},
        {"__key__": "s1", "npy": b"not an array"},
        {"__key__": "s2", "json": b"{}"},  # no content member
        {"__key__": "s3", "npy": logmel_member(np.zeros((20, 5), np.float16))},  # wrong n_mels
        {"__key__": "s4", "npy": good},
        {"__key__": "s5", "npy": good},
    ])
    index = {"shardlist": [{"url": "a.tar", "nsamples": 8}]}  # promises 2 samples the shard does not hold
    (root / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(DataSourceError, match="no shard's first sample"):
        WebDatasetShards(root)  # the index has no content and says nothing else
    index["audiorq"] = {"format": "audiorq-webdataset", "version": 1, "content": "logmel"}
    (root / INDEX_FILE).write_text(json.dumps(index))
    ds = WebDatasetShards(root, crop_frames=8, n_mels=8, shuffle_buffer=0)
    ds.configure(batch_size=4)
    with caplog.at_level(logging.WARNING):
        out = list(ds)
    assert [(b.shape[0], n) for b, n in out] == [(1, 3), (2, 2)]
    text = caplog.text
    assert "a.tar:s1.npy: not a .npy array" in text and "s2: no .npy member" in text
    assert "s3.npy: log-mel of shape (20, 5), expected (frames, 8)" in text
    assert "2 sample(s) of this epoch are lost: the shard ends after 6 samples" in text


def test_index_entries_stay_inside_their_folder(tmp_path):
    for url in ["../elsewhere.tar", "/etc/x.tar", "pipe:curl http://x", "sub/../../x.tar"]:
        root = tmp_path / str(abs(hash(url)))
        root.mkdir()
        (root / INDEX_FILE).write_text(json.dumps({"shardlist": [{"url": url, "nsamples": 1}]}))
        with pytest.raises(DataSourceError, match="is not a file inside the index's folder"):
            shard_table(root)
    with pytest.raises(DataSourceError, match="only local shard files"):
        shard_table("https://example.com/as-{000..009}.tar")


def test_foreign_shards_are_counted_once_and_the_counts_cached(tmp_path, monkeypatch):
    root = id_shards(tmp_path / "foreign", [3, 5])
    table = shard_table(f"{root}/part-{{000..001}}.tar", cache_dir=tmp_path / "cache")
    assert table.counts == [3, 5] and table.content == "logmel" and table.frontend_config is None
    from audiorq.data.pretrain import webdataset_shards

    monkeypatch.setattr(webdataset_shards, "count_tar_samples", lambda p: pytest.fail(f"recounted {p}"))
    assert shard_table(root, cache_dir=tmp_path / "cache").counts == [3, 5]  # the folder: same files, cached
    with pytest.raises(DataSourceError, match="1 of 3 shard files not found, e.g. .*part-002.tar"):
        shard_table(f"{root}/part-{{000..002}}.tar")


# ----------------------------------------------------------------------------------------------
# prepare webdataset


def test_prepare_resumes_to_the_same_bytes_and_runs_in_parallel(corpus, audio_shards, tmp_path):
    broken = tmp_path / "src"
    write_corpus(broken, n=7)
    (broken / "a" / "broken.flac").write_bytes(b"not audio")
    part = prepare_webdataset(broken, tmp_path / "steps", "audio", clips_per_shard=2, workers=1, progress=False,
                              max_new_shards=2)
    assert not part.complete and not (tmp_path / "steps" / INDEX_FILE).exists()
    leftover = tmp_path / "steps" / ".shard-000002.tar.abcdefgh.tmp"  # as a killed run leaves it
    leftover.write_bytes(b"half a tar")
    rest = prepare_webdataset(broken, tmp_path / "steps", "audio", clips_per_shard=2, workers=1, progress=False)
    assert rest.complete and rest.n_skipped == 4 and rest.n_bad == 1 and "broken.flac" in rest.bad[0][0]
    assert not leftover.exists()
    whole = prepare_webdataset(broken, tmp_path / "whole", "audio", clips_per_shard=2, workers=2, progress=False)
    names = sorted(p.name for p in (tmp_path / "whole").glob("*.tar"))
    assert names == [f"shard-{i:06d}.tar" for i in range(4)] and whole.n_bad == 1
    for name in names + [INDEX_FILE]:
        assert (tmp_path / "steps" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    with pytest.raises(ValueError, match="was started with a different clips_per_shard"):
        prepare_webdataset(broken, tmp_path / "steps", "audio", clips_per_shard=3, workers=1, progress=False)
    # The members are the source files, unchanged.
    with tarfile.open(audio_shards / "shard-000000.tar") as tar:
        members = tar.getmembers()
        meta = json.loads(tar.extractfile(members[1]).read())
        assert members[0].name == "000000000.flac" and members[1].name == "000000000.json"
        assert tar.extractfile(members[0]).read() == (corpus / meta["source"]).read_bytes()


def test_prepare_webdataset_cli(corpus, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["prepare", "webdataset", str(corpus), str(tmp_path / "o"), "--clips-per-shard", "8",
                               "-j", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "23 files, 23 done now" in res.output and "shards: 3" in res.output
    res = runner.invoke(main, ["prepare", "webdataset", str(corpus), str(tmp_path / "p"), "n_mels=32"])
    assert res.exit_code == 2 and "only apply to --content logmel" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# Training


def wds_config(run: Path, shards: Path, *more: str):
    return tiny_config(run, "data.kind=webdataset", f"data.source={shards}", "data.num_workers=2",
                       "data.shuffle_buffer=4", "data.crop_sec=0.95", *more)


def test_training_resumes_mid_epoch_exactly(audio_shards, tmp_path):
    # 23 samples / batch 4 = 5 steps per epoch; stop at step 7 (inside epoch 1), then go on to 12.
    straight = Trainer(wds_config(tmp_path / "a", audio_shards, "max_steps=12"))
    straight.fit()
    assert straight.parts.steps_per_epoch == 5 and straight.parts.progress.seen == 48
    Trainer(wds_config(tmp_path / "b", audio_shards, "max_steps=7")).fit()
    with pytest.raises(ConfigError, match="stopped inside an epoch of WebDataset shards read by data.num_workers=2"):
        Trainer(wds_config(tmp_path / "b", audio_shards, "max_steps=12", "resume=auto", "data.num_workers=1")).fit()
    Trainer(wds_config(tmp_path / "b", audio_shards, "max_steps=12", "resume=auto")).fit()
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["step"] == b["step"] == 12
    assert_states_equal(a["learner"], b["learner"])


def test_training_computes_statistics_from_the_stream(audio_shards, tmp_path):
    trainer = Trainer(wds_config(tmp_path / "s", audio_shards, "max_steps=1", "data.norm_stats=null",
                                 "data.stats_items=6"))
    trainer.fit()
    mean, std = trainer.parts.norm_stats
    assert -20 < mean < 0 and 0 < std < 10


def test_pretrain_cli_names_a_missing_or_mistaken_shard_source(tmp_path, audio_shards):
    res = CliRunner().invoke(main, ["pretrain", "quick", "data.kind=webdataset", f"data.source={tmp_path}/x-{{0..3}}.tar",
                                    f"out_dir={tmp_path / 'run'}"])
    assert res.exit_code == 2 and "4 of 4 shard files not found" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["pretrain", "quick", f"data.source={audio_shards}", f"out_dir={tmp_path / 'r2'}"])
    assert res.exit_code == 2 and "names WebDataset tar shards: add data.kind=webdataset" in res.output


# ----------------------------------------------------------------------------------------------
# Two ranks


def _coverage_rank(rank: int, world: int, port: int, shards: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ds = WebDatasetShards(shards, crop_frames=8, seed=5, shuffle_buffer=5)
    ds.configure(batch_size=3, rank=rank, world_size=world, n_streams=2)
    result = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        result[epoch] = [batch_ids(b) for b, _ in DataLoader(ds, batch_size=None, num_workers=2)]
    gathered = [None] * world
    dist.all_gather_object(gathered, result)
    if rank == 0:
        torch.save(gathered, Path(out) / "ids.pt")
    dist.destroy_process_group()


def test_two_gloo_ranks_read_disjoint_shares_covering_the_epoch(tmp_path):
    counts = [8, 3, 12, 7, 10]  # 40 samples; 2 ranks x batch 3 -> 6 batches each, 4 samples left over
    shards = id_shards(tmp_path / "ids", counts)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_coverage_rank, args=(2, port, str(shards), str(tmp_path)), nprocs=2, join=True)
    gathered = torch.load(tmp_path / "ids.pt", weights_only=True)
    for epoch in (0, 1):
        per_rank = [[i for b in g[epoch] for i in b] for g in gathered]
        assert [len(g[epoch]) for g in gathered] == [6, 6]  # the same number of steps on both ranks
        assert all(len(b) == 3 for g in gathered for b in g[epoch])
        both = per_rank[0] + per_rank[1]
        assert len(both) == len(set(both)) == 36 and set(both) <= set(range(40))
    left = [set(range(40)) - {i for g in gathered for b in g[e] for i in b} for e in (0, 1)]
    assert left[0] != left[1]  # the samples left over change with the epoch


def _ddp_training_rank(rank: int, world: int, port: int, shards: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(wds_config(Path(out) / "run", Path(shards), "max_steps=3", "batch_size=8"))
    trainer.fit()
    torch.save({"learner": trainer.parts.learner.state_dict(), "seen": trainer.parts.progress.seen,
                "steps_per_epoch": trainer.parts.steps_per_epoch}, Path(out) / f"rank{rank}.pt")


def test_ddp_training_on_webdataset_shards_keeps_ranks_in_step(audio_shards, tmp_path):
    # 23 samples, 2 ranks x 4: 2 steps per epoch, so step 3 crosses an epoch boundary on both ranks.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_training_rank, args=(2, port, str(audio_shards), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["steps_per_epoch"] == r1["steps_per_epoch"] == 2 and r0["seen"] == r1["seen"] == 12
    params = [k for k in r0["learner"] if "running_" not in k and "num_batches" not in k]
    assert_states_equal({k: r0["learner"][k] for k in params}, {k: r1["learner"][k] for k in params})


def test_foreign_gzip_shards_of_audio_are_read(corpus, tmp_path):
    root = tmp_path / "gz"
    root.mkdir()
    files = sorted(corpus.rglob("*.flac"))[:6]
    with tarfile.open(root / "foreign-0.tar.gz", "w:gz") as tar:
        for i, path in enumerate(files):
            tar.add(path, arcname=f"clips/{i:03d}.flac")
            info = tarfile.TarInfo(f"clips/{i:03d}.txt")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    ds = WebDatasetShards(root, cache_dir=tmp_path / "cache", shuffle_buffer=0)
    assert ds.content == "audio" and ds.counts == [6]
    ds.configure(batch_size=6)
    (batch, n_bad), = list(ds)
    assert n_bad == 0 and batch.shape == (6, 15200)
