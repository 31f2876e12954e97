"""Training state in and out of a checkpoint: progress counters, RNG streams, and the resume checks."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audiorq.config import LEGACY_VALUES, ConfigError, PretrainConfig, to_dict
from audiorq.runs import CHECKPOINT_FORMAT, Checkpoint, RunFolder, encoder_state
from audiorq.train.distributed import DistContext

log = logging.getLogger(__name__)

# Config keys that may differ between a checkpoint and the run resuming it; anything else (model,
# augmentation, data, batch, optimizer) would silently change the experiment, so it is refused.
RESUMABLE_CHANGES = (
    "resume", "epochs", "max_steps", "checkpoint_every_steps", "out_dir", "device", "compile", "compile_mode",
    "data.source", "data.num_workers", "data.cache_dir", "log.", "monitor.",
)


class RunDirError(RuntimeError):
    """The output folder already holds a run and the config does not say to resume it."""


@dataclasses.dataclass
class Progress:
    """Where a run is: the counters a checkpoint carries."""

    epoch: int = 0  # current epoch, 0-based
    step: int = 0  # optimizer steps done
    batch_in_epoch: int = 0  # batches of the current epoch consumed (trained on or skipped)
    seen: int = 0  # items loaded by this rank, readable or not
    skipped: int = 0  # unreadable items on this rank


def resume_source(cfg: PretrainConfig, run: RunFolder) -> Path | None:
    """The checkpoint `cfg.resume` asks to continue from, None for a fresh run; RunDirError on a clash."""
    existing = run.existing()
    if cfg.resume == "no":
        if existing:
            raise RunDirError(
                f"{run.path} already holds a run ({', '.join(existing)}); pass resume=auto to continue it, "
                f"or choose a new out_dir=..."
            )
        return None
    if cfg.resume == "auto":
        return run.checkpoint if run.checkpoint.exists() else None
    path = Path(cfg.resume)
    if not path.is_file():
        raise RunDirError(f"resume={cfg.resume}: no such checkpoint")
    if existing and path.resolve() != run.checkpoint.resolve():
        raise RunDirError(f"{run.path} already holds another run ({', '.join(existing)}); choose a new out_dir=...")
    return path


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_differences(a, b, prefix + k + ".")
        elif a != b:
            keys.append(prefix + k)
    return keys


def adopt_legacy_values(cfg: PretrainConfig, saved: dict) -> list[str]:
    """Set in `cfg` the `LEGACY_VALUES` of the keys a saved config lacks (it predates them); returns those keys.

    A run written by an older version then resumes with that version's behaviour, as it was started.
    """
    adopted = []
    for dotted, value in LEGACY_VALUES.items():
        *parents, leaf = dotted.split(".")
        node, section = saved, cfg
        for name in parents:
            node, section = node.get(name) if isinstance(node, dict) else None, getattr(section, name)
        if isinstance(node, dict) and leaf not in node:
            setattr(section, leaf, value)
            node[leaf] = value
            adopted.append(f"{dotted}={value}")
    return adopted


def check_resumable(checkpoint: Checkpoint, cfg: PretrainConfig, source: Path) -> None:
    """ConfigError unless `cfg` differs from the checkpoint's config only in RESUMABLE_CHANGES.

    WebDataset shards are read one stream per DataLoader worker, so mid-epoch the rest of the epoch is only
    the same with the same data.num_workers; at an epoch boundary it may change.
    """
    saved = dict(checkpoint.get("config", {}))
    check_same_experiment(saved, cfg, f"cannot resume from {source}")
    workers = (saved.get("data") or {}).get("num_workers", cfg.data.num_workers)
    if cfg.data.kind == "webdataset" and int(checkpoint.get("batch_in_epoch", 0)) and workers != cfg.data.num_workers:
        raise ConfigError(f"cannot resume from {source}: it stopped inside an epoch of WebDataset shards read by "
                          f"data.num_workers={workers}, whose order depends on that number; resume with "
                          f"data.num_workers={workers}")


def check_same_experiment(saved: dict, cfg: PretrainConfig, what: str) -> None:
    """ConfigError starting with `what` unless `cfg` differs from the `saved` config only in RESUMABLE_CHANGES."""
    differ = [k for k in config_differences(saved, to_dict(cfg))
              if not any(k == r or (r.endswith(".") and (k.startswith(r) or k == r[:-1])) for r in RESUMABLE_CHANGES)]
    if differ:
        raise ConfigError(
            f"{what}: the config differs in {', '.join(differ)}; only "
            f"{', '.join(RESUMABLE_CHANGES)} may change on resume (start a new out_dir= instead)"
        )


def rng_state(device: torch.device, aug_generator: torch.Generator, progress: Progress) -> dict[str, Any]:
    """This rank's random streams and data counters, as a checkpoint's `rng` entry holds them."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "augment": aug_generator.get_state().cpu(),
        "seen": progress.seen,
        "skipped": progress.skipped,
    }


def make_checkpoint(
    learner: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, augment: nn.Module,
    progress: Progress, rng: list[dict[str, Any]], norm_stats: list[float], cfg: PretrainConfig,
    health: dict[str, Any] | None = None,
) -> Checkpoint:
    """The checkpoint mapping of a BYOLLearner run; `rng` holds every rank's `rng_state`, `health` the monitor's."""
    return Checkpoint(
        format=CHECKPOINT_FORMAT,
        encoder=encoder_state(learner.encoder),
        learner=learner.state_dict(),
        target={"encoder": learner.target_encoder.state_dict(), "projector": learner.target_projector.state_dict()},
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict() if scaler is not None else None,
        augment=augment.state_dict(),
        epoch=progress.epoch,
        batch_in_epoch=progress.batch_in_epoch,
        step=progress.step,
        rng=rng,
        norm_stats=list(norm_stats),
        config=to_dict(cfg),
        world_size=len(rng),
        health=health,
    )


def restore_checkpoint(
    checkpoint: Checkpoint, learner: nn.Module, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None, augment: nn.Module, aug_generator: torch.Generator,
    ctx: DistContext, device: torch.device, seed: int,
) -> Progress:
    """Load weights, optimizer, augmentation and this rank's RNG streams; returns the run's progress.

    With another world size than the checkpoint's the random streams restart from the seed, so the
    continued run is correct but not bitwise identical to an uninterrupted one (a warning says so).
    """
    learner.load_state_dict(checkpoint["learner"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    augment.load_state_dict(_to_device(checkpoint.get("augment", {}), device))
    progress = Progress(epoch=int(checkpoint["epoch"]), step=int(checkpoint["step"]),
                        batch_in_epoch=int(checkpoint["batch_in_epoch"]))
    rng = checkpoint.get("rng") or []
    if len(rng) == ctx.world_size:
        mine = rng[ctx.rank]
        torch.set_rng_state(mine["torch"])
        if device.type == "cuda" and mine.get("cuda") is not None:
            torch.cuda.set_rng_state(mine["cuda"], device)
        aug_generator.set_state(mine["augment"].to(aug_generator.get_state().device))
        progress.seen, progress.skipped = int(mine["seen"]), int(mine["skipped"])
    else:
        log.warning(
            "checkpoint was written by %d rank(s), this job has %d: random streams restart from the seed, "
            "so the resumed run is not bitwise identical to an uninterrupted one", len(rng), ctx.world_size,
        )
        aug_generator.manual_seed(seed * 1_000_003 + progress.step * 31 + ctx.rank)
    return progress


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj
