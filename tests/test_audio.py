"""Audio I/O: formats, mono mix, resampling, partial reads, errors, pad/crop policies."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from audiorq.audio import AudioError, audio_info, load_audio, pad_or_crop, resample, save_audio


def _tone(sr: int, seconds: float, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x, -x * 0.5][:channels], axis=1) if channels > 1 else x


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")])
def test_reads_formats_and_resamples_to_16k(tmp_path, fmt, ext):
    path = tmp_path / f"tone.{ext}"
    sf.write(path, _tone(44100, 1.0), 44100, format=fmt)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert abs(wave.numel() - 16000) <= 1
    # The tone survives resampling: its spectrum peaks at 440 Hz.
    spec = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.argmax(spec) * 16000 / wave.numel() - 440) < 2


def test_mixes_channels_to_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    stereo = _tone(16000, 0.5, channels=2)
    sf.write(path, stereo, 16000, subtype="FLOAT")
    wave = load_audio(path)
    np.testing.assert_allclose(wave.numpy(), stereo.mean(axis=1), atol=1e-7)


def test_partial_read_equals_slice_of_full_read(tmp_path):
    path = tmp_path / "ramp.wav"
    ramp = np.linspace(-0.9, 0.9, 48000).astype(np.float32)
    sf.write(path, ramp, 16000, subtype="FLOAT")
    part = load_audio(path, start=0.5, duration=0.95)
    np.testing.assert_array_equal(part.numpy(), ramp[8000 : 8000 + 15200])
    tail = load_audio(path, start=2.5, duration=1.0)  # runs past the end: returned short
    assert tail.numel() == 8000


def test_partial_read_with_resampling_matches_full_read_in_the_middle(tmp_path):
    path = tmp_path / "tone.flac"
    sf.write(path, _tone(8000, 2.0), 8000)
    full = load_audio(path)
    part = load_audio(path, start=0.5, duration=1.0)
    assert part.numel() == 16000
    # Away from the span edges (resampler filter support) the partial read equals the full one.
    np.testing.assert_allclose(part[400:-400].numpy(), full[8400:23600].numpy(), atol=2e-3)


def test_mp3_if_supported(tmp_path):
    path = tmp_path / "tone.mp3"
    try:
        sf.write(path, _tone(16000, 1.0), 16000, format="MP3")
    except (sf.LibsndfileError, TypeError, ValueError):
        pytest.skip("this libsndfile cannot write mp3")
    assert abs(load_audio(path).numel() - 16000) < 2000  # mp3 encoder padding


def test_errors_name_the_file_and_reason(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav: file not found"):
        load_audio(missing)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioError, match="corrupt.wav: unreadable audio"):
        load_audio(corrupt)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav: empty audio"):
        load_audio(empty)
    bad = tmp_path / "nan.wav"
    x = _tone(16000, 0.1)
    x[10] = np.nan
    sf.write(bad, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: audio contains NaN or Inf"):
        load_audio(bad)
    short = tmp_path / "short.wav"
    sf.write(short, _tone(16000, 0.1), 16000)
    with pytest.raises(AudioError, match="past the end"):
        load_audio(short, start=1.0)
    assert isinstance(AudioError("x", "y"), ValueError)


def test_info_and_save_round_trip(tmp_path):
    wave = torch.from_numpy(_tone(16000, 0.25))
    path = tmp_path / "sub" / "out.wav"
    save_audio(path, wave)
    info = audio_info(path)
    assert (info.frames, info.sample_rate, info.channels) == (4000, 16000, 1)
    assert info.duration == pytest.approx(0.25)
    np.testing.assert_allclose(load_audio(path).numpy(), wave.numpy(), atol=1 / 32767)
    assert [p.name for p in path.parent.iterdir()] == ["out.wav"]  # no temporary left behind
    with pytest.raises(ValueError, match="NaN"):
        save_audio(path, torch.tensor([0.0, float("nan")]))


def test_resample_round_trip_keeps_band_limited_signal():
    x = torch.from_numpy(_tone(16000, 1.0, freq=1000.0))
    y = resample(resample(x, 16000, 44100), 44100, 16000)
    np.testing.assert_allclose(y[200:-200].numpy(), x[200:-200].numpy(), atol=1e-2)


def test_pad_byola_pads_both_ends_floor_half_at_head():
    x = torch.ones(5)
    y = pad_or_crop(x, 10, "byola", "test")
    assert y.tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]


def test_pad_evar_pads_tail():
    y = pad_or_crop(torch.ones(2, 5), 8, "evar", "train")
    assert y.shape == (2, 8) and y[:, :5].eq(1).all() and y[:, 5:].eq(0).all()


def test_crop_policies():
    x = torch.arange(100.0)
    first = pad_or_crop(x, 10, "evar", "test")
    assert first.tolist() == list(range(10))
    g = torch.Generator().manual_seed(0)
    starts = {int(pad_or_crop(x, 10, "byola", "test", generator=g)[0]) for _ in range(200)}
    assert min(starts) >= 0 and max(starts) <= 90 and len(starts) > 50  # random in every split
    for _ in range(20):
        crop = pad_or_crop(x, 10, "evar", "valid", generator=g)
        assert torch.equal(crop, torch.arange(crop[0].item(), crop[0].item() + 10))
    a = pad_or_crop(x, 10, generator=torch.Generator().manual_seed(3))
    b = pad_or_crop(x, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_pad_or_crop_rejects_unknown_policy_and_split():
    with pytest.raises(ValueError, match="policy"):
        pad_or_crop(torch.zeros(3), 2, "nope")
    with pytest.raises(ValueError, match="split"):
        pad_or_crop(torch.zeros(3), 2, "byola", "dev")
