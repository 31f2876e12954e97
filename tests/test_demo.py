"""The end-to-end demo and its never-overwriting output folders."""

from __future__ import annotations

import numpy as np

from audiorq.demo import fresh_dir, run_demo
from audiorq.synth import chirp_train, harmonic_tone


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


def test_demo_runs_end_to_end_and_writes_every_artifact(tmp_path):
    result = run_demo(tmp_path / "demo", steps=2, progress=False)
    for name in ("rq", "random", "logmel"):
        scores = result.comparison.scores[name][result.task.name]
        assert len(scores) == 3 and min(scores) > 1.0 / result.task.n_classes  # above chance
    summary = (result.out_dir / "summary.md").read_text()
    for path in (result.comparison.run_dirs["rq"][0] / "encoder.pth", result.listen.figure,
                 *(v.path for v in result.listen.views)):
        assert path.exists() and str(path) in summary
