"""Everything a pretraining run builds from its config before the first step: model, optimizer, views, data.

`build_training(cfg)` joins the process group, resolves a resume, builds the learner, the optimizer, the
on-device view pipeline (`ViewMaker`) and the data, restores a checkpoint, and returns them as one
`TrainingParts` record, the input of `audiorq.train.loop.train_step` and of the benchmarks.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from audiorq.augment import AugmentationChain, NormalizeBatch, PrecomputedNorm, build_augmentation
from audiorq.config import CUDA_GRAPH_MODES, POST_NORMS, ConfigError, OptimConfig, PretrainConfig, to_dict
from audiorq.data.pretrain import (
    AudioFolder, LogMelShards, ResumableSampler, WebDatasetShards, compute_norm_stats, is_logmel_shards,
    is_webdataset_source,
)
from audiorq.device import autocast_dtype
from audiorq.frontend import LogMelSpectrogram
from audiorq.models.byol import BYOLLearner
from audiorq.models.ntt import AudioNTT2020
from audiorq.model import ModelError, encoder_from_file
from audiorq.runs import Checkpoint, RunFileError, RunFolder, load_checkpoint, read_encoder_file
from audiorq.train import schedules
from audiorq.train.distributed import DistContext, barrier, broadcast_floats, init_distributed
from audiorq.train.state import (
    Progress, RunDirError, adopt_legacy_values, check_resumable, check_same_experiment, restore_checkpoint, resume_source,
)

log = logging.getLogger(__name__)

DATASET_KINDS = ("wave", "logmel")


class ViewMaker(nn.Module):
    """A batch -> two augmented views: log-mel (waves only), pre-norm, the augment chain, post-norm.

    Input: waveforms (B, S) (`kind` "wave") or log-mel (B, 1, F, T) ("logmel") on the module's device;
    output: two normalized views (B, 1, F, T), channels-last when asked (CUDA convolutions).
    post_norm "joint": one mean and std over both views (BYOL-A); "per_view": each view its own.
    """

    def __init__(self, frontend: LogMelSpectrogram, pre_norm: nn.Module, augment: AugmentationChain, kind: str,
                 channels_last: bool = False, post_norm: str = "joint"):
        super().__init__()
        if post_norm not in POST_NORMS:
            raise ValueError(f"post_norm must be one of {POST_NORMS}, got {post_norm!r}")
        self.frontend, self.pre_norm, self.augment = frontend, pre_norm, augment
        self.post_norm = NormalizeBatch()
        self.kind, self.channels_last, self.joint_post_norm = kind, channels_last, post_norm == "joint"

    @torch.no_grad()
    def forward(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) or (B, 1, F, T) -> two views (B, 1, F, T), drawing from `generator`."""
        lms = self.frontend(batch) if self.kind == "wave" else batch.float()
        lms = self.pre_norm(lms)
        views = [self.augment(lms, generator=generator) for _ in range(2)]
        if self.joint_post_norm:
            views = list(self.post_norm(torch.cat(views)).chunk(2))
        else:
            views = [self.post_norm(v) for v in views]
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views[0], views[1]


@dataclasses.dataclass
class TrainingParts:
    """What a run trains with; `cfg` is the run's own resolved copy (normalization statistics filled in)."""

    cfg: PretrainConfig
    run: RunFolder
    ctx: DistContext
    device: torch.device
    owns_process_group: bool
    amp_dtype: torch.dtype | None  # None: fp32, no autocast
    learner: BYOLLearner
    model: nn.Module  # the learner, wrapped in DDP and/or torch.compile when asked
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    views: ViewMaker
    aug_generator: torch.Generator
    dataset: Dataset
    sampler: ResumableSampler | WebDatasetShards  # a streamed dataset draws its own batches: it is its sampler
    local_batch: int
    steps_per_epoch: int
    schedule_steps: int  # schedules span all epochs; max_steps only stops early
    total_steps: int  # where this run stops
    norm_stats: list[float]
    progress: Progress  # zeros, or where the resumed checkpoint left off
    resumed_from: Path | None
    health_state: dict[str, Any] | None  # the checkpoint's HealthMonitor state (None: a fresh run or none saved)

    @property
    def cuda_graphs(self) -> bool:
        """Whether `model` replays its steps as CUDA graphs (compile=true with a CUDA-graph compile_mode, on CUDA)."""
        return self.cfg.compile and self.cfg.compile_mode in CUDA_GRAPH_MODES and self.device.type == "cuda"

    def learning_rate(self, step: int) -> float:
        """Learning rate of optimizer step `step`."""
        o = self.cfg.optim
        return schedules.learning_rate(step, o.lr, self.schedule_steps, int(o.warmup_epochs * self.steps_per_epoch),
                                       o.schedule)

    def ema_decay(self, step: int) -> float:
        """EMA decay of the target after optimizer step `step`."""
        m = self.cfg.model
        return schedules.ema_decay(step, m.ema_decay, self.schedule_steps, m.ema_schedule)


def parameter_groups(module: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Optimizer groups of the trainable parameters: [decayed, not decayed (norm weights and biases)].

    BYOL exempts BatchNorm parameters and biases, i.e. every parameter of at most one dimension; with
    `decay_norm_and_bias` (or no weight decay at all) there is a single group, as in audiorq 0.1.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if decay_norm_and_bias or weight_decay == 0:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def build_optimizer(cfg: OptimConfig, module: nn.Module) -> torch.optim.Optimizer:
    """The optimizer `cfg.name` names over `module`'s trainable parameters, at the base learning rate."""
    groups = parameter_groups(module, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def build_dataset(cfg: PretrainConfig) -> Dataset:
    """The pretraining dataset `cfg.data` names: AudioFolder (wave), LogMelShards (logmel) or WebDatasetShards."""
    d = cfg.data
    if not d.source:
        raise ConfigError("data.source is not set: pass data.source=PATH (audio folder, file list or shard root)")
    if d.kind == "webdataset":
        shards = WebDatasetShards(d.source, crop_sec=d.crop_sec, crop_frames=d.crop_frames,
                                  sample_rate=cfg.frontend.sample_rate, n_mels=cfg.frontend.n_mels, seed=cfg.seed,
                                  shuffle_buffer=d.shuffle_buffer, cache_dir=d.cache_dir)
        if shards.content == "logmel":
            check_prepared_frontend(cfg, shards)
        return shards
    if is_webdataset_source(d.source):
        raise ConfigError(f"data.source {d.source} names WebDataset tar shards: add data.kind=webdataset")
    if not Path(d.source).exists():
        raise ConfigError(f"data.source {d.source} does not exist")
    if d.kind == "wave":
        if is_logmel_shards(d.source):
            raise ConfigError(f"data.source {d.source} is a folder of log-mel shards: add data.kind=logmel")
        return AudioFolder(d.source, crop_sec=d.crop_sec, sample_rate=cfg.frontend.sample_rate, seed=cfg.seed,
                           cache_dir=d.cache_dir)
    shards = LogMelShards(d.source, crop_frames=d.crop_frames, seed=cfg.seed)
    check_prepared_frontend(cfg, shards)
    return shards


def check_prepared_frontend(cfg: PretrainConfig, shards: Dataset) -> None:
    """ConfigError if precomputed log-mel `shards` were made with another frontend than the recipe's."""
    prepared_with = getattr(shards, "frontend_config", None) or {}
    mismatched = {k: (v, getattr(cfg.frontend, k)) for k, v in prepared_with.items()
                  if hasattr(cfg.frontend, k) and v != getattr(cfg.frontend, k)}
    if mismatched:
        raise ConfigError(f"log-mel shards in {cfg.data.source} were prepared with a different frontend "
                          f"(key: shards vs recipe): {mismatched}")


def dataset_norm_stats(cfg: PretrainConfig, dataset: Dataset, frontend: nn.Module, device: torch.device,
                       ctx: DistContext) -> list[float]:
    """[mean, std] of the dataset's log-mel: from the config, the shards, or computed (rank 0, broadcast)."""
    if cfg.data.norm_stats is not None:
        return [float(v) for v in cfg.data.norm_stats]
    stats = getattr(dataset, "stats", None)
    if stats is not None:
        return [float(stats[0]), float(stats[1])]
    values = [0.0, 0.0]
    if ctx.is_main:
        n_items = min(cfg.data.stats_items, len(dataset))
        log.info("computing log-mel normalization statistics on %d items", n_items)
        mean, std = compute_norm_stats(dataset, frontend, n_items=n_items, batch_size=max(2, cfg.batch_size // ctx.world_size),
                                       device=device, seed=cfg.seed, num_workers=cfg.data.num_workers)
        values = [float(mean), float(std)]
    return broadcast_floats(ctx, device, values)


def warm_start(encoder: nn.Module, cfg: PretrainConfig) -> None:
    """Load `cfg.model.init` (any encoder file the probe reads) into `encoder`; ConfigError if it does not fit."""
    try:
        found = read_encoder_file(Path(cfg.model.init).expanduser())
        source, frontend = encoder_from_file(found)
    except (RunFileError, ModelError) as e:
        raise ConfigError(f"model.init: {e}") from None
    if (source.d, source.n_mels) != (cfg.model.d, cfg.frontend.n_mels):
        raise ConfigError(f"model.init {found.path}: the encoder has d={source.d} and n_mels={source.n_mels}, the "
                          f"recipe model.d={cfg.model.d} and frontend.n_mels={cfg.frontend.n_mels}; set them to match")
    differ = {k: (v, getattr(cfg.frontend, k)) for k, v in to_dict(frontend).items() if v != getattr(cfg.frontend, k)}
    if differ:
        log.warning("model.init %s was trained with another frontend (key: its value vs the recipe's): %s",
                    found.path, differ)
    encoder.load_state_dict(source.state_dict())
    log.info("encoder initialized from %s (%s)", found.path, found.kind)


def _adopt_legacy(cfg: PretrainConfig, saved: dict, where: Path, ctx: DistContext) -> None:
    """Resume a run written before some keys existed with the behaviour it was started with."""
    adopted = adopt_legacy_values(cfg, saved)
    if adopted and ctx.is_main:
        log.info("%s predates %s: continuing with the values it was written with", where, ", ".join(adopted))


def build_training(cfg: PretrainConfig, dataset: Dataset | None = None) -> TrainingParts:
    """Build (or restore) everything a run needs; joins the process group under torchrun.

    `dataset` replaces the one `cfg.data` describes (items are tensors or None, `set_epoch(epoch)`,
    `kind` "wave" or "logmel"). `cfg` itself is not changed: the parts hold a resolved copy.
    """
    cfg = copy.deepcopy(cfg)
    cfg.validate()
    run = RunFolder(cfg.out_dir)
    if run.path.exists() and not run.path.is_dir():
        raise RunDirError(f"out_dir {run.path} exists and is not a folder; choose another out_dir=...")
    ctx, device, owns_group = init_distributed(cfg.device)
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the world size {ctx.world_size}")
    local_batch = cfg.batch_size // ctx.world_size
    if local_batch < 2:
        raise ConfigError(f"batch_size {cfg.batch_size} leaves fewer than 2 items per rank (BatchNorm needs 2)")

    source = resume_source(cfg, run)
    barrier(ctx)  # every rank has looked at out_dir before rank 0 writes into it
    ckpt: Checkpoint | None = load_checkpoint(source) if source is not None else None
    if ckpt is not None:
        _adopt_legacy(cfg, ckpt.setdefault("config", {}), source, ctx)
        if cfg.data.norm_stats is None:
            cfg.data.norm_stats = list(ckpt["norm_stats"])
        check_resumable(ckpt, cfg, source)
    elif cfg.resume == "auto" and run.config.exists():
        # Killed before its first checkpoint: the run restarts from step 0, but only as the same experiment.
        saved = run.read_config()
        _adopt_legacy(cfg, saved, run.config, ctx)
        saved_stats = saved["data"].get("norm_stats") if isinstance(saved.get("data"), dict) else None
        if (cfg.data.norm_stats is None and isinstance(saved_stats, list) and len(saved_stats) == 2
                and all(isinstance(v, (int, float)) for v in saved_stats)):
            cfg.data.norm_stats = list(saved_stats)
        check_same_experiment(saved, cfg, f"{run.config}: cannot restart this run (it has no checkpoint yet)")

    amp_dtype = autocast_dtype(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Same initial weights on every rank (DDP also broadcasts rank 0's), different dropout streams.
    torch.manual_seed(cfg.seed)
    encoder = AudioNTT2020(n_mels=cfg.frontend.n_mels, d=cfg.model.d, dropout=cfg.model.dropout)
    if cfg.model.init and ckpt is None:  # a resumed run's weights come from its checkpoint
        warm_start(encoder, cfg)
    # Built after the warm start: the EMA target starts as a copy of the initialized encoder.
    learner = BYOLLearner(encoder, cfg.model.d, cfg.model.hidden_dim, cfg.model.proj_dim, cfg.model.bn_views)
    if cfg.model.sync_bn and ctx.distributed:
        learner = nn.SyncBatchNorm.convert_sync_batchnorm(learner)
    learner.to(device)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        learner.to(memory_format=torch.channels_last)
    torch.manual_seed(cfg.seed + 7919 * ctx.rank)

    optimizer = build_optimizer(cfg.optim, learner)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    frontend = LogMelSpectrogram.from_config(cfg.frontend).to(device)
    augment = build_augmentation(cfg.augment).to(device)
    aug_generator = torch.Generator(device=device)
    aug_generator.manual_seed(cfg.seed * 1_000_003 + 104729 * (ctx.rank + 1))

    dataset = dataset if dataset is not None else build_dataset(cfg)
    kind = getattr(dataset, "kind", cfg.data.kind)
    if kind not in DATASET_KINDS:
        raise ConfigError(f"dataset kind must be one of {DATASET_KINDS}, got {kind!r}")
    if isinstance(dataset, WebDatasetShards):
        dataset.configure(local_batch, ctx.rank, ctx.world_size, n_streams=max(1, cfg.data.num_workers))
        sampler = dataset
    else:
        sampler = ResumableSampler(len(dataset), local_batch, ctx.rank, ctx.world_size, cfg.seed)
    if sampler.batches_per_epoch < 1:
        raise ConfigError(f"the dataset has {len(dataset)} items, fewer than one batch of {local_batch} per rank "
                          f"x {ctx.world_size} ranks")
    steps_per_epoch = sampler.batches_per_epoch
    schedule_steps = steps_per_epoch * cfg.epochs
    total_steps = min(schedule_steps, cfg.max_steps) if cfg.max_steps else schedule_steps

    norm_stats = list(ckpt["norm_stats"]) if ckpt is not None else dataset_norm_stats(cfg, dataset, frontend, device, ctx)
    cfg.data.norm_stats = norm_stats  # the saved config then reproduces this run exactly
    views = ViewMaker(frontend, PrecomputedNorm(*norm_stats), augment, kind, channels_last, cfg.augment.post_norm)

    progress = Progress()
    if ckpt is not None:
        progress = restore_checkpoint(ckpt, learner, optimizer, scaler, augment, aug_generator, ctx, device, cfg.seed)
        if ctx.is_main:
            log.info("resumed from %s at step %d (%d of %d epochs finished)", source, progress.step, progress.epoch,
                     cfg.epochs)

    model: nn.Module = learner
    if ctx.distributed:
        # While the encoder is frozen its parameters get no gradient, which DDP must be told to expect.
        model = nn.parallel.DistributedDataParallel(learner, device_ids=[device.index] if device.type == "cuda" else None,
                                                    find_unused_parameters=cfg.model.freeze_encoder_steps > 0)
    if cfg.compile:
        model = torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    return TrainingParts(
        cfg=cfg, run=run, ctx=ctx, device=device, owns_process_group=owns_group, amp_dtype=amp_dtype,
        learner=learner, model=model, optimizer=optimizer, scaler=scaler, views=views, aug_generator=aug_generator,
        dataset=dataset, sampler=sampler, local_batch=local_batch, steps_per_epoch=steps_per_epoch,
        schedule_steps=schedule_steps, total_steps=total_steps, norm_stats=norm_stats, progress=progress,
        resumed_from=source, health_state=ckpt.get("health") if ckpt is not None else None,
    )
