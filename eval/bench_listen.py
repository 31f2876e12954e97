"""Log-mel inversion: speed and quality of `audiorq.listen.invert.invert_logmel`, and per-augmentation figures.

1. Speed: one 1 s clip, 32 Griffin-Lim iterations, at three input levels (x1, x1000 loud, x0.001 quiet);
   median seconds of our inversion (KL and least-squares non-negative solves, and the bare clamped
   pseudo-inverse) as a ratio to librosa's mel_to_stft (scipy NNLS) + griffinlim with the same settings,
   measured in the same run. Target: <= 0.5 s on CPU.
2. Quality: `listen` on real clips (FSDD speech, ESC-10) for none / rq / mixup / rrc: mean |Δ log-mel|
   (natural log, bins within 40 dB of the peak) of the re-analysed inverted audio against its target
   log-mel, spectral convergence, and how much each augmentation changed the log-mel.

    python eval/bench_listen.py [--device auto|cpu|cuda] [--repeats 3] [--iters 32] [--clips 3] [--data DIR]
    python eval/bench_listen.py --repeats 1 --iters 2 --clips 1    # smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from audiorq.audio import load_audio
from audiorq.config import SAMPLE_RATE
from audiorq.device import resolve_device
from audiorq.frontend import LogMelSpectrogram
from audiorq.listen import listen
from audiorq.listen.invert import invert_logmel, logmel_error

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, repeats: int, device: torch.device) -> tuple[float, float, object]:
    """(median, min) seconds of `fn()` after one warm-up call, and its last output."""
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def librosa_invert(logmel: torch.Tensor, fe: LogMelSpectrogram, n_iter: int) -> torch.Tensor:
    """librosa's reference inversion with our frontend's settings: (1, 1, F, T) -> (1, S), on the CPU."""
    import librosa

    mel = (logmel[0, 0].double().exp() - fe.eps).clamp_min(0).cpu().numpy()
    stft = librosa.feature.inverse.mel_to_stft(
        mel, sr=fe.sample_rate, n_fft=fe.n_fft, power=2.0, fmin=fe.f_min, fmax=fe.f_max,
        htk=fe.mel_scale == "htk", norm="slaney" if fe.mel_scale == "slaney" else None,
    )
    wave = librosa.griffinlim(
        stft, n_iter=n_iter, hop_length=fe.hop_length, win_length=fe.win_length, n_fft=fe.n_fft, center=True,
        pad_mode="reflect", length=(logmel.shape[-1] - 1) * fe.hop_length, init=None, momentum=0.99,
    )
    return torch.from_numpy(wave.astype(np.float32)).unsqueeze(0)


def speed_table(clip: torch.Tensor, device: torch.device, repeats: int, n_iter: int) -> list[str]:
    fe = LogMelSpectrogram().to(device)
    cpu_fe = LogMelSpectrogram()
    methods = {
        "ours (kl solve, 30 it)": lambda lm: invert_logmel(lm, fe, n_iter=n_iter, solver="kl"),
        "ours (ls solve, 30 it)": lambda lm: invert_logmel(lm, fe, n_iter=n_iter, solver="ls"),
        "ours (clamped pinv only)": lambda lm: invert_logmel(lm, fe, n_iter=n_iter, nnls_iterations=0),
        "librosa (scipy NNLS + GL)": lambda lm: librosa_invert(lm, cpu_fe, n_iter),
    }
    lines = [
        "| method | level | median s | min s | speed vs librosa (median) | Δ log-mel (nat) |",
        "|---|---|---|---|---|---|",
    ]
    for level in (1.0, 1e3, 1e-3):
        with torch.inference_mode():
            logmel = fe((clip * level).to(device))
            results = {}
            for name, fn in methods.items():
                seconds, best, wave = _median_time(lambda: fn(logmel), repeats, device)
                results[name] = (seconds, best, float(logmel_error(logmel, wave.to(device), fe)))
        base = results["librosa (scipy NNLS + GL)"][0]
        for name, (seconds, best, err) in results.items():
            lines.append(f"| {name} | x{level:g} | {seconds:.3f} | {best:.3f} | {base / seconds:.2f}x | {err:.3f} |")
    return lines


def quality_table(clips: list[Path], device: torch.device, n_iter: int) -> list[str]:
    augs = ["rq", "mixup", "rrc"]
    errors: dict[str, list[float]] = {a: [] for a in ["none"] + augs}
    convergence: dict[str, list[float]] = {a: [] for a in ["none"] + augs}
    change: dict[str, list[float]] = {a: [] for a in ["none"] + augs}
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(clips):
            result = listen(path, augs=augs, views=3, seed=i, out_dir=Path(tmp) / str(i), n_iter=n_iter, device=device)
            errors["none"].append(result.original_quality.logmel_error)
            convergence["none"].append(result.original_quality.spectral_convergence)
            change["none"].append(0.0)
            for v in result.views:
                errors[v.aug].append(v.quality.logmel_error)
                convergence[v.aug].append(v.quality.spectral_convergence)
                change[v.aug].append(v.change)
    lines = [
        "| aug | inversions | Δ log-mel mean (nat) | Δ log-mel max | spectral convergence mean | change vs original mean (nat) |",
        "|---|---|---|---|---|---|",
    ]
    for aug in errors:
        e = errors[aug]
        lines.append(
            f"| {aug} | {len(e)} | {statistics.mean(e):.3f} | {max(e):.3f} | "
            f"{statistics.mean(convergence[aug]):.3f} | {statistics.mean(change[aug]):.3f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=32, help="Griffin-Lim iterations")
    parser.add_argument("--clips", type=int, default=3, help="clips per dataset (FSDD, ESC-10) for quality")
    parser.add_argument("--data", default=os.environ.get("AUDIORQ_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = Path(args.data)
    speech = sorted((data / "fsdd" / "recordings").glob("*.wav"))
    env = sorted((data / "esc10").glob("*/*.ogg"))
    name = (
        torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(f"device: {device} ({name}); torch {torch.__version__}; Griffin-Lim {args.iters} iterations\n")

    rain = data / "esc10" / "002 - Rain" / "1-17367-A.ogg"
    if rain.is_file():
        clip, source = load_audio(rain, duration=1.0), f"{rain.name} (first 1 s)"
    else:  # no shared data: a 1 s chirp plus noise stands in
        g = torch.Generator().manual_seed(0)
        t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
        clip = 0.3 * torch.sin(2 * torch.pi * (200 * t + 1500 * t**2)) + 0.02 * torch.randn(SAMPLE_RATE, generator=g)
        source = "synthetic 1 s chirp + noise"
    print(f"## Speed: 1 s clip ({source}), {args.repeats} timed runs after a warm-up\n")
    print("\n".join(speed_table(clip, device, args.repeats, args.iters)))

    if not speech or not env:
        print(f"\n(no real audio at {data}: quality table skipped)")
        return
    step_s, step_e = max(1, len(speech) // args.clips), max(1, len(env) // args.clips)
    clips = speech[::step_s][: args.clips] + env[::step_e][: args.clips]
    print(f"\n## Quality: {len(clips)} real clips ({args.clips} FSDD, {args.clips} ESC-10), 3 views per aug\n")
    t0 = time.perf_counter()
    print("\n".join(quality_table(clips, device, args.iters)))
    print(f"\n({time.perf_counter() - t0:.1f} s for the quality table)")


if __name__ == "__main__":
    main()
