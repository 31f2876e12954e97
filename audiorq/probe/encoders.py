"""Encoders to probe: audiorq checkpoints, exported / BYOL-A state dicts, and two baselines.

Encoder specs (strings, as the CLI takes them):
  RUN_DIR                a pretraining run folder: its checkpoint.pt, else its encoder.pth
  path/checkpoint.pt     audiorq checkpoint: dict with "encoder" (state dict) and "config" (incl. "frontend")
  path/encoder.pth       plain AudioNTT2020 state dict (audiorq export or a BYOL-A release); d and n_mels are
                         read from fc.0.weight, shape (d, 64 * n_mels / 8)
Files are read by audiorq.runs, weights-only: a file holding pickled code is refused, never run.
  random[:d=2048,seed=0,n_mels=64,calibrate=false]
                         randomly initialized AudioNTT2020 (seeded) baseline; calibrate=true recomputes its
                         BatchNorm running statistics on each task's training audio before embedding (weights
                         untouched; `calibrate_batchnorm`), since default statistics (mean 0, var 1) leave
                         an untrained network's BN layers doing nothing
  logmel[:stats=mean+std+max,n_mels=64]   time-pooled log-mel statistics baseline (len(stats) * n_mels dims)
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from audiorq.config import FrontendConfig, apply_overrides, from_dict, to_dict
from audiorq.model import ModelError, encoder_from_file
from audiorq.models.ntt import AudioNTT2020
from audiorq.runs import CHECKPOINT_FILE, ENCODER_FILE, RunFileError, read_encoder_file

POOLED_STATS = ("mean", "std", "max", "min")


class EncoderError(ValueError):
    """An encoder spec or file that cannot be used; the message names the file or spec and the reason."""


@dataclasses.dataclass(frozen=True)
class EncoderInfo:
    """What was loaded: a display name, the kind, output size, the log-mel frontend it expects, a weights hash."""

    name: str
    kind: str  # checkpoint | state_dict | random | logmel
    d: int
    n_mels: int
    frontend: FrontendConfig
    weights_hash: str  # sha256 over parameter/buffer names, shapes and values (or the baseline's definition)
    source: str  # the spec or path it came from
    calibrate: bool = False  # recompute BatchNorm statistics on each task's training audio first


class LogMelStats(nn.Module):
    """Baseline "encoder": log-mel (B, 1, F, T) -> per-bin statistics over time (B, len(stats) * F)."""

    def __init__(self, stats: tuple[str, ...] = ("mean", "std", "max")):
        super().__init__()
        bad = [s for s in stats if s not in POOLED_STATS]
        if bad or not stats:
            raise EncoderError(f"logmel stats must be a non-empty subset of {POOLED_STATS}, got {stats}")
        self.stats = tuple(stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) -> (B, len(stats) * F), statistics concatenated in `stats` order."""
        x = x.squeeze(1)
        pooled = {
            "mean": lambda: x.mean(dim=-1),
            "std": lambda: x.std(dim=-1, unbiased=False),
            "max": lambda: x.amax(dim=-1),
            "min": lambda: x.amin(dim=-1),
        }
        return torch.cat([pooled[s]() for s in self.stats], dim=1)


def state_dict_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values (container-independent)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)  # 1-D: 0-d tensors cannot be viewed as bytes
        h.update(f"{name}|{t.dtype}|{tuple(state[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_encoder(
    spec: str,
    device: str | torch.device = "cpu",
    frontend_overrides: list[str] | tuple[str, ...] = (),
    name: str | None = None,
) -> tuple[nn.Module, EncoderInfo]:
    """Load an encoder (spec forms in the module docstring), frozen in eval mode on `device`.

    Returns the module (log-mel (B, 1, n_mels, T) -> (B, d)) and its `EncoderInfo`.
    `frontend_overrides` are ``key=value`` changes to the frontend it expects (e.g. ``mel_scale=htk`` for
    a BYOL-A v1 model trained on torchaudio's HTK filters). `name` replaces the display name in results
    (default: the run folder's name for its checkpoint.pt / encoder.pth, else folder-stem, or the baseline's).
    """
    spec = str(spec)
    base, _, options = spec.partition(":")
    if base in ("random", "logmel") and not Path(spec).exists():
        opts = _parse_options(options, spec)
        if base == "random":
            module, info = _random_encoder(opts, spec)
        else:
            module, info = _logmel_encoder(opts, spec)
    else:
        module, info = _file_encoder(Path(spec).expanduser())
    frontend = _override_frontend(info.frontend, frontend_overrides)
    if frontend.n_mels != info.n_mels:
        raise EncoderError(f"{spec}: frontend n_mels={frontend.n_mels} but the encoder takes {info.n_mels} mel bins")
    info = dataclasses.replace(info, frontend=frontend, name=name or info.name)
    module.eval().requires_grad_(False).to(device)
    return module, info


def _parse_options(text: str, spec: str) -> dict[str, str]:
    opts = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise EncoderError(f"encoder spec {spec!r}: option {part!r} is not key=value")
        opts[key.strip()] = value.strip()
    return opts


def _int_option(opts: dict[str, str], key: str, default: int, spec: str) -> int:
    try:
        return int(opts.pop(key, default))
    except ValueError:
        raise EncoderError(f"encoder spec {spec!r}: {key} must be an integer") from None


def _no_leftovers(opts: dict[str, str], spec: str, allowed: str) -> None:
    if opts:
        raise EncoderError(f"encoder spec {spec!r}: unknown option(s) {sorted(opts)}; allowed: {allowed}")


def _random_encoder(opts: dict[str, str], spec: str) -> tuple[nn.Module, EncoderInfo]:
    d = _int_option(opts, "d", 2048, spec)
    seed = _int_option(opts, "seed", 0, spec)
    n_mels = _int_option(opts, "n_mels", 64, spec)
    calibrate = opts.pop("calibrate", "false").lower()
    if calibrate not in ("true", "false"):
        raise EncoderError(f"encoder spec {spec!r}: calibrate must be true or false, got {calibrate!r}")
    calibrate_bn = calibrate == "true"
    _no_leftovers(opts, spec, "d, seed, n_mels, calibrate")
    # A private RNG stream: the caller's global torch RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = AudioNTT2020(n_mels=n_mels, d=d)
        except ValueError as e:
            raise EncoderError(f"encoder spec {spec!r}: {e}") from None
    weights_hash = state_dict_hash(module.state_dict())
    if calibrate_bn:
        # Its statistics are a function of the weights and the task (whose fingerprint every cache key holds).
        weights_hash = hashlib.sha256(f"{weights_hash}|calibrated".encode()).hexdigest()
    info = EncoderInfo(
        name=f"random-d{d}-seed{seed}" + ("-cal" if calibrate_bn else ""), kind="random", d=d, n_mels=n_mels,
        frontend=FrontendConfig(n_mels=n_mels), weights_hash=weights_hash, source=spec, calibrate=calibrate_bn,
    )
    return module, info


@torch.no_grad()
def calibrate_batchnorm(encoder: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """A copy of `encoder` whose BatchNorm running statistics are the average over `batches` (B, 1, F, T).

    Parameters are untouched and `encoder` itself is not changed. Only the BatchNorm layers run in train
    mode (dropout stays off); momentum None makes each statistic the plain mean of the batches' statistics.
    """
    model = copy.deepcopy(encoder).eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    for x in batches:
        model(x)
        seen += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    if not seen:
        raise EncoderError("BatchNorm calibration got no audio")
    return model.eval()


def _logmel_encoder(opts: dict[str, str], spec: str) -> tuple[nn.Module, EncoderInfo]:
    stats = tuple(s for s in opts.pop("stats", "mean+std+max").split("+") if s)
    n_mels = _int_option(opts, "n_mels", 64, spec)
    _no_leftovers(opts, spec, "stats, n_mels")
    module = LogMelStats(stats)
    definition = f"logmel|{'+'.join(stats)}|{n_mels}"
    info = EncoderInfo(
        name=f"logmel-{'+'.join(stats)}", kind="logmel", d=len(stats) * n_mels, n_mels=n_mels,
        frontend=FrontendConfig(n_mels=n_mels), weights_hash=hashlib.sha256(definition.encode()).hexdigest(),
        source=spec,
    )
    return module, info


def _file_encoder(path: Path) -> tuple[nn.Module, EncoderInfo]:
    try:
        found = read_encoder_file(path)
        module, frontend = encoder_from_file(found)
    except (RunFileError, ModelError) as e:
        raise EncoderError(str(e)) from None
    path, d, n_mels = found.path, module.d, module.n_mels
    if path.name in (CHECKPOINT_FILE, ENCODER_FILE) and path.parent.name:
        # A run folder's two files hold one encoder: both are named after the run, so they make one table row.
        name = path.parent.name
    else:
        name = f"{path.parent.name}-{path.stem}" if path.parent.name else path.stem
    info = EncoderInfo(
        name=name, kind=found.kind, d=d, n_mels=n_mels, frontend=frontend, weights_hash=state_dict_hash(found.state),
        source=str(path),
    )
    return module, info


def _override_frontend(frontend: FrontendConfig, overrides: list[str] | tuple[str, ...]) -> FrontendConfig:
    if not overrides:
        return frontend
    cfg = from_dict(FrontendConfig, apply_overrides(to_dict(frontend), overrides), "frontend.")
    cfg.validate()
    return cfg
