"""Log-mel -> waveform: undo the log, solve mel -> linear power (non-negative), then Griffin-Lim.

Tensors in, tensors out, torchaudio-style: stateless functions plus `InverseLogMel`, a thin nn.Module
around `invert_logmel`. The frontend passed in is any `audiorq.frontend.LogMelSpectrogram` (only its
filterbank, STFT parameters and `eps` are read). No file I/O, configs or plotting here, so this module
imports nothing beyond torch (and torchaudio, when Griffin-Lim runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # annotations only: importing the frontend at run time would pull in the config layer
    from audiorq.frontend import LogMelSpectrogram

__all__ = [
    "SOLVERS", "TOP_DB", "InverseLogMel", "InversionQuality", "griffin_lim", "invert_logmel",
    "invert_with_quality", "logmel_error", "logmel_to_magnitude", "mel_to_power", "peak_mask",
    "spectral_convergence",
]

SOLVERS = ("kl", "ls")
TOP_DB = 40.0  # quality is measured over bins within this many dB of the clip's peak


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
    # Imported here: a torchaudio built for another torch fails at import (OSError), and the frontend
    # then falls back to torch.stft; only inversion should need a working torchaudio.
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


class InverseLogMel(nn.Module):
    """`invert_logmel` as a module: forward(logmel (B, 1, F, T) | (B, F, T) | (F, T)) -> waveform (B, S).

    Holds the frontend as a submodule, so `.to(device)` moves its filterbank and window with it.
    """

    def __init__(
        self, frontend: LogMelSpectrogram, n_iter: int = 32, momentum: float = 0.99,
        nnls_iterations: int = 30, solver: str = "kl",
    ):
        super().__init__()
        # Checked here so a bad setting fails when the module is built, not at its first batch.
        if n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        if nnls_iterations < 0:
            raise ValueError(f"nnls_iterations must be >= 0, got {nnls_iterations}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.frontend = frontend
        self.n_iter, self.momentum = n_iter, momentum
        self.nnls_iterations, self.solver = nnls_iterations, solver

    def forward(self, logmel: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Waveform (B, S) of log-mel (B, 1, F, T); S = (T - 1) * hop_length unless `length` is given."""
        return invert_logmel(
            logmel, self.frontend, n_iter=self.n_iter, momentum=self.momentum,
            nnls_iterations=self.nnls_iterations, solver=self.solver, length=length,
        )

    def extra_repr(self) -> str:
        return f"n_iter={self.n_iter}, momentum={self.momentum}, nnls_iterations={self.nnls_iterations}, " \
               f"solver={self.solver!r}"


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
    # Spectral convergence is measured on the unit-peak waveform, the scale of `magnitude`.
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
