"""Loss curves of run folders: loss.png, monitor panels, `audiorq plot` overlays; no training needed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from audiorq import compare, plots
from audiorq.cli import main
from audiorq.plots import PlotError, loss_curves, plot_run, plot_runs


def fake_run(path: Path, rows: list[dict]) -> Path:
    """A run folder holding only metrics.jsonl with `rows`."""
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def losses(n: int, scale: float = 1.0, **extra: float) -> list[dict]:
    rows = [{"step": s, "epoch": 1, "loss": scale * 4.0 / s} for s in range(1, n + 1)]
    rows.append({"epoch_end": 1, "step": n, "loss": 99.0})  # an epoch mean: not a point of the curve
    if extra:
        rows[-2].update(extra)
    return rows


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_run_draws_the_loss_and_a_panel_per_monitor_key(tmp_path):
    plain = fake_run(tmp_path / "plain", losses(5))
    monitored = fake_run(tmp_path / "monitored", losses(5, knn_acc=0.4, effective_rank=12.0))
    assert plot_run(plain) == plain / "loss.png"
    assert plot_run(monitored) == monitored / "loss.png"
    (w1, h1), (w2, h2) = png_size(plain / "loss.png"), png_size(monitored / "loss.png")
    assert w1 == w2 and h2 > h1  # two more panels below the loss
    assert compare.loss_curves is plots.loss_curves  # one implementation for the demo, benchmarks and runs


def test_plot_runs_overlays_and_names_what_it_cannot_plot(tmp_path):
    a = fake_run(tmp_path / "x" / "rq", losses(4))
    b = fake_run(tmp_path / "y" / "rq", losses(6, scale=0.5))  # same folder name: labelled by full path
    out = plot_runs([a, b], tmp_path / "both.png")
    assert out == tmp_path / "both.png" and png_size(out)[0] > 0
    with pytest.raises(PlotError, match="empty: no metrics.jsonl"):
        plot_runs([a, tmp_path / "empty"])
    fake_run(tmp_path / "new", [])
    with pytest.raises(PlotError, match="no logged steps in metrics.jsonl"):
        plot_runs([tmp_path / "new"])


def test_cli_plot(tmp_path, monkeypatch):
    a = fake_run(tmp_path / "a", losses(3))
    b = fake_run(tmp_path / "b", losses(3, scale=2.0))
    result = CliRunner().invoke(main, ["plot", str(a)])
    assert result.exit_code == 0 and f"wrote {a / 'loss.png'}" in result.output
    result = CliRunner().invoke(main, ["plot", str(a), str(b), "--out", str(tmp_path / "ab.png")])
    assert result.exit_code == 0 and (tmp_path / "ab.png").exists()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["plot", str(a), str(b)])
    assert result.exit_code == 0 and (tmp_path / "loss_curves.png").exists()
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "nope: no metrics.jsonl" in result.output and "Traceback" not in result.output


def test_loss_curves_keeps_its_signature_for_comparisons(tmp_path):
    runs = {"rq": [fake_run(tmp_path / "s0", losses(3)), fake_run(tmp_path / "s1", losses(3, scale=1.1))],
            "mixup": [fake_run(tmp_path / "m0", losses(3, scale=1.3))]}
    out = loss_curves(runs, tmp_path / "cmp.png", {"rq": "RQ", "mixup": "Mixup"})
    assert png_size(out)[1] > 0
