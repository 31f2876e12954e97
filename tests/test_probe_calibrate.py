"""Calibrated random baseline: BatchNorm statistics recomputed on a task's training audio, weights untouched."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from audiorq.probe import load_encoder, linear_probe
from audiorq.probe.encoders import EncoderError, calibrate_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_probe import fold_task, one_thread, tone_task  # noqa: E402,F401  (one_thread: an autouse fixture)


def test_calibration_recomputes_bn_statistics_and_touches_no_weight():
    torch.manual_seed(0)
    encoder, _ = load_encoder("random:d=32,seed=0")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    batches = [torch.randn(4, 1, 64, 40) * 2 + 1 for _ in range(3)]
    calibrated = calibrate_batchnorm(encoder, batches)
    for k, v in encoder.state_dict().items():  # the caller's module is unchanged
        assert torch.equal(v, before[k]), k
    for name, p in calibrated.named_parameters():  # the copy has the same weights
        assert torch.equal(p, before[name]), name
    # The first BatchNorm's running mean / var: the mean over batches of each batch's per-channel statistics.
    conv, bn = calibrated.features[0], calibrated.features[1]
    with torch.no_grad():
        outs = [conv(x) for x in batches]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, rtol=1e-4)
    assert not torch.allclose(bn.running_mean, before["features.1.running_mean"])
    assert not calibrated.training and bn.momentum == encoder.features[1].momentum


def test_calibrated_spec_is_a_different_encoder_with_the_same_weights():
    plain, plain_info = load_encoder("random:d=32,seed=0")
    cal, cal_info = load_encoder("random:d=32,seed=0,calibrate=true")
    assert cal_info.calibrate and not plain_info.calibrate
    assert cal_info.name == "random-d32-seed0-cal" and cal_info.weights_hash != plain_info.weights_hash
    for (name, a), b in zip(plain.state_dict().items(), cal.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(EncoderError, match="calibrate must be true or false"):
        load_encoder("random:d=32,calibrate=maybe")


def test_probe_of_the_calibrated_baseline_differs_and_is_cached_apart(tmp_path):
    task = tone_task(tmp_path / "tones")
    cache = tmp_path / "cache"
    plain = linear_probe("random:d=32,seed=0", task, runs=1, out_dir=None, cache_dir=cache, progress=False)
    cal = linear_probe("random:d=32,seed=0,calibrate=true", task, runs=1, out_dir=None, cache_dir=cache,
                       progress=False)
    assert not cal.embeddings.from_cache and cal.embeddings.cache_path != plain.embeddings.cache_path
    a, b = plain.embeddings.roles["train"][1], cal.embeddings.roles["train"][1]
    assert a.shape == b.shape and not torch.allclose(a, b)
    again = linear_probe("random:d=32,seed=0,calibrate=true", task, runs=1, out_dir=None, cache_dir=cache,
                         progress=False)
    assert again.embeddings.from_cache and torch.equal(again.embeddings.roles["train"][1], b)


def test_fold_tasks_calibrate_on_every_clip(tmp_path):
    task = fold_task(tmp_path / "folds")
    result = linear_probe("random:d=32,seed=0,calibrate=true", task, runs=1, out_dir=None, progress=False)
    assert len(result.rows) == len(task.splits) and all(0 <= r["test_acc"] <= 1 for r in result.rows)


def test_cli_probe_takes_the_calibrated_spec(tmp_path):
    from audiorq.cli import main

    tone_task(tmp_path / "tones")  # writes the clips; a CSV task lists them
    rows = ["path,label,split"] + [f"{p.name},{p.stem[:2]},{'test' if int(p.stem.split('_')[1]) >= 6 else 'train'}"
                                   for p in sorted((tmp_path / "tones").glob("*.wav"))]
    (tmp_path / "tones" / "meta.csv").write_text("\n".join(rows) + "\n")
    result = CliRunner().invoke(main, ["probe", "random:d=32,seed=0,calibrate=true", "--task", "csv", "--data",
                                       str(tmp_path / "tones" / "meta.csv"), "--out", str(tmp_path / "out"),
                                       "--runs", "1"])
    assert result.exit_code == 0, result.output
    assert "random-d32-seed0-cal" in (tmp_path / "out" / "scores.csv").read_text()
    bad = CliRunner().invoke(main, ["probe", "random:calibrate=yes", "--task", "csv", "--data",
                                    str(tmp_path / "tones" / "meta.csv"), "--out", str(tmp_path / "out2")])
    assert bad.exit_code == 2 and "calibrate must be true or false" in bad.output
