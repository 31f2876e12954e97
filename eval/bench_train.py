"""Training-step benchmark: samples/s of a full BYOL step, split into data wait, augmentation and model.

Runs the real training pieces (`audiorq.train`: `build_training`, `make_loader`, the `ViewMaker`, `train_step`)
for a few steps from (a) prepared log-mel shards and (b) audio files, and compares batched on-device
RandomResizeCrop + RQ with applying them sample by sample in DataLoader workers (BYOL-A's way), all
in the same run.

    python eval/bench_train.py --audio ../shared/data/fsdd/recordings              # CPU: batch 64, d 2048
    python eval/bench_train.py --device cuda --batch 256 --precision bf16 --audio DIR --workers 8

Targets (issue 3): data + augmentation <= 10 % of step time from shards, <= 25 % from audio files (CPU);
batched RRC + RQ >= 5x faster per sample than per-sample in workers; on a GPU >= 7,000 samples/s at
batch 256 bf16 (the implied AudioSet epoch, 2 M clips, is printed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from audiorq.augment import build_augmentation  # noqa: E402
from audiorq.config import PretrainConfig, load_config  # noqa: E402
from audiorq.train import TrainingParts, build_training, make_loader, train_step  # noqa: E402

AUDIOSET_CLIPS = 2_000_000


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_config(args: argparse.Namespace, out_dir: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [
        f"out_dir={out_dir}", f"device={args.device}", f"batch_size={args.batch}", f"model.d={args.d}",
        f"precision={args.precision}", f"data.num_workers={args.workers}", "log.tensorboard=false",
        "log.progress=false", f"compile={args.compile}", *extra,
    ])


def timed_steps(parts: TrainingParts, warmup: int, steps: int) -> dict[str, float]:
    """Run warmup + steps real steps; per-step seconds of data wait, augmentation (views) and model."""
    device = parts.device
    if hasattr(parts.dataset, "set_epoch"):
        parts.dataset.set_epoch(0)
    parts.sampler.set_epoch(0)
    if parts.sampler.batches_per_epoch < warmup + steps:
        raise SystemExit(f"need {(warmup + steps) * parts.local_batch} items, the dataset has {len(parts.dataset)}")
    batches = iter(make_loader(parts))
    data, aug, model = [], [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch, n_bad = next(batches)
        t1 = time.perf_counter()
        view1, view2 = parts.views(batch.to(device, non_blocking=True), generator=parts.aug_generator)
        synchronize(device)
        t2 = time.perf_counter()
        train_step(parts, view1, view2, parts.learning_rate(i), parts.ema_decay(i))
        synchronize(device)
        t3 = time.perf_counter()
        if i >= warmup:
            data.append(t1 - t0)
            aug.append(t2 - t1)
            model.append(t3 - t2)
    med = {k: statistics.median(v) for k, v in (("data", data), ("augment", aug), ("model", model))}
    med["step"] = med["data"] + med["augment"] + med["model"]
    med["samples_per_s"] = parts.local_batch / med["step"]
    return med


def report(name: str, r: dict[str, float], target: float | None) -> None:
    share = (r["data"] + r["augment"]) / r["step"]
    verdict = "" if target is None else (" (target <= {:.0%}: {})".format(target, "met" if share <= target else "NOT met"))
    print(f"{name:<14} {r['samples_per_s']:8.1f} samples/s | step {1e3 * r['step']:8.1f} ms = data "
          f"{1e3 * r['data']:7.1f} + augment {1e3 * r['augment']:7.1f} + model {1e3 * r['model']:8.1f} ms | "
          f"data+augment {share:.1%}{verdict}")


class PerSampleViews(Dataset):
    """BYOL-A's way: each worker augments one (1, F, T) log-mel at a time, two views per item."""

    def __init__(self, items: torch.Tensor, chain: torch.nn.Module, seed: int = 0):
        self.items, self.chain, self.seed = items, chain, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        x = self.items[i].unsqueeze(0)
        return self.chain(x, generator=g)[0], self.chain(x, generator=g)[0]


def compare_batched_vs_per_sample(args: argparse.Namespace, device: torch.device, repeats: int = 3) -> float:
    """Per-sample seconds of RRC + RQ (two views): batched on `device` vs per item in DataLoader workers.

    Both sides get a warm-up pass and report the best of `repeats` passes (the machine may be shared).
    """
    cfg = load_config(PretrainConfig, None, [])
    n = args.batch * 4
    items = torch.randn(n, 1, 64, 96, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(PerSampleViews(items, build_augmentation(cfg.augment)), batch_size=args.batch,
                        num_workers=args.workers, persistent_workers=args.workers > 0,
                        prefetch_factor=2 if args.workers else None)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        for _ in loader:
            pass
        times.append(time.perf_counter() - t0)
    per_sample = min(times[1:]) / n
    del loader

    chain = build_augmentation(cfg.augment).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    x = items.to(device)
    times = []
    for i in range(3 * repeats + 1):  # cheap passes: more of them, the best is less noisy
        synchronize(device)
        t0 = time.perf_counter()
        for j in range(0, n, args.batch):
            b = x[j : j + args.batch]
            chain(b, generator=g), chain(b, generator=g)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    batched = min(times[1:]) / n
    ratio = per_sample / batched
    print(f"RRC + RQ, two views, per sample: in {args.workers} DataLoader worker(s) {1e6 * per_sample:.0f} us, "
          f"batched on {device} {1e6 * batched:.0f} us -> batched is {ratio:.1f}x faster (target >= 5x: "
          f"{'met' if ratio >= 5 else 'NOT met'})")
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--batch", type=int, default=None, help="default 64 on CPU, 256 on CUDA")
    p.add_argument("--d", type=int, default=2048)
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16")
    p.add_argument("--workers", type=int, default=PretrainConfig().data.num_workers, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--audio", help="folder or file list of audio (e.g. ../shared/data/fsdd/recordings)")
    p.add_argument("--shards", help="prepared log-mel shards (default: prepared from --audio into a temp dir)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--aug-only", action="store_true", help="only the batched vs per-sample augmentation comparison")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.batch is None:
        args.batch = 256 if device.type == "cuda" else 64
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device}, batch {args.batch}, d {args.d}, precision {args.precision}, workers {args.workers}, "
          f"torch threads {torch.get_num_threads()}, steps {args.steps} (+{args.warmup} warm-up), median per step")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        need = (args.warmup + args.steps) * args.batch
        audio = None if args.aug_only else args.audio
        if audio and Path(audio).is_dir():
            from audiorq.data.pretrain import list_audio_files

            files = list_audio_files(audio)[0][:need]
            (tmp / "files.txt").write_text("\n".join(str(Path(audio).resolve() / f) for f in files) + "\n")
            audio = str(tmp / "files.txt")
        shards = None if args.aug_only else args.shards
        if shards is None and audio:
            from audiorq.data.prepare import prepare_logmel

            t0 = time.perf_counter()
            prepare_logmel(audio, tmp / "shards", progress=False)
            shards = str(tmp / "shards")
            print(f"(prepared {need} clips into log-mel shards in {time.perf_counter() - t0:.1f} s, not timed below)")
        if shards:
            parts = build_training(make_config(args, tmp / "run_shards", f"data.source={shards}", "data.kind=logmel"))
            results["shards"] = timed_steps(parts, args.warmup, args.steps)
            report("log-mel shards", results["shards"], 0.10 if device.type == "cpu" else None)
        if audio:
            parts = build_training(make_config(args, tmp / "run_audio", f"data.source={audio}", "data.kind=wave",
                                               "data.stats_items=64"))
            results["audio"] = timed_steps(parts, args.warmup, args.steps)
            report("audio files", results["audio"], 0.25 if device.type == "cpu" else None)
        if not results:
            print("(no --audio / --shards: only the augmentation comparison runs)")
    compare_batched_vs_per_sample(args, device)
    best = max((r["samples_per_s"] for r in results.values()), default=None)
    if best and device.type == "cuda":
        print(f"GPU: {best:.0f} samples/s -> one AudioSet epoch (2 M clips) in {AUDIOSET_CLIPS / best / 60:.1f} min "
              f"(goal >= 7,000 samples/s: {'met' if best >= 7000 else 'NOT met'})")


if __name__ == "__main__":
    main()
