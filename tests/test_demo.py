"""The demo's building blocks: synthetic audio and never-overwriting output folders."""

from __future__ import annotations

import numpy as np

from audiorq.demo import fresh_dir
from audiorq.synth import chirp_train, demo_clip, harmonic_tone


def test_demo_clip_is_a_normalized_16k_scene():
    x = demo_clip(seconds=2.0, seed=1)
    assert x.dtype == np.float32 and x.shape == (32000,)
    assert np.isclose(np.abs(x).max(), 0.8) and np.isfinite(x).all()
    np.testing.assert_array_equal(x, demo_clip(seconds=2.0, seed=1))
    assert not np.array_equal(x, demo_clip(seconds=2.0, seed=2))


def test_synth_pitch_and_chirp_band():
    tone = harmonic_tone(1.0, 200.0, vibrato_depth=0.0)
    spec = np.abs(np.fft.rfft(tone))
    assert abs(np.argmax(spec) - 200) <= 1  # 1 s clip: bin index = Hz; the fundamental is strongest
    chirps = chirp_train(1.0)
    spec = np.abs(np.fft.rfft(chirps))
    assert 2000 <= np.argmax(spec) <= 5000


def test_fresh_dir_never_reuses_an_existing_folder(tmp_path):
    base = tmp_path / "demo_out"
    assert fresh_dir(base) == base
    base.mkdir()
    assert fresh_dir(base) == tmp_path / "demo_out-2"
    (tmp_path / "demo_out-2").mkdir()
    assert fresh_dir(base) == tmp_path / "demo_out-3"
