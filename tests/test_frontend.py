"""Log-mel frontend: shapes, conventions, and agreement between backends on real audio and a chirp."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from audiorq.audio import load_audio
from audiorq.config import FrontendConfig
from audiorq.frontend import EPS, LogMelSpectrogram, mel_filterbank, n_frames

BACKENDS = ["torchaudio", "nnaudio", "librosa", "torch"]


def _within_60db(ref: torch.Tensor) -> torch.Tensor:
    return ref > ref.max() - np.log(1e6)  # power within 60 dB of the clip's peak


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
def test_backends_agree_on_chirp(chirp, mel_scale):
    ref = LogMelSpectrogram(backend="librosa", mel_scale=mel_scale)(chirp)
    mask = _within_60db(ref)
    assert mask.float().mean() > 0.05  # a chirp fills a narrow band per frame; still thousands of bins
    for backend in BACKENDS:
        out = LogMelSpectrogram(backend=backend, mel_scale=mel_scale)(chirp)
        assert out.shape == ref.shape
        assert (out - ref).abs()[mask].max() <= 1e-3, backend


def test_backends_agree_on_real_audio(real_clips):
    frontends = {b: LogMelSpectrogram(backend=b) for b in BACKENDS}
    for path in real_clips:
        wave = load_audio(path)
        ref = frontends["librosa"](wave)
        mask = _within_60db(ref)
        for backend, fe in frontends.items():
            assert (fe(wave) - ref).abs()[mask].max() <= 1e-3, (path.name, backend)


def test_reference_is_librosa_definition(chirp):
    """The librosa backend equals a direct float64 computation of the documented definition."""
    y = chirp.double().numpy()
    stft = librosa.stft(y, n_fft=1024, hop_length=160, win_length=1024, window="hann", center=True, pad_mode="reflect")
    fb = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=60, fmax=7800, htk=False, norm="slaney")
    expected = np.log(fb @ np.abs(stft) ** 2 + EPS)
    out = LogMelSpectrogram(backend="torch")(chirp)[0, 0].double().numpy()
    mask = expected > expected.max() - np.log(1e6)
    assert np.abs(out - expected)[mask].max() < 1e-3


def test_shape_and_frame_count():
    fe = LogMelSpectrogram()
    for samples in (15200, 16000, 64000):
        out = fe(torch.zeros(3, samples))
        assert out.shape == (3, 1, 64, n_frames(samples)) == (3, 1, 64, 1 + samples // 160)
        assert out.dtype == torch.float32
    assert fe(torch.zeros(16000)).shape == (1, 1, 64, 101)


def test_silence_is_log_eps():
    out = LogMelSpectrogram()(torch.zeros(2, 16000))
    torch.testing.assert_close(out, torch.full_like(out, float(np.log(EPS))))


def test_batch_equals_single():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16000, generator=g) * 0.1
    fe = LogMelSpectrogram()
    batch = fe(x)
    for i in range(4):
        torch.testing.assert_close(batch[i : i + 1], fe(x[i]), rtol=0, atol=1e-4)


def test_filterbank_shapes_and_scales():
    fb = LogMelSpectrogram().mel_filterbank
    assert fb.shape == (513, 64) and (fb >= 0).all()
    slaney = mel_filterbank(16000, 1024, 64, 60, 7800, "slaney")
    htk = mel_filterbank(16000, 1024, 64, 60, 7800, "htk")
    torch.testing.assert_close(fb, slaney, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(slaney, htk)
    # Slaney norm: each filter has (approximately) unit area in Hz / 2 scaled; htk peaks at 1.
    assert htk.max() == pytest.approx(1.0, abs=0.05)


def test_from_config_and_errors():
    cfg = FrontendConfig(mel_scale="htk", backend="torch", n_mels=32)
    fe = LogMelSpectrogram.from_config(cfg)
    assert (fe.mel_scale, fe.backend, fe.n_mels) == ("htk", "torch", 32)
    with pytest.raises(ValueError, match="backend"):
        LogMelSpectrogram(backend="nope")
    with pytest.raises(ValueError, match="mel_scale"):
        LogMelSpectrogram(mel_scale="nope")
    with pytest.raises(ValueError, match="too short"):
        fe(torch.zeros(100))
    with pytest.raises(ValueError, match="shape"):
        fe(torch.zeros(1, 1, 16000))


def test_falls_back_to_torch_stft_when_torchaudio_unusable(monkeypatch, chirp):
    import audiorq.frontend as frontend

    monkeypatch.setattr(frontend, "_torchaudio", lambda: None)
    fe = frontend.LogMelSpectrogram(backend="torchaudio")
    assert fe.backend == "torch"
    ref = LogMelSpectrogram(backend="librosa")(chirp)
    assert (fe(chirp) - ref).abs()[_within_60db(ref)].max() <= 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torchaudio", "nnaudio", "torch"])
def test_cuda_matches_cpu(chirp, backend):
    cpu = LogMelSpectrogram(backend=backend)(chirp)
    gpu = LogMelSpectrogram(backend=backend).cuda()(chirp.cuda()).cpu()
    assert (gpu - cpu).abs()[_within_60db(cpu)].max() <= 1e-3
