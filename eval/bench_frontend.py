"""Log-mel frontend throughput: clips/s of each backend on a batch of 0.95 s clips.

Prints a markdown table with each backend's speed as a ratio to the librosa backend (the reference
implementation) measured in the same run.

    python eval/bench_frontend.py [--device cpu|cuda] [--batch 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from audiorq.frontend import BACKENDS, LogMelSpectrogram


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_backend(backend: str, wave: torch.Tensor, repeats: int) -> float:
    """Median seconds for one batched forward pass (after one warm-up pass)."""
    fe = LogMelSpectrogram(backend=backend).to(wave.device)
    with torch.inference_mode():
        fe(wave)
        times = []
        for _ in range(repeats):
            _sync(wave.device)
            t0 = time.perf_counter()
            fe(wave)
            _sync(wave.device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=0.95)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    wave = (torch.randn(args.batch, int(args.seconds * 16000), generator=torch.Generator().manual_seed(0)) * 0.1).to(device)
    results = {b: time_backend(b, wave, args.repeats) for b in BACKENDS}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); batch {args.batch} x {args.seconds} s; torch {torch.__version__}\n")
    print("| backend | ms / batch | clips/s | speed vs librosa |")
    print("|---|---|---|---|")
    for b, sec in results.items():
        print(f"| {b} | {sec * 1e3:.1f} | {args.batch / sec:,.0f} | {results['librosa'] / sec:.2f}x |")


if __name__ == "__main__":
    main()
