"""The run folder and its files: names, checkpoint and encoder writes, weights-only reads, encoder export.

A pretraining run folder (`out_dir`) holds

  config.yaml     the fully resolved PretrainConfig, normalization statistics included
  checkpoint.pt   the latest training state (the `Checkpoint` mapping below), replaced atomically
  encoder.pth     the online encoder's state dict alone, BYOL-A parameter names (`features.*`, `fc.*`)
  metrics.jsonl   one JSON row per logging interval (rows: audiorq.train.metrics)
  tb/             TensorBoard event files

This module is the only one that knows these names and the checkpoint mapping. Every torch file audiorq
reads goes through `load_weights_only`: tensors and plain containers only, so a crafted file cannot run
code; a file that needs more is refused with a message naming it.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn

from audiorq.atomic import atomic_torch_save

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
ENCODER_FILE = "encoder.pth"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
CHECKPOINT_FORMAT = 1


class RunFileError(ValueError):
    """A run file that cannot be used (unreadable, refused, or not what it should be); names the file."""


class Checkpoint(TypedDict):
    """What checkpoint.pt holds (format 1); every value is a tensor, number, string or plain container."""

    format: int
    encoder: dict[str, torch.Tensor]  # online encoder, as in encoder.pth
    learner: dict[str, torch.Tensor]  # BYOLLearner state dict (online and target networks, heads)
    target: dict[str, dict[str, torch.Tensor]]  # {"encoder": ..., "projector": ...} of the EMA target
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None  # GradScaler state (fp16 only)
    augment: dict[str, Any]  # augmentation chain state (Mixup's memory bank)
    epoch: int  # current epoch, 0-based
    batch_in_epoch: int  # batches of that epoch already consumed
    step: int  # optimizer steps done
    rng: list[dict[str, Any]]  # per rank: torch / cuda / augment generator states, seen, skipped
    norm_stats: list[float]  # [mean, std] of the pre-normalization
    config: dict[str, Any]  # the resolved PretrainConfig as a plain dict
    world_size: int


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder's files."""

    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def encoder(self) -> Path:
        return self.path / ENCODER_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    def existing(self) -> list[str]:
        """Names of the files that make this folder a run (config, checkpoint) that exist."""
        return [p.name for p in (self.checkpoint, self.config) if p.exists()]


def load_weights_only(path: str | os.PathLike) -> Any:
    """torch.load restricted to tensors and plain containers (CPU); RunFileError naming the file otherwise."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's note on unusual pickle protocols means nothing to a user
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunFileError(
            f"{path}: refused: it holds pickled Python objects, not only tensors and plain containers, and "
            f"unpickling those can run code; audiorq loads weights only ({reason[:200]})"
        ) from None
    except FileNotFoundError:
        raise RunFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RunFileError(f"{path}: is a folder, not a torch file") from None
    except Exception as e:  # noqa: BLE001 - the unpickler fails on junk in many ways; all mean "not a torch file"
        raise RunFileError(f"{path}: cannot read as a torch file ({type(e).__name__}: {e})") from None


def encoder_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's state dict as detached, contiguous CPU tensors (what encoder.pth holds)."""
    return {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}


def save_encoder(encoder: nn.Module | dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write an encoder's state dict (BYOL-A names) to `path` atomically."""
    state = encoder_state(encoder) if isinstance(encoder, nn.Module) else encoder
    atomic_torch_save(state, path)


def save_checkpoint(run: RunFolder, checkpoint: Checkpoint) -> Path:
    """Write checkpoint.pt, then encoder.pth from its encoder entry, each atomically; returns checkpoint.pt."""
    missing = [k for k in Checkpoint.__annotations__ if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}")
    atomic_torch_save(dict(checkpoint), run.checkpoint)
    save_encoder(checkpoint["encoder"], run.encoder)
    return run.checkpoint


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a training checkpoint (weights-only, CPU tensors); RunFileError naming the file if it is not one."""
    ckpt = load_weights_only(path)
    if not isinstance(ckpt, dict) or "learner" not in ckpt or "encoder" not in ckpt:
        raise RunFileError(f"{path}: not an audiorq training checkpoint (no 'learner'/'encoder' entries)")
    return ckpt  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class EncoderFile:
    """An encoder's weights as found in a run folder, checkpoint.pt or a plain state dict file."""

    path: Path  # the file actually read
    kind: str  # checkpoint | state_dict
    state: dict[str, torch.Tensor]  # parameter names without any DDP "module." prefix
    config: dict[str, Any]  # the run's resolved config ({} for a plain state dict)


def find_encoder_file(path: str | os.PathLike) -> Path:
    """A run folder -> its checkpoint.pt (else encoder.pth); a file -> itself. RunFileError if neither."""
    path = Path(path).expanduser()
    if path.is_dir():
        run = RunFolder(path)
        for candidate in (run.checkpoint, run.encoder):
            if candidate.is_file():
                return candidate
        raise RunFileError(f"{path}: folder has neither {CHECKPOINT_FILE} nor {ENCODER_FILE}")
    if not path.is_file():
        raise RunFileError(f"{path}: encoder not found (expected a run folder, {CHECKPOINT_FILE} or a .pth state dict)")
    return path


def read_encoder_file(path: str | os.PathLike) -> EncoderFile:
    """Encoder weights from a run folder, checkpoint.pt, encoder.pth or a BYOL-A release .pth (weights-only)."""
    path = find_encoder_file(path)
    obj = load_weights_only(path)
    if isinstance(obj, dict) and isinstance(obj.get("encoder"), dict):
        kind, state, config = "checkpoint", obj["encoder"], obj.get("config") or {}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind, state, config = "state_dict", obj, {}
    else:
        raise RunFileError(f"{path}: neither an audiorq checkpoint (mapping with 'encoder') nor a state dict")
    # DataParallel / DDP checkpoints prefix every name with "module.".
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if not isinstance(config, dict):
        raise RunFileError(f"{path}: its 'config' entry is not a mapping")
    return EncoderFile(path=path, kind=kind, state=state, config=config)
