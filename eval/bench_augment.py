"""Randomized quantization: speed and peak memory against a dense membership-tensor reference.

The reference is the same algorithm written literally: a (rows, bins, T) membership tensor of every value in
every bin, multiplied by the reproduction values and summed over bins. Both run on one (B, 1, 64, 96) fp32
batch; ratios (and a plain x.clone(), the memory-bound floor) are measured in the same run. Before timing,
each bins value checks that the dense reference and RandomizedQuantization give bit-identical output from the
same generator seed, and that both `quantize_rows` methods match the reference on the same bins/values.

    python eval/bench_augment.py [--device cpu|cuda] [--repeats 7] [--batch 512] [--threads N] [--methods]
        [--warmup 10] [--interleave]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from audiorq.augment.quantize import RandomizedQuantization, quantize_rows, randomized_quantization, sample_quantizers


def dense_quantize_rows(rows: torch.Tensor, edges: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Reference: membership (R, bins, L) of each value in [a_i, a_{i+1}) (hi in the last bin) @ values -> (R, L)."""
    x = rows.unsqueeze(1)
    left, right = edges[:, :-1].unsqueeze(2), edges[:, 1:].unsqueeze(2)
    member = (x >= left) & (x < right)
    member[:, -1] |= rows == edges[:, -1:]  # hi belongs to the last bin
    return (member.to(rows.dtype) * values.unsqueeze(2)).sum(dim=1)


def dense_randomized_quantization(x: torch.Tensor, bins: int, generator: torch.Generator) -> torch.Tensor:
    """Reference RQ per (sample, mel bin) row of x (B, 1, F, T): the draws of `sample_quantizers`, dense apply."""
    rows = x.reshape(-1, x.shape[-1])
    edges, values = sample_quantizers(rows.amin(dim=1), rows.amax(dim=1), bins, generator=generator)
    return dense_quantize_rows(rows, edges, values).view_as(x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def peak_extra_bytes(fn: Callable[[], torch.Tensor], device: torch.device) -> int:
    """Peak bytes allocated during fn() above what was allocated before it (the returned output included)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = fn()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del result
        return peak
    # CPU: replay the allocator's alloc/free events recorded by the profiler, in time order.
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    del result
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def median_times(fns: dict[str, Callable[[], torch.Tensor]], repeats: int, device: torch.device,
                 warmup: int = 10, interleave: bool = False) -> dict[str, float]:
    """Median seconds per call of each fn after `warmup` calls: each fn's calls back to back (steady state, as
    in a training loop of same-shaped batches), or interleaved round by round (every call then follows the
    other fns' frees, so its output tends to land on fresh pages: page faults are timed too).

    Why 10 warm-up calls: glibc's malloc adapts its mmap and trim thresholds over the first few frees of a
    12 MiB block; until then each output is freshly mapped (3,072 page faults, ~4 ms on a VM).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = ([name for _ in range(warmup + repeats) for name in fns] if interleave
             else [name for name in fns for _ in range(warmup + repeats)])
    calls: dict[str, int] = {name: 0 for name in fns}
    for name in order:
        _sync(device)
        t0 = time.perf_counter()
        fns[name]()
        _sync(device)
        calls[name] += 1
        if calls[name] > warmup:
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def check_identical(x: torch.Tensor, bins: int, device: torch.device) -> bool:
    """Dense reference == RQ module (same seed), and == both quantize_rows methods (same edges/values)."""
    module_out = RandomizedQuantization(bins=bins)(x, generator=_generator(device, 7))
    dense_out = dense_randomized_quantization(x, bins, _generator(device, 7))
    same = torch.equal(module_out, dense_out)
    rows = x.reshape(-1, x.shape[-1])
    edges, values = sample_quantizers(rows.amin(dim=1), rows.amax(dim=1), bins, generator=_generator(device, 8))
    dense_rows = dense_quantize_rows(rows, edges, values)
    for method in ("chain", "search"):
        same &= torch.equal(quantize_rows(rows, edges, values, method=method), dense_rows)
    return bool(same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--bins", type=int, nargs="+", default=[2, 5, 8, 16, 32])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--methods", action="store_true", help="also time both quantize_rows methods")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls of each function first")
    parser.add_argument("--interleave", action="store_true",
                        help="time the functions round by round instead of each one's calls back to back")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = torch.randn(args.batch, 1, 64, 96, generator=torch.Generator().manual_seed(0)).to(device)
    input_bytes = x.numel() * x.element_size()

    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.machine()}, {torch.get_num_threads()} torch threads")
    print(f"device: {device} ({name}); input {tuple(x.shape)} fp32 = {input_bytes / 2**20:.1f} MiB; "
          f"torch {torch.__version__}; median of {args.repeats} after {args.warmup} warm-up calls, "
          f"{'interleaved' if args.interleave else 'back to back'}\n")
    header = ("| bins | RQ ms | dense ms | clone ms | speed-up vs dense | RQ time / clone | "
              "RQ peak extra / input | dense peak extra / input | identical to dense |")
    if args.methods:
        header += " chain ms | search ms |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    clone_peak = peak_extra_bytes(lambda: x.clone(), device)
    for bins in args.bins:
        identical = check_identical(x, bins, device)
        fns: dict[str, Callable[[], torch.Tensor]] = {
            "rq": lambda: randomized_quantization(x, bins, generator=_generator(device, 1)),
            "dense": lambda: dense_randomized_quantization(x, bins, _generator(device, 1)),
            "clone": lambda: x.clone(),
        }
        if args.methods:
            for method in ("chain", "search"):
                fns[method] = (lambda m: lambda: randomized_quantization(
                    x, bins, generator=_generator(device, 1), method=m))(method)
        t = median_times(fns, args.repeats, device, args.warmup, args.interleave)
        rq_peak = peak_extra_bytes(fns["rq"], device)
        dense_peak = peak_extra_bytes(fns["dense"], device)
        row = (f"| {bins} | {t['rq'] * 1e3:.2f} | {t['dense'] * 1e3:.1f} | {t['clone'] * 1e3:.2f} | "
               f"{t['dense'] / t['rq']:.1f}x | {t['rq'] / t['clone']:.1f}x | {rq_peak / input_bytes:.2f}x | "
               f"{dense_peak / input_bytes:.1f}x | {'yes' if identical else 'NO'} |")
        if args.methods:
            row += f" {t['chain'] * 1e3:.2f} | {t['search'] * 1e3:.2f} |"
        print(row, flush=True)
    print(f"\nclone peak extra / input: {clone_peak / input_bytes:.2f}x")


if __name__ == "__main__":
    main()
