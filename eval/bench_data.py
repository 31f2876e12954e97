"""Pretraining data throughput: full decode vs partial reads vs float16 log-mel shards vs WebDataset tar shards.

Usage: python eval/bench_data.py [--clips 64] [--seconds 10] [--esc10 DIR] [--workers 2]

Makes AudioSet-like clips (10 s, 16 kHz wav) in a temporary folder, and optionally uses the real 44.1 kHz
ESC-10 ogg clips. Prints items/s for each way of producing one 0.95 s training item, and the ratio against
the baseline measured in the same run (full decode of the clip, then a random crop).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audiorq.audio import load_audio, pad_or_crop
from audiorq.config import SAMPLE_RATE
from audiorq.data.prepare import prepare_logmel, prepare_webdataset
from audiorq.data.pretrain import AudioFolder, LogMelShards, WebDatasetShards
from audiorq.frontend import LogMelSpectrogram

REPO = Path(__file__).resolve().parents[1]


def rate(fn, n_items: int, repeats: int = 3) -> float:
    """Best items/s over `repeats` passes of fn() (each producing n_items items)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_items / best


def bench_source(name: str, source: Path, cache: Path, workers: int, frontend: LogMelSpectrogram) -> None:
    ds = AudioFolder(source, cache_dir=cache)
    n = len(ds)
    gen = torch.Generator().manual_seed(0)

    def full_decode():
        for f in ds.files:
            pad_or_crop(load_audio(f), ds.crop_samples, generator=gen)

    def partial():
        for i in range(n):
            ds[i]

    def partial_logmel():
        for start in range(0, n, 32):
            frontend(torch.stack([ds[i] for i in range(start, min(n, start + 32))]))

    def full_logmel():
        for start in range(0, n, 32):
            frontend(torch.stack([pad_or_crop(load_audio(f), ds.crop_samples, generator=gen)
                                  for f in ds.files[start : start + 32]]))

    t = time.perf_counter()
    shard_dir = cache / f"shards-{name}"
    prepare_logmel(source, shard_dir, shard_size_frames=1 << 16, workers=workers, progress=False)
    prep_s = time.perf_counter() - t
    shards = LogMelShards(shard_dir)

    def shard_items():
        for i in range(n):
            shards[i]

    # WebDataset tar shards, read as training reads them: one stream, shuffle buffer, batches of 32.
    tars = {}
    for content in ("audio", "logmel"):
        t = time.perf_counter()
        prepare_webdataset(source, cache / f"wds-{content}-{name}", content, clips_per_shard=16, workers=workers,
                           progress=False)
        tars[content] = WebDatasetShards(cache / f"wds-{content}-{name}", cache_dir=cache)
        tars[content].configure(batch_size=min(32, n))
        print(f"prepare_webdataset --content {content} with {workers} workers: {time.perf_counter() - t:.1f} s")

    def tar_items(content: str):
        return lambda: [batch for batch in tars[content]]

    n_tar = tars["audio"].batches_per_epoch * min(32, n)

    base = rate(full_decode, n)
    base_lm = rate(full_logmel, n)
    rows = [
        ("wave: full decode + crop (baseline)", base, base),
        ("wave: partial read of the crop (AudioFolder)", rate(partial, n), base),
        ("log-mel: full decode + crop + frontend (baseline)", base_lm, base_lm),
        ("log-mel: partial read + frontend, batches of 32", rate(partial_logmel, n), base_lm),
        ("log-mel: crop from float16 shards (LogMelShards)", rate(shard_items, n, repeats=5), base_lm),
        ("wave: WebDataset tar of the files (WebDatasetShards)", rate(tar_items("audio"), n_tar), base),
        ("log-mel: WebDataset tar of float16 .npy", rate(tar_items("logmel"), n_tar, repeats=5), base_lm),
    ]
    mean_sec = float(np.mean([ds.duration(i) for i in range(n)]))
    print(f"\n{name}: {n} clips, mean {mean_sec:.1f} s, {int(ds.native_rates[0])} Hz; "
          f"prepare_logmel with {workers} workers: {prep_s:.1f} s ({n / prep_s:.1f} clips/s)")
    print(f"{'method':52s} {'items/s':>10s} {'x baseline':>10s}")
    for label, r, b in rows:
        print(f"{label:52s} {r:10.1f} {r / b:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    default_esc = Path(os.environ.get("AUDIORQ_SHARED_DATA", REPO.parent / "shared" / "data")) / "esc10"
    parser.add_argument("--esc10", type=Path, default=default_esc)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one DataLoader worker's view: a single core
    warnings.simplefilter("ignore", RuntimeWarning)
    frontend = LogMelSpectrogram()
    print(f"torch {torch.__version__}, 1 thread; CPU: {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "audioset_like"
        src.mkdir()
        rng = np.random.default_rng(0)
        n = int(args.seconds * SAMPLE_RATE)
        for k in range(args.clips):
            sf.write(src / f"{k:05d}.wav", (0.1 * rng.standard_normal(n)).astype(np.float32), SAMPLE_RATE,
                     subtype="PCM_16")
        bench_source(f"synthetic {args.seconds:g} s 16 kHz wav", src, tmp, args.workers, frontend)
        if args.esc10.is_dir():
            listing = tmp / "esc10.txt"
            clips = sorted(args.esc10.glob("*/*.ogg"))[: args.clips]
            listing.write_text("".join(f"{p}\n" for p in clips))
            bench_source("ESC-10 5 s 44.1 kHz ogg", listing, tmp, args.workers, frontend)


if __name__ == "__main__":
    main()
