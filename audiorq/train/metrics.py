"""Training metrics: the progress bar, metrics.jsonl rows and TensorBoard scalars (rank 0); and their reader.

`RunLogger` takes plain numbers from the loop; it never reads the trainer. The loss stays a device tensor
until an interval is flushed, so logging costs one host sync per `log.every_steps` steps, not one per step.

metrics.jsonl rows: every interval {"step", "epoch", "loss", "lr", "ema_decay", "samples_per_s", "data_time_s",
"step_time_s", "data_share", "skipped", "seen", "eta_s", "time"}; at each epoch end {"epoch_end" (epochs
finished, 1-based), "step", "loss" (epoch mean), "time"}.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import torch

from audiorq.config import LogConfig

log = logging.getLogger(__name__)

TENSORBOARD_KEYS = ("loss", "lr", "ema_decay", "samples_per_s", "data_time_s", "step_time_s", "data_share")


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One batch as the loop saw it; `loss` is None for a batch that was skipped."""

    step: int  # optimizer steps done after this batch
    epoch: int
    loss: torch.Tensor | float | None
    lr: float  # learning rate of the last optimizer step
    ema_decay: float  # EMA decay of the last optimizer step
    samples: int  # items in the batch, all ranks
    data_time: float  # seconds waiting for the batch
    step_time: float  # seconds for the whole iteration, data wait included
    seen: int  # items loaded so far on this rank
    skipped: int  # unreadable items so far on this rank


class RunLogger:
    """Rank-0 progress bar, metrics.jsonl rows and TensorBoard scalars for one training run."""

    def __init__(self, metrics_path: str | os.PathLike, tensorboard_dir: str | os.PathLike, cfg: LogConfig,
                 epochs: int, steps_per_epoch: int, total_steps: int, start_step: int = 0):
        self.cfg, self.epochs, self.steps_per_epoch, self.total_steps = cfg, epochs, steps_per_epoch, total_steps
        self.metrics = open(metrics_path, "a")
        self.tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(tensorboard_dir), purge_step=start_step or None)
        self.bar = None
        self.start_step, self.start_time = start_step, time.perf_counter()
        self.epoch, self.epoch_loss_sum, self.epoch_n = 0, 0.0, 0
        self.last: StepRecord | None = None
        self._reset_interval()

    def _reset_interval(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.n_loss = self.samples = self.n_batches = 0
        self.data_time = self.step_time = 0.0

    def start_epoch(self, epoch: int, batch_in_epoch: int) -> None:
        """A new epoch begins (at `batch_in_epoch` when resuming inside it)."""
        self.epoch, self.epoch_loss_sum, self.epoch_n = epoch, 0.0, 0
        if self.cfg.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.steps_per_epoch, initial=batch_in_epoch, desc=f"epoch {epoch + 1}/{self.epochs}",
                            unit="step", dynamic_ncols=True, leave=True)

    def after_step(self, record: StepRecord) -> None:
        """Account one batch; writes a row every `every_steps` batches."""
        if record.loss is not None:
            self.loss_sum = self.loss_sum + record.loss
            self.n_loss += 1
        self.samples += record.samples
        self.data_time += record.data_time
        self.step_time += record.step_time
        self.n_batches += 1
        self.last = record
        if self.bar is not None:
            self.bar.update(1)
        if self.n_batches >= self.cfg.every_steps:
            self.flush()

    def flush(self) -> None:
        """Write the row of the interval so far (if any batch was seen)."""
        if self.n_batches == 0 or self.last is None:
            return
        r = self.last
        loss = float(self.loss_sum) / self.n_loss if self.n_loss else float("nan")  # the one sync per interval
        if self.n_loss:
            self.epoch_loss_sum += loss * self.n_loss
            self.epoch_n += self.n_loss
        done = r.step - self.start_step
        eta = (time.perf_counter() - self.start_time) / done * (self.total_steps - r.step) if done else float("nan")
        row = {
            "step": r.step, "epoch": r.epoch, "loss": loss, "lr": r.lr, "ema_decay": r.ema_decay,
            "samples_per_s": self.samples / self.step_time, "data_time_s": self.data_time / self.n_batches,
            "step_time_s": self.step_time / self.n_batches, "data_share": self.data_time / self.step_time,
            "skipped": r.skipped, "seen": r.seen, "eta_s": eta, "time": time.time(),
        }
        self._write(row)
        if self.tb is not None:
            for key in TENSORBOARD_KEYS:
                self.tb.add_scalar(f"train/{key}", row[key], r.step)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{loss:.4f}", sps=f"{row['samples_per_s']:.0f}",
                data=f"{1e3 * row['data_time_s']:.0f}ms", step=f"{1e3 * row['step_time_s']:.0f}ms",
                eta=format_seconds(eta),
            )
        self._reset_interval()

    def end_epoch(self, step: int) -> None:
        """The epoch is over at `step`: flush, close its bar, write its mean loss."""
        self.flush()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.epoch_n:
            mean, finished = self.epoch_loss_sum / self.epoch_n, self.epoch + 1  # epochs finished so far
            self._write({"epoch_end": finished, "step": step, "loss": mean, "time": time.time()})
            if self.tb is not None:
                self.tb.add_scalar("epoch/loss", mean, finished)
            log.info("epoch %d/%d done: loss %.4f, step %d", finished, self.epochs, mean, step)

    def close(self) -> None:
        """Flush and close every output."""
        self.flush()
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()

    def _write(self, row: dict) -> None:
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()


def format_seconds(s: float) -> str:
    """Seconds as h:mm:ss ('?' when unknown)."""
    if not math.isfinite(s):
        return "?"
    h, rem = divmod(int(s), 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl that carry a loss (logged intervals and epoch ends), in order; [] if absent."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, filter(str.strip, lines)) if "loss" in r]
