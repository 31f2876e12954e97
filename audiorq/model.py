"""A trained encoder as one module on raw audio: `load_model(path)(waveforms) -> clip embeddings`.

`AudioModel` = log-mel frontend -> pre-normalization with the training statistics -> AudioNTT2020. It
takes 16 kHz waveforms of any length (short clips are zero-padded at both ends to the network's minimum,
as the probe pads), in eval mode, so one clip's embedding does not depend on the batch it is in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from audiorq.audio import pad_or_crop
from audiorq.config import ConfigError, FrontendConfig, apply_overrides, from_dict, to_dict
from audiorq.device import resolve_device
from audiorq.frontend import LogMelSpectrogram
from audiorq.models.ntt import AudioNTT2020, ntt_shape
from audiorq.runs import EncoderFile, RunFileError, read_encoder_file

ARCHITECTURE = "AudioNTT2020"
POOLING = 8  # AudioNTT2020's three 2x max-pools: one frame embedding per 8 log-mel frames


class ModelError(ValueError):
    """A model file or option that cannot make an AudioModel; the message names the file and the fix."""


class AudioModel(nn.Module):
    """16 kHz waveforms (B, S) or (S,) -> clip embeddings (B, D); `frames` gives (B, T, D) and timestamps."""

    def __init__(self, encoder: AudioNTT2020, frontend: FrontendConfig, norm_stats: Sequence[float],
                 info: dict[str, Any] | None = None):
        super().__init__()
        self.encoder = encoder.eval()
        self.frontend = LogMelSpectrogram.from_config(frontend)
        self.frontend_config = frontend
        self.norm_mean, self.norm_std = float(norm_stats[0]), float(norm_stats[1])
        self.info = dict(info or {})
        self.requires_grad_(False)

    @property
    def sample_rate(self) -> int:
        return self.frontend_config.sample_rate

    @property
    def embedding_size(self) -> int:
        return self.encoder.d

    @property
    def frame_hop_ms(self) -> float:
        """Time between two frame embeddings."""
        return 1000.0 * POOLING * self.frontend_config.hop_length / self.sample_rate

    @property
    def min_samples(self) -> int:
        """Shortest input the network takes as is (8 log-mel frames); shorter clips are padded to it."""
        return (POOLING - 1) * self.frontend_config.hop_length

    def train(self, mode: bool = True) -> "AudioModel":
        """Stays in eval mode: BatchNorm running statistics and no dropout, whatever the caller asks."""
        return super().train(False)

    def logmel(self, wave: torch.Tensor) -> torch.Tensor:
        """Normalized log-mel the encoder sees: (B, S) or (S,) -> (B, 1, n_mels, T)."""
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        if wave.dim() != 2 or wave.shape[-1] < 1:
            raise ValueError(f"expected waveforms (B, S) or (S,) with S >= 1, got shape {tuple(wave.shape)}")
        if wave.shape[-1] < self.min_samples:
            wave = pad_or_crop(wave, self.min_samples, "byola")
        return (self.frontend(wave.float()) - self.norm_mean) / self.norm_std

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Clip embeddings (B, D): max + mean over time of the frame embeddings."""
        return self.encoder(self.logmel(wave))

    @torch.no_grad()
    def frames(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame embeddings (B, T, D) and their centre times in ms (T,), increasing."""
        h = self.encoder.frames(self.logmel(wave))
        # Frame k pools log-mel frames 8k .. 8k+7, centred at (8k + 3.5) hops (centred STFT).
        k = torch.arange(h.shape[1], device=h.device, dtype=torch.float64)
        hop_ms = 1000.0 * self.frontend_config.hop_length / self.sample_rate
        return h, (k * POOLING + (POOLING - 1) / 2) * hop_ms

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, embedding_size={self.embedding_size}, "
                f"norm_stats=({self.norm_mean:.4f}, {self.norm_std:.4f})")


def encoder_from_file(found: EncoderFile, frontend_overrides: Sequence[str] = ()) -> tuple[AudioNTT2020, FrontendConfig]:
    """The AudioNTT2020 `found` holds (loaded strictly) and the frontend it expects; ModelError naming the file."""
    try:
        d, n_mels = ntt_shape(found.state)
    except ValueError as e:
        raise ModelError(f"{found.path}: {e}") from None
    encoder = AudioNTT2020(n_mels=n_mels, d=d)
    try:
        encoder.load_state_dict(found.state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{found.path}: weights do not fit AudioNTT2020(n_mels={n_mels}, d={d}): {e}") from None
    try:
        frontend = from_dict(FrontendConfig, apply_overrides(found.config.get("frontend") or {"n_mels": n_mels},
                                                             list(frontend_overrides)), "frontend.")
        frontend.validate()
    except ConfigError as e:
        raise ModelError(f"{found.path}: frontend: {e}") from None
    if frontend.n_mels != n_mels:
        raise ModelError(f"{found.path}: the frontend has {frontend.n_mels} mel bins, the encoder takes {n_mels}")
    return encoder, frontend


def model_from_encoder_file(found: EncoderFile, norm_stats: Sequence[float] | None = None,
                            frontend_overrides: Sequence[str] = ()) -> AudioModel:
    """An AudioModel from weights `read_encoder_file` found; `norm_stats` replaces the file's own."""
    encoder, frontend = encoder_from_file(found, frontend_overrides)
    d, n_mels = encoder.d, encoder.n_mels
    stats = list(norm_stats) if norm_stats is not None else found.norm_stats
    if stats is None:
        raise ModelError(
            f"{found.path}: the file carries no normalization statistics (a bare state dict such as a BYOL-A "
            "release); pass norm_stats=(mean, std) of the training data's log-mel (CLI: --norm-stats MEAN,STD)")
    if len(stats) != 2 or not float(stats[1]) > 0:
        raise ModelError(f"{found.path}: norm_stats must be (mean, std) with std > 0, got {stats}")
    info = {"source": str(found.path), "kind": found.kind, "architecture": ARCHITECTURE, "d": d, "n_mels": n_mels,
            "frontend": to_dict(frontend), "norm_stats": [float(v) for v in stats],
            "training": found.metadata.get("training", {}), "config": found.config}
    return AudioModel(encoder, frontend, stats, info)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               norm_stats: Sequence[float] | None = None, frontend_overrides: Sequence[str] = ()) -> AudioModel:
    """A trained encoder on raw 16 kHz audio, frozen in eval mode on `device`.

    `path`: a run folder, checkpoint.pt, encoder.pth, a BYOL-A .pth or an exported .safetensors model file.
    Weights are read weights-only (or from safetensors): nothing in the file can run code. A bare state dict
    needs `norm_stats=(mean, std)`; `frontend_overrides` (``key=value``) change the log-mel settings, e.g.
    ``mel_scale=htk`` for a BYOL-A v1 model.
    """
    try:
        found = read_encoder_file(path)
    except RunFileError as e:
        raise ModelError(str(e)) from None
    return model_from_encoder_file(found, norm_stats, frontend_overrides).to(resolve_device(device))
