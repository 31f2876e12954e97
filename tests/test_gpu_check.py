"""eval/gpu_check.py --smoke: the one-command GPU check runs end to end on CPU, so it is ready when a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("environment", "cuda_tests", "corpus", "augment", "frontend", "probe", "pretrain", "torchrun",
            "pretrain_compile", "overhead")
CUDA_ONLY = {"cuda_tests", "pretrain_compile"}  # on a CPU these record a skip (with the reason) instead of running


def test_gpu_check_smoke_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "eval" / "gpu_check.py"), "--smoke", "--out", str(out),
                           "--work", str(tmp_path / "work")],
                          cwd=REPO, capture_output=True, text=True, timeout=900)  # a hang guard, not a speed test
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["format"] == "audiorq-gpu-check/1" and report["smoke"] is True
    assert list(report["sections"]) == list(SECTIONS)
    for name, section in report["sections"].items():
        assert section["seconds"] >= 0
        if name in CUDA_ONLY:
            assert section["status"] == "skipped" and section["reason"], (name, section)
        else:
            assert section["status"] == "ok", (name, section.get("error"), section.get("traceback"))

    sections = report["sections"]
    # The cuda marker selects the CUDA-only tests: pytest collected them and they skipped on this machine.
    assert sections["cuda_tests"]["results"]["counts"].get("skipped", 0) >= 1
    assert all(sections["augment"]["results"]["equal"].values())
    rows = sections["pretrain"]["results"]["rows"]
    assert len(rows) == 4 and all(r["status"] == "ok" and r["samples_per_s"] > 0 and r["loss_finite"] for r in rows)
    assert {r["backend"] for r in sections["frontend"]["results"]["rows"]} >= {"torch", "librosa"}
    runs = sections["torchrun"]["results"]["runs"]
    assert [r["rc"] for r in runs] == [0, 0] and runs[1]["checkpoint_step"] > runs[0]["checkpoint_step"]
    assert "best_samples_per_s" in report["summary"]
    overhead = sections["overhead"]["results"]
    assert overhead["pipeline_samples_per_s"] > 0 and overhead["minimal_samples_per_s"] > 0
    assert report["summary"]["overhead_ratio"] == overhead["ratio"]

    md = (out / "gpu_check.md").read_text()
    assert "| section | status | seconds | result |" in md
    assert all(f"| {name} |" in md for name in SECTIONS)
    assert "| section | status |" in proc.stdout  # the table is printed too


def test_gpu_check_records_sections_skipped_for_the_budget(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "eval" / "gpu_check.py"), "--smoke", "--budget-s", "0",
                           "--only", "environment,augment", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)  # a hang guard
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = json.loads((out / "gpu_check.json").read_text())["sections"]
    assert list(sections) == ["environment", "augment"]
    assert sections["environment"]["status"] == "ok"  # needs no budget: the report always says where it ran
    assert sections["augment"]["status"] == "skipped" and sections["augment"]["reason"].startswith("budget")
