"""Log-mel frontend: waveform (B, S) -> log-mel (B, 1, n_mels, T), with interchangeable backends."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from audiorq.config import FRONTEND_BACKENDS as BACKENDS, MEL_SCALES, FrontendConfig

_DEFAULT = FrontendConfig()  # the module's defaults are the config's: one home for the conventions
EPS = float(torch.finfo(torch.float32).eps)


def n_frames(n_samples: int, hop_length: int = _DEFAULT.hop_length) -> int:
    """Frames of a centered STFT: 1 + S // hop."""
    return 1 + n_samples // hop_length


@lru_cache(maxsize=1)
def _torchaudio():
    # A CPU-only torch beside a CUDA torchaudio makes `import torchaudio` raise OSError, not ImportError.
    try:
        import torchaudio
    except (ImportError, OSError) as e:
        warnings.warn(f"torchaudio unusable ({e}); LogMelSpectrogram falls back to torch.stft", stacklevel=3)
        return None
    return torchaudio


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float, mel_scale: str = "slaney"
) -> torch.Tensor:
    """Mel filterbank (n_fft // 2 + 1, n_mels): slaney scale + slaney (area) norm, or htk without norm.

    Computed with librosa, the reference the other backends are tested against.
    """
    import librosa

    if mel_scale not in MEL_SCALES:
        raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {mel_scale!r}")
    fb = librosa.filters.mel(
        sr=sample_rate,
        n_fft=n_fft,
        n_mels=n_mels,
        fmin=f_min,
        fmax=f_max,
        htk=mel_scale == "htk",
        norm="slaney" if mel_scale == "slaney" else None,
        dtype=np.float64,
    )
    return torch.from_numpy(fb.T.astype(np.float32))


class LogMelSpectrogram(nn.Module):
    """Waveform (B, S) or (S,) -> log-mel (B, 1, n_mels, T), T = 1 + S // hop_length.

    Power spectrogram of a centered STFT (reflect padding, periodic Hann), mel filterbank, log(mel + eps)
    with float32 eps. `backend` picks the STFT/mel implementation; all agree to ~1e-3 in log units.
    The `torchaudio` and `torch` backends run batched on any device; `nnaudio` too (conv1d STFT);
    `librosa` computes on the CPU in numpy and returns to the input's device.
    """

    def __init__(
        self,
        sample_rate: int = _DEFAULT.sample_rate,
        n_fft: int = _DEFAULT.n_fft,
        win_length: int = _DEFAULT.win_length,
        hop_length: int = _DEFAULT.hop_length,
        n_mels: int = _DEFAULT.n_mels,
        f_min: float = _DEFAULT.f_min,
        f_max: float = _DEFAULT.f_max,
        mel_scale: str = _DEFAULT.mel_scale,
        backend: str = _DEFAULT.backend,
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if mel_scale not in MEL_SCALES:
            raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {mel_scale!r}")
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must be <= n_fft ({n_fft})")
        if backend == "torchaudio" and _torchaudio() is None:
            backend = "torch"
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = sample_rate, n_fft, win_length, hop_length
        self.n_mels, self.f_min, self.f_max, self.mel_scale, self.backend = n_mels, f_min, f_max, mel_scale, backend
        self.eps = EPS
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)

        if backend == "torchaudio":
            fb = _torchaudio().functional.melscale_fbanks(
                n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate,
                norm="slaney" if mel_scale == "slaney" else None, mel_scale=mel_scale,
            )
        elif backend == "nnaudio":
            self._nnaudio = self._make_nnaudio()
            fb = self._nnaudio.mel_basis.detach().T.contiguous()
        else:
            fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale)
        self.register_buffer("mel_filterbank", fb.float(), persistent=False)

    @classmethod
    def from_config(cls, cfg: FrontendConfig) -> "LogMelSpectrogram":
        """Build from a `FrontendConfig`."""
        return cls(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
            n_mels=cfg.n_mels, f_min=cfg.f_min, f_max=cfg.f_max, mel_scale=cfg.mel_scale, backend=cfg.backend,
        )

    def _make_nnaudio(self) -> nn.Module:
        from nnAudio.features import MelSpectrogram

        return MelSpectrogram(
            sr=self.sample_rate, n_fft=self.n_fft, win_length=self.win_length, n_mels=self.n_mels,
            hop_length=self.hop_length, window="hann", center=True, pad_mode="reflect", power=2.0,
            htk=self.mel_scale == "htk", fmin=self.f_min, fmax=self.f_max,
            norm=1 if self.mel_scale == "slaney" else None, trainable_mel=False, trainable_STFT=False, verbose=False,
        )

    def power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """Power STFT |X|^2: (B, S) -> (B, n_fft // 2 + 1, T)."""
        spec = torch.stft(
            wave, self.n_fft, self.hop_length, self.win_length, self.window,
            center=True, pad_mode="reflect", return_complex=True,
        )
        return spec.real.square() + spec.imag.square()

    def mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram: (B, S) -> (B, n_mels, T)."""
        if self.backend == "nnaudio":
            return self._nnaudio(wave)
        if self.backend == "librosa":
            return self._librosa_mel(wave)
        return torch.matmul(self.mel_filterbank.T, self.power_spectrogram(wave))

    def _librosa_mel(self, wave: torch.Tensor) -> torch.Tensor:
        import librosa

        mel = librosa.feature.melspectrogram(
            y=wave.detach().cpu().numpy(), sr=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
            win_length=self.win_length, window="hann", center=True, pad_mode="reflect", power=2.0,
            n_mels=self.n_mels, fmin=self.f_min, fmax=self.f_max, htk=self.mel_scale == "htk",
            norm="slaney" if self.mel_scale == "slaney" else None,
        )
        return torch.from_numpy(mel).to(wave.device)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) or (S,) float waveform -> (B, 1, n_mels, T) float32 log-mel."""
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        if wave.dim() != 2:
            raise ValueError(f"expected a waveform of shape (B, S) or (S,), got {tuple(wave.shape)}")
        if wave.shape[-1] <= self.n_fft // 2:
            raise ValueError(
                f"waveform of {wave.shape[-1]} samples is too short for n_fft={self.n_fft} (reflect padding)"
            )
        # STFT in fp32 even under autocast: log of fp16 power underflows for quiet audio.
        with torch.autocast(device_type=wave.device.type, enabled=False):
            mel = self.mel(wave.float())
        return torch.log(mel + self.eps).unsqueeze(1)

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, win_length={self.win_length}, "
            f"hop_length={self.hop_length}, n_mels={self.n_mels}, f_min={self.f_min}, f_max={self.f_max}, "
            f"mel_scale={self.mel_scale!r}, backend={self.backend!r}"
        )
