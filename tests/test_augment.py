"""RandomResizeCrop, MixupBYOLA, normalizers and the augmentation chain."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from audiorq.augment import (
    AugmentationChain, MixupBYOLA, NormalizeBatch, PrecomputedNorm, RandomizedQuantization, RandomResizeCrop,
    build_augmentation,
)
from audiorq.augment.crop import crop_and_resize
from audiorq.config import AugmentConfig, ConfigError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_crop(x: torch.Tensor, box, canvas: tuple[int, int]) -> torch.Tensor:
    """Sample-wise BYOL-A-style crop: zero canvas, centred input, slice the box, resize with interpolate."""
    top, left, h, w = (int(v) for v in box)
    f, t = x.shape[-2:]
    cf, ct = canvas
    big = torch.zeros(1, 1, cf, ct)
    of, ot = (cf - f) // 2, (ct - t) // 2
    big[..., of : of + f, ot : ot + t] = x
    patch = big[..., top + of : top + of + h, left + ot : left + ot + w]
    return F.interpolate(patch, size=(f, t), mode="bicubic", align_corners=False)


def _interior(n_out: int, size: int) -> torch.Tensor:
    """Output pixels whose bicubic taps stay inside the patch (where border clamping cannot matter)."""
    coord = (torch.arange(n_out) + 0.5) * size / n_out - 0.5
    return (coord >= 1) & (coord <= size - 2)


def test_rrc_matches_samplewise_reference_inside_patches():
    rrc = RandomResizeCrop()
    x = torch.randn(16, 1, 64, 96, generator=_gen(1))
    out = rrc(x, generator=_gen(2))
    boxes = rrc.sample_boxes(16, 64, 96, _gen(2), x.device)  # the same draws as the forward pass
    canvas = (64, int(96 * 1.5))
    for i in range(16):
        ref = _reference_crop(x[i : i + 1], boxes[i], canvas)
        top, left, h, w = boxes[i].tolist()
        mask = _interior(64, int(h))[:, None] & _interior(96, int(w))[None, :]
        assert mask.any()
        torch.testing.assert_close(out[i, 0][mask], ref[0, 0][mask], rtol=0, atol=1e-4)


def test_rrc_box_ranges_follow_byola_parameters():
    rrc = RandomResizeCrop()
    boxes = rrc.sample_boxes(4000, 64, 96, _gen(0), torch.device("cpu"))
    top, left, h, w = boxes.unbind(1)
    assert h.min() >= math.floor(0.6 * 64) and h.max() <= 64  # freq crop clipped to the 1.0x canvas
    assert w.min() >= math.floor(0.6 * 96) and w.max() <= 144 and w.max() > 130
    assert (top >= 0).all() and (top + h <= 64).all()
    assert (left >= -24).all() and (left + w <= 96 + 24).all()  # canvas extends 24 frames each side


def test_crop_and_resize_identity_box_is_exact():
    x = torch.randn(3, 1, 64, 96, generator=_gen(0))
    boxes = torch.tensor([[0.0, 0.0, 64.0, 96.0]] * 3)
    torch.testing.assert_close(crop_and_resize(x, boxes), x, rtol=0, atol=1e-5)


def test_rrc_each_sample_its_own_crop_and_seeded():
    x = torch.randn(1, 1, 64, 96, generator=_gen(0)).repeat(8, 1, 1, 1)
    rrc = RandomResizeCrop()
    out = rrc(x, generator=_gen(5))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert len({round(float(o.sum()), 3) for o in out}) == 8
    torch.testing.assert_close(out, rrc(x, generator=_gen(5)), rtol=0, atol=0)
    assert rrc(x[:, 0], generator=_gen(5)).shape == (8, 64, 96)
    assert rrc(x.half(), generator=_gen(5)).dtype == torch.float16


def test_mixup_empty_bank_is_identity_then_mixes_with_past_batches():
    mix = MixupBYOLA(ratio=0.4, memory_size=4)
    a = torch.randn(2, 1, 8, 10, generator=_gen(0))
    torch.testing.assert_close(mix(a, generator=_gen(1)), a)
    b = torch.randn(2, 1, 8, 10, generator=_gen(2))
    out = mix(b, generator=_gen(3))
    assert not torch.allclose(out, b)
    assert mix.filled == 4


def test_mixup_is_log_of_linear_mixture():
    mix = MixupBYOLA(ratio=0.4, memory_size=1)
    m = torch.randn(1, 1, 8, 10, generator=_gen(0))
    mix(m)
    x = torch.randn(5, 1, 8, 10, generator=_gen(1))
    out = mix(x, generator=_gen(2))
    # Solve l per sample from one element, then every element must satisfy the same mixture.
    ex, em, eo = x.double().exp(), m.double().exp(), out.double().exp()
    lam = ((eo - ex) / (em - ex))[:, :, 0, 0].view(5, 1, 1, 1)
    assert (lam >= 0).all() and (lam <= 0.4).all()
    torch.testing.assert_close(eo, (1 - lam) * ex + lam * em, rtol=1e-4, atol=1e-6)


def test_mixup_linear_mode_and_ratio_zero():
    mix = MixupBYOLA(ratio=0.0, memory_size=8)
    x = torch.randn(4, 1, 8, 10)
    mix(x)
    torch.testing.assert_close(mix(x + 1), x + 1)
    lin = MixupBYOLA(ratio=0.5, memory_size=1, log_mixup_exp=False)
    lin(torch.zeros(1, 1, 2, 2))
    out = lin(torch.ones(3, 1, 2, 2), generator=_gen(0))
    assert ((out >= 0.5 - 1e-6) & (out <= 1)).all()


def test_mixup_state_round_trip_continues_identically():
    a, b = MixupBYOLA(memory_size=6), MixupBYOLA(memory_size=6)
    for i in range(3):
        a(torch.randn(4, 1, 8, 10, generator=_gen(i)), generator=_gen(10 + i))
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 1, 8, 10, generator=_gen(99))
    torch.testing.assert_close(a(x, generator=_gen(7)), b(x, generator=_gen(7)), rtol=0, atol=0)
    torch.testing.assert_close(a.memory, b.memory)


def test_mixup_bank_keeps_the_latest_items():
    mix = MixupBYOLA(memory_size=3)
    for v in range(5):
        mix(torch.full((2, 1, 1, 1), float(v)))
    assert sorted(mix.memory.flatten().tolist()) == [3.0, 4.0, 4.0]


def test_normalizers():
    x = torch.randn(8, 1, 64, 96) * 3 + 5
    torch.testing.assert_close(PrecomputedNorm(5.0, 3.0)(x), (x - 5) / 3)
    y = NormalizeBatch()(x)
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std()) - 1) < 1e-4
    with pytest.raises(ValueError, match="std"):
        PrecomputedNorm(0.0, 0.0)


def test_build_augmentation_follows_chain_order():
    chain = build_augmentation(AugmentConfig(chain=["mixup", "rrc"]))
    assert isinstance(chain, AugmentationChain)
    assert [type(m) for m in chain.steps.values()] == [MixupBYOLA, RandomResizeCrop]
    rq = build_augmentation(AugmentConfig())
    assert [type(m) for m in rq.steps.values()] == [RandomResizeCrop, RandomizedQuantization]
    x = torch.randn(4, 1, 64, 96)
    torch.testing.assert_close(rq(x, generator=_gen(3)), rq(x, generator=_gen(3)))
    assert build_augmentation(AugmentConfig(chain=[]))(x) is x
    with pytest.raises(ConfigError, match="twice"):
        build_augmentation(AugmentConfig(chain=["rq", "rq"]))
    with pytest.raises(ConfigError, match="chain item"):
        build_augmentation(AugmentConfig(chain=["specaugment"]))
