"""BYOL learner pieces (MLP head, momentum update, loss) and BYOL-A checkpoint names."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from audiorq.models import AudioNTT2020
from audiorq.models.byol import BYOLLearner, MLPHead, byol_loss, momentum_update


def byola_state_dict(n_mels: int = 64, d: int = 2048) -> dict[str, torch.Tensor]:
    """A state dict laid out like BYOL-A's published AudioNTT2020 .pth files, written out by hand."""
    sd: dict[str, torch.Tensor] = {}
    in_ch = 1
    for block in range(3):  # Conv2d, BatchNorm2d, ReLU, MaxPool2d per block -> indices 0,1 / 4,5 / 8,9
        conv, bn = f"features.{4 * block}", f"features.{4 * block + 1}"
        sd[f"{conv}.weight"] = torch.randn(64, in_ch, 3, 3)
        sd[f"{conv}.bias"] = torch.randn(64)
        sd[f"{bn}.weight"] = torch.rand(64)
        sd[f"{bn}.bias"] = torch.randn(64)
        sd[f"{bn}.running_mean"] = torch.randn(64)
        sd[f"{bn}.running_var"] = torch.rand(64) + 0.5
        sd[f"{bn}.num_batches_tracked"] = torch.tensor(1000)
        in_ch = 64
    sd["fc.0.weight"] = torch.randn(d, 64 * (n_mels // 8))
    sd["fc.0.bias"] = torch.randn(d)
    sd["fc.3.weight"] = torch.randn(d, d)
    sd["fc.3.bias"] = torch.randn(d)
    return sd


def test_ntt_loads_byola_checkpoint_strict():
    sd = byola_state_dict(64, 2048)
    model = AudioNTT2020(n_mels=64, d=2048)
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.fc[3].weight, sd["fc.3.weight"])
    assert set(model.state_dict()) == set(sd)


def test_ntt_shapes_and_clip_embedding():
    model = AudioNTT2020(n_mels=64, d=32).eval()
    x = torch.randn(3, 1, 64, 96)
    frames = model.frames(x)
    assert frames.shape == (3, 12, 32)
    emb = model(x)
    assert torch.allclose(emb, frames.max(dim=1).values + frames.mean(dim=1))


def test_mlp_head_shape_and_layers():
    head = MLPHead(16, 32, 8)
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 8)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]


def test_momentum_update_is_ema_of_parameters_and_copies_buffers():
    torch.manual_seed(0)
    online, target = MLPHead(4, 6, 3), MLPHead(4, 6, 3)
    online.net[1].running_mean.fill_(0.5)
    before = [p.clone() for p in target.parameters()]
    momentum_update(online, target, decay=0.9)
    for t0, t1, o in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * o)
    assert torch.equal(target.net[1].running_mean, online.net[1].running_mean)
    momentum_update(online, target, decay=0.0)  # decay 0 = copy
    for t, o in zip(target.parameters(), online.parameters()):
        assert torch.equal(t, o)
    with pytest.raises(ValueError, match="decay"):
        momentum_update(online, target, decay=1.5)


def test_byol_loss_values_and_stop_gradient():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    z = torch.tensor([[3.0, 0.0], [0.0, -1.0]], requires_grad=True)
    loss = byol_loss(p, z)  # cos = 1 and -1 -> (0 + 4) / 2
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert z.grad is None and p.grad is not None
    q = torch.randn(7, 5)
    assert byol_loss(q, 3.0 * q).item() == pytest.approx(0.0, abs=1e-6)  # scale invariant


def test_learner_step_and_target_follow_ema():
    torch.manual_seed(0)
    learner = BYOLLearner(AudioNTT2020(n_mels=64, d=16), d=16, hidden_dim=32, proj_dim=8)
    assert all(not p.requires_grad for p in learner.target_parameters())
    # The target starts as a copy of the online encoder + projector.
    for t, o in zip(learner.target_encoder.parameters(), learner.encoder.parameters()):
        assert torch.equal(t, o)
    v1, v2 = torch.randn(4, 1, 64, 32), torch.randn(4, 1, 64, 32)
    loss = learner(v1, v2)
    assert 0.0 <= loss.item() <= 8.0
    loss.backward()
    assert learner.encoder.fc[0].weight.grad is not None and learner.predictor.net[0].weight.grad is not None
    assert all(p.grad is None for p in learner.target_parameters())
    opt = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=0.1)
    old_target = [p.clone() for p in learner.target_parameters()]
    opt.step()
    learner.update_target(0.99)
    online = list(learner.encoder.parameters()) + list(learner.projector.parameters())
    for t0, t1, o in zip(old_target, learner.target_parameters(), online):
        assert torch.allclose(t1, 0.99 * t0 + 0.01 * o, atol=1e-7)
    assert not math.isnan(learner(v1, v2).item())
