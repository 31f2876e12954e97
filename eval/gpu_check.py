"""One-command GPU check: everything a short, scarce GPU session should measure, in one bounded run.

    python eval/gpu_check.py --out DIR [--budget-s 480]          # on one CUDA GPU (H200 class): < 8 min
    python eval/gpu_check.py --out DIR --smoke                   # the same code at tiny sizes on CPU: < 1 min
    python eval/gpu_check.py --out DIR --only augment,frontend   # a subset (e.g. a rerun of what failed)
    python eval/gpu_check.py --out DIR --device cpu --only overhead   # the paper recipe's overhead on a CPU

Writes DIR/gpu_check.json (every number), DIR/gpu_check.md (the markdown tables) and prints the tables.
Needs only the repository checkout: no ../shared data, no network. The pretraining corpus is synthesized on
the machine itself (one-second clips written as wav, then `prepare_logmel`-ed into shards) in a temporary
folder outside DIR (`--work` to choose it, `--keep` to keep it), so DIR stays small enough to copy back.

Sections, in order; each is timed, runs in its own try/except (a failure is recorded and the rest still
run) and is skipped, with the reason recorded, once the budget left is below what it needs:

  environment       torch / CUDA / cuDNN / NCCL versions, GPU name and memory, CPU count, optional packages
  cuda_tests        `pytest -m cuda -q` in a subprocess: pass / fail / skip counts and the output's tail
  corpus            synthetic one-second clips (wav) -> log-mel shards and WebDataset tar shards of their
                    float16 log-mel; these are the data of the next sections
  augment           RQ (default path, both forced `method`s, a dense reference), RRC, Mixup on (256, 1, 64, 96)
                    on the device: ms per batch, RQ peak memory, and the bit-equalities the code promises
  frontend          log-mel clips/s per backend on 10 s clips (librosa on the CPU), max |diff| vs `torch`
  probe             embedding clips/s of a random AudioNTT2020 (d 2048) behind the frontend: in memory, and
                    from the synthetic wav files through `audiorq.probe.embed.embed_clips`
  pretrain          the paper recipe (byola_rq: d 2048, batch 256, bf16, RRC -> RQ 5 bins), eager, per step:
                    data wait, host->device copy, views (log-mel + augmentation), model (forward, backward,
                    optimizer, EMA), each between torch.cuda.synchronize() calls after warm-up; samples/s vs the
                    20,000 samples/s target; data + augmentation share (target <= 10 %); peak GPU memory.
                    Configs: shards with channels_last on / off, WebDataset tar shards (data.kind=webdataset),
                    and audio files (data.kind=wave, the decode ceiling); each also times its DataLoader alone
  torchrun          `python -m torch.distributed.run --standalone --nproc_per_node=1 -m audiorq.cli pretrain`
                    for a few steps (writes checkpoint.pt), then the same with resume=auto continuing it:
                    exit codes and the checkpoint's step before and after
  pretrain_compile  as `pretrain` with compile=true: channels_last on, CUDA graphs (compile_mode=
                    reduce-overhead), channels_last off; late because compiling is the slowest part. Skipped
                    with --smoke.
  overhead          what the pipeline adds: samples/s of the recipe's real steps (loader, views, train_step,
                    EMA) against a minimal hand-written BYOL step of the same network and sizes on
                    ready-made views, alternating in 3 rounds in the same run, medians (target: ratio >= 0.95);
                    last, as the one to give up when the budget runs short

--device cpu (without --smoke): the full sizes in fp32 on the CPU, for `--only overhead` (minutes per step).
--smoke: device cpu, batch 4, d 32, a few steps, 32 clips, no DataLoader workers; `cuda_tests` runs pytest
anyway (the cuda tests are collected and skip) and records a skip; `pretrain_compile` records a skip.
tests/test_gpu_check.py runs the smoke mode, so the script is exercised by the default test suite.

JSON layout: {"format": "audiorq-gpu-check/1", "smoke", "device", "budget_s", "started", "total_s",
"targets", "summary": {...}, "sections": {name: {"status": "ok" | "failed" | "skipped", "seconds",
"reason" (skipped), "error" and "traceback" (failed), "results": {...}}}}. Both files are rewritten after every
section, so a run killed from outside still leaves what it had measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the GPU machine gets a bare checkout: the package may not be installed there

from audiorq.atomic import atomic_write_text  # noqa: E402
from audiorq.augment import build_augmentation  # noqa: E402
from audiorq.augment.quantize import randomized_quantization, sample_quantizers  # noqa: E402
from audiorq.config import SAMPLE_RATE  # noqa: E402
from audiorq.frontend import BACKENDS, LogMelSpectrogram  # noqa: E402
from audiorq.runs import RunFolder, load_checkpoint  # noqa: E402
from audiorq.train import TrainingParts, build_training, load_pretrain_config, make_loader, train_step  # noqa: E402

FORMAT = "audiorq-gpu-check/1"
TARGET_SAMPLES_PER_S = 20_000  # issue 13: the paper recipe on one H200
TARGET_DATA_AUG_SHARE = 0.10  # data wait + copy + views, as a share of a step from shards
TARGET_OVERHEAD_RATIO = 0.95  # pipeline samples/s over a minimal hand-written step's
AUDIOSET_CLIPS = 2_000_000
OPTIONAL_PACKAGES = ("torchaudio", "nnAudio", "librosa", "numba", "soundfile", "numpy", "triton", "pytest",
                     "tensorboard")
GIB = 2**30


# ----------------------------------------------------------------------------------------------
# Sizes


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every size the sections use: the full GPU check or the tiny CPU smoke run."""

    smoke: bool
    device: str
    batch: int  # pretraining batch (global = local: one process)
    d: int  # AudioNTT2020 embedding size
    precision: str
    n_clips: int  # synthetic corpus size (one-second clips)
    warmup: int  # untimed steps per training config (cuDNN autotuning, allocator, compile)
    compile_warmup: int
    steps: int  # timed steps per training config
    workers: int  # DataLoader workers reading shards
    wave_workers: int  # DataLoader workers decoding audio (the decode ceiling wants many)
    prepare_workers: int
    aug_batch: int
    aug_warmup: int
    aug_repeats: int
    fe_batch: int
    fe_librosa_batch: int  # librosa runs on the CPU: fewer clips keep it inside the budget
    fe_seconds: float
    fe_repeats: int
    probe_batch: int
    probe_clip_seconds: tuple[float, ...]
    probe_repeats: int
    ddp_steps: int  # optimizer steps of the first torchrun run; the resumed run doubles it
    subprocess_cap_s: int  # the most one subprocess may take


def make_plan(smoke: bool, device: str = "cuda") -> Plan:
    """Full sizes for one H200 (fits 8 minutes with compile), the same sizes in fp32 on a CPU (`device` cpu:
    for the overhead section), or tiny ones for a CPU smoke run (< 1 minute)."""
    cpus = os.cpu_count() or 1
    if device == "cpu" and not smoke:
        return dataclasses.replace(make_plan(False), device="cpu", precision="fp32", n_clips=1024, warmup=1,
                                   steps=3, workers=1, wave_workers=1, prepare_workers=max(1, cpus))
    if smoke:
        return Plan(smoke=True, device="cpu", batch=4, d=32, precision="fp32", n_clips=32, warmup=1,
                    compile_warmup=1, steps=2, workers=0, wave_workers=0, prepare_workers=1, aug_batch=4,
                    aug_warmup=1, aug_repeats=2, fe_batch=2, fe_librosa_batch=2, fe_seconds=1.0, fe_repeats=1,
                    probe_batch=4, probe_clip_seconds=(1.0,), probe_repeats=1, ddp_steps=2, subprocess_cap_s=120)
    return Plan(smoke=False, device="cuda", batch=256, d=2048, precision="bf16", n_clips=4096, warmup=5,
                compile_warmup=4, steps=15, workers=min(6, max(1, cpus - 2)), wave_workers=min(14, max(1, cpus - 2)),
                prepare_workers=max(1, min(16, cpus)), aug_batch=256, aug_warmup=5, aug_repeats=20, fe_batch=64,
                fe_librosa_batch=8, fe_seconds=10.0, fe_repeats=5, probe_batch=256, probe_clip_seconds=(1.0, 4.0),
                probe_repeats=5, ddp_steps=3, subprocess_cap_s=240)


# ----------------------------------------------------------------------------------------------
# Shared state and helpers


@dataclasses.dataclass
class Context:
    """What sections share: the plan, the deadline, the work folder and what earlier sections produced."""

    plan: Plan
    device: torch.device
    work: Path
    deadline: float  # time.monotonic() value when the budget is spent
    corpus_files: list[str] = dataclasses.field(default_factory=list)
    corpus_list: Path | None = None  # text file of the wav paths (an AudioFolder source)
    shards: Path | None = None
    wds: Path | None = None  # WebDataset tar shards of the same clips' log-mel

    def left(self) -> float:
        """Seconds of budget left."""
        return self.deadline - time.monotonic()

    def timeout(self, cap: float) -> float:
        """A subprocess timeout: at most `cap`, and never past the budget (10 s are kept to write the report)."""
        return max(5.0, min(cap, self.left() - 10.0))


class SectionSkip(Exception):
    """Raised by a section that cannot run here (no CUDA, a missing prerequisite): recorded as skipped."""


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that the host clock measures the device's work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory measurement (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the last reset, GiB (None on CPU)."""
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def release(device: torch.device) -> None:
    """Free what the last config left, so the next one's peak memory and speed are its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def step_seconds(step: Callable[[], Any], device: torch.device, n: int) -> list[float]:
    """Seconds of each of n calls of step(), each between synchronizations."""
    times = []
    for _ in range(n):
        synchronize(device)
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def median_seconds(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of fn() after `warmup` untimed calls, each call between synchronizations."""
    for _ in range(warmup):
        fn()
    return statistics.median(step_seconds(fn, device, repeats))


def subprocess_env(threads: int | None = None) -> dict[str, str]:
    """The environment for child processes: the checkout importable even when audiorq is not installed;
    `threads` caps their torch / OpenMP threads (the smoke run shares a small, busy machine)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_command(cmd: list[str], timeout: float, cwd: Path = REPO, threads: int | None = None) -> dict[str, Any]:
    """Run cmd; exit code, seconds and the output's tail (a timeout is exit code 124, like coreutils)."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(threads), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        rc = 124
        out = (e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""))
        out += f"\n[gpu_check: killed after {timeout:.0f} s]"
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.monotonic() - t0, 2), "tail": out[-3000:]}


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None when it is missing."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def base_overrides(ctx: Context, out_dir: Path) -> list[str]:
    """Config overrides every training config shares: size, device and quiet logging."""
    p = ctx.plan
    tiny_heads = ["model.hidden_dim=64", "model.proj_dim=32"] if p.smoke else []  # the paper's 4096 / 256 otherwise
    return [f"out_dir={out_dir}", f"device={p.device}", f"batch_size={p.batch}", f"model.d={p.d}",
            f"precision={p.precision}", "log.tensorboard=false", "log.progress=false", *tiny_heads]


def need_corpus(ctx: Context) -> None:
    """Skip the calling section when the corpus section did not produce the shards."""
    if ctx.shards is None or not ctx.corpus_files:
        raise SectionSkip("needs the synthetic corpus (the corpus section did not finish)")


# ----------------------------------------------------------------------------------------------
# Sections


def section_environment(ctx: Context) -> dict[str, Any]:
    """Versions, the GPU and the CPU count: what every number below was measured on."""
    res: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "packages": {name: package_version(name) for name in OPTIONAL_PACKAGES},
    }
    res["missing_packages"] = [name for name, v in res["packages"].items() if v is None]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        res.update(gpu_count=torch.cuda.device_count(), gpu_name=props.name,
                   gpu_memory_gib=round(props.total_memory / GIB, 1), gpu_capability=f"{props.major}.{props.minor}",
                   gpu_multiprocessors=props.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported())
        with contextlib.suppress(Exception):  # NCCL is absent from some builds; its version is a detail
            version = torch.cuda.nccl.version()
            res["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        if shutil.which("nvidia-smi"):
            smi = run_command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit",
                               "--format=csv,noheader"], timeout=20)
            res["nvidia_smi"] = smi["tail"].strip()
    gpu = f"{res['gpu_name']} {res['gpu_memory_gib']} GiB" if "gpu_name" in res else "no GPU"
    res["summary"] = (f"torch {res['torch']}, CUDA {res['torch_cuda']}, {gpu}, {res['cpu_count']} CPUs"
                      + (f"; missing: {', '.join(res['missing_packages'])}" if res["missing_packages"] else ""))
    return res


PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)")


def section_cuda_tests(ctx: Context) -> dict[str, Any]:
    """`pytest -m cuda -q`: the CUDA-only tests (on CPU they are collected and skip: recorded as a skip)."""
    if package_version("pytest") is None:
        raise RuntimeError("pytest is not installed: the CUDA tests cannot run")
    run = run_command([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"],
                      timeout=ctx.timeout(min(120, ctx.plan.subprocess_cap_s)), threads=1 if ctx.plan.smoke else None)
    counts: dict[str, int] = {}
    for n, word in PYTEST_COUNT.findall(run["tail"].splitlines()[-1] if run["tail"].strip() else ""):
        counts[word.rstrip("s") if word.startswith(("error", "warning")) else word] = int(n)
    res = {**run, "counts": counts}
    res["summary"] = ", ".join(f"{v} {k}" for k, v in counts.items()) + f" (rc {run['rc']})"
    if run["rc"] == 5:
        raise RuntimeError("no test carries the cuda marker (pytest exit code 5)")
    if run["rc"] != 0:
        raise RuntimeError(f"pytest -m cuda failed (rc {run['rc']}): {res['summary']}")
    if ctx.device.type != "cuda":
        raise SectionSkip(f"no CUDA here: {res['summary']}", res)
    return res


def synth_batch(rng: np.random.Generator, n: int, samples: int) -> np.ndarray:
    """n clips (n, samples) float32: three decaying partials over coloured noise, different per clip.

    Vectorized numpy rather than `audiorq.synth` (7 ms a clip here): only the data's shape matters for
    throughput, and thousands of clips must be made in seconds on the GPU machine.
    """
    t = np.arange(samples, dtype=np.float32) / SAMPLE_RATE
    freqs = rng.uniform(80.0, 4000.0, (n, 3, 1)).astype(np.float32)
    amps = rng.uniform(0.05, 0.3, (n, 3, 1)).astype(np.float32)
    x = (amps * np.sin(2 * np.pi * freqs * t)).sum(axis=1)
    x *= np.exp(-t[None] * rng.uniform(0.5, 8.0, (n, 1)).astype(np.float32))
    x += rng.uniform(0.001, 0.05, (n, 1)).astype(np.float32) * rng.standard_normal((n, samples), dtype=np.float32)
    return np.clip(x, -1.0, 1.0)


def section_corpus(ctx: Context) -> dict[str, Any]:
    """Write n one-second wav clips and prepare their log-mel shards (the data of the training sections)."""
    import soundfile as sf

    from audiorq.data.prepare import prepare_logmel, prepare_webdataset

    p = ctx.plan
    wav_dir = ctx.work / "corpus"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    files = []
    # soundfile releases the GIL while libsndfile writes, so threads overlap the per-file cost.
    with ThreadPoolExecutor(max_workers=max(1, min(8, (os.cpu_count() or 1)))) as pool:
        for start in range(0, p.n_clips, 256):
            clips = synth_batch(rng, min(256, p.n_clips - start), SAMPLE_RATE)
            names = [str(wav_dir / f"clip-{start + i:05d}.wav") for i in range(len(clips))]
            list(pool.map(lambda a: sf.write(a[0], a[1], SAMPLE_RATE, subtype="PCM_16"), zip(names, clips)))
            files += names
    write_s = time.perf_counter() - t0
    ctx.corpus_list = ctx.work / "corpus.txt"
    ctx.corpus_list.write_text("\n".join(files) + "\n")
    t0 = time.perf_counter()
    summary = prepare_logmel(wav_dir, ctx.work / "shards", workers=p.prepare_workers, progress=False)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepare_webdataset(wav_dir, ctx.work / "wds", "logmel", clips_per_shard=max(8, p.n_clips // 16),
                       workers=p.prepare_workers, progress=False)
    wds_s = time.perf_counter() - t0
    ctx.corpus_files, ctx.shards, ctx.wds = files, ctx.work / "shards", ctx.work / "wds"
    return {"clips": len(files), "clip_seconds": 1.0, "write_s": round(write_s, 2),
            "prepare_logmel_s": round(prepare_s, 2), "prepare_webdataset_s": round(wds_s, 2),
            "prepare_workers": p.prepare_workers, "prepare_summary": str(summary),
            "summary": f"{len(files)} x 1 s clips written in {write_s:.1f} s, shards in {prepare_s:.1f} s"}


def dense_randomized_quantization(x: torch.Tensor, bins: int, generator: torch.Generator) -> torch.Tensor:
    """Literal RQ per (sample, mel bin) row: a (rows, bins, T) membership tensor times the reproduction values.

    The same draws as `sample_quantizers`, applied densely; eval/bench_augment.py's reference, restated here so
    the check does not import another script.
    """
    rows = x.reshape(-1, x.shape[-1])
    edges, values = sample_quantizers(rows.amin(dim=1), rows.amax(dim=1), bins, generator=generator)
    member = (rows.unsqueeze(1) >= edges[:, :-1].unsqueeze(2)) & (rows.unsqueeze(1) < edges[:, 1:].unsqueeze(2))
    member[:, -1] |= rows == edges[:, -1:]  # hi belongs to the last bin
    return (member.to(rows.dtype) * values.unsqueeze(2)).sum(dim=1).view_as(x)


def section_augment(ctx: Context) -> dict[str, Any]:
    """RQ, RRC and Mixup on one (B, 1, 64, 96) batch on the device: ms each, RQ's memory, bit-equalities."""
    p, device = ctx.plan, ctx.device
    rq_cfg = load_pretrain_config("byola_rq").augment
    chain = build_augmentation(rq_cfg).to(device)
    rrc, rq = chain.steps["rrc"], chain.steps["rq"]
    mixup = build_augmentation(load_pretrain_config("byola_mixup").augment).steps["mixup"].to(device)
    bins = rq_cfg.rq.bins
    x = torch.randn(p.aug_batch, 1, 64, 96, generator=torch.Generator().manual_seed(0)).to(device)
    gen = torch.Generator(device=device).manual_seed(0)

    def fresh(seed: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed)

    fns: dict[str, Callable[[], torch.Tensor]] = {
        "clone (memory floor)": lambda: x.clone(),
        f"RQ {bins} bins (default path)": lambda: rq(x, generator=gen),
        f"RQ {bins} bins, method=chain": lambda: randomized_quantization(x, bins, generator=gen, method="chain"),
        f"RQ {bins} bins, method=search": lambda: randomized_quantization(x, bins, generator=gen, method="search"),
        f"RQ {bins} bins, dense reference": lambda: dense_randomized_quantization(x, bins, gen),
        "RRC": lambda: rrc(x, generator=gen),
        "Mixup (bank full)": lambda: mixup(x, generator=gen),
        "RRC -> RQ (one view)": lambda: chain(x, generator=gen),
    }
    # The bank fills after each call: enough warm-up calls make Mixup mix (an empty bank passes through).
    for _ in range(math.ceil(mixup.memory_size / p.aug_batch)):
        mixup(x, generator=gen)
    times = {name: median_seconds(fn, device, p.aug_warmup, p.aug_repeats) for name, fn in fns.items()}

    in_bytes = x.numel() * x.element_size()
    rq_peak_extra = None
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        reset_peak(device)
        out = rq(x, generator=fresh(1))
        synchronize(device)
        rq_peak_extra = (torch.cuda.max_memory_allocated(device) - base) / in_bytes
        del out

    # Promised bit-equalities (docs/architecture.md §5, tests/test_quantize.py): every RQ path gives the same
    # output for the same draws; on CUDA with a CPU generator it equals the CPU result (numba kernel).
    checks: dict[str, bool] = {}
    ref = rq(x, generator=fresh(7))
    for method in ("chain", "search"):
        checks[f"default == method={method} (same seed)"] = torch.equal(
            ref, randomized_quantization(x, bins, generator=fresh(7), method=method))
    checks["default == dense reference (same seed)"] = torch.equal(
        ref, dense_randomized_quantization(x, bins, fresh(7)))
    x_cpu = x.cpu()
    cpu_ref = randomized_quantization(x_cpu, bins, generator=torch.Generator().manual_seed(9))
    for method in (None, "chain", "search"):
        got = randomized_quantization(x, bins, generator=torch.Generator().manual_seed(9), method=method)
        name = f"{device.type} {method or 'default'} with a CPU generator == CPU default"
        checks[name] = torch.equal(got.cpu(), cpu_ref)

    rows = [{"module": name, "ms": round(1e3 * sec, 3), "x_clone": round(sec / times["clone (memory floor)"], 1)}
            for name, sec in times.items()]
    res = {"input": list(x.shape), "bins": bins, "rows": rows, "equal": checks,
           "rq_peak_extra_over_input": None if rq_peak_extra is None else round(rq_peak_extra, 2),
           "ms": {name: round(1e3 * sec, 3) for name, sec in times.items()}}
    broken = [name for name, ok in checks.items() if not ok]
    res["summary"] = (f"RQ {1e3 * times[f'RQ {bins} bins (default path)']:.2f} ms, RRC {1e3 * times['RRC']:.2f} ms, "
                      f"Mixup {1e3 * times['Mixup (bank full)']:.2f} ms per batch of {p.aug_batch}; "
                      + ("all bit-equalities hold" if not broken else f"BROKEN: {'; '.join(broken)}"))
    if broken:
        raise RuntimeError(f"bit-equality broken: {'; '.join(broken)}", res)
    return res


def section_frontend(ctx: Context) -> dict[str, Any]:
    """Clips/s of each log-mel backend on a batch of long clips; librosa on the CPU (numpy)."""
    p, device = ctx.plan, ctx.device
    samples = int(p.fe_seconds * SAMPLE_RATE)
    wave_cpu = 0.1 * torch.randn(p.fe_batch, samples, generator=torch.Generator().manual_seed(0))
    rows: list[dict[str, Any]] = []
    reference: torch.Tensor | None = None  # the torch backend's output on two clips, to compare the others with
    with contextlib.suppress(Exception), torch.inference_mode():  # a failing torch backend shows in its own row
        reference = LogMelSpectrogram(backend="torch").to(device)(wave_cpu[:2].to(device)).cpu()
    failed = []
    for backend in BACKENDS:
        on = torch.device("cpu") if backend == "librosa" else device
        batch = p.fe_librosa_batch if backend == "librosa" else p.fe_batch
        row: dict[str, Any] = {"backend": backend, "device": str(on), "batch": batch}
        try:
            fe = LogMelSpectrogram(backend=backend).to(on)
            wave = wave_cpu[:batch].to(on)
            with torch.inference_mode():
                sec = median_seconds(lambda: fe(wave), on, 1, p.fe_repeats)
                diff = None if reference is None else (fe(wave[:2]).cpu() - reference).abs().max().item()
            row.update(status="ok", actual_backend=fe.backend, ms_per_batch=round(1e3 * sec, 2),
                       clips_per_s=round(batch / sec, 1),
                       max_abs_diff_vs_torch=None if diff is None else float(f"{diff:.3g}"))
        except ImportError as e:  # an optional package (nnAudio, librosa) missing here: recorded, not fatal
            row.update(status="skipped", reason=f"not installed: {e}")
        except Exception as e:  # noqa: BLE001 - one backend's failure must not hide the others' numbers
            row.update(status="failed", error=f"{type(e).__name__}: {e}")
            failed.append(backend)
        rows.append(row)
        release(device)
    res = {"clip_seconds": p.fe_seconds, "rows": rows,
           "summary": ", ".join(f"{r['backend']} {r['clips_per_s']:,.0f}" if r["status"] == "ok"
                                else f"{r['backend']} {r['status']}" for r in rows)
                                + f" clips/s ({p.fe_seconds:g} s clips)"}
    if failed:
        raise RuntimeError(f"backends failed: {failed}", res)
    return res


def section_probe(ctx: Context) -> dict[str, Any]:
    """Embedding clips/s of a random AudioNTT2020 behind the frontend: in memory, and from wav files."""
    from audiorq.data.tasks import Task
    from audiorq.probe.embed import ClipDataset, embed_clips
    from audiorq.probe.encoders import load_encoder

    p, device = ctx.plan, ctx.device
    encoder, info = load_encoder(f"random:d={p.d},seed=0", device)
    frontend = LogMelSpectrogram.from_config(info.frontend).to(device)
    rows = []
    for seconds in p.probe_clip_seconds:
        wave = 0.1 * torch.randn(p.probe_batch, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0))
        wave = wave.to(device)
        with torch.inference_mode():
            sec = median_seconds(lambda: encoder((frontend(wave) + 10.0) / 5.0), device, 1, p.probe_repeats)
        rows.append({"path": "in memory (log-mel + encoder)", "clip_seconds": seconds, "batch": p.probe_batch,
                     "clips_per_s": round(p.probe_batch / sec, 1)})
    if ctx.corpus_files:
        # The probe's real path: files decoded in DataLoader workers, padded/cropped, embedded in batches.
        files = ctx.corpus_files[: max(p.probe_batch * 4, 8)]
        task = Task(name="gpu_check", classes=("synthetic",), unit_sec=1.0, files=tuple(files),
                    labels=np.zeros(len(files), dtype=np.int64), splits=())
        dataset = ClipDataset(task, np.arange(len(files)), "byola", "train", seed=0)
        workers = p.workers
        embed_clips(encoder, frontend, dataset, -10.0, 5.0, batch_size=p.probe_batch, device=device,
                    workers=workers, progress=False)  # warm-up: worker start, allocator
        synchronize(device)
        t0 = time.perf_counter()
        emb = embed_clips(encoder, frontend, dataset, -10.0, 5.0, batch_size=p.probe_batch, device=device,
                          workers=workers, progress=False)
        synchronize(device)
        sec = time.perf_counter() - t0
        rows.append({"path": f"embed_clips from wav files ({workers} workers)", "clip_seconds": 1.0,
                     "batch": p.probe_batch, "clips_per_s": round(len(files) / sec, 1), "clips": len(files),
                     "finite": bool(torch.isfinite(emb).all())})
    release(device)
    return {"d": info.d, "rows": rows,
            "summary": ", ".join(f"{r['clips_per_s']:,.0f} clips/s ({r['clip_seconds']:g} s, "
                                 f"{'files' if 'files' in r['path'] else 'memory'})" for r in rows)}


def epochs_of_batches(parts: TrainingParts) -> Iterator[tuple[torch.Tensor | None, int]]:
    """The run's batches epoch after epoch: a small corpus gives fewer batches per epoch than the steps timed."""
    epoch = 0
    while True:
        if hasattr(parts.dataset, "set_epoch"):
            parts.dataset.set_epoch(epoch)
        parts.sampler.set_epoch(epoch)
        yield from make_loader(parts)
        epoch += 1


def loader_items_per_s(parts: TrainingParts, batches: int) -> float:
    """Items/s of the DataLoader alone (no device work), after its first batch (worker start-up)."""
    stream = epochs_of_batches(parts)
    next(stream)
    t0 = time.perf_counter()
    items = 0
    for _ in range(batches):
        batch, _ = next(stream)
        items += 0 if batch is None else batch.shape[0]
    stream.close()
    return items / (time.perf_counter() - t0)


def timed_training(parts: TrainingParts, warmup: int, steps: int, deadline: float) -> dict[str, Any]:
    """Real training steps; per step: data wait, host->device copy, views, model, each between synchronizations.

    Medians over the timed steps; `wall_samples_per_s` is the whole timed stretch (epoch restarts included).
    """
    device = parts.device
    parts_s: dict[str, list[float]] = {"data": [], "h2d": [], "views": [], "model": []}
    warm_s: list[float] = []
    stream = epochs_of_batches(parts)
    done, loss, wall0, truncated = 0, None, None, False
    while done < warmup + steps:
        if done == warmup:
            wall0 = time.perf_counter()
        t0 = time.perf_counter()
        batch, _ = next(stream)
        if batch is None:  # every item of this batch was unreadable: nothing to train on
            continue
        t1 = time.perf_counter()
        batch = batch.to(device, non_blocking=True)
        synchronize(device)
        t2 = time.perf_counter()
        view1, view2 = parts.views(batch, generator=parts.aug_generator)
        synchronize(device)
        t3 = time.perf_counter()
        loss = train_step(parts, view1, view2, parts.learning_rate(done), parts.ema_decay(done)).loss
        synchronize(device)
        t4 = time.perf_counter()
        if done < warmup:
            warm_s.append(t4 - t0)
        else:
            for key, sec in zip(parts_s, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts_s[key].append(sec)
        done += 1
        if time.monotonic() > deadline and done > warmup:  # out of budget: keep what was measured
            truncated = True
            break
    stream.close()
    wall = time.perf_counter() - wall0 if wall0 is not None else float("nan")
    timed = len(parts_s["model"])
    if timed == 0:
        raise RuntimeError("out of budget before the first timed step")
    med = {k: statistics.median(v) for k, v in parts_s.items()}
    step = sum(med.values())
    share = (med["data"] + med["h2d"] + med["views"]) / step
    return {
        "timed_steps": timed, "truncated": truncated, "warmup_steps_s": [round(s, 3) for s in warm_s],
        **{f"{k}_ms": round(1e3 * v, 3) for k, v in med.items()}, "step_ms": round(1e3 * step, 3),
        "samples_per_s": round(parts.local_batch / step, 1),
        "wall_samples_per_s": round(timed * parts.local_batch / wall, 1),
        "vs_target": round(parts.local_batch / step / TARGET_SAMPLES_PER_S, 3),
        "data_aug_share": round(share, 4), "loss": None if loss is None else float(loss),
        "loss_finite": loss is not None and math.isfinite(float(loss)),
    }


def measure_config(ctx: Context, label: str, extra: list[str], warmup: int) -> dict[str, Any]:
    """Build one training config (paper recipe + overrides), time its loader, then its steps; peak memory."""
    device = ctx.device
    out_dir = ctx.work / "runs" / label.replace(" ", "_").replace(",", "")
    overrides = base_overrides(ctx, out_dir) + extra
    release(device)
    reset_peak(device)
    t0 = time.perf_counter()
    parts = build_training(load_pretrain_config("byola_rq", overrides))
    row: dict[str, Any] = {"config": label, "overrides": extra, "build_s": round(time.perf_counter() - t0, 2),
                           "batch": parts.local_batch, "d": parts.cfg.model.d, "amp": str(parts.amp_dtype),
                           "channels_last_active": bool(parts.views.channels_last),
                           "workers": parts.cfg.data.num_workers}
    try:
        row["loader_items_per_s"] = round(loader_items_per_s(parts, min(8, parts.sampler.batches_per_epoch)), 1)
        row.update(timed_training(parts, warmup, ctx.plan.steps, ctx.deadline - 5.0))
        row["peak_gib"] = None if peak_gib(device) is None else round(peak_gib(device), 2)
    finally:
        del parts
        release(device)
    if not row["loss_finite"]:
        raise RuntimeError(f"{label}: the loss is not finite ({row['loss']})")
    return row


def training_section(ctx: Context, configs: list[tuple[str, list[str], int, float]]) -> dict[str, Any]:
    """Run configs (label, overrides, warm-up steps, seconds needed to start it) within the budget."""
    rows, skipped, failed = [], [], []
    for label, extra, warmup, needs_s in configs:
        if ctx.left() < needs_s:
            skipped.append({"config": label, "reason": f"budget: {ctx.left():.0f} s left, needs ~{needs_s:.0f} s"})
            continue
        t0 = time.perf_counter()
        try:
            row = measure_config(ctx, label, extra, warmup)
            row["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - e.g. an OOM or a compile error in one config only
            row = {"config": label, "overrides": extra, "status": "failed", "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()[-3000:]}
            failed.append(label)
            release(ctx.device)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    ok = [r for r in rows if r["status"] == "ok"]
    res = {"rows": rows, "skipped_configs": skipped, "target_samples_per_s": TARGET_SAMPLES_PER_S,
           "target_data_aug_share": TARGET_DATA_AUG_SHARE,
           "summary": "; ".join(f"{r['config']}: {r['samples_per_s']:,.0f} samples/s ({r['vs_target']:.2f}x target), "
                                f"data+aug {r['data_aug_share']:.1%}" for r in ok)
           + (f"; failed: {failed}" if failed else "")
           + (f"; skipped: {[s['config'] for s in skipped]}" if skipped else "")}
    if failed:
        raise RuntimeError(f"configs failed: {failed}", res)
    if not ok:
        raise SectionSkip("every config was skipped for the budget", res)
    return res


def section_pretrain(ctx: Context) -> dict[str, Any]:
    """Eager pretraining throughput: shards with channels_last on / off, then audio files (decode ceiling)."""
    need_corpus(ctx)
    p = ctx.plan
    shards = [f"data.source={ctx.shards}", "data.kind=logmel", f"data.num_workers={p.workers}"]
    wave = [f"data.source={ctx.corpus_list}", "data.kind=wave", f"data.num_workers={p.wave_workers}",
            f"data.stats_items={min(256, p.n_clips)}"]
    tars = [f"data.source={ctx.wds}", "data.kind=webdataset", f"data.num_workers={p.workers}"]
    needs = 0.0 if p.smoke else 30.0
    return training_section(ctx, [
        ("shards, eager, channels_last", shards + ["compile=false", "channels_last=true"], p.warmup, needs),
        ("shards, eager, no channels_last", shards + ["compile=false", "channels_last=false"], p.warmup, needs),
        ("webdataset tar, eager, channels_last", tars + ["compile=false", "channels_last=true"], p.warmup, needs),
        ("wave files, eager, channels_last", wave + ["compile=false", "channels_last=true"], p.warmup, needs),
    ])


class MinimalBYOL(torch.nn.Module):
    """BYOL written out by hand: the network of the recipe (AudioNTT2020, BYOL-A's MLP heads), nothing else."""

    def __init__(self, d: int, hidden: int, proj: int, n_mels: int):
        super().__init__()
        from audiorq.models import AudioNTT2020

        def mlp(n_in: int) -> torch.nn.Module:
            return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.BatchNorm1d(hidden),
                                       torch.nn.ReLU(inplace=True), torch.nn.Linear(hidden, proj))

        self.encoder, self.projector, self.predictor = AudioNTT2020(n_mels=n_mels, d=d), mlp(d), mlp(proj)
        self.target = torch.nn.Sequential(AudioNTT2020(n_mels=n_mels, d=d), mlp(d))
        self.target.load_state_dict(torch.nn.Sequential(self.encoder, self.projector).state_dict())
        self.target.requires_grad_(False)

    def loss(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        q1, q2 = (self.predictor(self.projector(self.encoder(v))) for v in (v1, v2))
        with torch.no_grad():
            t1, t2 = self.target(v1), self.target(v2)

        def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (2 - 2 * torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean()

        return cos(q1, t2) + cos(q2, t1)

    @torch.no_grad()
    def ema(self, decay: float) -> None:
        online = [*self.encoder.parameters(), *self.projector.parameters()]
        torch._foreach_lerp_(list(self.target.parameters()), online, 1.0 - decay)


def section_overhead(ctx: Context) -> dict[str, Any]:
    """The recipe's real steps from log-mel shards vs a minimal BYOL step on ready-made views, same sizes.

    The two alternate in rounds (after the plan's warm-up steps each), so a machine whose load drifts slows both
    alike; the ratio is of the median step times.
    """
    need_corpus(ctx)
    p, device = ctx.plan, ctx.device
    overrides = base_overrides(ctx, ctx.work / "runs" / "overhead") + [
        f"data.source={ctx.shards}", "data.kind=logmel", f"data.num_workers={p.workers}", "compile=false",
        "channels_last=false"]
    parts = build_training(load_pretrain_config("byola_rq", overrides))
    m, batch = parts.cfg.model, parts.local_batch
    views = tuple(torch.randn(batch, 1, parts.cfg.frontend.n_mels, parts.cfg.data.crop_frames, device=device)
                  for _ in range(2))
    torch.manual_seed(0)
    minimal = MinimalBYOL(m.d, m.hidden_dim, m.proj_dim, parts.cfg.frontend.n_mels).to(device).train()
    opt = torch.optim.Adam([*minimal.encoder.parameters(), *minimal.projector.parameters(),
                            *minimal.predictor.parameters()], lr=parts.cfg.optim.lr)
    amp = parts.amp_dtype
    stream = epochs_of_batches(parts)
    state = {"step": 0}

    def pipeline_step() -> None:
        batch_, _ = next(stream)
        while batch_ is None:
            batch_, _ = next(stream)
        view1, view2 = parts.views(batch_.to(device, non_blocking=True), generator=parts.aug_generator)
        k = state["step"]
        train_step(parts, view1, view2, parts.learning_rate(k), parts.ema_decay(k))
        state["step"] += 1

    def minimal_step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = minimal.loss(*views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        minimal.ema(0.99)

    times: dict[str, list[float]] = {"pipeline": [], "minimal": []}
    try:
        step_seconds(pipeline_step, device, p.warmup)
        step_seconds(minimal_step, device, p.warmup)
        for _ in range(3):
            times["pipeline"] += step_seconds(pipeline_step, device, p.steps)
            times["minimal"] += step_seconds(minimal_step, device, p.steps)
    finally:
        stream.close()  # the networks go with this frame; the next section releases the cache
    rates = {k: batch / statistics.median(v) for k, v in times.items()}
    ratio = rates["pipeline"] / rates["minimal"]
    # Load from other jobs only ever adds time: the fastest steps show what each side costs on its own.
    best_ratio = min(times["minimal"]) / min(times["pipeline"])
    return {"pipeline_samples_per_s": round(rates["pipeline"], 2), "minimal_samples_per_s": round(rates["minimal"], 2),
            "ratio": round(ratio, 4), "best_step_ratio": round(best_ratio, 4), "target_ratio": TARGET_OVERHEAD_RATIO,
            "met": ratio >= TARGET_OVERHEAD_RATIO,
            "step_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
            "batch": batch, "d": m.d, "precision": p.precision, "steps_per_round": p.steps, "rounds": 3,
            "summary": f"pipeline {rates['pipeline']:,.1f} vs minimal step {rates['minimal']:,.1f} samples/s "
                       f"(median steps): ratio {ratio:.3f} (target >= {TARGET_OVERHEAD_RATIO}: "
                       f"{'met' if ratio >= TARGET_OVERHEAD_RATIO else 'NOT met'}); fastest steps {best_ratio:.3f}"}


def section_pretrain_compile(ctx: Context) -> dict[str, Any]:
    """Pretraining throughput with compile=true (channels_last on, CUDA graphs, channels_last off); CUDA only."""
    if ctx.plan.smoke:
        raise SectionSkip("--smoke: torch.compile on a small CPU takes minutes (inductor C++ builds)")
    need_corpus(ctx)
    p = ctx.plan
    shards = [f"data.source={ctx.shards}", "data.kind=logmel", f"data.num_workers={p.workers}"]
    return training_section(ctx, [
        ("shards, compile, channels_last", shards + ["compile=true", "channels_last=true"], p.compile_warmup, 120.0),
        ("shards, compile reduce-overhead (CUDA graphs), channels_last",
         shards + ["compile=true", "compile_mode=reduce-overhead", "channels_last=true"], p.compile_warmup, 120.0),
        ("shards, compile, no channels_last", shards + ["compile=true", "channels_last=false"], p.compile_warmup,
         100.0),
    ])


def section_torchrun(ctx: Context) -> dict[str, Any]:
    """torchrun (1 process) pretrain for a few steps, then resume=auto to twice the steps: rc and steps."""
    need_corpus(ctx)
    p = ctx.plan
    run_dir = ctx.work / "torchrun_run"
    common = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
              "-m", "audiorq.cli", "pretrain", "byola_rq", *base_overrides(ctx, run_dir),
              f"data.source={ctx.shards}", "data.kind=logmel", f"data.num_workers={min(2, p.workers)}"]
    runs = []
    expected = [p.ddp_steps, 2 * p.ddp_steps]
    for i, (steps, extra) in enumerate(((expected[0], []), (expected[1], ["resume=auto"]))):
        if i and runs[0]["rc"] != 0:
            break
        run = run_command(common + [f"max_steps={steps}", *extra], timeout=ctx.timeout(p.subprocess_cap_s),
                          threads=1 if p.smoke else None)
        ckpt_path = RunFolder(run_dir).checkpoint
        run["checkpoint_step"] = int(load_checkpoint(ckpt_path)["step"]) if ckpt_path.exists() else None
        run["expected_step"] = steps
        runs.append(run)
    ok = (len(runs) == 2 and all(r["rc"] == 0 for r in runs)
          and [r["checkpoint_step"] for r in runs] == expected)
    res = {"runs": runs, "encoder_written": RunFolder(run_dir).encoder.exists(),
           "note": "one process: WORLD_SIZE=1, so audiorq.train joins no process group (init_distributed joins one "
                   "only when WORLD_SIZE > 1); this checks the torchrun launch, checkpoint and resume, not NCCL",
           "summary": " -> ".join(f"rc {r['rc']}, step {r['checkpoint_step']}" for r in runs)}
    if not ok:
        raise RuntimeError(f"torchrun runs did not end at steps {expected} with rc 0: {res['summary']}", res)
    return res


# name -> (function, seconds of budget needed to start it on the GPU; the smoke run ignores these)
SECTIONS: dict[str, tuple[Callable[[Context], dict[str, Any]], float]] = {
    "environment": (section_environment, 0.0),
    "cuda_tests": (section_cuda_tests, 45.0),
    "corpus": (section_corpus, 40.0),
    "augment": (section_augment, 20.0),
    "frontend": (section_frontend, 25.0),
    "probe": (section_probe, 25.0),
    "pretrain": (section_pretrain, 60.0),
    "torchrun": (section_torchrun, 60.0),
    "pretrain_compile": (section_pretrain_compile, 120.0),
    "overhead": (section_overhead, 40.0),
}


# ----------------------------------------------------------------------------------------------
# Report


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers across sections: best samples/s vs the target, data+aug share, augmentation shares."""
    sections = report["sections"]
    out: dict[str, Any] = {}
    train_rows = [r for name in ("pretrain", "pretrain_compile")
                  for r in sections.get(name, {}).get("results", {}).get("rows", []) if r.get("status") == "ok"]
    if train_rows:
        best = max(train_rows, key=lambda r: r["samples_per_s"])
        out.update(best_config=best["config"], best_samples_per_s=best["samples_per_s"],
                   best_vs_target=best["vs_target"], target_met=best["samples_per_s"] >= TARGET_SAMPLES_PER_S,
                   audioset_epoch_min=round(AUDIOSET_CLIPS / best["samples_per_s"] / 60, 1))
        default = next((r for r in train_rows if r["config"] == "shards, eager, channels_last"), None)
        if default is not None:
            out.update(default_data_aug_share=default["data_aug_share"],
                       data_aug_share_met=default["data_aug_share"] <= TARGET_DATA_AUG_SHARE)
            aug_ms = sections.get("augment", {}).get("results", {}).get("ms", {})
            if aug_ms:
                # Two views per step: each module runs twice on a batch of the recipe's size.
                out["aug_share_of_default_step"] = {name: round(2 * ms / default["step_ms"], 4)
                                                    for name, ms in aug_ms.items() if "clone" not in name}
    overhead = sections.get("overhead", {}).get("results", {})
    if "ratio" in overhead:
        out.update(overhead_ratio=overhead["ratio"], overhead_met=overhead["met"])
    out["statuses"] = {name: s["status"] for name, s in sections.items()}
    return out


def fmt(value: Any) -> str:
    """A table cell: numbers with thousands separators, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.1e}"  # e.g. a backend difference: 0.000 would hide its size
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """Markdown table lines."""
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + [
        "| " + " | ".join(fmt(c).replace("|", "/") for c in row) + " |" for row in rows]


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: one table of sections, then one table per measured section."""
    env = report["sections"].get("environment", {}).get("results", {})
    lines = [f"# audiorq GPU check{' (smoke, CPU)' if report['smoke'] else ''}", "",
             f"{report['started']}; {env.get('summary', '')}; budget {report['budget_s']} s, "
             f"total {fmt(report.get('total_s'))} s", ""]
    lines += table(["section", "status", "seconds", "result"], [
        [name, s["status"], s["seconds"], s.get("results", {}).get("summary") or s.get("reason") or s.get("error", "")]
        for name, s in report["sections"].items()])
    sm = report.get("summary", {})
    if "best_samples_per_s" in sm:
        lines += ["", f"Best: {sm['best_config']} {sm['best_samples_per_s']:,.0f} samples/s = "
                      f"{sm['best_vs_target']:.2f}x the {TARGET_SAMPLES_PER_S:,} samples/s target "
                      f"({'met' if sm['target_met'] else 'NOT met'}); one AudioSet epoch (2 M clips) "
                      f"{sm['audioset_epoch_min']} min."]
        if "default_data_aug_share" in sm:
            lines.append(f"Data + augmentation share of a step (shards, eager): {sm['default_data_aug_share']:.1%} "
                         f"(target <= {TARGET_DATA_AUG_SHARE:.0%}: "
                         f"{'met' if sm['data_aug_share_met'] else 'NOT met'}).")
    for name in ("pretrain", "pretrain_compile"):
        rows = report["sections"].get(name, {}).get("results", {}).get("rows", [])
        if rows:
            lines += ["", f"## {name}", ""]
            lines += table(["config", "samples/s", "wall samples/s", "vs 20k", "step ms", "data ms", "h2d ms",
                            "views ms", "model ms", "data+aug", "peak GiB", "loader items/s", "1st step s", "NHWC",
                            "status"],
                           [[r["config"], r.get("samples_per_s"), r.get("wall_samples_per_s"), r.get("vs_target"),
                             r.get("step_ms"), r.get("data_ms"), r.get("h2d_ms"), r.get("views_ms"), r.get("model_ms"),
                             f"{r['data_aug_share']:.1%}" if "data_aug_share" in r else None, r.get("peak_gib"),
                             r.get("loader_items_per_s"), (r.get("warmup_steps_s") or [None])[0],
                             {True: "on", False: "off"}.get(r.get("channels_last_active")),
                             r["status"] if r["status"] == "ok" else r.get("error", r["status"])] for r in rows])
            lines += ["", "Medians per step after warm-up; h2d = host-to-device copy; views = log-mel (wave) + "
                          "pre-norm + augmentation x 2 + post-norm; model = forward, backward, optimizer, EMA. "
                          "NHWC: channels_last in use (audiorq ignores it on CPU). 1st step s: first warm-up step "
                          "(compile time with compile=true)."]
    aug = report["sections"].get("augment", {}).get("results", {})
    if aug.get("rows"):
        shares = sm.get("aug_share_of_default_step", {})
        lines += ["", f"## augment (input {tuple(aug['input'])}, RQ peak extra / input "
                      f"{fmt(aug.get('rq_peak_extra_over_input'))})", ""]
        lines += table(["module", "ms / batch", "x clone", "share of a step (2 views)"],
                       [[r["module"], r["ms"], r["x_clone"],
                         f"{shares[r['module']]:.1%}" if r["module"] in shares else None] for r in aug["rows"]])
        lines += [""] + table(["bit-equality", "holds"], [[k, v] for k, v in aug["equal"].items()])
    fe = report["sections"].get("frontend", {}).get("results", {})
    if fe.get("rows"):
        lines += ["", f"## frontend ({fe['clip_seconds']:g} s clips)", ""]
        lines += table(["backend", "device", "batch", "ms / batch", "clips/s", "max |diff| vs torch", "status"],
                       [[r["backend"], r["device"], r["batch"], r.get("ms_per_batch"), r.get("clips_per_s"),
                         r.get("max_abs_diff_vs_torch"), r["status"] if r["status"] == "ok" else
                         r.get("reason", r.get("error"))] for r in fe["rows"]])
    probe = report["sections"].get("probe", {}).get("results", {})
    if probe.get("rows"):
        lines += ["", f"## probe embedding (random AudioNTT2020 d {probe['d']})", ""]
        lines += table(["path", "clip s", "batch", "clips/s"],
                       [[r["path"], r["clip_seconds"], r["batch"], r["clips_per_s"]] for r in probe["rows"]])
    tr = report["sections"].get("torchrun", {}).get("results", {})
    if tr.get("runs"):
        lines += ["", "## torchrun", ""]
        lines += table(["run", "rc", "checkpoint step", "expected", "seconds"],
                       [[i + 1, r["rc"], r["checkpoint_step"], r["expected_step"], r["seconds"]]
                        for i, r in enumerate(tr["runs"])])
        lines += ["", tr["note"]]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> str:
    """Rewrite DIR/gpu_check.json and DIR/gpu_check.md (atomically); returns the markdown."""
    report["summary"] = summarize(report)
    text = markdown(report)
    atomic_write_text(out / "gpu_check.json", json.dumps(report, indent=1, default=str))
    atomic_write_text(out / "gpu_check.md", text)
    return text


def run_section(name: str, ctx: Context, needs_s: float) -> dict[str, Any]:
    """Run one section: status, seconds and results (or the skip reason / the error and its traceback)."""
    fn = SECTIONS[name][0]
    record: dict[str, Any] = {"status": "ok", "seconds": 0.0}
    if ctx.plan.smoke:
        needs_s /= 40  # the smoke sizes run each section about that much faster; the rule itself stays tested
    if needs_s > 0 and ctx.left() < needs_s:
        record.update(status="skipped", reason=f"budget: {max(0.0, ctx.left()):.0f} s left, needs ~{needs_s:.1f} s")
        return record
    t0 = time.perf_counter()
    try:
        record["results"] = fn(ctx)
    except SectionSkip as e:
        record.update(status="skipped", reason=str(e.args[0]))
        if len(e.args) > 1:
            record["results"] = e.args[1]
    except Exception as e:  # noqa: BLE001 - one section's failure is recorded; the others still run
        record.update(status="failed", error=f"{type(e).__name__}: {e.args[0] if e.args else e}",
                      traceback=traceback.format_exc()[-4000:])
        if len(e.args) > 1 and isinstance(e.args[1], dict):
            record["results"] = e.args[1]  # what the section measured before it failed
        release(ctx.device)  # an OOM's leftovers must not starve the next section
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the sections in order within the budget, write and print the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (< 1 minute)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: the full sizes in fp32 on the CPU (for --only overhead)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting sections after this (seconds)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    parser.add_argument("--work", default=None, help="folder for the synthetic corpus and runs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    t_start = time.monotonic()
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    plan = make_plan(args.smoke, args.device)
    if plan.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; use --smoke for the CPU run", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(1)  # the smoke run shares a small machine: 2 threads on a busy 2-core box spin-wait
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work_holder = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work_holder = tempfile.TemporaryDirectory(prefix="gpu_check_")
        work = Path(work_holder.name)
    ctx = Context(plan=plan, device=torch.device(plan.device), work=work, deadline=t_start + args.budget_s)
    report: dict[str, Any] = {
        "format": FORMAT, "smoke": plan.smoke, "device": plan.device, "budget_s": args.budget_s,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "plan": dataclasses.asdict(plan),
        "targets": {"samples_per_s": TARGET_SAMPLES_PER_S, "data_aug_share": TARGET_DATA_AUG_SHARE}, "sections": {},
    }
    try:
        for name, (_, needs_s) in SECTIONS.items():
            if only and name not in only and not (name == "corpus" and any(
                    s in only for s in ("probe", "pretrain", "torchrun", "overhead", "pretrain_compile"))):
                continue  # the corpus runs whenever a section that reads it does
            print(f"gpu_check: {name} ({ctx.left():.0f} s of budget left)", file=sys.stderr, flush=True)
            report["sections"][name] = run_section(name, ctx, needs_s)
            s = report["sections"][name]
            print(f"gpu_check: {name} {s['status']} in {s['seconds']:.1f} s"
                  + (f": {s.get('error') or s.get('reason')}" if s["status"] != "ok" else ""),
                  file=sys.stderr, flush=True)
            report["total_s"] = round(time.monotonic() - t_start, 1)
            write_report(out, report)
    finally:
        if work_holder is not None and not args.keep:
            work_holder.cleanup()
        elif args.keep:
            print(f"gpu_check: work folder kept at {work}", file=sys.stderr)
    report["total_s"] = round(time.monotonic() - t_start, 1)
    print(write_report(out, report))
    failed = [n for n, s in report["sections"].items() if s["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
