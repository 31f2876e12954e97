"""Training metrics: the progress bar, metrics.jsonl rows and TensorBoard scalars (rank 0); and their reader.

`RunLogger` takes plain numbers from the loop; it never reads the trainer. The loss stays a device tensor
until an interval is flushed, so logging costs one host sync per `log.every_steps` steps, not one per step.
One progress bar covers the whole run (steps done of the run's total, its ETA, the epoch in the description);
with `log.progress=false` each interval is an INFO log line instead.

metrics.jsonl rows: every interval {"step", "epoch", "loss", "lr", "ema_decay", "samples_per_s", "data_time_s",
"step_time_s", "data_share", "skipped", "seen", "eta_s", "time"}, plus, with the monitor's health on,
{"embedding_std", "projection_std", "effective_rank"} of the interval's last log step; at each epoch end
{"epoch_end", "step", "loss" (epoch mean), "time"}; for each online evaluation (audiorq.train.monitor)
{"monitor" (the task), "step", "epoch", "knn_acc", "linear_acc", "monitor_time_s", "time"}.

Epochs are numbered from 1 everywhere a person reads them: the bar, the log lines and metrics.jsonl. An
interval row's "epoch" is the epoch its last step belongs to (1 = the first epoch); "epoch_end" is the
number of the epoch that ended, which is also the number of epochs finished. (Checkpoints keep their own
0-based counter, `Progress.epoch`.) Older files (audiorq 0.1.0, such as tests/fixtures/run_v0_1) numbered
interval rows from 0. The first epoch always has an interval row, so a file with an interval row of epoch 0
is such a file: `read_rows` adds 1 to its interval epochs, and `cut_metrics` rewrites it that way when a run
resumes it (so old and new rows never mix).

Intervals end at every multiple of `log.every_steps`, at each checkpoint and at each epoch end, and a row is
written only for an interval with at least one optimizer step, so interval rows have strictly increasing
steps and a row's number of steps is its step minus the previous row's. On resume `cut_metrics` drops the
rows a checkpoint had not seen, so a resumed run's rows continue the old ones without repeating any.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch

from audiorq.atomic import FileWriteError, atomic_write_text
from audiorq.config import LogConfig
from audiorq.runs import RunFileError

log = logging.getLogger(__name__)

TENSORBOARD_KEYS = ("loss", "lr", "ema_decay", "samples_per_s", "data_time_s", "step_time_s", "data_share")
MONITOR_KEYS = ("knn_acc", "linear_acc")


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One batch as the loop saw it; `loss` is None for a batch that was skipped."""

    step: int  # optimizer steps done after this batch
    epoch: int  # the loop's 0-based epoch counter (rows and the bar show epoch + 1)
    loss: torch.Tensor | float | None
    lr: float  # learning rate of the last optimizer step
    ema_decay: float  # EMA decay of the last optimizer step
    samples: int  # items in the batch, all ranks
    data_time: float  # seconds waiting for the batch
    step_time: float  # seconds for the whole iteration, data wait included
    seen: int  # items loaded so far on this rank
    skipped: int  # unreadable items so far on this rank
    # The monitor's label-free health of this step, measured (a host sync) only if the step ends a row.
    health: Callable[[], dict[str, float]] | None = None


class RunLogger:
    """Rank-0 progress bar, metrics.jsonl rows and TensorBoard scalars for one training run."""

    def __init__(self, metrics_path: str | os.PathLike, tensorboard_dir: str | os.PathLike, cfg: LogConfig,
                 epochs: int, steps_per_epoch: int, total_steps: int, start_step: int = 0,
                 history: list[dict] | None = None):
        """`history`: the rows already in metrics.jsonl (after `cut_metrics`), for the resumed epoch's mean."""
        self.cfg, self.epochs, self.steps_per_epoch, self.total_steps = cfg, epochs, steps_per_epoch, total_steps
        self.metrics_path = Path(metrics_path)
        try:
            self.metrics = open(metrics_path, "a")
        except OSError as e:
            raise FileWriteError(e.errno, e.strerror or str(e), str(metrics_path)) from None
        self.tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir = Path(tensorboard_dir)
            earlier = tb_dir.is_dir() and any(tb_dir.iterdir())
            # Events of steps after the checkpoint (start_step) are hidden; the checkpoint's own step is kept.
            self.tb = SummaryWriter(str(tb_dir), purge_step=start_step + 1 if earlier else None)
        self.bar = None
        self.start_step, self.start_time = start_step, time.perf_counter()
        self.history = list(history or [])
        self.epoch, self.epoch_loss_sum, self.epoch_n = 0, 0.0, 0
        self.last: StepRecord | None = None
        self.last_loss: float | None = None  # the latest interval's mean loss
        self.monitor_postfix: dict[str, str] = {}  # the latest online evaluation, shown on the bar
        self._reset_interval()

    def _reset_interval(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.n_loss = self.samples = self.n_batches = 0
        self.data_time = self.step_time = 0.0

    def start_epoch(self, epoch: int, batch_in_epoch: int) -> None:
        """Epoch `epoch` (0-based counter) begins, at `batch_in_epoch` when resuming inside it."""
        self.epoch, self.epoch_loss_sum, self.epoch_n = epoch, 0.0, 0
        if batch_in_epoch and self.history:
            # Resumed inside the epoch: its mean loss also covers the steps logged before the checkpoint,
            # summed in the same order as an uninterrupted run sums them.
            self.epoch_loss_sum, self.epoch_n = epoch_loss_so_far(self.history, epoch + 1)
        self.history = []
        if not self.cfg.progress:
            return
        desc = f"epoch {epoch + 1}/{self.epochs}"
        if self.bar is None:
            from tqdm.auto import tqdm

            # The run's bar: its total and ETA are the run's (max_steps included), not the epoch's.
            self.bar = tqdm(total=self.total_steps, initial=self.start_step, desc=desc, unit="step",
                            dynamic_ncols=True, leave=True)
        else:
            self.bar.set_description(desc, refresh=False)

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
        if self.bar is not None and record.loss is not None:
            self.bar.update(1)  # the bar counts optimizer steps, as total_steps does
        # Intervals end at multiples of every_steps (not every N batches), so a resumed run keeps the grid.
        if record.loss is not None and record.step % self.cfg.every_steps == 0:
            self.flush()

    def flush(self) -> None:
        """Write the row of the interval so far, if it made an optimizer step (skipped batches alone make none)."""
        if self.n_loss == 0 or self.last is None:
            self._reset_interval()
            return
        r = self.last
        loss = float(self.loss_sum) / self.n_loss  # the one sync per interval
        health = r.health() if r.health is not None else None
        self.epoch_loss_sum += loss * self.n_loss
        self.epoch_n += self.n_loss
        self.last_loss = loss
        done = r.step - self.start_step
        eta = (time.perf_counter() - self.start_time) / done * (self.total_steps - r.step) if done else float("nan")
        row = {
            "step": r.step, "epoch": r.epoch + 1, "loss": loss, "lr": r.lr, "ema_decay": r.ema_decay,
            "samples_per_s": self.samples / self.step_time, "data_time_s": self.data_time / self.n_batches,
            "step_time_s": self.step_time / self.n_batches, "data_share": self.data_time / self.step_time,
            "skipped": r.skipped, "seen": r.seen, "eta_s": eta, "time": time.time(),
        }
        row.update(health or {})
        self._write(row)
        if self.tb is not None:
            for key in TENSORBOARD_KEYS:
                self.tb.add_scalar(f"train/{key}", row[key], r.step)
            for key, value in (health or {}).items():
                self.tb.add_scalar(f"health/{key}", value, r.step)
        if self.bar is not None:
            rank = {"rank": f"{health['effective_rank']:.1f}"} if health else {}
            self.bar.set_postfix(
                loss=f"{loss:.4f}", sps=f"{row['samples_per_s']:.0f}",
                data=f"{1e3 * row['data_time_s']:.0f}ms", step=f"{1e3 * row['step_time_s']:.0f}ms",
                **rank, **self.monitor_postfix,
            )
        elif not self.cfg.progress:
            # No bar (batch jobs, redirected logs): the same numbers as a log line.
            log.info("step %d/%d (epoch %d/%d): loss %.4f, %.1f samples/s, ETA %s", r.step, self.total_steps,
                     r.epoch + 1, self.epochs, loss, row["samples_per_s"], format_seconds(eta))
        self._reset_interval()

    def log_monitor(self, step: int, epoch: int, task: str, values: dict[str, float], seconds: float) -> None:
        """Write one online evaluation (`epoch`: the loop's 0-based counter) as a row, to TensorBoard and the bar."""
        self._write({"monitor": task, "step": step, "epoch": epoch + 1, **values, "monitor_time_s": seconds,
                     "time": time.time()})
        if self.tb is not None:
            for key in MONITOR_KEYS:
                self.tb.add_scalar(f"monitor/{key}", values[key], step)
        self.monitor_postfix = {"knn": f"{values['knn_acc']:.1f}", "lin": f"{values['linear_acc']:.1f}"}
        if self.bar is None and not self.cfg.progress:
            log.info("step %d: %s kNN %.1f %%, linear %.1f %% (%.1f s)", step, task, values["knn_acc"],
                     values["linear_acc"], seconds)

    def end_epoch(self, step: int) -> None:
        """The epoch is over at `step`: flush and write its mean loss."""
        self.flush()
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
        try:
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()
        except OSError as e:
            raise FileWriteError(e.errno, e.strerror or str(e), str(self.metrics_path)) from None


def format_seconds(s: float) -> str:
    """Seconds as h:mm:ss ('?' when unknown)."""
    if not math.isfinite(s):
        return "?"
    h, rem = divmod(int(s), 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def epoch_loss_so_far(rows: list[dict], epoch: int) -> tuple[float, int]:
    """(sum of loss x steps, steps) over the interval rows of epoch number `epoch` (1-based), as RunLogger sums them."""
    total, n, previous = 0.0, 0, 0
    for r in rows:
        if "loss" not in r:  # an online-evaluation row
            continue
        if "epoch_end" in r:
            previous = r["step"]
            continue
        steps = r["step"] - previous
        previous = r["step"]
        if r.get("epoch") == epoch and steps > 0:
            total += r["loss"] * steps
            n += steps
    return total, n


def _number_epochs_from_one(rows: list[dict]) -> bool:
    """Renumber, in place, the interval epochs of a file written with 0-based ones (audiorq 0.1); whether it was."""
    interval = [r for r in rows if "epoch_end" not in r and "loss" in r and isinstance(r.get("epoch"), int)]
    if not any(r["epoch"] == 0 for r in interval):
        return False
    for r in interval:
        r["epoch"] += 1
    return True


def _parse_rows(text: str) -> tuple[list[dict], int]:
    """The JSON rows of a metrics.jsonl's text and how many lines could not be parsed (torn by a kill mid-write)."""
    rows, torn = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            torn += 1
    return rows, torn


def cut_metrics(path: str | os.PathLike, step: int, epochs_done: int) -> list[dict]:
    """Drop the rows a checkpoint at `step` (`epochs_done` epochs finished) had not seen; returns the rest.

    Interval rows after `step`, epoch-end rows beyond `epochs_done` and torn lines go; the file is rewritten
    atomically, and only if something went. Step 0 with no epoch done empties it (a restart).
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RunFileError(f"{path}: cannot read the run's metrics ({e})") from None
    rows, torn = _parse_rows(text)
    renumbered = _number_epochs_from_one(rows)  # so that the rows appended now continue in one numbering
    kept = [r for r in rows if _before(r, step, epochs_done)]
    if torn:
        log.warning("%s: dropped %d torn line(s) (a write cut short by a crash)", path, torn)
    if len(kept) != len(rows) or torn or renumbered or (text and not text.endswith("\n")):
        if len(kept) != len(rows):
            log.info("%s: dropped %d row(s) logged after the checkpoint (step %d); they are redone",
                     path, len(rows) - len(kept), step)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _before(row: dict, step: int, epochs_done: int) -> bool:
    """Whether a row was written before the checkpoint at `step` with `epochs_done` epochs finished."""
    if not isinstance(row.get("step"), (int, float)):
        return False
    if "epoch_end" in row:
        return isinstance(row["epoch_end"], int) and row["epoch_end"] <= epochs_done and row["step"] <= step
    if "monitor" in row and step == 0:
        return False  # a restart evaluates its untrained encoder again
    return row["step"] <= step


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Every row of a metrics.jsonl, in order, epochs numbered from 1 (old files too); [] if absent.

    Lines torn by a crash mid-write are skipped.
    """
    path = Path(path)
    rows = _parse_rows(path.read_text())[0] if path.exists() else []
    _number_epochs_from_one(rows)
    return rows


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl that carry a loss (logged intervals and epoch ends), in order; [] if absent."""
    return [r for r in read_rows(path) if "loss" in r]


def read_monitor(path: str | os.PathLike) -> list[dict]:
    """The online-evaluation rows of a metrics.jsonl (knn_acc, linear_acc, ...), in order; [] if absent."""
    return [r for r in read_rows(path) if "monitor" in r and "knn_acc" in r]


def last_interval(path: str | os.PathLike) -> dict | None:
    """The last logged interval row of a metrics.jsonl (not an epoch end); None if there is none."""
    rows = [r for r in read_metrics(path) if "epoch_end" not in r]
    return rows[-1] if rows else None
