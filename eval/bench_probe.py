"""Linear-probe speed: embedding clips/s (AudioNTT2020 d=2048, 1 s and 4 s clips) and classifier seconds
for 10 runs on 10,000 x 2,048 embeddings.

Ratios are against baselines measured in the same run:
  embedding   batched (--batch) vs one clip at a time;
  classifier  audiorq's batched runs vs the same code one run at a time, and vs a plain
              nn.Linear + autograd + DataLoader loop (the usual way; timed for one run, x runs).

    python eval/bench_probe.py [--device cpu|cuda] [--n 10000] [--d 2048] [--epochs 10] [--clips 64] [--threads N]

Fixed-epoch timings use patience 0 so every variant does the same work; the last row is the real
`byola` protocol (<= 200 epochs, early stopping with patience 10) on synthetic blobs.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from audiorq.config import SAMPLE_RATE
from audiorq.frontend import LogMelSpectrogram
from audiorq.probe.classifier import StandardScaler, train_linear_classifier
from audiorq.probe.encoders import load_encoder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def embed_rate(encoder, frontend, seconds: float, n_clips: int, batch: int, device: torch.device) -> float:
    """Clips/s of log-mel + normalization + encoder on in-memory waveforms (after a warm-up batch)."""
    g = torch.Generator().manual_seed(0)
    wave = (0.1 * torch.randn(min(batch, n_clips), int(seconds * SAMPLE_RATE), generator=g)).to(device)
    with torch.inference_mode():
        encoder((frontend(wave[:1]) + 10) / 5)
        _sync(device)
        t0 = time.perf_counter()
        done = 0
        while done < n_clips:
            b = min(batch, n_clips - done)
            encoder((frontend(wave[:b]) + 10) / 5)
            done += b
        _sync(device)
    return n_clips / (time.perf_counter() - t0)


def blobs(n: int, d: int, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian classes in d dims, overlapping enough that accuracy stays below 100 %."""
    centers = torch.randn(n_classes, d, generator=torch.Generator().manual_seed(1234)) * 0.06
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


def naive_linear_probe(x_tr, y_tr, x_va, y_va, n_classes, epochs, lr, device) -> None:
    """Baseline: nn.Linear + autograd + DataLoader(TensorDataset) + Adam, one run, val accuracy per epoch."""
    torch.manual_seed(0)
    scaler = StandardScaler.fit(x_tr)
    x_tr, x_va = scaler(x_tr).to(device), scaler(x_va).to(device)
    y_tr, y_va = y_tr.to(device), y_va.to(device)
    model = torch.nn.Linear(x_tr.shape[1], n_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_tr, y_tr), batch_size=200, shuffle=True)
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        with torch.no_grad():
            (model(x_va).argmax(1) == y_va).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--clips", type=int, default=64, help="clips per embedding measurement")
    parser.add_argument("--batch", type=int, default=None, help="embedding batch [default: 256 cuda, 32 cpu]")
    parser.add_argument("--n", type=int, default=10000, help="training embeddings (valid/test: n/10 each)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="epochs for the fixed-work timings")
    parser.add_argument("--skip-full", action="store_true", help="skip the early-stopping protocol timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (256 if device.type == "cuda" else 32)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.machine()}, {torch.get_num_threads()} threads")
    print(f"device: {device} ({name}); torch {torch.__version__}\n")

    encoder, info = load_encoder(f"random:d={args.d},seed=0", device)
    frontend = LogMelSpectrogram().to(device)
    print(f"## Embedding (AudioNTT2020 d={info.d}, log-mel on {device})\n")
    print("| clip | batch | clips/s | batch-1 clips/s | speed-up |")
    print("|---|---|---|---|---|")
    for seconds in (1.0, 4.0):
        rate = embed_rate(encoder, frontend, seconds, args.clips, batch, device)
        single = embed_rate(encoder, frontend, seconds, max(4, args.clips // 8), 1, device)
        print(f"| {seconds:.0f} s | {batch} | {rate:,.1f} | {single:,.1f} | {rate / single:.2f}x |")

    n_eval = max(args.n // 10, args.classes)
    x_tr, y_tr = blobs(args.n, args.d, args.classes, 1)
    x_va, y_va = blobs(n_eval, args.d, args.classes, 2)
    x_te, y_te = blobs(n_eval, args.d, args.classes, 3)
    seeds = list(range(42, 42 + args.runs))
    common = dict(lr=1e-3, device=device)
    fixed = dict(max_epochs=args.epochs, patience=0, **common)

    def timed(fn):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        return time.perf_counter() - t0, out

    print(f"\n## Classifier ({args.runs} runs, {args.n:,} x {args.d:,} train, {n_eval:,} valid/test, "
          f"{args.classes} classes, batch 200)\n")
    # Warm-up: first calls pay one-time costs (lazy imports, allocator, kernels).
    train_linear_classifier(x_va, y_va, x_va, y_va, x_te, y_te, args.classes, seeds=seeds[:2], max_epochs=1, **common)
    naive_linear_probe(x_va, y_va, x_va, y_va, args.classes, 1, 1e-3, device)
    t_batched, _ = timed(lambda: train_linear_classifier(x_tr, y_tr, x_va, y_va, x_te, y_te, args.classes,
                                                         seeds=seeds, **fixed))
    t_seq, _ = timed(lambda: [train_linear_classifier(x_tr, y_tr, x_va, y_va, x_te, y_te, args.classes,
                                                      seeds=[s], **fixed) for s in seeds])
    t_naive1, _ = timed(lambda: naive_linear_probe(x_tr, y_tr, x_va, y_va, args.classes, args.epochs, 1e-3, device))
    t_naive = t_naive1 * args.runs
    print(f"| variant | epochs | seconds ({args.runs} runs) | s / epoch / run | vs naive |")
    print("|---|---|---|---|---|")
    for label, sec in ((f"naive nn.Linear + autograd + DataLoader (1 run timed x {args.runs})", t_naive),
                       ("audiorq, one run at a time", t_seq), (f"audiorq, {args.runs} runs batched", t_batched)):
        print(f"| {label} | {args.epochs} | {sec:.2f} | {sec / args.epochs / args.runs * 1e3:.1f} ms | "
              f"{t_naive / sec:.2f}x |")
    if not args.skip_full:
        t_full, runs = timed(lambda: train_linear_classifier(x_tr, y_tr, x_va, y_va, x_te, y_te, args.classes,
                                                             seeds=seeds, max_epochs=200, patience=10, **common))
        epochs = [r.epochs for r in runs]
        acc = sum(r.test_acc for r in runs) / len(runs)
        print(f"| audiorq, {args.runs} runs batched, byola protocol (early stopping) | {min(epochs)}-{max(epochs)} | "
              f"{t_full:.2f} | {t_full / max(epochs) / args.runs * 1e3:.1f} ms | (test acc {acc:.3f}) |")


if __name__ == "__main__":
    main()
