"""BYOL pretraining loop: batched on-device log-mel + augmentation, AMP, DDP, exact checkpoint/resume.

Per step (design.md): CPU workers decode only the cropped span of each clip (or read a log-mel shard
crop) -> on the training device, in batches: log-mel, pre-norm with dataset statistics, the augment
chain twice (two views), per-batch post-norm -> BYOL loss, optimizer step, EMA update of the target.

Library entry point: `pretrain(cfg) -> run_dir`. Multi-GPU / multi-node: launch the same command with
`torchrun`; the process group is read from the environment (NCCL on CUDA, gloo on CPU), `batch_size` is
the global batch split across ranks, and rank 0 alone logs and writes files.

Run folder (`out_dir`): config.yaml (resolved config), checkpoint.pt (latest, atomic), encoder.pth
(encoder alone, BYOL-A parameter names), metrics.jsonl, tb/ (TensorBoard).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from audiorq.atomic import atomic_torch_save
from audiorq.augment import NormalizeBatch, PrecomputedNorm, build_augmentation
from audiorq.config import ConfigError, PretrainConfig, from_dict, save_config, to_dict
from audiorq.frontend import LogMelSpectrogram
from audiorq.models.byol import BYOLLearner, cosine_schedule
from audiorq.models.ntt import AudioNTT2020

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.pth"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT_FORMAT = 1

# Config keys that may differ between a checkpoint and the run resuming it; anything else (model,
# augmentation, data, batch, optimizer) would silently change the experiment, so it is refused.
RESUMABLE_CHANGES = (
    "resume", "epochs", "max_steps", "checkpoint_every_steps", "out_dir", "device", "compile",
    "data.source", "data.num_workers", "data.cache_dir", "log.",
)


class RunDirError(RuntimeError):
    """The output folder already holds a run and the config does not say to resume it."""


class BadDataError(RuntimeError):
    """Too large a share of the pretraining data could not be read."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint (`.checkpoint`)."""

    def __init__(self, checkpoint: Path | None):
        self.checkpoint = checkpoint
        super().__init__(f"training interrupted; checkpoint saved at {checkpoint}")


# ----------------------------------------------------------------------------------------------
# Process group, device, precision


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[DistContext, torch.device, bool]:
    """Read torchrun's environment, pick the device, join the process group if world size > 1.

    Returns (context, device, whether this call created the process group).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    ctx = DistContext(rank, world_size, local_rank)
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if ctx.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
        created = True
    return ctx, device, created


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> the local rank's GPU if CUDA is available, else CPU; 'cuda' -> cuda:local_rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available (use device=cpu)")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `precision` on `device`; None means fp32 (no autocast)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ----------------------------------------------------------------------------------------------
# Data


class ResumableSampler(Sampler[int]):
    """Shuffled indices for (seed, epoch), split across ranks, able to start after `start_batch` batches.

    Every rank gets the same number of full batches (`batches_per_epoch`), so no rank waits on another
    at the end of an epoch. The order depends on (seed, epoch) only, so a resumed run sees the same
    items as an uninterrupted one.
    """

    def __init__(self, n_items: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.n_items, self.batch_size, self.rank, self.world_size, self.seed = n_items, batch_size, rank, world_size, seed
        self.batches_per_epoch = (n_items // world_size) // batch_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use the order of `epoch` and skip its first `start_batch` batches."""
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n_items, generator=g)
        mine = order[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        return iter(mine[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch) * self.batch_size


def build_dataset(cfg: PretrainConfig) -> Dataset:
    """The pretraining dataset `cfg.data` names: AudioFolder (wave) or LogMelShards (logmel)."""
    if not cfg.data.source:
        raise ConfigError("data.source is not set: pass data.source=PATH (audio folder, file list or shard root)")
    if not Path(cfg.data.source).exists():
        raise ConfigError(f"data.source {cfg.data.source} does not exist")
    if cfg.data.kind == "wave":
        from audiorq.data.audio_folder import AudioFolder

        return AudioFolder(
            cfg.data.source, crop_sec=cfg.data.crop_sec, sample_rate=cfg.frontend.sample_rate, seed=cfg.seed,
            cache_dir=cfg.data.cache_dir,
        )
    from audiorq.data.logmel_shards import LogMelShards

    shards = LogMelShards(cfg.data.source, crop_frames=cfg.data.crop_frames, seed=cfg.seed)
    prepared_with = getattr(shards, "frontend_config", None) or {}
    mismatched = {k: (v, getattr(cfg.frontend, k)) for k, v in prepared_with.items()
                  if hasattr(cfg.frontend, k) and v != getattr(cfg.frontend, k)}
    if mismatched:
        raise ConfigError(
            f"log-mel shards in {cfg.data.source} were prepared with a different frontend "
            f"(key: shards vs recipe): {mismatched}"
        )
    return shards


def _collate(batch: list) -> tuple[torch.Tensor | None, int]:
    from audiorq.data.collate import collate_skipping

    return collate_skipping(batch)


def _norm_stats(cfg: PretrainConfig, dataset: Dataset, frontend: nn.Module, device: torch.device,
                ctx: DistContext) -> list[float]:
    """[mean, std] of the dataset's log-mel: from the config, the shards, or computed (rank 0, broadcast)."""
    if cfg.data.norm_stats is not None:
        return [float(v) for v in cfg.data.norm_stats]
    stats = getattr(dataset, "stats", None)
    if stats is not None:
        return [float(stats[0]), float(stats[1])]
    values = torch.zeros(2, dtype=torch.float64)
    if ctx.is_main:
        from audiorq.data.stats import compute_norm_stats

        log.info("computing log-mel normalization statistics on %d items", min(cfg.data.stats_items, len(dataset)))
        mean, std = compute_norm_stats(
            dataset, frontend, n_items=min(cfg.data.stats_items, len(dataset)),
            batch_size=max(2, cfg.batch_size // ctx.world_size), device=device, seed=cfg.seed,
            num_workers=cfg.data.num_workers,
        )
        values = torch.tensor([float(mean), float(std)], dtype=torch.float64)
    if ctx.distributed:
        values = values.to(device)
        dist.broadcast(values, src=0)
    return values.cpu().tolist()


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _config_differences(a, b, prefix + k + ".")
        elif a != b:
            keys.append(prefix + k)
    return keys


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (CPU tensors); raises ValueError naming the file if it is not one."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or "learner" not in ckpt or "encoder" not in ckpt:
        raise ValueError(f"{path}: not an audiorq training checkpoint (no 'learner'/'encoder' entries)")
    return ckpt


def export_encoder(learner: BYOLLearner, path: str | os.PathLike) -> None:
    """Write the online encoder's state_dict alone (BYOL-A names, contiguous CPU tensors), atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in learner.encoder.state_dict().items()}
    atomic_torch_save(state, path)


# ----------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """One pretraining run. `fit()` trains (resuming if configured) and returns the run folder.

    `dataset` replaces the one `cfg.data` describes (any Dataset following the AudioFolder protocol:
    items are tensors or None, `set_epoch(epoch)`, `kind` "wave" or "logmel").
    """

    def __init__(self, cfg: PretrainConfig, dataset: Dataset | None = None):
        cfg.validate()
        self.cfg = cfg
        self.dataset = dataset
        self.run_dir = Path(cfg.out_dir)
        self.ctx = DistContext()
        self.device = torch.device("cpu")
        self.step = 0  # optimizer steps done
        self.epoch = 0  # current epoch (0-based)
        self.batch_in_epoch = 0  # batches of the current epoch consumed (processed or skipped)
        self.seen = 0  # items loaded, readable or not (this rank)
        self.skipped = 0  # unreadable items (this rank)
        self._stop_signal: int | None = None

    # -- setup ----------------------------------------------------------------------------------

    def _resume_source(self) -> Path | None:
        cfg, run = self.cfg, self.run_dir
        existing = [p.name for p in (run / CHECKPOINT, run / CONFIG) if p.exists()]
        if cfg.resume == "no":
            if existing:
                raise RunDirError(
                    f"{run} already holds a run ({', '.join(existing)}); pass resume=auto to continue it, "
                    f"or choose a new out_dir=..."
                )
            return None
        if cfg.resume == "auto":
            return run / CHECKPOINT if (run / CHECKPOINT).exists() else None
        path = Path(cfg.resume)
        if not path.is_file():
            raise RunDirError(f"resume={cfg.resume}: no such checkpoint")
        if existing and path.resolve() != (run / CHECKPOINT).resolve():
            raise RunDirError(f"{run} already holds another run ({', '.join(existing)}); choose a new out_dir=...")
        return path

    def _check_resumable(self, ckpt: dict, source: Path) -> None:
        old = dict(ckpt.get("config", {}))
        new = to_dict(self.cfg)
        differ = [k for k in _config_differences(old, new)
                  if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_CHANGES)]
        if differ:
            raise ConfigError(
                f"cannot resume from {source}: the config differs in {', '.join(differ)}; only "
                f"{', '.join(RESUMABLE_CHANGES)} may change on resume (start a new out_dir= instead)"
            )

    def setup(self) -> None:
        """Build everything `fit` needs (process group, model, data, resumed state); called by `fit`."""
        if getattr(self, "_ready", False):
            return
        self._ready = True
        cfg = self.cfg
        self.ctx, self.device, self._owns_group = init_distributed(cfg.device)
        ctx, device = self.ctx, self.device
        if cfg.batch_size % ctx.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the world size {ctx.world_size}")
        self.local_batch = cfg.batch_size // ctx.world_size
        if self.local_batch < 2:
            raise ConfigError(f"batch_size {cfg.batch_size} leaves fewer than 2 items per rank (BatchNorm needs 2)")

        source = self._resume_source()
        if ctx.distributed:
            dist.barrier()  # every rank has looked at out_dir before rank 0 writes into it
        ckpt = load_checkpoint(source) if source is not None else None
        if ckpt is not None:
            if cfg.data.norm_stats is None:
                cfg.data.norm_stats = list(ckpt["norm_stats"])
            self._check_resumable(ckpt, source)

        self.amp_dtype = resolve_precision(cfg.precision, device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # Same initial weights on every rank (DDP also broadcasts rank 0's), different dropout streams.
        torch.manual_seed(cfg.seed)
        encoder = AudioNTT2020(n_mels=cfg.frontend.n_mels, d=cfg.model.d, dropout=cfg.model.dropout)
        learner = BYOLLearner(encoder, cfg.model.d, cfg.model.hidden_dim, cfg.model.proj_dim)
        if cfg.model.sync_bn and ctx.distributed:
            learner = nn.SyncBatchNorm.convert_sync_batchnorm(learner)
        learner.to(device)
        self.channels_last = cfg.channels_last and device.type == "cuda"
        if self.channels_last:
            learner.to(memory_format=torch.channels_last)
        self.learner = learner
        torch.manual_seed(cfg.seed + 7919 * ctx.rank)

        params = [p for p in learner.parameters() if p.requires_grad]
        o = cfg.optim
        if o.name == "adam":
            self.optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        elif o.name == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None

        self.frontend = LogMelSpectrogram.from_config(cfg.frontend).to(device)
        self.augment = build_augmentation(cfg.augment).to(device)
        self.post_norm = NormalizeBatch()
        self.aug_generator = torch.Generator(device=device)
        self.aug_generator.manual_seed(cfg.seed * 1_000_003 + 104729 * (ctx.rank + 1))

        if self.dataset is None:
            self.dataset = build_dataset(cfg)
        self.kind = getattr(self.dataset, "kind", cfg.data.kind)
        if self.kind not in ("wave", "logmel"):
            raise ConfigError(f"dataset kind must be 'wave' or 'logmel', got {self.kind!r}")
        n = len(self.dataset)
        self.sampler = ResumableSampler(n, self.local_batch, ctx.rank, ctx.world_size, cfg.seed)
        if self.sampler.batches_per_epoch < 1:
            raise ConfigError(
                f"the dataset has {n} items, fewer than one batch of {self.local_batch} per rank x {ctx.world_size} ranks"
            )
        self.steps_per_epoch = self.sampler.batches_per_epoch
        # Schedules span all epochs; max_steps only stops early, so changing it on resume keeps them.
        self.schedule_steps = self.steps_per_epoch * cfg.epochs
        self.total_steps = min(self.schedule_steps, cfg.max_steps) if cfg.max_steps else self.schedule_steps

        self.norm_stats = list(ckpt["norm_stats"]) if ckpt is not None else _norm_stats(
            cfg, self.dataset, self.frontend, device, ctx)
        cfg.data.norm_stats = self.norm_stats  # the saved config then reproduces this run exactly
        self.pre_norm = PrecomputedNorm(*self.norm_stats)

        if ckpt is not None:
            self._restore(ckpt)
            if ctx.is_main:
                log.info("resumed from %s at epoch %d, step %d", source, self.epoch, self.step)

        model: nn.Module = learner
        if ctx.distributed:
            model = nn.parallel.DistributedDataParallel(
                learner, device_ids=[device.index] if device.type == "cuda" else None
            )
        if cfg.compile:
            model = torch.compile(model)
        self.model = model

    def _restore(self, ckpt: dict) -> None:
        self.learner.load_state_dict(ckpt["learner"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.augment.load_state_dict(_to_device(ckpt.get("augment", {}), self.device))
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.batch_in_epoch = int(ckpt["batch_in_epoch"])
        rng = ckpt.get("rng") or []
        if len(rng) == self.ctx.world_size:
            mine = rng[self.ctx.rank]
            torch.set_rng_state(mine["torch"])
            if self.device.type == "cuda" and mine.get("cuda") is not None:
                torch.cuda.set_rng_state(mine["cuda"], self.device)
            self.aug_generator.set_state(mine["augment"].to(self.aug_generator.get_state().device))
            self.seen, self.skipped = int(mine["seen"]), int(mine["skipped"])
        else:
            log.warning(
                "checkpoint was written by %d rank(s), this job has %d: random streams restart from the seed, "
                "so the resumed run is not bitwise identical to an uninterrupted one", len(rng), self.ctx.world_size,
            )
            self.aug_generator.manual_seed(self.cfg.seed * 1_000_003 + self.step * 31 + self.ctx.rank)

    def save_checkpoint(self) -> Path:
        """Write checkpoint.pt and encoder.pth atomically (rank 0); every rank contributes its RNG state."""
        mine = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "augment": self.aug_generator.get_state().cpu(),
            "seen": self.seen,
            "skipped": self.skipped,
        }
        rng = [mine]
        if self.ctx.distributed:
            rng = [None] * self.ctx.world_size
            dist.all_gather_object(rng, mine)
        path = self.run_dir / CHECKPOINT
        if self.ctx.is_main:
            learner = self.learner
            ckpt = {
                "format": CHECKPOINT_FORMAT,
                "encoder": {k: v.detach().cpu().contiguous() for k, v in learner.encoder.state_dict().items()},
                "learner": learner.state_dict(),
                "target": {"encoder": learner.target_encoder.state_dict(),
                           "projector": learner.target_projector.state_dict()},
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "augment": self.augment.state_dict(),
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "step": self.step,
                "rng": rng,
                "norm_stats": list(self.norm_stats),
                "config": to_dict(self.cfg),
                "world_size": self.ctx.world_size,
            }
            atomic_torch_save(ckpt, path)
            export_encoder(learner, self.run_dir / ENCODER)
        return path

    # -- schedules ------------------------------------------------------------------------------

    def learning_rate(self, step: int) -> float:
        """Learning rate at optimizer step `step` (warmup, then constant or cosine to 0)."""
        o = self.cfg.optim
        warmup = int(o.warmup_epochs * self.steps_per_epoch)
        if step < warmup:
            return o.lr * (step + 1) / warmup
        if o.schedule == "cosine":
            return cosine_schedule(step - warmup, max(1, self.schedule_steps - warmup), o.lr, 0.0)
        return o.lr

    def ema_decay(self, step: int) -> float:
        """EMA decay of the target at step `step` (constant, or BYOL's cosine ramp to 1)."""
        m = self.cfg.model
        if m.ema_schedule == "cosine":
            return cosine_schedule(step, self.schedule_steps, m.ema_decay, 1.0)
        return m.ema_decay

    # -- one step -------------------------------------------------------------------------------

    @torch.no_grad()
    def make_views(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms (B, S) or log-mel (B, 1, F, T) -> two normalized augmented views (B, 1, F, T)."""
        x = batch.to(self.device, non_blocking=True)
        lms = self.frontend(x) if self.kind == "wave" else x.float()
        lms = self.pre_norm(lms)
        views = []
        for _ in range(2):
            v = self.post_norm(self.augment(lms, generator=self.aug_generator))
            if self.channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
            views.append(v)
        return views[0], views[1]

    def train_step(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """One optimizer step + EMA update on two views; returns the loss (detached, on device)."""
        lr = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            loss = self.model(view1, view2)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.learner.update_target(self.ema_decay(self.step))
        self.step += 1
        return loss.detach()

    # -- the loop -------------------------------------------------------------------------------

    def loader(self) -> DataLoader:
        """DataLoader over this rank's share of the current epoch (batches of (B, S) or (B, 1, F, T), n_bad)."""
        workers = self.cfg.data.num_workers
        return DataLoader(
            self.dataset, batch_size=self.local_batch, sampler=self.sampler, drop_last=True,
            num_workers=workers, collate_fn=_collate, pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
            # Its own generator: iter(loader) draws a base seed, and drawing it from the global RNG would
            # shift the dropout stream depending on where an epoch (or a resume) starts.
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def _agree(self, ok: bool, stop: bool, too_bad: bool) -> tuple[bool, bool, bool]:
        """Make all ranks take the same branch (skip a batch, stop, fail); one tiny all-reduce."""
        if not self.ctx.distributed:
            return ok, stop, too_bad
        flags = torch.tensor([not ok, stop, too_bad], dtype=torch.int32, device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        not_ok, stop, too_bad = (bool(v) for v in flags.tolist())
        return not not_ok, stop, too_bad

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker inherited this handler: the main loop decides
            return
        if self._stop_signal is not None:  # second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self._stop_signal = signum
        if self.ctx.is_main:
            log.warning("signal %d: saving a checkpoint after this step (press Ctrl-C again to abort)", signum)

    def fit(self) -> Path:
        """Train to `epochs` (or `max_steps`), checkpointing each epoch; returns the run folder."""
        handlers = {}
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        self._owns_group = False
        self._logger: _RunLogger | None = None
        try:
            self.setup()
            if self.ctx.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                save_config(self.cfg, self.run_dir / CONFIG)
                self._logger = _RunLogger(self)
            self._loop()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self._logger is not None:
                self._logger.close()
            if self._owns_group and dist.is_initialized():
                dist.destroy_process_group()
        return self.run_dir

    def _loop(self) -> None:
        cfg = self.cfg
        self.learner.train()
        self.augment.train()
        while self.epoch < cfg.epochs and not (cfg.max_steps and self.step >= cfg.max_steps):
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            batches = iter(self.loader())
            if self._logger is not None:
                self._logger.start_epoch()
            while True:
                t0 = time.perf_counter()
                batch, n_bad, failed = None, 0, False
                try:
                    batch, n_bad = next(batches)
                except StopIteration:
                    break
                except RuntimeError:
                    # A Ctrl-C also reaches the loader workers, which then die; that is a stop, not a bug.
                    if self._stop_signal is None:
                        raise
                    failed = True
                t_data = time.perf_counter() - t0
                if not failed:
                    self.seen += n_bad + (0 if batch is None else batch.shape[0])
                    self.skipped += n_bad
                    if n_bad:
                        log.warning("skipped %d unreadable item(s) in this batch; %d of %d items so far (rank %d)",
                                    n_bad, self.skipped, self.seen, self.ctx.rank)
                too_bad = (self.seen >= cfg.data.bad_check_after
                           and self.skipped > cfg.data.max_bad_fraction * self.seen)
                ok = not failed and batch is not None and batch.shape[0] >= 2
                ok, stop, too_bad = self._agree(ok, self._stop_signal is not None, too_bad)
                if too_bad:
                    raise BadDataError(
                        f"{self.skipped} of {self.seen} items could not be read (more than "
                        f"{cfg.data.max_bad_fraction:.1%}, data.max_bad_fraction); check data.source "
                        f"{cfg.data.source or '(dataset object)'}; the warnings above name the files"
                    )
                if stop:
                    raise TrainingInterrupted(self.save_checkpoint())
                loss = None
                if ok:
                    view1, view2 = self.make_views(batch)
                    loss = self.train_step(view1, view2)
                self.batch_in_epoch += 1
                if self._logger is not None:
                    self._logger.after_step(loss, 0 if batch is None else batch.shape[0] * self.ctx.world_size,
                                            t_data, time.perf_counter() - t0)
                if cfg.checkpoint_every_steps and ok and self.step % cfg.checkpoint_every_steps == 0:
                    self.save_checkpoint()
                if cfg.max_steps and self.step >= cfg.max_steps:
                    self.save_checkpoint()
                    return
            self.epoch += 1
            self.batch_in_epoch = 0
            if self._logger is not None:
                self._logger.end_epoch()
            self.save_checkpoint()


class _RunLogger:
    """Rank-0 progress bar, JSONL metrics and TensorBoard scalars."""

    def __init__(self, trainer: Trainer):
        self.t = trainer
        cfg = trainer.cfg
        self.metrics = open(trainer.run_dir / METRICS, "a")
        self.tb = None
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(trainer.run_dir / "tb"), purge_step=trainer.step or None)
        self.bar = None
        self.start_step = trainer.step
        self.start_time = time.perf_counter()
        self.epoch_loss_sum, self.epoch_n = 0.0, 0
        self._reset_interval()

    def _reset_interval(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.n_loss = 0
        self.samples = 0
        self.data_time = 0.0
        self.step_time = 0.0
        self.n_batches = 0

    def start_epoch(self) -> None:
        t, cfg = self.t, self.t.cfg
        self.epoch_loss_sum, self.epoch_n = 0.0, 0
        if cfg.log.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=t.steps_per_epoch, initial=t.batch_in_epoch, desc=f"epoch {t.epoch + 1}/{cfg.epochs}",
                            unit="step", dynamic_ncols=True, leave=True)

    def after_step(self, loss: torch.Tensor | None, samples: int, data_time: float, step_time: float) -> None:
        if loss is not None:
            self.loss_sum = self.loss_sum + loss
            self.n_loss += 1
        self.samples += samples
        self.data_time += data_time
        self.step_time += step_time
        self.n_batches += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.n_batches >= self.t.cfg.log.every_steps:
            self.flush()

    def flush(self) -> None:
        if self.n_batches == 0:
            return
        t = self.t
        loss = float(self.loss_sum) / self.n_loss if self.n_loss else float("nan")  # the one sync per interval
        if self.n_loss:
            self.epoch_loss_sum += loss * self.n_loss
            self.epoch_n += self.n_loss
        elapsed = time.perf_counter() - self.start_time
        done = t.step - self.start_step
        eta = elapsed / done * (t.total_steps - t.step) if done else float("nan")
        row = {
            "step": t.step, "epoch": t.epoch, "loss": loss, "lr": t.learning_rate(max(t.step - 1, 0)),
            "ema_decay": t.ema_decay(max(t.step - 1, 0)), "samples_per_s": self.samples / self.step_time,
            "data_time_s": self.data_time / self.n_batches, "step_time_s": self.step_time / self.n_batches,
            "data_share": self.data_time / self.step_time, "skipped": t.skipped, "seen": t.seen,
            "eta_s": eta, "time": time.time(),
        }
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()
        if self.tb is not None:
            for key in ("loss", "lr", "ema_decay", "samples_per_s", "data_time_s", "step_time_s", "data_share"):
                self.tb.add_scalar(f"train/{key}", row[key], t.step)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{loss:.4f}", sps=f"{row['samples_per_s']:.0f}",
                data=f"{1e3 * row['data_time_s']:.0f}ms", step=f"{1e3 * row['step_time_s']:.0f}ms",
                eta=_format_seconds(eta),
            )
        self._reset_interval()

    def end_epoch(self) -> None:
        self.flush()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        t = self.t
        if self.epoch_n:
            mean = self.epoch_loss_sum / self.epoch_n
            self.metrics.write(json.dumps({"epoch_end": t.epoch, "step": t.step, "loss": mean, "time": time.time()}) + "\n")
            self.metrics.flush()
            if self.tb is not None:
                self.tb.add_scalar("epoch/loss", mean, t.epoch)
            log.info("epoch %d/%d done: loss %.4f, step %d", t.epoch, t.cfg.epochs, mean, t.step)

    def close(self) -> None:
        self.flush()
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()


def _format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    h, rem = divmod(int(s), 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def pretrain(cfg: PretrainConfig, dataset: Dataset | None = None) -> Path:
    """Run (or resume) BYOL pretraining as `cfg` says; returns the run folder (checkpoint.pt, encoder.pth, ...)."""
    return Trainer(cfg, dataset=dataset).fit()


def load_pretrain_config(recipe: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """A recipe YAML plus ``key=value`` overrides -> validated PretrainConfig (defaults: the paper's recipe)."""
    from audiorq.config import load_config

    return load_config(PretrainConfig, recipe, overrides)


def config_from_checkpoint(ckpt: dict) -> PretrainConfig:
    """The resolved PretrainConfig stored in a checkpoint."""
    return from_dict(PretrainConfig, ckpt["config"])
