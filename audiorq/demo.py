"""The built-in demo: synthesize a clip and hear/see what each augmentation does to it (no downloads)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from audiorq.audio import SAMPLE_RATE, save_audio
from audiorq.listen import ListenResult, listen
from audiorq.synth import demo_clip


@dataclass
class DemoResult:
    """Where the demo wrote its artifacts."""

    out_dir: Path
    clip: Path
    listen: ListenResult

    def table(self) -> str:
        """Artifacts as a markdown table."""
        rows = [("input clip (synthetic, 4 s)", self.clip), ("original, inverted", self.listen.original)]
        rows += [(f"{v.aug} view {v.index}", v.path) for v in self.listen.views]
        rows += [("figure", self.listen.figure), ("manifest", self.listen.manifest)]
        return "\n".join(["| artifact | path |", "|---|---|"] + [f"| {name} | {path} |" for name, path in rows])


def fresh_dir(base: str | os.PathLike) -> Path:
    """`base` if it does not exist yet, else `base-2`, `base-3`, ...: earlier results are never overwritten."""
    base = Path(base)
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def run_demo(out_dir: str | os.PathLike = "demo_out", seed: int = 0, views: int = 3, device: str = "cpu") -> DemoResult:
    """Synthesize a clip, then write RQ / RRC / Mixup views as audio and a figure under a fresh `out_dir`."""
    out = fresh_dir(out_dir)
    clip = out / "input.wav"
    save_audio(clip, torch.from_numpy(demo_clip(seed=seed)), SAMPLE_RATE)
    result = listen(clip, augs=("rq", "rrc", "mixup"), views=views, seed=seed, out_dir=out / "listen", device=device)
    return DemoResult(out_dir=out, clip=clip, listen=result)
