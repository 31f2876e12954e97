"""BYOL-A-faithful options (BN per view, joint post-norm, weight-decay groups), warm starts and the online monitor."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiorq.augment import AugmentationChain, PrecomputedNorm
from audiorq.config import ConfigError, MonitorConfig
from audiorq.frontend import LogMelSpectrogram
from audiorq.models.byol import BYOLLearner, byol_loss
from audiorq.models.ntt import AudioNTT2020
from audiorq.export import export_model
from audiorq.train import Trainer, load_checkpoint
from audiorq.train.build import ViewMaker, build_optimizer, build_training
from audiorq.train.metrics import read_monitor, read_rows
from audiorq.train.monitor import HealthMonitor, effective_rank, knn_accuracy, linear_accuracy, normalized_std

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import ToyWaves, tiny_config  # noqa: E402


# ----------------------------------------------------------------------------------------------
# The step


@pytest.mark.parametrize("bn_views", ["separate", "joint"])
def test_bn_views_matches_a_direct_computation(bn_views):
    torch.manual_seed(0)
    # No dropout: in train mode the step is then deterministic, BatchNorm on batch statistics.
    learner = BYOLLearner(AudioNTT2020(n_mels=64, d=32, dropout=0.0), 32, 64, 16, bn_views=bn_views).train()
    v1, v2 = torch.randn(6, 1, 64, 48), torch.randn(6, 1, 64, 48) + 0.5
    sizes: list[int] = []
    bn = next(m for m in learner.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    handle = bn.register_forward_hook(lambda m, inp, out: sizes.append(inp[0].shape[0]))
    out = learner(v1, v2, outputs=True)
    handle.remove()
    # separate: the online encoder's BatchNorm normalizes each view's 6 samples; joint: one batch of 12.
    assert sizes == ([6, 6] if bn_views == "separate" else [12])
    enc, proj, pred = learner.encoder, learner.projector, learner.predictor
    with torch.no_grad():
        target = lambda x: learner.target_projector(learner.target_encoder(x))  # noqa: E731
        if bn_views == "separate":
            y = torch.cat([enc(v1), enc(v2)])
            z = torch.cat([proj(y[:6]), proj(y[6:])])
            q = torch.cat([pred(z[:6]), pred(z[6:])])
            t = torch.cat([target(v1), target(v2)])
        else:
            y = enc(torch.cat([v1, v2]))
            z = proj(y)
            q = pred(z)
            t = target(torch.cat([v1, v2]))
        direct = byol_loss(q[:6], t[6:]) + byol_loss(q[6:], t[:6])
    assert torch.allclose(out.loss, direct, atol=1e-6)
    assert torch.allclose(out.embeddings, y, atol=1e-6) and torch.allclose(out.projections, z, atol=1e-5)
    assert not out.embeddings.requires_grad


def test_separate_and_joint_bn_differ_in_train_mode():
    torch.manual_seed(0)
    enc = AudioNTT2020(n_mels=64, d=32, dropout=0.0)
    a = BYOLLearner(enc, 32, 64, 16, bn_views="separate").train()
    b = BYOLLearner(enc, 32, 64, 16, bn_views="joint").train()
    b.load_state_dict(a.state_dict())
    v1, v2 = torch.randn(4, 1, 64, 48), torch.randn(4, 1, 64, 48) + 1.0
    assert not torch.allclose(a(v1, v2), b(v1, v2))


def test_joint_post_norm_standardizes_both_views_together():
    frontend = LogMelSpectrogram()
    batch = torch.randn(4, 1, 64, 40) * torch.arange(1, 5).view(4, 1, 1, 1)
    identity = AugmentationChain([])
    joint = ViewMaker(frontend, PrecomputedNorm(0.0, 1.0), identity, "logmel", post_norm="joint")
    per_view = ViewMaker(frontend, PrecomputedNorm(0.0, 1.0), identity, "logmel", post_norm="per_view")
    j1, j2 = joint(batch)
    both = torch.cat([batch, batch])
    eps = torch.finfo(torch.float32).eps
    expected = (both - both.mean()) / (both.std() + eps)
    assert torch.allclose(torch.cat([j1, j2]), expected, atol=1e-6)
    p1, _ = per_view(batch)
    assert torch.allclose(p1, (batch - batch.mean()) / (batch.std() + eps), atol=1e-6)


def test_weight_decay_leaves_norm_weights_and_biases_out(tmp_path):
    learner = BYOLLearner(AudioNTT2020(n_mels=64, d=32), 32, 64, 16)
    opt = build_optimizer(tiny_config(tmp_path, "optim.weight_decay=0.1").optim, learner)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])
    bn = learner.projector.net[1]
    assert any(p is bn.weight for p in plain["params"]) and any(p is learner.projector.net[0].bias for p in plain["params"])
    trainable = [p for p in learner.parameters() if p.requires_grad]
    assert len(decayed["params"]) + len(plain["params"]) == len(trainable)
    both = build_optimizer(tiny_config(tmp_path, "optim.weight_decay=0.1", "optim.decay_norm_and_bias=true").optim, learner)
    assert len(both.param_groups) == 1 and both.param_groups[0]["weight_decay"] == 0.1


# ----------------------------------------------------------------------------------------------
# Warm starts


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("source") / "run"
    Trainer(tiny_config(out, "max_steps=2"), dataset=ToyWaves(n=8)).fit()
    return out


def _encoder_files(source_run: Path, tmp_path: Path) -> dict[str, Path]:
    state = load_checkpoint(source_run / "checkpoint.pt")["encoder"]
    byola = tmp_path / "byola_style.pth"
    torch.save(dict(state), byola)  # a bare AudioNTT2020 state dict, as BYOL-A releases are
    model, _ = export_model(source_run, tmp_path / "model.safetensors")
    return {"run folder": source_run, "checkpoint.pt": source_run / "checkpoint.pt",
            "encoder.pth": source_run / "encoder.pth", "BYOL-A .pth": byola, "model file": model}


def test_warm_start_loads_every_encoder_format(source_run, tmp_path):
    want = load_checkpoint(source_run / "checkpoint.pt")["encoder"]
    for kind, path in _encoder_files(source_run, tmp_path).items():
        parts = build_training(tiny_config(tmp_path / kind.replace(" ", "_"), f"model.init={path}"), ToyWaves(n=8))
        for name, value in want.items():
            assert torch.equal(parts.learner.encoder.state_dict()[name], value), (kind, name)
            assert torch.equal(parts.learner.target_encoder.state_dict()[name], value), (kind, name)


def test_warm_start_refuses_a_mismatched_or_missing_encoder(source_run, tmp_path):
    with pytest.raises(ConfigError, match=r"model.init .*d=32.*model.d=64"):
        build_training(tiny_config(tmp_path / "a", f"model.init={source_run}", "model.d=64"), ToyWaves(n=8))
    with pytest.raises(ConfigError, match="model.init"):
        build_training(tiny_config(tmp_path / "b", f"model.init={tmp_path / 'nope.pth'}"), ToyWaves(n=8))


def test_frozen_encoder_steps_train_only_the_heads(source_run, tmp_path):
    start = load_checkpoint(source_run / "checkpoint.pt")["encoder"]
    out = tmp_path / "frozen"
    Trainer(tiny_config(out, f"model.init={source_run}", "model.freeze_encoder_steps=3", "max_steps=3"),
            dataset=ToyWaves(n=8)).fit()
    ckpt = load_checkpoint(out / "checkpoint.pt")
    for name, value in start.items():  # weights and BN statistics alike
        assert torch.equal(ckpt["encoder"][name], value), name
    heads_before = build_training(tiny_config(tmp_path / "fresh", f"model.init={source_run}"), ToyWaves(n=8)).learner
    assert not torch.equal(ckpt["learner"]["projector.net.0.weight"], heads_before.projector.net[0].weight)
    # After the frozen steps the encoder trains; resuming past the boundary continues from the checkpoint.
    Trainer(tiny_config(out, f"model.init={source_run}", "model.freeze_encoder_steps=3", "max_steps=5",
                        "resume=auto"), dataset=ToyWaves(n=8)).fit()
    later = load_checkpoint(out / "checkpoint.pt")["encoder"]
    assert not torch.equal(later["fc.0.weight"], start["fc.0.weight"])


# ----------------------------------------------------------------------------------------------
# Online monitor


def test_health_measures_on_known_inputs():
    torch.manual_seed(0)
    assert normalized_std(torch.ones(64, 16)) == pytest.approx(0.0, abs=1e-6)
    assert normalized_std(torch.randn(4096, 16)) == pytest.approx(1.0, abs=0.05)
    assert effective_rank(torch.randn(64, 1) @ torch.randn(1, 32)) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.eye(8)) == pytest.approx(8.0)
    assert 20 < effective_rank(torch.randn(256, 32)) <= 32
    x, y = torch.randn(40, 8), torch.tensor([0, 1] * 20)
    x[y == 0, 0] += 6.0  # two directions: cosine similarity separates them
    x[y == 1, 1] += 6.0
    assert knn_accuracy(x[:20], y[:20], x[20:], y[20:], k=5) == 100.0
    assert linear_accuracy(x[:20], y[:20], x[20:], y[20:]) == 100.0
    assert 0.0 <= knn_accuracy(torch.randn(20, 8), y[:20], torch.randn(20, 8), y[20:]) <= 100.0


def test_collapse_is_warned_after_several_checks_in_a_row(caplog):
    health = HealthMonitor(MonitorConfig(collapse_checks=3, buffer_size=8))
    same = torch.ones(8, 16)
    with caplog.at_level(logging.WARNING, logger="audiorq.train.monitor"):
        for step in range(1, 3):
            health.add(same)
            values = health.measure(same, same, step)
        assert values["projection_std"] < 0.05 and values["effective_rank"] == pytest.approx(1.0)
        assert "collapse" not in caplog.text  # two checks are not yet "several"
        health.add(same)
        health.measure(same, same, 3)
    assert "representation collapse at step 3" in caplog.text


def _toy_task(folder: Path) -> Path:
    """A two-class CSV task of 1 s tones (low vs high), 16 train + 8 test clips."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, t = ["path,label,split"], np.arange(16000) / 16000
    for i in range(24):
        f0 = 200 + 10 * i if i % 2 else 1500 + 10 * i
        sf.write(folder / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * f0 * t)).astype("float32"), 16000)
        rows.append(f"c{i}.wav,{'low' if i % 2 else 'high'},{'test' if i >= 16 else 'train'}")
    (folder / "toy.csv").write_text("\n".join(rows) + "\n")
    return folder / "toy.csv"


def test_a_run_with_the_monitor_logs_its_keys_and_takes_the_same_steps(tmp_path):
    csv = _toy_task(tmp_path / "task")
    monitor = ["monitor.task=csv", f"monitor.data={csv}", "monitor.every_steps=8", "monitor.buffer_size=32",
               "log.every_steps=4", "epochs=4"]
    watched, plain = tmp_path / "watched", tmp_path / "plain"
    Trainer(tiny_config(watched, *monitor), dataset=ToyWaves(n=24)).fit()  # 6 steps an epoch, 24 steps
    Trainer(tiny_config(plain, "epochs=4", "log.every_steps=4", "monitor.health=false"), dataset=ToyWaves(n=24)).fit()
    rows = read_rows(watched / "metrics.jsonl")
    evaluations = read_monitor(watched / "metrics.jsonl")
    # before the first step, every 8 steps and at each epoch end (6, 12, 18, 24), each step once
    assert [r["step"] for r in evaluations] == [0, 6, 8, 12, 16, 18, 24]
    for r in evaluations:
        assert r["monitor"] == "toy" and 0 <= r["knn_acc"] <= 100 and 0 <= r["linear_acc"] <= 100
        assert math.isfinite(r["monitor_time_s"])
    intervals = [r for r in rows if "loss" in r and "epoch_end" not in r]
    for r in intervals:
        assert 0 <= r["embedding_std"] <= 1.5 and 0 <= r["projection_std"] <= 1.5
        assert 1.0 <= r["effective_rank"] <= 32
    # The monitor only reads the encoder: the weights match a run without it, bit for bit.
    a, b = load_checkpoint(watched / "checkpoint.pt"), load_checkpoint(plain / "checkpoint.pt")
    for name, value in a["learner"].items():
        assert torch.equal(value, b["learner"][name]), name
    assert json.loads((watched / "metrics.jsonl").read_text().splitlines()[-1])["epoch_end"] == 4


def test_a_resumed_run_logs_the_health_values_of_a_straight_run(tmp_path):
    # The embedding buffer (32 rows, 4 per step) spans the checkpoint at step 6: a fresh buffer would differ.
    common = ["monitor.buffer_size=32", "log.every_steps=2", "epochs=2"]
    straight = Trainer(tiny_config(tmp_path / "a", *common), dataset=ToyWaves(n=24)).fit()
    Trainer(tiny_config(tmp_path / "b", *common, "max_steps=6"), dataset=ToyWaves(n=24)).fit()
    resumed = Trainer(tiny_config(tmp_path / "b", *common, "resume=auto"), dataset=ToyWaves(n=24)).fit()
    health = [[(r["step"], r["embedding_std"], r["projection_std"], r["effective_rank"])
               for r in read_rows(run / "metrics.jsonl") if "effective_rank" in r] for run in (straight, resumed)]
    assert [s for s, *_ in health[0]] == [2, 4, 6, 8, 10, 12]
    assert health[0] == health[1]
    saved = load_checkpoint(straight / "checkpoint.pt")["health"]
    assert saved["filled"] == 32 and saved["buffer"].shape == (32, 32) and saved["streak"] == 0


def test_monitor_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="monitor.task and monitor.data"):
        tiny_config(tmp_path, "monitor.task=esc10")
    with pytest.raises(ConfigError, match="monitor.k"):
        tiny_config(tmp_path, "monitor.k=0")
