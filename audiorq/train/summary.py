"""What a pretraining run did, for the person who started it: `RunSummary`, made by the Trainer at the end."""

from __future__ import annotations

import dataclasses
import math
import shlex
from pathlib import Path

from audiorq.train.metrics import format_seconds

# Why a run stopped (RunSummary.reason).
EPOCHS_DONE, MAX_STEPS, INTERRUPTED, NOTHING_TO_DO = "epochs", "max_steps", "interrupted", "nothing_to_do"


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """Steps, time, final loss, why the run stopped, where its files are and what to run next."""

    run_dir: Path
    reason: str  # EPOCHS_DONE | MAX_STEPS | INTERRUPTED | NOTHING_TO_DO
    step: int  # optimizer steps done in total
    start_step: int  # where this session started (the checkpoint's step on resume)
    total_steps: int  # where the run stops (epochs x steps per epoch, or max_steps)
    epochs_done: int
    epochs: int
    max_steps: int
    seconds: float  # wall time of this session's training loop
    final_loss: float | None  # mean loss of the last logged interval (None: nothing logged)
    encoder: Path
    checkpoint: Path
    loss_plot: Path | None  # None when it could not be drawn

    @property
    def stopped(self) -> str:
        """Why the run stopped, in words."""
        if self.reason == EPOCHS_DONE:
            return f"all {self.epochs} epochs done"
        if self.reason == MAX_STEPS:
            return f"max_steps={self.max_steps} reached"
        if self.reason == INTERRUPTED:
            return "interrupted (Ctrl-C / SIGTERM); the checkpoint is saved"
        return "nothing to do: the run had already finished"

    def one_line(self) -> str:
        """The summary as one log line."""
        loss = f"{self.final_loss:.4f}" if _finite(self.final_loss) else "n/a"
        return (f"pretraining stopped ({self.stopped}): step {self.step}/{self.total_steps}, "
                f"{self.step - self.start_step} step(s) in {format_seconds(self.seconds)}, final loss {loss}; "
                f"encoder {self.encoder}")

    def text(self) -> str:
        """The end-of-run report the CLI prints: what happened, where the files are, the next commands."""
        run = shlex.quote(str(self.run_dir))
        done = self.step - self.start_step
        rate = f", {self.seconds / done:.2f} s/step" if done and self.seconds > 0 else ""
        lines = [
            f"nothing to do: {self.run_dir} had already finished ({self.step} of {self.total_steps} steps)"
            if self.reason == NOTHING_TO_DO else f"pretraining stopped: {self.stopped}",
            f"  steps      {self.step}/{self.total_steps} (this session: {done}, from step {self.start_step}), "
            f"epochs finished {self.epochs_done}/{self.epochs}",
            f"  time       {format_seconds(self.seconds)}{rate}",
            f"  final loss {self.final_loss:.4f} (last logged interval)" if _finite(self.final_loss)
            else "  final loss n/a (no step logged)",
            f"  run folder {self.run_dir}",
            f"  encoder    {self.encoder}",
        ]
        if self.loss_plot is not None:
            lines.append(f"  loss curve {self.loss_plot}")
        lines.append("next:")
        if self.reason == INTERRUPTED:
            lines.append("  continue:  the same command plus resume=auto")
        elif self.reason == NOTHING_TO_DO:
            lines.append("  train on:  the same command with a larger max_steps= or epochs= (resume=auto)")
        lines += [
            f"  probe it:  audiorq probe {run} --task esc10 --data DIR   (DIR: the task's data folder)",
            f"  export it: audiorq export {run} model.safetensors",
        ]
        return "\n".join(lines)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
