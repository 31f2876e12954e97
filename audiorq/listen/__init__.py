"""Hear and see augmentations: run a clip's log-mel through augmentations, invert every view, write WAVs + a figure.

This module is the pipeline (`listen`), its options and its outputs (file names, overwrite refusal,
manifest). The maths lives in `audiorq.listen.invert` (log-mel -> waveform, tensors only) and the
figure in `audiorq.listen.figures`; their public names are re-exported here. Conventions (16 kHz,
log-mel layout) are in docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from audiorq import _make_callable
from audiorq.atomic import atomic_write_text
from audiorq.audio import AudioError, audio_info, load_audio, save_audio
from audiorq.augment import (
    AugmentationChain, MixupBYOLA, PrecomputedNorm, RandomizedQuantization, build_augmentation,
)
from audiorq.config import AugmentConfig, FrontendConfig, RQConfig, recipe_section
from audiorq.device import resolve_device
from audiorq.frontend import LogMelSpectrogram
from audiorq.listen.compile_note import announce_kernel_compile
from audiorq.listen.figures import FIGURE_DPI, draw_views, figure_size, frequency_ticks, mel_center_frequencies
from audiorq.listen.invert import (
    SOLVERS, TOP_DB, InverseLogMel, InversionQuality, griffin_lim, invert_logmel, invert_with_quality,
    logmel_error, logmel_to_magnitude, mel_to_power, peak_mask, spectral_convergence,
)

__all__ = [
    # pipeline
    "BUILTIN_AUGS", "MANIFEST", "MAX_SECONDS", "MIXUP_SOURCES", "ListenError", "ListenResult", "ListenView",
    "build_listen_augmentation", "default_out_dir", "listen",
    # audiorq.listen.invert
    "SOLVERS", "TOP_DB", "InverseLogMel", "InversionQuality", "griffin_lim", "invert_logmel",
    "invert_with_quality", "logmel_error", "logmel_to_magnitude", "mel_to_power", "peak_mask",
    "spectral_convergence",
    # audiorq.listen.figures
    "FIGURE_DPI", "draw_views", "figure_size", "frequency_ticks", "mel_center_frequencies",
]

BUILTIN_AUGS = ("rq", "mixup", "rrc", "none")
MIXUP_SOURCES = ("self", "noise")
MAX_SECONDS = 10.0  # clips longer than this are cut unless a duration is given
MANIFEST = "listen.json"
MIN_SAMPLES = 2 * 1024  # shortest clip accepted: enough frames to see and hear anything (and for reflect padding)
_VIEW_FILE = re.compile(r"^(?:[A-Za-z0-9_.-]+_)?view\d+\.wav$")  # what an earlier listen run wrote


class ListenError(ValueError):
    """A listen request that cannot be carried out (bad option, existing outputs); the message says why."""


# ----------------------------------------------------------------------------------------------
# Rows: augmentations by name or recipe.


def build_listen_augmentation(spec: str, bins: int = 5) -> tuple[str, nn.Module]:
    """A row's name and augmentation module (B, 1, F, T) -> same, from `rq` | `mixup` | `rrc` | `none` | RECIPE.yaml.

    `rq` is RandomizedQuantization(bins=bins); `mixup`, `rrc` use their config defaults; a recipe's
    `augment:` section builds its whole chain (its own rq.bins, ignoring `bins`); `none` is the identity.
    Raises ConfigError (bad bins, bad recipe) or ListenError (unknown name).
    """
    spec = spec.strip()
    if spec == "rq":
        rq = RQConfig(bins=bins)
        rq.validate()  # the bins bound lives in the config; `bins` only matters for this row
        return "rq", build_augmentation(AugmentConfig(chain=["rq"], rq=rq))
    if spec in ("mixup", "rrc"):
        return spec, build_augmentation(AugmentConfig(chain=[spec]))
    if spec == "none":
        return "none", AugmentationChain({})
    if spec.endswith((".yaml", ".yml")):
        return _recipe_row_name(spec), build_augmentation(recipe_section(AugmentConfig, spec, "augment"))
    raise ListenError(f"unknown augmentation {spec!r}: use one of {', '.join(BUILTIN_AUGS)} or a RECIPE.yaml")


def _row_name(spec: str) -> str:
    """The name `build_listen_augmentation` gives a row, without building it."""
    spec = spec.strip()
    return _recipe_row_name(spec) if spec.endswith((".yaml", ".yml")) else spec


def default_out_dir(path: str | os.PathLike, augs: Sequence[str] | str) -> Path:
    """listen_<clip>_<aug names>: another augmentation of the same clip gets its own folder."""
    if isinstance(augs, str):
        augs = [a for a in augs.split(",") if a.strip()]
    return Path("_".join(["listen", Path(path).stem, *(_row_name(a) for a in augs)]))


def _recipe_row_name(path: str) -> str:
    # The row name becomes part of file names ({row}_view1.wav): keep it to safe characters.
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem) or "recipe"


def _is_identity(module: nn.Module) -> bool:
    return all(isinstance(m, (AugmentationChain, nn.ModuleDict)) for m in module.modules())


def _mixup_modules(module: nn.Module) -> list[MixupBYOLA]:
    return [m for m in module.modules() if isinstance(m, MixupBYOLA)]


# ----------------------------------------------------------------------------------------------
# Results.


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


# ----------------------------------------------------------------------------------------------
# The pipeline.


def listen(
    path: str | os.PathLike,
    augs: Sequence[str] | str = ("rq",),
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
    announce: Callable[[str], None] | None = None,
) -> ListenResult:
    """Augment a clip's log-mel (1, 1, F, T) `views` times per augmentation, invert everything, write WAVs + a figure.

    Writes to `out_dir`: original.wav (the unaugmented log-mel inverted the same way), view{i}.wav (one
    aug) or {aug}_view{i}.wav (several), loudness (RMS) matched to original.wav; views.png; listen.json.
    The log-mel is normalized with the clip's own mean/std, augmented, and de-normalized before inversion.
    Mixup's memory bank holds `mixup_bank` items: `self` = the clip circularly shifted in time by random
    offsets (other crops of the looped clip), `noise` = white noise at the clip's level, or audio files
    (each looped/cut to the clip's length). The same `seed` gives the same views on the same device, and
    each aug's views do not depend on which other augs are listed. A file longer than MAX_SECONDS is cut
    to that unless `duration` is given. `device` is cpu, cuda, cuda:N or auto (see docs/architecture.md).
    An identity row (`none`) writes one view whatever `views` says (its views would be identical), with a
    note. `announce` gets a line before slow one-off work (the RQ kernel's first compilation).
    Refuses to write into a folder holding listen outputs unless `overwrite`. Raises AudioError (bad
    audio), ConfigError (bad recipe, bins or device) or ListenError (bad options); all are ValueErrors.
    """
    if views < 1:
        raise ListenError(f"views must be >= 1, got {views}")
    if n_iter < 1:
        raise ListenError(f"n_iter must be >= 1, got {n_iter}")
    if isinstance(augs, str):
        augs = [a for a in augs.split(",") if a.strip()]
    if not augs:
        raise ListenError("no augmentation given")
    device = resolve_device(device)
    frontend = _make_frontend(frontend).to(device)
    rows = [build_listen_augmentation(spec, bins) for spec in augs]
    names = [name for name, _ in rows]
    if len(set(names)) != len(names):
        raise ListenError(f"augmentations named twice: {', '.join(names)}")

    notes: list[str] = []
    counts = {name: 1 if _is_identity(module) else views for name, module in rows}
    identical = [name for name in names if counts[name] < views]
    if identical:
        notes.append(f"{', '.join(identical)}: one view written (its {views} views would be identical)")
    out_dir = Path(out_dir)
    plan = _output_names(names, counts)
    _refuse_overwrite(out_dir, plan, overwrite)

    wave, start, duration = _load_clip(path, frontend.sample_rate, start, duration, notes)
    wave = wave.to(device)
    logmel = frontend(wave)  # (1, 1, F, T)
    mean, std = float(logmel.mean()), float(logmel.std())
    if float(wave.abs().max()) < 1e-5 or std < 1e-3:
        raise AudioError(path, f"silent (or no energy between {frontend.f_min:g} and {frontend.f_max:g} Hz): "
                               "nothing to augment or listen to")
    norm = PrecomputedNorm(mean, std)
    normalized = norm(logmel)
    augmented: dict[str, torch.Tensor] = {}
    if announce is not None and device.type == "cpu" and _uses_rq(rows):
        announce_kernel_compile(announce)
    for name, module in rows:
        module = module.to(device)
        # A fresh generator per row: a row's views do not depend on which rows come before it.
        generator = torch.Generator(device=device).manual_seed(seed)
        mixups = _mixup_modules(module)
        if mixups:  # the bank is drawn first, from the same generator as the views
            bank = _mixup_bank(mixup_with, mixup_bank, wave, frontend, norm, generator)
            for mixup in mixups:
                mixup.reset()
                mixup(bank)  # an empty bank passes its input through and stores it; no random draws
        augmented[name] = _augment(module, logmel, normalized, mean, std, counts[name], generator)

    batch = torch.cat([logmel] + [augmented[n] for n in names])
    with torch.no_grad():
        waves, quality = invert_with_quality(batch, frontend, n_iter=n_iter)
    mask = peak_mask(logmel)
    changes = [
        float(((augmented[n] - logmel).abs() * mask).sum(dim=(-2, -1)).squeeze(1)[i] / mask.sum())
        for n in names for i in range(counts[n])
    ]
    waves = _match_loudness(waves, notes)

    out_dir.mkdir(parents=True, exist_ok=True)
    original_path = out_dir / plan["original"]
    save_audio(original_path, waves[0], frontend.sample_rate)
    view_results = []
    for k, (name, i) in enumerate((n, i) for n in names for i in range(counts[n])):
        p = out_dir / plan["views"][name][i]
        save_audio(p, waves[1 + k], frontend.sample_rate)
        view_results.append(ListenView(name, i + 1, p, quality[1 + k], changes[k]))

    figure_path = out_dir / plan["figure"]
    title = f"{Path(path).name}  [{start:.2f} s, {start + duration:.2f} s)  seed {seed}"
    draw_views(logmel[0, 0], {n: augmented[n][:, 0] for n in names}, frontend, figure_path, title=title,
               start=start)

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


def _augment(
    module: nn.Module, logmel: torch.Tensor, normalized: torch.Tensor, mean: float, std: float, views: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """`views` augmented copies of the clip's log-mel (1, 1, F, T) -> (views, 1, F, T), in log-mel units.

    `normalized` is `logmel` in the clip's own normalization (mean, std), the scale augmentations expect.
    """
    if _is_identity(module):  # skip the normalize round trip: `none` views equal the original exactly
        return logmel.expand(views, -1, -1, -1).clone()
    with torch.no_grad():
        out = module(normalized.expand(views, -1, -1, -1).clone(), generator=generator)
    return out * std + mean


def _match_loudness(waves: torch.Tensor, notes: list[str]) -> torch.Tensor:
    """Every wave (N, S) at the RMS of waves[0]; then one common gain if anything would clip."""
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
    return waves


def _uses_rq(rows: list[tuple[str, nn.Module]]) -> bool:
    """Whether any row runs randomized quantization (the only numba-compiled step)."""
    return any(isinstance(m, RandomizedQuantization) for _, module in rows for m in module.modules())


def _output_names(names: list[str], counts: dict[str, int]) -> dict:
    """File names for each output: view{i}.wav with one aug, {aug}_view{i}.wav with several."""
    single = len(names) == 1
    return {
        "original": "original.wav",
        "figure": "views.png",
        "manifest": MANIFEST,
        "views": {n: [f"view{i + 1}.wav" if single else f"{n}_view{i + 1}.wav" for i in range(counts[n])]
                  for n in names},
    }


def _refuse_overwrite(out_dir: Path, plan: dict, overwrite: bool) -> None:
    if overwrite or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ListenError(f"output path {out_dir} exists and is not a folder")
    planned = [plan["original"], plan["figure"], plan["manifest"]] + [f for fs in plan["views"].values() for f in fs]
    existing = [f for f in planned if (out_dir / f).exists()]
    # Views of an earlier run with other augs or more views would sit beside ours and mislead.
    existing += sorted(p.name for p in out_dir.iterdir() if _VIEW_FILE.match(p.name) and p.name not in existing)
    if existing:
        shown = ", ".join(existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise ListenError(
            f"{out_dir} already holds listen outputs ({shown}); pass --overwrite to replace them, or another --out"
        )


def _load_clip(
    path: str | os.PathLike, sample_rate: int, start: float, duration: float | None, notes: list[str]
) -> tuple[torch.Tensor, float, float]:
    info = audio_info(path)  # AudioError for a missing or unreadable file
    if info.frames == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if info.sample_rate < sample_rate:
        # Upsampling adds no content: the log-mel above the file's Nyquist frequency stays empty.
        notes.append(f"{Path(path).name} is {info.sample_rate} Hz: upsampled to {sample_rate} Hz, so nothing "
                     f"above {info.sample_rate // 2} Hz is in the original or its views")
    if duration is None and info.duration - start > MAX_SECONDS:
        duration = MAX_SECONDS
        notes.append(
            f"{Path(path).name} is {info.duration:.1f} s long: using [{start:g}, {start + MAX_SECONDS:g}) s; "
            "choose another span with --start/--duration"
        )
    wave = load_audio(path, sample_rate=sample_rate, start=start, duration=duration)
    if wave.shape[-1] < MIN_SAMPLES:
        raise AudioError(path, f"too short: {wave.shape[-1] / sample_rate:.3f} s (need at least "
                               f"{MIN_SAMPLES / sample_rate:.3f} s)")
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


# `audiorq.listen(audio, augs=...)` is `listen`; the package stays importable as before.
_make_callable(__name__, listen)
