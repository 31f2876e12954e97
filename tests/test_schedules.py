"""Schedules are pure functions of the step: endpoints, monotonicity, warmup."""

from __future__ import annotations

import math

import pytest

from audiorq.train.schedules import cosine_schedule, ema_decay, learning_rate


def test_cosine_schedule_endpoints_and_monotone():
    values = [cosine_schedule(s, 100, 0.99, 1.0) for s in range(0, 101)]
    assert values[0] == pytest.approx(0.99) and values[-1] == pytest.approx(1.0)
    assert values[50] == pytest.approx(0.995)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert cosine_schedule(500, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(3, 0, 0.5, 0.0) == 0.0


def test_learning_rate_warmup_then_cosine_to_zero():
    lrs = [learning_rate(s, 1e-3, total_steps=10, warmup_steps=4, schedule="cosine") for s in range(12)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # linear warmup reaches the base at its end
    assert lrs[4] == pytest.approx(1e-3)
    assert lrs[7] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 3 / 6)) / 2)
    assert lrs[10] == pytest.approx(0.0) and lrs[11] == pytest.approx(0.0)
    assert all(b <= a for a, b in zip(lrs[4:], lrs[5:]))


def test_constant_schedules_ignore_the_step():
    assert {learning_rate(s, 3e-4, 100) for s in range(0, 200, 7)} == {3e-4}
    assert {ema_decay(s, 0.99, 100) for s in range(0, 200, 7)} == {0.99}


def test_ema_decay_cosine_ramps_to_one():
    assert ema_decay(0, 0.99, 50, "cosine") == pytest.approx(0.99)
    assert ema_decay(50, 0.99, 50, "cosine") == pytest.approx(1.0)
    assert 0.99 < ema_decay(20, 0.99, 50, "cosine") < 1.0
