"""A normal (non-editable) install works: the wheel ships the recipes, and the tool runs outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".hypothesis", "runs", "demo_out*", "results")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """audiorq built as a wheel from a copy of the source tree and installed into a scratch folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=SKIP, symlinks=True)
    # No build isolation: setuptools and wheel come from the dev extra, so the test needs no network.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(tmp / "dist"), str(source)], check=True)
    wheel = next((tmp / "dist").glob("audiorq-*.whl"))
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    "--target", str(target), str(wheel)], check=True)
    work = tmp / "elsewhere"  # outside the checkout: nothing can be found relative to the source tree
    work.mkdir()
    return {"wheel": wheel, "site": target, "work": work}


def run_installed(installed: dict[str, Path], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m audiorq.cli ARGS` importing audiorq from the scratch install only, run from outside the repo."""
    env = {**os.environ, "PYTHONPATH": str(installed["site"]), "PYTHONNOUSERSITE": "1"}
    return subprocess.run([sys.executable, "-m", "audiorq.cli", *args], cwd=installed["work"], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_wheel_ships_every_recipe(installed):
    with zipfile.ZipFile(installed["wheel"]) as whl:
        shipped = sorted(Path(n).name for n in whl.namelist() if n.startswith("audiorq/recipes/"))
    assert shipped == sorted(p.name for p in (REPO / "recipes").glob("*.yaml"))
    assert "quick.yaml" in shipped and "byola_rq.yaml" in shipped
    env = {**os.environ, "PYTHONPATH": str(installed["site"])}
    where = subprocess.run([sys.executable, "-c", "import audiorq; print(audiorq.__file__)"], cwd=installed["work"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(installed["site"])  # the installed copy, not the checkout


def test_installed_pretrain_resolves_a_recipe_by_name(installed):
    clips = installed["work"] / "clips"
    clips.mkdir()
    t = np.arange(16000) / 16000
    for i in range(8):
        sf.write(clips / f"tone{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 16000)
    result = run_installed(installed, "pretrain", "quick", f"data.source={clips}", "out_dir=run", "max_steps=1",
                           "batch_size=4", "device=cpu", "data.num_workers=0", "data.stats_items=8",
                           "log.progress=false", "log.tensorboard=false")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (installed["work"] / "run" / "encoder.pth").is_file()
    missing = run_installed(installed, "pretrain", "no_such_recipe", f"data.source={clips}")
    assert missing.returncode == 2 and "recipe not found: no_such_recipe" in missing.stderr
    assert "quick" in missing.stderr  # the message lists the shipped recipes


def test_installed_demo_runs_at_a_tiny_size(installed):
    result = run_installed(installed, "demo", "--steps", "1", "--out", "demo", "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Linear probe on synthetic_sounds" in result.stdout
    assert (installed["work"] / "demo" / "summary.md").is_file()
