"""The BYOL pretraining loop: batches -> two on-device views -> one optimizer step + EMA update, checkpointed.

Per step (docs/architecture.md): DataLoader workers decode only the cropped span of each clip (or read a
log-mel shard crop); on the training device, in batches, `ViewMaker` computes log-mel, pre-norm, the
augment chain twice and post-norm; `train_step` takes the BYOL loss, steps the optimizer and moves the EMA
target. Ctrl-C / SIGTERM finish the current step, save a checkpoint and raise `TrainingInterrupted`.
At checkpoints rank 0 also redraws the run's loss.png (at most every PLOT_EVERY_S seconds, and always at the
last one); at the end `Trainer.summary` says what happened.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from audiorq.config import PretrainConfig, save_config
from audiorq.data.pretrain import collate_skipping
from audiorq.models.byol import BYOLOutput
from audiorq.runs import save_checkpoint
from audiorq.train.build import TrainingParts, build_training
from audiorq.train.distributed import agree_any, gather_objects
from audiorq.train.metrics import RunLogger, StepRecord, cut_metrics, last_interval
from audiorq.train.monitor import HealthMonitor, OnlineEvaluator, load_monitor_set
from audiorq.train.state import make_checkpoint, rng_state
from audiorq.train.summary import EPOCHS_DONE, INTERRUPTED, MAX_STEPS, NOTHING_TO_DO, RunSummary

log = logging.getLogger(__name__)

# loss.png is redrawn at a checkpoint at most this often (drawing costs ~0.2 s), and always at the session's last.
PLOT_EVERY_S = 30.0


class BadDataError(RuntimeError):
    """Too large a share of the pretraining data could not be read."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint (`.checkpoint`)."""

    def __init__(self, checkpoint: Path | None, summary: RunSummary | None = None):
        self.checkpoint, self.summary = checkpoint, summary
        super().__init__(f"training interrupted; checkpoint saved at {checkpoint}")


def make_loader(parts: TrainingParts) -> DataLoader:
    """DataLoader over this rank's share of the sampler's epoch: (batch (B, S) | (B, 1, F, T) or None, n_bad)."""
    workers = parts.cfg.data.num_workers
    common = dict(
        num_workers=workers, pin_memory=parts.device.type == "cuda", prefetch_factor=4 if workers > 0 else None,
        # Workers live across epochs where set_epoch reaches them (a position in shared memory, as audiorq's
        # datasets keep it); a dataset whose set_epoch only sets an attribute gets fresh workers each epoch.
        persistent_workers=workers > 0 and (not hasattr(parts.dataset, "set_epoch")
                                            or getattr(parts.dataset, "epoch_in_shared_memory", False)),
        # Its own generator: iter(loader) draws a base seed, and drawing it from the global RNG would
        # shift the dropout stream depending on where an epoch (or a resume) starts.
        generator=torch.Generator().manual_seed(parts.cfg.seed),
    )
    if parts.sampler is parts.dataset:  # streamed shards batch themselves, one stream per worker
        return DataLoader(parts.dataset, batch_size=None, **common)
    return DataLoader(parts.dataset, batch_size=parts.local_batch, sampler=parts.sampler, drop_last=True,
                      collate_fn=collate_skipping, **common)


def train_step(parts: TrainingParts, view1: torch.Tensor, view2: torch.Tensor, lr: float, ema_decay: float) -> BYOLOutput:
    """One optimizer step at `lr` on two views (B, 1, F, T), then the EMA update.

    Returns the step's `BYOLOutput`, detached and on device (no host sync): the loss and the online outputs.
    """
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    if parts.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()  # this step's graph outputs may overwrite the last step's
    with torch.autocast(parts.device.type, dtype=parts.amp_dtype or torch.float32, enabled=parts.amp_dtype is not None):
        out = parts.model(view1, view2, outputs=True)
    loss = out.loss
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.scaler is not None:
        parts.scaler.scale(loss).backward()
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        loss.backward()
        parts.optimizer.step()
    parts.learner.update_target(ema_decay)
    if parts.cuda_graphs:  # the logger keeps outputs past the next replay, which reuses their memory
        return BYOLOutput(*(t.detach().clone() for t in out))
    return out._replace(loss=loss.detach())


class Trainer:
    """One pretraining run: `fit()` trains (resuming if configured) and returns the run folder.

    `dataset` replaces the one `cfg.data` describes (see `build_training`). After `fit()`, `parts` holds
    what was trained (learner, optimizer, resolved config, progress) and `summary` what happened (a
    `RunSummary`; also on the `TrainingInterrupted` a Ctrl-C raises).
    """

    def __init__(self, cfg: PretrainConfig, dataset: Dataset | None = None):
        cfg.validate()
        self.cfg, self.dataset = cfg, dataset
        self.run_dir = Path(cfg.out_dir)
        self.parts: TrainingParts | None = None
        self._stop_signal: int | None = None
        self._logger: RunLogger | None = None
        self._health: HealthMonitor | None = None  # rank 0's, when monitor.health is on
        self._pid = os.getpid()
        self.summary: RunSummary | None = None
        self._started, self._start_step = time.perf_counter(), 0  # when and at which step this session's loop began
        self._loss_plot: Path | None = None  # the last loss.png drawn
        self._plot_failed, self._last_plot = False, time.perf_counter()

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
            self._start_step = p.progress.step
            if self._finished(p):
                # Resuming a finished run: say so and touch nothing (no config rewrite, no new event file).
                self.summary = self._summarize(p, NOTHING_TO_DO, None)
                return self.run_dir
            if p.ctx.is_main:
                logger = self._open_run_folder(p)
            self._logger = logger
            self._started = time.perf_counter()
            with _bar_safe_logging(p.ctx.is_main and p.cfg.log.progress):
                reason = self._loop(p, logger)
            self.summary = self._summarize(p, reason, logger.last_loss if logger else None)
        except TrainingInterrupted as e:
            failed = True
            e.summary = self.summary = self._summarize(self.parts, INTERRUPTED, logger.last_loss if logger else None)
            raise
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

    def save_checkpoint(self, last: bool = False) -> Path:
        """Write checkpoint.pt and encoder.pth (rank 0); every rank contributes its RNG state.

        `last`: this session's final checkpoint, after which loss.png is always redrawn.
        """
        p = self.parts
        if self._logger is not None:
            self._logger.flush()  # the rows up to this step are on disk before the checkpoint that covers them
        rng = gather_objects(p.ctx, rng_state(p.device, p.aug_generator, p.progress))
        if p.ctx.is_main:
            health = self._health.state_dict() if self._health is not None else None
            save_checkpoint(p.run, make_checkpoint(p.learner, p.optimizer, p.scaler, p.views.augment, p.progress, rng,
                                                   p.norm_stats, p.cfg, health))
            if last or time.perf_counter() - self._last_plot >= PLOT_EVERY_S:
                self._draw_loss_plot(p)
        return p.run.checkpoint

    def _draw_loss_plot(self, p: TrainingParts) -> None:
        """Redraw loss.png from metrics.jsonl; a figure that fails only warns (once): training goes on."""
        try:
            from audiorq.plots import plot_run

            self._loss_plot = plot_run(p.run.path)
            self._last_plot = time.perf_counter()
        except Exception as e:  # noqa: BLE001 (matplotlib, a font, the disk: none of them may stop a run)
            if not self._plot_failed:
                log.warning("could not draw %s: %s (training goes on)", p.run.loss_plot, e)
            self._plot_failed, self._loss_plot = True, None

    @staticmethod
    def _finished(p: TrainingParts) -> bool:
        """Whether the (resumed) run has nothing left to do: every epoch, or max_steps, done."""
        prog, cfg = p.progress, p.cfg
        return p.resumed_from is not None and (prog.epoch >= cfg.epochs or bool(cfg.max_steps and prog.step >= cfg.max_steps))

    def _summarize(self, p: TrainingParts, reason: str, final_loss: float | None) -> RunSummary:
        """The RunSummary of this session (`final_loss`: rank 0's last logged interval, else metrics.jsonl's)."""
        prog = p.progress
        if final_loss is None and p.ctx.is_main:  # no interval logged in this session (stopped at once)
            last = last_interval(p.run.metrics)
            final_loss = float(last["loss"]) if last else None
        return RunSummary(
            run_dir=self.run_dir, reason=reason, step=prog.step, start_step=self._start_step,
            # An epoch whose batches are all done counts, though max_steps stopped the run before closing it.
            total_steps=p.total_steps, epochs_done=prog.epoch + (prog.batch_in_epoch >= p.steps_per_epoch),
            epochs=p.cfg.epochs, max_steps=p.cfg.max_steps,
            seconds=0.0 if reason == NOTHING_TO_DO else time.perf_counter() - self._started,
            final_loss=final_loss, encoder=p.run.encoder, checkpoint=p.run.checkpoint,
            loss_plot=self._loss_plot if reason != NOTHING_TO_DO else (p.run.loss_plot if p.run.loss_plot.exists() else None),
        )

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker inherited this handler: the main loop decides
            return
        if self._stop_signal is not None:  # second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self._stop_signal = signum
        if self.parts is None or self.parts.ctx.is_main:
            log.warning("signal %d: saving a checkpoint after this step (press Ctrl-C again to abort)", signum)

    def _evaluator(self, p: TrainingParts) -> Callable[[int, int], None] | None:
        """The online kNN / linear evaluation `monitor.task` asks for, as evaluate(step, epoch); None if none."""
        cfg = p.cfg.monitor
        if not cfg.task:
            return None
        t0 = time.perf_counter()
        data = load_monitor_set(cfg, p.cfg.frontend)
        evaluator = OnlineEvaluator(data, cfg, p.device)
        log.info("monitor: %s, %d train + %d test clips, loaded in %.1f s", data.task, data.n_train,
                 len(data.labels) - data.n_train, time.perf_counter() - t0)
        done: set[int] = set()

        def evaluate(step: int, epoch: int) -> None:
            if step in done:  # an epoch end that is also an every_steps multiple: once
                return
            done.add(step)
            start = time.perf_counter()
            values = evaluator.evaluate(p.learner.encoder)
            self._logger.log_monitor(step, epoch, data.task, values, time.perf_counter() - start)

        return evaluate

    def _loop(self, p: TrainingParts, logger: RunLogger | None) -> str:
        """Train until the run is over; returns why it stopped (EPOCHS_DONE or MAX_STEPS)."""
        cfg, prog = p.cfg, p.progress
        health = self._health = HealthMonitor(cfg.monitor) if logger is not None and cfg.monitor.health else None
        if health is not None and p.health_state is not None:
            health.load_state_dict(p.health_state, p.device)
        evaluate = self._evaluator(p) if logger is not None else None
        if evaluate is not None and prog.step == 0:
            evaluate(0, 0)  # where the run starts from: the untrained (or warm-started) encoder
        p.learner.freeze_encoder(prog.step < cfg.model.freeze_encoder_steps)
        p.learner.train()
        p.views.augment.train()
        loader = make_loader(p)
        while prog.epoch < cfg.epochs and not (cfg.max_steps and prog.step >= cfg.max_steps):
            if hasattr(p.dataset, "set_epoch"):
                p.dataset.set_epoch(prog.epoch)
            p.sampler.set_epoch(prog.epoch, prog.batch_in_epoch)
            batches = iter(loader)
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
                    raise TrainingInterrupted(self.save_checkpoint(last=True))
                out = None
                if not not_ok:
                    view1, view2 = p.views(batch.to(p.device, non_blocking=True), generator=p.aug_generator)
                    out = train_step(p, view1, view2, p.learning_rate(prog.step), p.ema_decay(prog.step))
                    prog.step += 1
                    if prog.step == cfg.model.freeze_encoder_steps:
                        p.learner.freeze_encoder(False)
                        if logger is not None:
                            log.info("step %d: the encoder is unfrozen (model.freeze_encoder_steps)", prog.step)
                prog.batch_in_epoch += 1
                measure = None
                if health is not None and out is not None:
                    health.add(out.embeddings)
                    measure = functools.partial(health.measure, out.embeddings, out.projections, prog.step)
                if logger is not None:
                    last = max(prog.step - 1, 0)
                    logger.after_step(StepRecord(
                        step=prog.step, epoch=prog.epoch, loss=None if out is None else out.loss,
                        lr=p.learning_rate(last), ema_decay=p.ema_decay(last),
                        samples=0 if batch is None else batch.shape[0] * p.ctx.world_size, data_time=t_data,
                        step_time=time.perf_counter() - t0, seen=prog.seen, skipped=prog.skipped, health=measure,
                    ))
                    every = cfg.monitor.every_steps
                    if evaluate is not None and out is not None and every and prog.step % every == 0:
                        evaluate(prog.step, prog.epoch)
                if cfg.checkpoint_every_steps and not not_ok and prog.step % cfg.checkpoint_every_steps == 0:
                    self.save_checkpoint()
                if cfg.max_steps and prog.step >= cfg.max_steps:
                    if evaluate is not None:
                        evaluate(prog.step, prog.epoch)
                    self.save_checkpoint(last=True)
                    return MAX_STEPS
            prog.epoch += 1
            prog.batch_in_epoch = 0
            if logger is not None:
                logger.end_epoch(prog.step)
            if evaluate is not None:
                evaluate(prog.step, prog.epoch - 1)
            self.save_checkpoint(last=prog.epoch >= cfg.epochs)
        return MAX_STEPS if cfg.max_steps and prog.step >= cfg.max_steps else EPOCHS_DONE


@contextlib.contextmanager
def _bar_safe_logging(bar: bool) -> Iterator[None]:
    """While a progress bar is shown, console log lines go through tqdm.write, above the bar, not onto it."""
    if not bar:
        yield
        return
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    root = logging.getLogger()
    levels = [h.level for h in root.handlers if _is_console(h)]
    with logging_redirect_tqdm(tqdm_class=tqdm):
        # tqdm's handler copies the console handler's format and filters but not its level: keep that too.
        for handler in root.handlers[-1:]:
            handler.setLevel(levels[0] if levels else logging.WARNING)  # no console handler: as Python's last resort
        yield


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stdout, sys.stderr)


def pretrain(cfg: PretrainConfig, dataset: Dataset | None = None) -> Path:
    """Run (or resume) BYOL pretraining as `cfg` says; returns the run folder (checkpoint.pt, encoder.pth, ...).

    The end-of-run summary is logged (INFO, rank 0); `Trainer(cfg).fit()` then `.summary` gives it as a record.
    """
    trainer = Trainer(cfg, dataset=dataset)
    run_dir = trainer.fit()
    if trainer.summary is not None and (trainer.parts is None or trainer.parts.ctx.is_main):
        log.info("%s", trainer.summary.one_line())
    return run_dir
