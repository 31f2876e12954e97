"""The README works as written: its marked shell blocks run (at tiny sizes) and every command has help.

A fenced block right after a `<!-- test -->` line is run line by line, in order, in one scratch folder,
through the CLI in-process (no interpreter start per line). The documented equivalents, so the run stays
fast and offline:
- `../shared/data` is the shared data root (`conftest.shared_data_dir`); a line needing it is skipped
  when that data is absent (the lines after it still run);
- `clip.wav` is a generated 0.6 s tone, and `recipes/` links to the checkout's;
- `TINY` below appends size options per command (Click keeps the last value of a repeated option, and a
  later `key=value` override wins), and `pretrain` reads a generated 12-clip corpus instead of `data.source`.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import click
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from audiorq.cli import main
from conftest import REPO, shared_data_dir

README = REPO / "README.md"
MARKER = "<!-- test -->"
SHARED = "../shared/data"
TINY: dict[str, list[str]] = {
    "pretrain": ["max_steps=1", "batch_size=4", "data.stats_items=8", "data.num_workers=0", "log.progress=false"],
    "probe": ["--runs", "1", "--max-per-class", "2", "--no-progress"],
    "listen": ["--iters", "1", "--views", "1", "--device", "cpu"],
}


def marked_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every non-empty line in the fenced blocks that follow a MARKER line."""
    lines = text.splitlines()
    commands = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        assert i + 1 < len(lines) and lines[i + 1].startswith("```"), f"README:{i + 1}: {MARKER} not before a block"
        j = i + 2
        while not lines[j].startswith("```"):
            if lines[j].strip():
                commands.append((j + 1, lines[j].strip()))
            j += 1
    return commands


def tiny_args(command: str, corpus: Path, shared: Path) -> list[str]:
    """The command's arguments after `audiorq`, with the shared root resolved and TINY sizes applied."""
    words = shlex.split(command, comments=True)
    assert words[0] == "audiorq", f"only audiorq commands can be tested: {command}"
    args = [w.replace(SHARED, str(shared)) for w in words[1:]]
    if args and args[0] == "pretrain":  # a tiny generated corpus instead of the documented data
        args = [f"data.source={corpus}" if a.startswith("data.source=") else a for a in args]
        if not any(a.startswith("data.source=") for a in args):
            args.append(f"data.source={corpus}")
    return args + (TINY.get(args[0], []) if args else [])


def _tone(path: Path, seconds: float, f0: float, sr: int = 16000) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    wave = sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 6))
    wave = wave + 0.01 * np.random.default_rng(int(f0)).standard_normal(t.size)
    sf.write(str(path), wave.astype(np.float32), sr)
    return path


def test_readme_marks_the_quick_start_commands():
    commands = [c for _, c in marked_commands(README.read_text())]
    for needed in ("audiorq --help", "audiorq pretrain quick", "audiorq probe logmel --task esc10",
                   "audiorq listen", "audiorq export", "audiorq embed"):
        assert any(c.startswith(needed) for c in commands), needed


def test_readme_marked_blocks_run_at_tiny_sizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUDIORQ_CACHE_DIR", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        _tone(corpus / f"tone{i:02d}.wav", 1.0, 150.0 + 40 * i)
    _tone(tmp_path / "clip.wav", 0.6, 220.0)
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    shared = shared_data_dir()
    have_shared = (shared / "fsdd" / "recordings").is_dir() and (shared / "esc10").is_dir()
    skipped = []
    runner = CliRunner()
    for line_no, command in marked_commands(README.read_text()):
        args = tiny_args(command, corpus, shared)
        if not have_shared and any(str(shared) in a for a in args):  # pretrain's source is replaced, not needed
            skipped.append(line_no)
            continue
        start = time.perf_counter()
        result = runner.invoke(main, args)
        print(f"{time.perf_counter() - start:6.1f} s  README:{line_no}: audiorq {shlex.join(args)}")
        ran = f"README:{line_no}: {command}\n(run as audiorq {shlex.join(args)})"
        assert result.exit_code == 0, f"{ran}\n{result.output}"
    if skipped:
        pytest.skip(f"shared data absent at {shared}: README lines {skipped} not run")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
    return found


@pytest.mark.parametrize("path", [(), *_commands(main)], ids=lambda p: " ".join(p) or "audiorq")
def test_every_command_has_help(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output, result.output


def test_readme_command_list_names_every_command():
    text = README.read_text()
    block = re.search(r"## Commands\n\n```\n(.*?)```", text, re.S)
    assert block, "README has no ## Commands block"
    listed = {line.split()[1] for line in block.group(1).splitlines() if line.startswith("audiorq ")}
    assert set(main.commands) - {"--help"} <= listed | {"--help"}, set(main.commands) - listed
