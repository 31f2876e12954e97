"""The BYOL pretraining loop: batches -> two on-device views -> one optimizer step + EMA update, checkpointed.

Per step (docs/architecture.md): DataLoader workers decode only the cropped span of each clip (or read a
log-mel shard crop); on the training device, in batches, `ViewMaker` computes log-mel, pre-norm, the
augment chain twice and post-norm; `train_step` takes the BYOL loss, steps the optimizer and moves the EMA
target. Ctrl-C / SIGTERM finish the current step, save a checkpoint and raise `TrainingInterrupted`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from audiorq.config import PretrainConfig, save_config
from audiorq.data.pretrain import collate_skipping
from audiorq.runs import save_checkpoint
from audiorq.train.build import TrainingParts, build_training
from audiorq.train.distributed import agree_any, gather_objects
from audiorq.train.metrics import RunLogger, StepRecord, cut_metrics
from audiorq.train.state import make_checkpoint, rng_state

log = logging.getLogger(__name__)


class BadDataError(RuntimeError):
    """Too large a share of the pretraining data could not be read."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint (`.checkpoint`)."""

    def __init__(self, checkpoint: Path | None):
        self.checkpoint = checkpoint
        super().__init__(f"training interrupted; checkpoint saved at {checkpoint}")


def make_loader(parts: TrainingParts) -> DataLoader:
    """DataLoader over this rank's share of the sampler's epoch: (batch (B, S) | (B, 1, F, T) or None, n_bad)."""
    workers = parts.cfg.data.num_workers
    return DataLoader(
        parts.dataset, batch_size=parts.local_batch, sampler=parts.sampler, drop_last=True,
        num_workers=workers, collate_fn=collate_skipping, pin_memory=parts.device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        # Its own generator: iter(loader) draws a base seed, and drawing it from the global RNG would
        # shift the dropout stream depending on where an epoch (or a resume) starts.
        generator=torch.Generator().manual_seed(parts.cfg.seed),
    )


def train_step(parts: TrainingParts, view1: torch.Tensor, view2: torch.Tensor, lr: float, ema_decay: float) -> torch.Tensor:
    """One optimizer step at `lr` on two views (B, 1, F, T), then the EMA update; the loss, detached, on device."""
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(parts.device.type, dtype=parts.amp_dtype or torch.float32, enabled=parts.amp_dtype is not None):
        loss = parts.model(view1, view2)
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.scaler is not None:
        parts.scaler.scale(loss).backward()
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        loss.backward()
        parts.optimizer.step()
    parts.learner.update_target(ema_decay)
    return loss.detach()


class Trainer:
    """One pretraining run: `fit()` trains (resuming if configured) and returns the run folder.

    `dataset` replaces the one `cfg.data` describes (see `build_training`). After `fit()`, `parts` holds
    what was trained (learner, optimizer, resolved config, progress).
    """

    def __init__(self, cfg: PretrainConfig, dataset: Dataset | None = None):
        cfg.validate()
        self.cfg, self.dataset = cfg, dataset
        self.run_dir = Path(cfg.out_dir)
        self.parts: TrainingParts | None = None
        self._stop_signal: int | None = None
        self._logger: RunLogger | None = None
        self._pid = os.getpid()

    def fit(self) -> Path:
        """Train to `epochs` (or `max_steps`), checkpointing each epoch; returns the run folder."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        logger = None
        failed = False
        try:
            self.parts = p = build_training(self.cfg, self.dataset)
            if p.ctx.is_main:
                logger = self._open_run_folder(p)
            self._logger = logger
            self._loop(p, logger)
        except BaseException:
            failed = True
            raise
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if logger is not None:
                try:
                    logger.close()
                except OSError:
                    if not failed:  # a disk that filled up must not hide the error that stopped the run
                        raise
            if self.parts is not None and self.parts.owns_process_group and dist.is_initialized():
                dist.destroy_process_group()
        return self.run_dir

    def _open_run_folder(self, p: TrainingParts) -> RunLogger:
        """Rank 0, before the first step: clear crash leftovers, cut metrics back to the checkpoint, save config."""
        p.run.path.mkdir(parents=True, exist_ok=True)
        for tmp in p.run.remove_stale_temporaries():
            log.info("removed %s, left by an interrupted write", tmp)
        # Rows after the checkpoint's step are redone now; without a checkpoint (restart) that is every row.
        history = cut_metrics(p.run.metrics, p.progress.step, p.progress.epoch)
        save_config(p.cfg, p.run.config)
        return RunLogger(p.run.metrics, p.run.tensorboard, p.cfg.log, p.cfg.epochs, p.steps_per_epoch,
                         p.total_steps, start_step=p.progress.step, history=history)

    def save_checkpoint(self) -> Path:
        """Write checkpoint.pt and encoder.pth (rank 0); every rank contributes its RNG state."""
        p = self.parts
        if self._logger is not None:
            self._logger.flush()  # the rows up to this step are on disk before the checkpoint that covers them
        rng = gather_objects(p.ctx, rng_state(p.device, p.aug_generator, p.progress))
        if p.ctx.is_main:
            save_checkpoint(p.run, make_checkpoint(p.learner, p.optimizer, p.scaler, p.views.augment, p.progress, rng,
                                                   p.norm_stats, p.cfg))
        return p.run.checkpoint

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker inherited this handler: the main loop decides
            return
        if self._stop_signal is not None:  # second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self._stop_signal = signum
        if self.parts is None or self.parts.ctx.is_main:
            log.warning("signal %d: saving a checkpoint after this step (press Ctrl-C again to abort)", signum)

    def _loop(self, p: TrainingParts, logger: RunLogger | None) -> None:
        cfg, prog = p.cfg, p.progress
        p.learner.train()
        p.views.augment.train()
        while prog.epoch < cfg.epochs and not (cfg.max_steps and prog.step >= cfg.max_steps):
            if hasattr(p.dataset, "set_epoch"):
                p.dataset.set_epoch(prog.epoch)
            p.sampler.set_epoch(prog.epoch, prog.batch_in_epoch)
            batches = iter(make_loader(p))
            if logger is not None:
                logger.start_epoch(prog.epoch, prog.batch_in_epoch)
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
                    prog.seen += n_bad + (0 if batch is None else batch.shape[0])
                    prog.skipped += n_bad
                    if n_bad:
                        log.warning("skipped %d unreadable item(s) in this batch; %d of %d items so far (rank %d)",
                                    n_bad, prog.skipped, prog.seen, p.ctx.rank)
                too_bad = prog.seen >= cfg.data.bad_check_after and prog.skipped > cfg.data.max_bad_fraction * prog.seen
                ok = not failed and batch is not None and batch.shape[0] >= 2
                not_ok, stop, too_bad = agree_any(p.ctx, p.device, not ok, self._stop_signal is not None, too_bad)
                if too_bad:
                    raise BadDataError(
                        f"{prog.skipped} of {prog.seen} items could not be read (more than "
                        f"{cfg.data.max_bad_fraction:.1%}, data.max_bad_fraction); check data.source "
                        f"{cfg.data.source or '(dataset object)'}; the warnings above name the files"
                    )
                if stop:
                    raise TrainingInterrupted(self.save_checkpoint())
                loss = None
                if not not_ok:
                    view1, view2 = p.views(batch.to(p.device, non_blocking=True), generator=p.aug_generator)
                    loss = train_step(p, view1, view2, p.learning_rate(prog.step), p.ema_decay(prog.step))
                    prog.step += 1
                prog.batch_in_epoch += 1
                if logger is not None:
                    last = max(prog.step - 1, 0)
                    logger.after_step(StepRecord(
                        step=prog.step, epoch=prog.epoch, loss=loss, lr=p.learning_rate(last), ema_decay=p.ema_decay(last),
                        samples=0 if batch is None else batch.shape[0] * p.ctx.world_size, data_time=t_data,
                        step_time=time.perf_counter() - t0, seen=prog.seen, skipped=prog.skipped,
                    ))
                if cfg.checkpoint_every_steps and not not_ok and prog.step % cfg.checkpoint_every_steps == 0:
                    self.save_checkpoint()
                if cfg.max_steps and prog.step >= cfg.max_steps:
                    self.save_checkpoint()
                    return
            prog.epoch += 1
            prog.batch_in_epoch = 0
            if logger is not None:
                logger.end_epoch(prog.step)
            self.save_checkpoint()


def pretrain(cfg: PretrainConfig, dataset: Dataset | None = None) -> Path:
    """Run (or resume) BYOL pretraining as `cfg` says; returns the run folder (checkpoint.pt, encoder.pth, ...)."""
    return Trainer(cfg, dataset=dataset).fit()
