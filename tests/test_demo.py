"""The end-to-end demo and its never-overwriting output folders."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from audiorq.cli import main
from audiorq.demo import DemoDataError, fresh_dir, run_demo
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
                 *(v.path for v in result.listen.views), result.out_dir / "loss.png"):
        assert path.exists() and str(path) in summary
    assert "Avg" not in summary  # one task: an average would repeat the score
    assert f"final BYOL loss {result.comparison.final_loss['rq']:.4f}" in summary
    assert "not a bug" in summary or "What to check" in summary
    for command in ("audiorq pretrain quick", "audiorq probe runs/quick --task csv", "eval/mini_benchmark.py",
                    "audiorq export"):
        assert command in summary


def test_demo_refuses_classes_without_test_clips_before_any_work(tmp_path):
    data = tmp_path / "few"
    for label, n in (("dog", 12), ("cat", 3), ("cow", 2)):
        (data / label).mkdir(parents=True)
        for i in range(n):
            sf.write(str(data / label / f"{i}.wav"), np.zeros(1600, dtype=np.float32), 16000)
    with pytest.raises(DemoDataError, match=r"2 of 3 classes have no test clip \(cat, cow\).*at least 9 clips"):
        run_demo(tmp_path / "out", data=data, progress=False)
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(main, ["demo", "--data", str(data), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "no test clip" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_demo_help_defaults_device_to_auto():
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0 and "[default: auto]" in result.output
