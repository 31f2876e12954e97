"""Hear and see augmentations: log-mel -> linear power (non-negative solve) -> Griffin-Lim audio, and figures.

`invert_logmel` turns log-mel spectrograms back into waveforms; `listen` runs a clip through augmentations
and writes the inverted views as WAV files plus a spectrogram figure (the paper's Figure 2, for any clip).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from audiorq.atomic import atomic_write, atomic_write_text
from audiorq.audio import AudioError, audio_info, load_audio, save_audio
from audiorq.config import AugmentConfig, ConfigError, FrontendConfig, from_dict
from audiorq.frontend import LogMelSpectrogram

BUILTIN_AUGS = ("rq", "mixup", "rrc", "none")
SOLVERS = ("kl", "ls")
MIXUP_SOURCES = ("self", "noise")
MAX_SECONDS = 10.0  # clips longer than this are cut unless a duration is given
TOP_DB = 40.0  # quality is measured over bins within this many dB of the clip's peak
FIGURE_DPI = 100
MANIFEST = "listen.json"
_VIEW_FILE = re.compile(r"^(?:[A-Za-z0-9_.-]+_)?view\d+\.wav$")  # what an earlier listen run wrote


class ListenError(ValueError):
    """A listen request that cannot be carried out (bad option, existing outputs); the message says why."""


# ----------------------------------------------------------------------------------------------
# Inversion: log-mel -> mel power -> linear power -> magnitude -> Griffin-Lim.


def mel_to_power(
    mel: torch.Tensor, filterbank: torch.Tensor, iterations: int = 30, solver: str = "kl"
) -> torch.Tensor:
    """Non-negative linear power P with fb^T P ~= mel: (B, n_mels, T), fb (n_freq, n_mels) -> (B, n_freq, T).

    Starts from the clamped pseudo-inverse and refines it with a fixed number of batched iterations:
    `kl` = multiplicative updates for the KL divergence (they weight errors relatively, like the log
    domain the spectrogram lives in, and keep P >= 0 by construction); `ls` = accelerated projected
    gradient on the least-squares objective. Pass `mel` scaled to a peak of about 1 (as `invert_logmel`
    does): the step sizes and the small positive floor below are relative to that scale.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    fb = filterbank.to(device=mel.device, dtype=torch.float32)
    basis = fb.T  # (n_mels, n_freq): mel = basis @ P
    # pinv in float64: the slaney filters span four orders of magnitude in height.
    pinv = torch.linalg.pinv(basis.double()).float()  # (n_freq, n_mels)
    power = (pinv @ mel).clamp_min(0)
    if iterations == 0:
        return power
    if solver == "kl":
        # Multiplicative updates cannot leave zero: start every bin a little above it.
        peak = power.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        power = power + 1e-6 * peak
        column_sums = basis.sum(dim=0).view(1, -1, 1)  # (1, n_freq, 1); zero outside [f_min, f_max]
        tiny = 1e-12
        for _ in range(iterations):
            ratio = mel / (basis @ power + tiny)
            power = power * (basis.T @ ratio) / (column_sums + tiny)
        return power
    # FISTA with step 1 / ||basis||_2^2 (the gradient's Lipschitz constant).
    step = 1.0 / float(torch.linalg.matrix_norm(basis.double(), ord=2)) ** 2
    y, t = power, 1.0
    for _ in range(iterations):
        nxt = (y - step * (basis.T @ (basis @ y - mel))).clamp_min(0)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = nxt + ((t - 1.0) / t_next) * (nxt - power)
        power, t = nxt, t_next
    return power


def logmel_to_magnitude(
    logmel: torch.Tensor, frontend: LogMelSpectrogram, nnls_iterations: int = 30, solver: str = "kl"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear STFT magnitude of unit peak and its gain: (B, 1, F, T) | (B, F, T) | (F, T) -> (B, n_freq, T), (B,).

    The true magnitude is `magnitude * gain[:, None, None]`. Each item is scaled to a peak mel power of
    1 before the solve (computed as exp(x - max x), which cannot overflow), so very loud or very quiet
    inputs cost the same and behave the same.
    """
    x = _as_batch(logmel).float()
    peak = x.amax(dim=(-2, -1), keepdim=True)  # (B, 1, 1)
    # log(mel + eps) -> mel, relative to the peak: exp(x - peak) - eps * exp(-peak).
    mel = (torch.exp(x - peak) - frontend.eps * torch.exp(-peak)).clamp_min(0)
    power = mel_to_power(mel, frontend.mel_filterbank, nnls_iterations, solver)
    # float64 gain: exp(peak / 2) overflows float32 only for absurd levels, but then stays finite in the product.
    gain = torch.exp(peak.double().view(-1) / 2)
    return power.sqrt(), gain


def griffin_lim(
    magnitude: torch.Tensor, frontend: LogMelSpectrogram, n_iter: int = 32, momentum: float = 0.99,
    length: int | None = None,
) -> torch.Tensor:
    """torchaudio's (fast) Griffin-Lim with the frontend's STFT: (B, n_freq, T) magnitude -> (B, S) waveform.

    S = (T - 1) * hop_length unless `length` is given. The phase starts at zero (not torchaudio's random
    start, which draws from the global RNG), so the result is deterministic.
    """
    import torchaudio.functional as TAF

    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    if length is None:
        length = (magnitude.shape[-1] - 1) * frontend.hop_length
    window = frontend.window.to(device=magnitude.device, dtype=magnitude.dtype)
    return TAF.griffinlim(
        magnitude, window, frontend.n_fft, frontend.hop_length, frontend.win_length,
        power=1.0, n_iter=n_iter, momentum=momentum, length=length, rand_init=False,
    )


def invert_logmel(
    logmel: torch.Tensor, frontend: LogMelSpectrogram, n_iter: int = 32, momentum: float = 0.99,
    nnls_iterations: int = 30, solver: str = "kl", length: int | None = None,
) -> torch.Tensor:
    """Log-mel back to audio at frontend.sample_rate: (B, 1, F, T) | (B, F, T) | (F, T) -> (B, S).

    Undo the log, solve mel -> linear power with the frontend's own filterbank (`mel_to_power`), then
    Griffin-Lim with the frontend's STFT parameters. S = (T - 1) * hop_length, so re-analysing the
    result gives T frames again. Runs on the input's device, batched.
    """
    magnitude, gain = logmel_to_magnitude(logmel, frontend, nnls_iterations, solver)
    wave = griffin_lim(magnitude, frontend, n_iter, momentum, length)
    return (wave.double() * gain.view(-1, 1)).float()


@dataclass(frozen=True)
class InversionQuality:
    """How well an inverted waveform reproduces its target (lower is better for both)."""

    logmel_error: float  # mean |re-analysed - target| log-mel (natural log) over bins within TOP_DB of the peak
    spectral_convergence: float  # || |STFT(wave)| - M ||_F / ||M||_F, M the magnitude Griffin-Lim was given


def peak_mask(logmel: torch.Tensor, top_db: float = TOP_DB) -> torch.Tensor:
    """Bins within `top_db` dB of each item's peak: (B, ..., F, T) -> bool, same shape."""
    peak = logmel.amax(dim=(-2, -1), keepdim=True)
    return logmel >= peak - top_db * math.log(10.0) / 10.0  # power dB -> natural log


def logmel_error(
    target: torch.Tensor, wave: torch.Tensor, frontend: LogMelSpectrogram, top_db: float = TOP_DB
) -> torch.Tensor:
    """Mean |log-mel(wave) - target| over the target's bins within `top_db` of its peak: (B,1,F,T), (B,S) -> (B,)."""
    target = _as_batch(target).float()
    again = frontend(wave).squeeze(1)
    frames = min(again.shape[-1], target.shape[-1])
    again, target = again[..., :frames], target[..., :frames]
    mask = peak_mask(target, top_db)
    diff = (again - target).abs() * mask
    return diff.sum(dim=(-2, -1)) / mask.sum(dim=(-2, -1)).clamp_min(1)


def spectral_convergence(magnitude: torch.Tensor, wave: torch.Tensor, frontend: LogMelSpectrogram) -> torch.Tensor:
    """|| |STFT(wave)| - magnitude ||_F / ||magnitude||_F per item: (B, n_freq, T), (B, S) -> (B,).

    Scale-free in `magnitude` only if `wave` matches its scale: pass the unit-peak magnitude with the
    waveform before its gain, or both at true scale.
    """
    again = frontend.power_spectrogram(wave.float()).sqrt()
    frames = min(again.shape[-1], magnitude.shape[-1])
    again, magnitude = again[..., :frames], magnitude[..., :frames].float()
    num = torch.linalg.vector_norm(again - magnitude, dim=(-2, -1))
    return num / torch.linalg.vector_norm(magnitude, dim=(-2, -1)).clamp_min(torch.finfo(torch.float32).tiny)


def invert_with_quality(
    logmel: torch.Tensor, frontend: LogMelSpectrogram, n_iter: int = 32, momentum: float = 0.99,
    nnls_iterations: int = 30, solver: str = "kl", top_db: float = TOP_DB,
) -> tuple[torch.Tensor, list[InversionQuality]]:
    """`invert_logmel` plus the quality of each item: (B, 1, F, T) -> (B, S), [InversionQuality] * B."""
    target = _as_batch(logmel).float()
    magnitude, gain = logmel_to_magnitude(target, frontend, nnls_iterations, solver)
    unit_wave = griffin_lim(magnitude, frontend, n_iter, momentum)
    wave = (unit_wave.double() * gain.view(-1, 1)).float()
    errors = logmel_error(target, wave, frontend, top_db).tolist()
    convergence = spectral_convergence(magnitude, unit_wave, frontend).tolist()
    return wave, [InversionQuality(e, c) for e, c in zip(errors, convergence)]


def _as_batch(logmel: torch.Tensor) -> torch.Tensor:
    """(B, 1, F, T) | (B, F, T) | (F, T) -> (B, F, T)."""
    if logmel.dim() == 4:
        if logmel.shape[1] != 1:
            raise ValueError(f"expected log-mel (B, 1, F, T), got {tuple(logmel.shape)}")
        return logmel[:, 0]
    if logmel.dim() == 3:
        return logmel
    if logmel.dim() == 2:
        return logmel.unsqueeze(0)
    raise ValueError(f"expected log-mel (B, 1, F, T), (B, F, T) or (F, T), got {tuple(logmel.shape)}")


# ----------------------------------------------------------------------------------------------
# Augmentations by name or recipe.


def build_listen_augmentation(spec: str, bins: int = 5) -> tuple[str, nn.Module]:
    """A row's name and augmentation module from `rq` | `mixup` | `rrc` | `none` | a recipe YAML path.

    `rq` is RandomizedQuantization(bins=bins); `mixup`, `rrc` use their defaults; a recipe's `augment:`
    section builds its whole chain (its own rq.bins, ignoring `bins`); `none` is the identity.
    """
    from audiorq.augment import (  # deferred: the augment package is heavy and not needed for inversion
        AugmentationChain, MixupBYOLA, RandomizedQuantization, RandomResizeCrop, build_augmentation,
    )

    spec = spec.strip()
    if spec == "rq":
        if bins < 1:
            raise ListenError(f"--bins must be >= 1, got {bins}")
        return "rq", AugmentationChain({"rq": RandomizedQuantization(bins=bins)})
    if spec == "mixup":
        return "mixup", AugmentationChain({"mixup": MixupBYOLA()})
    if spec == "rrc":
        return "rrc", AugmentationChain({"rrc": RandomResizeCrop()})
    if spec == "none":
        return "none", AugmentationChain({})
    if spec.endswith((".yaml", ".yml")):
        return _recipe_row_name(spec), build_augmentation(read_recipe_augment(spec))
    raise ListenError(f"unknown augmentation {spec!r}: use one of {', '.join(BUILTIN_AUGS)} or a RECIPE.yaml")


def read_recipe_augment(path: str | os.PathLike) -> AugmentConfig:
    """The validated `augment:` section of a recipe YAML (defaults where it has none)."""
    section = _read_recipe(path).get("augment") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"recipe {path}: augment must be a mapping, got {section!r}")
    try:
        cfg = from_dict(AugmentConfig, section, "augment.")
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"recipe {path}: {e}") from None
    return cfg


def read_recipe_frontend(path: str | os.PathLike) -> FrontendConfig:
    """The validated `frontend:` section of a recipe YAML (defaults where it has none)."""
    section = _read_recipe(path).get("frontend") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"recipe {path}: frontend must be a mapping, got {section!r}")
    try:
        cfg = from_dict(FrontendConfig, section, "frontend.")
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"recipe {path}: {e}") from None
    return cfg


def _read_recipe(path: str | os.PathLike) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping at the top level")
    return data


def _recipe_row_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem) or "recipe"


def _is_identity(module: nn.Module) -> bool:
    from audiorq.augment import AugmentationChain

    return all(isinstance(m, (AugmentationChain, nn.ModuleDict)) for m in module.modules())


def _mixup_modules(module: nn.Module) -> list[nn.Module]:
    from audiorq.augment import MixupBYOLA

    return [m for m in module.modules() if isinstance(m, MixupBYOLA)]


# ----------------------------------------------------------------------------------------------
# The listen pipeline.


@dataclass(frozen=True)
class ListenView:
    """One augmented view: where it was written and how it compares."""

    aug: str
    index: int  # 1-based
    path: Path
    quality: InversionQuality  # inversion quality against the augmented log-mel
    change: float  # mean |augmented - original| log-mel over the original's bins within TOP_DB of its peak


@dataclass
class ListenResult:
    """What `listen` wrote and measured."""

    out_dir: Path
    original: Path
    original_quality: InversionQuality
    views: list[ListenView]
    figure: Path
    manifest: Path
    start: float
    duration: float
    sample_rate: int
    notes: list[str] = field(default_factory=list)
    original_logmel: torch.Tensor | None = None  # (1, 1, F, T), CPU
    augmented: dict[str, torch.Tensor] = field(default_factory=dict)  # aug -> (views, 1, F, T), CPU

    def table(self) -> str:
        """Quality figures as a markdown table."""
        lines = [
            "| file | aug | log-mel error (nat) | spectral convergence | change vs original (nat) |",
            "|---|---|---|---|---|",
            f"| {self.original.name} | none | {self.original_quality.logmel_error:.3f} | "
            f"{self.original_quality.spectral_convergence:.3f} | 0.000 |",
        ]
        for v in self.views:
            lines.append(
                f"| {v.path.name} | {v.aug} | {v.quality.logmel_error:.3f} | "
                f"{v.quality.spectral_convergence:.3f} | {v.change:.3f} |"
            )
        return "\n".join(lines)


def listen(
    path: str | os.PathLike,
    augs: Sequence[str] = ("rq",),
    views: int = 3,
    seed: int = 0,
    out_dir: str | os.PathLike = "listen_out",
    bins: int = 5,
    start: float = 0.0,
    duration: float | None = None,
    overwrite: bool = False,
    n_iter: int = 32,
    frontend: LogMelSpectrogram | FrontendConfig | None = None,
    mixup_with: str | Sequence[str | os.PathLike] = "self",
    mixup_bank: int = 16,
    device: str | torch.device = "cpu",
) -> ListenResult:
    """Augment a clip's log-mel `views` times per augmentation, invert everything, write WAVs + a figure.

    Writes to `out_dir`: original.wav (the unaugmented log-mel inverted the same way), view{i}.wav (one
    aug) or {aug}_view{i}.wav (several), loudness (RMS) matched to original.wav; views.png; listen.json.
    The log-mel is normalized with the clip's own mean/std, augmented, and de-normalized before inversion.
    Mixup's memory bank holds `mixup_bank` items: `self` = the clip circularly shifted in time by random
    offsets (other crops of the looped clip), `noise` = white noise at the clip's level, or audio files
    (each looped/cut to the clip's length). The same `seed` gives the same views on the same device, and
    each aug's views do not depend on which other augs are listed. A file longer than MAX_SECONDS is cut
    to that unless `duration` is given. Refuses to write into a folder holding listen outputs unless
    `overwrite`. Raises AudioError (bad audio), ConfigError (bad recipe) or ListenError (bad options).
    """
    if views < 1:
        raise ListenError(f"views must be >= 1, got {views}")
    if n_iter < 1:
        raise ListenError(f"n_iter must be >= 1, got {n_iter}")
    if isinstance(augs, str):
        augs = [a for a in augs.split(",") if a.strip()]
    if not augs:
        raise ListenError("no augmentation given")
    device = torch.device(device)
    frontend = _make_frontend(frontend).to(device)
    rows = [build_listen_augmentation(spec, bins) for spec in augs]
    names = [name for name, _ in rows]
    if len(set(names)) != len(names):
        raise ListenError(f"augmentations named twice: {', '.join(names)}")

    out_dir = Path(out_dir)
    plan = _output_names(names, views)
    _refuse_overwrite(out_dir, plan, overwrite)

    notes: list[str] = []
    wave, start, duration = _load_clip(path, frontend.sample_rate, start, duration, notes)
    wave = wave.to(device)
    logmel = frontend(wave)  # (1, 1, F, T)
    mean, std = float(logmel.mean()), float(logmel.std())
    if float(wave.abs().max()) < 1e-5 or std < 1e-3:
        raise AudioError(path, f"silent (or no energy between {frontend.f_min:g} and {frontend.f_max:g} Hz): "
                               "nothing to augment or listen to")
    from audiorq.augment import PrecomputedNorm

    norm = PrecomputedNorm(mean, std)
    normalized = norm(logmel)

    augmented: dict[str, torch.Tensor] = {}
    for name, module in rows:
        module = module.to(device)
        generator = torch.Generator(device=device).manual_seed(seed)
        mixups = _mixup_modules(module)
        if mixups:
            bank = _mixup_bank(mixup_with, mixup_bank, wave, frontend, norm, generator)
            for mixup in mixups:
                mixup.reset()
                mixup(bank)  # an empty bank passes its input through and stores it; no random draws
        if _is_identity(module):  # skip the normalize round trip: `none` views equal the original exactly
            augmented[name] = logmel.expand(views, -1, -1, -1).clone()
            continue
        with torch.no_grad():
            out = module(normalized.expand(views, -1, -1, -1).clone(), generator=generator)
        augmented[name] = out * std + mean  # (views, 1, F, T)

    batch = torch.cat([logmel] + [augmented[n] for n in names])
    with torch.no_grad():
        waves, quality = invert_with_quality(batch, frontend, n_iter=n_iter)
    mask = peak_mask(logmel)
    changes = [
        float(((augmented[n] - logmel).abs() * mask).sum(dim=(-2, -1)).squeeze(1)[i] / mask.sum())
        for n in names for i in range(views)
    ]

    # Loudness: every view at the RMS of the inverted original; then one common gain if anything would clip.
    target_rms = _rms(waves[0])
    gains = torch.ones(waves.shape[0], dtype=torch.float32, device=waves.device)
    for i in range(1, waves.shape[0]):
        rms = _rms(waves[i])
        gains[i] = target_rms / rms if rms > 0 else 0.0
    waves = waves * gains.view(-1, 1)
    peak = float(waves.abs().max())
    if peak > 0.99:
        waves = waves * (0.99 / peak)
        notes.append(f"all files attenuated by {20 * math.log10(peak / 0.99):.1f} dB to avoid clipping")

    out_dir.mkdir(parents=True, exist_ok=True)
    original_path = out_dir / plan["original"]
    save_audio(original_path, waves[0], frontend.sample_rate)
    view_results = []
    for k, (name, i) in enumerate((n, i) for n in names for i in range(views)):
        p = out_dir / plan["views"][name][i]
        save_audio(p, waves[1 + k], frontend.sample_rate)
        view_results.append(ListenView(name, i + 1, p, quality[1 + k], changes[k]))

    figure_path = out_dir / plan["figure"]
    title = f"{Path(path).name}  [{start:.2f} s, {start + duration:.2f} s)  seed {seed}"
    draw_views(logmel[0, 0], {n: augmented[n][:, 0] for n in names}, frontend, figure_path, title=title)

    result = ListenResult(
        out_dir=out_dir, original=original_path, original_quality=quality[0], views=view_results,
        figure=figure_path, manifest=out_dir / MANIFEST, start=start, duration=duration,
        sample_rate=frontend.sample_rate, notes=notes, original_logmel=logmel.cpu(),
        augmented={n: augmented[n].cpu() for n in names},
    )
    _write_manifest(result, path, list(augs), views, seed, bins, n_iter, frontend, mixup_with)
    return result


def _make_frontend(frontend: LogMelSpectrogram | FrontendConfig | None) -> LogMelSpectrogram:
    if frontend is None:
        return LogMelSpectrogram.from_config(FrontendConfig())
    if isinstance(frontend, FrontendConfig):
        frontend.validate()
        return LogMelSpectrogram.from_config(frontend)
    return frontend


def _output_names(names: list[str], views: int) -> dict:
    """File names for each output: view{i}.wav with one aug, {aug}_view{i}.wav with several."""
    single = len(names) == 1
    return {
        "original": "original.wav",
        "figure": "views.png",
        "manifest": MANIFEST,
        "views": {n: [f"view{i + 1}.wav" if single else f"{n}_view{i + 1}.wav" for i in range(views)] for n in names},
    }


def _refuse_overwrite(out_dir: Path, plan: dict, overwrite: bool) -> None:
    if overwrite or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ListenError(f"output path {out_dir} exists and is not a folder")
    planned = [plan["original"], plan["figure"], plan["manifest"]] + [f for fs in plan["views"].values() for f in fs]
    existing = [f for f in planned if (out_dir / f).exists()]
    existing += sorted(p.name for p in out_dir.iterdir() if _VIEW_FILE.match(p.name) and p.name not in existing)
    if existing:
        shown = ", ".join(existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise ListenError(
            f"{out_dir} already holds listen outputs ({shown}); pass --overwrite (overwrite=True) or another --out"
        )


def _load_clip(
    path: str | os.PathLike, sample_rate: int, start: float, duration: float | None, notes: list[str]
) -> tuple[torch.Tensor, float, float]:
    info = audio_info(path)  # AudioError for a missing or unreadable file
    if info.frames == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if duration is None and info.duration - start > MAX_SECONDS:
        duration = MAX_SECONDS
        notes.append(
            f"{Path(path).name} is {info.duration:.1f} s long: using [{start:g}, {start + MAX_SECONDS:g}) s; "
            "choose another span with --start/--duration"
        )
    wave = load_audio(path, sample_rate=sample_rate, start=start, duration=duration)
    min_samples = 2 * 1024  # enough frames to see and hear anything (and for reflect padding)
    if wave.shape[-1] < min_samples:
        raise AudioError(path, f"too short: {wave.shape[-1] / sample_rate:.3f} s (need at least "
                               f"{min_samples / sample_rate:.3f} s)")
    return wave, float(start), wave.shape[-1] / sample_rate


def _mixup_bank(
    source: str | Sequence[str | os.PathLike], size: int, wave: torch.Tensor, frontend: LogMelSpectrogram,
    norm: nn.Module, generator: torch.Generator,
) -> torch.Tensor:
    """Normalized log-mel items (size, 1, F, T) for mixup's memory bank, in the clip's own normalization."""
    if size < 1:
        raise ListenError(f"mixup bank size must be >= 1, got {size}")
    n = wave.shape[-1]
    gen_device = generator.device
    if isinstance(source, str) and source == "self":
        # Circular shifts of a quarter to three quarters of the clip: different content at each instant.
        shifts = (n // 4 + (torch.rand(size, generator=generator, device=gen_device) * (n // 2)).long()).tolist()
        items = torch.stack([torch.roll(wave, s) for s in shifts])
    elif isinstance(source, str) and source == "noise":
        noise = torch.randn(size, n, generator=generator, device=gen_device).to(wave.device)
        items = noise * _rms(wave)
    else:
        paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        if not paths:
            raise ListenError("mixup_with is empty: give self, noise or audio files")
        loaded = []
        for p in paths:
            if str(p) in MIXUP_SOURCES:
                raise ListenError(f"mixup_with: {p!r} cannot be mixed with files")
            other = load_audio(p, sample_rate=frontend.sample_rate, duration=max(n / frontend.sample_rate, 0.1))
            reps = -(-n // other.shape[-1])
            loaded.append(other.repeat(reps)[:n])
        items = torch.stack([loaded[i % len(loaded)] for i in range(size)]).to(wave.device)
    return norm(frontend(items))


def _rms(wave: torch.Tensor) -> float:
    return float(wave.double().square().mean().sqrt())


def mel_center_frequencies(frontend: LogMelSpectrogram) -> list[float]:
    """Centre frequency in Hz of each mel bin (the peak of its filter)."""
    import librosa

    return librosa.mel_frequencies(
        frontend.n_mels + 2, fmin=frontend.f_min, fmax=frontend.f_max, htk=frontend.mel_scale == "htk"
    )[1:-1].tolist()


def figure_size(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Figure size in inches for `draw_views`; pixels = inches * FIGURE_DPI."""
    return 1.75 + 3.0 * n_cols, 1.05 + 2.0 * n_rows


def draw_views(
    original: torch.Tensor, rows: dict[str, torch.Tensor], frontend: LogMelSpectrogram,
    path: str | os.PathLike, title: str | None = None,
) -> None:
    """PNG of log-mel spectrograms: each row the original (F, T) then the views (V, F, T); shared colour scale.

    Time axis in seconds, frequency axis the mel bins labelled in Hz. Drawn on an Agg canvas (no pyplot
    state, no GUI) and written atomically. Size `figure_size(len(rows), 1 + V)` at FIGURE_DPI.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    original = original.detach().float().cpu()
    rows = {k: v.detach().float().cpu() for k, v in rows.items()}
    n_views = max(v.shape[0] for v in rows.values())
    # Colour scale from the original (its quietest 0.5 %, at most 80 dB below its peak) up to the highest
    # value anywhere, so every panel reads on the same scale.
    vmax = max(float(original.max()), *(float(v.max()) for v in rows.values()))
    vmin = max(float(original.max()) - 80.0 * math.log(10.0) / 10.0, float(torch.quantile(original.flatten(), 0.005)))
    n_freq, n_time = original.shape
    seconds = n_time * frontend.hop_length / frontend.sample_rate
    centres = mel_center_frequencies(frontend)
    ticks = _frequency_ticks(centres)

    width, height = figure_size(len(rows), 1 + n_views)
    fig = Figure(figsize=(width, height), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    # Fixed margins in inches (a layout engine costs seconds per figure): labels left, colour bar right.
    left, right, top, bottom = 0.75, 1.0, 0.55, 0.5
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
        wspace=0.12, hspace=0.35,
    )
    axes = fig.subplots(len(rows), 1 + n_views, squeeze=False, sharex=True, sharey=True)
    image = None
    for r, (name, stack) in enumerate(rows.items()):
        panels = [("original", original)] + [(f"{name} view {i + 1}", stack[i]) for i in range(stack.shape[0])]
        for c, ax in enumerate(axes[r]):
            if c >= len(panels):
                ax.set_visible(False)
                continue
            label, spec = panels[c]
            image = ax.imshow(
                spec.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                extent=(0.0, seconds, -0.5, n_freq - 0.5), interpolation="nearest",
            )
            ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_yticks([b for b, _ in ticks], [hz for _, hz in ticks], fontsize=7)
                ax.set_ylabel("frequency (Hz)", fontsize=8)
            if r == len(rows) - 1:
                ax.tick_params(axis="x", labelsize=7)
                ax.set_xlabel("time (s)", fontsize=8)
    if image is not None:
        bar_axes = fig.add_axes((1 - (right - 0.2) / width, bottom / height, 0.15 / width, 1 - (top + bottom) / height))
        bar = fig.colorbar(image, cax=bar_axes)
        bar.set_label("log-mel (ln power)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _frequency_ticks(centres: list[float]) -> list[tuple[int, str]]:
    """(mel bin, label) for round frequencies inside the band."""
    ticks = []
    for hz in (100, 250, 500, 1000, 2000, 4000, 7000):
        if centres[0] <= hz <= centres[-1]:
            b = min(range(len(centres)), key=lambda i: abs(centres[i] - hz))
            ticks.append((b, f"{hz // 1000}k" if hz >= 1000 else str(hz)))
    return ticks


def _write_manifest(
    result: ListenResult, path: str | os.PathLike, augs: list[str], views: int, seed: int, bins: int,
    n_iter: int, frontend: LogMelSpectrogram, mixup_with: str | Sequence[str | os.PathLike],
) -> None:
    manifest = {
        "audio": str(path),
        "start": result.start,
        "duration": result.duration,
        "sample_rate": result.sample_rate,
        "augs": augs,
        "views": views,
        "seed": seed,
        "bins": bins,
        "griffin_lim_iterations": n_iter,
        "mixup_with": mixup_with if isinstance(mixup_with, str) else [str(p) for p in mixup_with],
        "frontend": {
            k: getattr(frontend, k)
            for k in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max", "mel_scale")
        },
        "original": {"file": result.original.name, **dataclasses.asdict(result.original_quality)},
        "views_written": [
            {"file": v.path.name, "aug": v.aug, "index": v.index, "change": v.change,
             **dataclasses.asdict(v.quality)}
            for v in result.views
        ],
        "figure": result.figure.name,
        "notes": result.notes,
    }
    atomic_write_text(result.manifest, json.dumps(manifest, indent=2) + "\n")
