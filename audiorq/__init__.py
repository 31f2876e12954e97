"""audiorq: BYOL-A style audio representation learning with randomized quantization (RQ).

The main entry points (imported on first use, so `import audiorq` stays light):

    LogMelSpectrogram        waveforms (B, S) at 16 kHz -> log-mel (B, 1, 64, T), T = 1 + S // 160
    RandomizedQuantization   RQ augmentation on log-mel batches: one random quantizer per (sample, mel bin)
    AudioNTT2020             BYOL-A's encoder: log-mel (B, 1, F, T) -> clip embedding (B, d)
    load_model(path)         a trained encoder on raw audio: AudioModel(waveforms (B, S)) -> (B, D);
                             path: run folder, checkpoint.pt, encoder.pth, BYOL-A .pth or .safetensors
    pretrain(cfg)            BYOL pretraining as a PretrainConfig says; returns the run folder
    load_pretrain_config(recipe, overrides)   a recipe (path or shipped name such as "quick") + key=value
    probe(encoder, tasks, data, ...)          linear-probe an encoder on downstream tasks (`audiorq probe`)
    listen(audio, augs=...)  augmented log-mel views inverted back to audio, with a figure (`audiorq listen`)
    export_model(src, out)   one shareable .safetensors (or .onnx) file plus a model card (`audiorq export`)
    embed_files(model, files, out)            embeddings of many audio files (`audiorq embed`)

`audiorq.hear` is the HEAR 2021 API. Every command of the `audiorq` CLI is one of these calls; see
docs/architecture.md for the layout and docs/protocol.md for the evaluation protocol.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; `audiorq.probe` and `audiorq.listen` are packages that can be called.
_EXPORTS = {
    "LogMelSpectrogram": "audiorq.frontend",
    "RandomizedQuantization": "audiorq.augment",
    "AudioNTT2020": "audiorq.models",
    "AudioModel": "audiorq.model",
    "load_model": "audiorq.model",
    "pretrain": "audiorq.train",
    "load_pretrain_config": "audiorq.train",
    "export_model": "audiorq.export",
    "embed_files": "audiorq.embed",
}

__all__ = sorted([*_EXPORTS, "probe", "listen", "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in ("probe", "listen", "hear"):
        return importlib.import_module(f"audiorq.{name}")
    raise AttributeError(f"module 'audiorq' has no attribute {name!r}")


def _make_callable(package: str, function: Callable[..., Any]) -> None:
    """Let the package `package` be called as `function` (`audiorq.probe(...)`), staying a package."""
    module = sys.modules[package]

    class CallablePackage(type(module)):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

    module.__class__ = CallablePackage


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
