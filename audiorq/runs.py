"""The run folder and its files: names, checkpoint and encoder writes, weights-only reads, encoder export.

A pretraining run folder (`out_dir`) holds

  config.yaml     the fully resolved PretrainConfig, normalization statistics included
  checkpoint.pt   the latest training state (the `Checkpoint` mapping below), replaced atomically
  encoder.pth     the online encoder's state dict alone, BYOL-A parameter names (`features.*`, `fc.*`)
  metrics.jsonl   one JSON row per logging interval (rows: audiorq.train.metrics)
  tb/             TensorBoard event files
  loss.png        the loss curve (and the online monitor's curves once logged), redrawn at checkpoints

A trained encoder is shared as one self-describing model file, OUT.safetensors (`save_model_file`): the
encoder weights plus JSON metadata (model, frontend, normalization statistics, training summary, version).

This module is the only one that knows these names, the checkpoint mapping and the model file format.
Every torch file audiorq reads goes through `load_weights_only`: tensors and plain containers only, so a
crafted file cannot run code; a file that needs more is refused with a message naming it. Model files are
safetensors, which hold no code at all.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, TypedDict

import torch
import yaml
from torch import nn

from audiorq.atomic import atomic_torch_save, atomic_write, remove_temporaries

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
ENCODER_FILE = "encoder.pth"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
LOSS_PLOT_FILE = "loss.png"
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
    health: dict[str, Any] | None  # the monitor's embedding buffer and collapse streak (rank 0); absent before 0.3


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

    @property
    def loss_plot(self) -> Path:
        """loss.png: the loss (and monitor) curves, redrawn at each checkpoint."""
        return self.path / LOSS_PLOT_FILE

    def existing(self) -> list[str]:
        """Names of the files that make this folder a run (config, checkpoint) that exist."""
        return [p.name for p in (self.checkpoint, self.config) if p.exists()]

    def read_config(self) -> dict[str, Any]:
        """config.yaml as a plain mapping (safe_load); RunFileError naming it if it is unreadable or no mapping."""
        try:
            data = yaml.safe_load(self.config.read_text())
        except FileNotFoundError:
            raise RunFileError(f"{self.config}: no such file") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RunFileError(f"{self.config}: cannot read the run's config ({reason[:200]})") from None
        if not isinstance(data, dict):
            raise RunFileError(f"{self.config}: not a config mapping (delete the folder or choose a new out_dir=...)")
        return data

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete what killed writes of this folder's own files left (`.checkpoint.pt.XXXXXXXX.tmp`, ...)."""
        names = (CONFIG_FILE, CHECKPOINT_FILE, ENCODER_FILE, METRICS_FILE, LOSS_PLOT_FILE)
        return remove_temporaries(self.path, names)


def load_weights_only(path: str | os.PathLike) -> Any:
    """torch.load restricted to tensors and plain containers (CPU); RunFileError naming the file otherwise."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's note on unusual pickle protocols means nothing to a user
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not _looks_pickled(path):
            raise RunFileError(f"{path}: not a torch file (damaged, or another format)") from None
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), type(e).__name__)
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


def _looks_pickled(path: Path) -> bool:
    """A torch zip archive or a raw pickle (protocol 2+ starts with 0x80), as opposed to random bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)
    except OSError:
        return False


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
    """An encoder's weights and what it expects, as found in a run folder, checkpoint, state dict or model file."""

    path: Path  # the file actually read
    kind: str  # checkpoint | state_dict | model_file
    state: dict[str, torch.Tensor]  # parameter names without any DDP "module." prefix
    config: dict[str, Any]  # the run's resolved config (frontend, model, ...); {} when unknown
    norm_stats: list[float] | None = None  # [mean, std] of the pre-normalization; None when unknown
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)  # a model file's metadata


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
        raise RunFileError(f"{path}: encoder not found (expected a run folder, {CHECKPOINT_FILE}, a .pth state dict "
                           f"or a {MODEL_SUFFIX} model file)")
    return path


def read_encoder_file(path: str | os.PathLike) -> EncoderFile:
    """Encoder weights from a run folder, checkpoint.pt, encoder.pth, a BYOL-A .pth or a .safetensors model file.

    Never unpickles code. An encoder.pth inside a run folder takes its config and normalization statistics
    from the config.yaml beside it.
    """
    path = find_encoder_file(path)
    if path.suffix == MODEL_SUFFIX:
        model = read_model_file(path)
        return EncoderFile(path=path, kind="model_file", state=model.state, config=model.config,
                           norm_stats=model.norm_stats, metadata=model.metadata)
    obj = load_weights_only(path)
    norm_stats = None
    if isinstance(obj, dict) and isinstance(obj.get("encoder"), dict):
        kind, state, config = "checkpoint", obj["encoder"], obj.get("config") or {}
        norm_stats = obj.get("norm_stats")
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind, state, config = "state_dict", obj, _sibling_config(path)
    else:
        raise RunFileError(f"{path}: neither an audiorq checkpoint (mapping with 'encoder') nor a state dict")
    # DataParallel / DDP checkpoints prefix every name with "module.".
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if not isinstance(config, dict):
        raise RunFileError(f"{path}: its 'config' entry is not a mapping")
    if norm_stats is None:
        norm_stats = (config.get("data") or {}).get("norm_stats")
    return EncoderFile(path=path, kind=kind, state=state, config=config, norm_stats=_stats_or_none(norm_stats, path))


def _sibling_config(path: Path) -> dict[str, Any]:
    """The config.yaml of the run folder an encoder.pth sits in ({} when there is none)."""
    run = RunFolder(path.parent)
    if path.name != ENCODER_FILE or not run.config.is_file():
        return {}
    return run.read_config()


def _stats_or_none(stats: Any, path: Path) -> list[float] | None:
    if stats is None:
        return None
    try:
        mean, std = (float(v) for v in stats)
    except (TypeError, ValueError):
        raise RunFileError(f"{path}: normalization statistics must be [mean, std], got {stats!r}") from None
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise RunFileError(f"{path}: normalization statistics must be finite with std > 0, got {stats!r}")
    return [mean, std]


# ----------------------------------------------------------------------------------------------
# The shareable model file: OUT.safetensors = encoder weights + JSON metadata, and a model card OUT.md.

MODEL_SUFFIX = ".safetensors"
MODEL_FORMAT = "audiorq-model/1"
# Metadata keys (safetensors metadata is str -> str; each value below is JSON).
MODEL_KEYS = ("model", "frontend", "norm_stats", "training", "audiorq_version")


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A model file's content: encoder state, what it was built with, and how it was trained."""

    state: dict[str, torch.Tensor]
    model: dict[str, Any]  # {"architecture": "AudioNTT2020", "n_mels": ..., "d": ...}
    frontend: dict[str, Any]  # FrontendConfig as a dict
    norm_stats: list[float]  # [mean, std]
    training: dict[str, Any]  # summary: source, steps, final loss, data, ... ({} when unknown)
    audiorq_version: str

    @property
    def config(self) -> dict[str, Any]:
        """The parts of a run config a loader needs (frontend, model), in the run-config layout."""
        return {"frontend": self.frontend, "model": self.model}

    @property
    def metadata(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "model": self.model, "frontend": self.frontend, "norm_stats": self.norm_stats,
                "training": self.training, "audiorq_version": self.audiorq_version}


def save_model_file(path: str | os.PathLike, model: ModelFile) -> Path:
    """Write a .safetensors model file atomically (contiguous CPU tensors, JSON metadata)."""
    from safetensors.torch import save as safetensors_bytes

    path = Path(path)
    if path.suffix != MODEL_SUFFIX:
        raise RunFileError(f"{path}: a model file must end in {MODEL_SUFFIX}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state.items()}
    metadata = {"format": MODEL_FORMAT, **{k: json.dumps(getattr(model, k)) for k in MODEL_KEYS}}
    data = safetensors_bytes(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))
    return path


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """Read a .safetensors model file written by `save_model_file`; RunFileError naming the file otherwise."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise RunFileError(f"{path}: not a readable safetensors file ({e})") from None
    if metadata.get("format") != MODEL_FORMAT:
        raise RunFileError(f"{path}: not an audiorq model file (metadata format {metadata.get('format')!r}, "
                           f"expected {MODEL_FORMAT!r}); export one with `audiorq export`")
    try:
        fields = {k: json.loads(metadata[k]) for k in MODEL_KEYS}
    except (KeyError, json.JSONDecodeError) as e:
        raise RunFileError(f"{path}: broken model metadata ({type(e).__name__}: {e})") from None
    stats = _stats_or_none(fields["norm_stats"], path)
    if stats is None or not isinstance(fields["model"], dict) or not isinstance(fields["frontend"], dict):
        raise RunFileError(f"{path}: model metadata lacks the model, frontend or normalization statistics")
    return ModelFile(state=state, model=fields["model"], frontend=fields["frontend"], norm_stats=stats,
                     training=fields["training"] or {}, audiorq_version=str(fields["audiorq_version"]))
