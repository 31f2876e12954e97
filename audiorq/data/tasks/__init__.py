"""Downstream tasks: one module per dataset, each returning a `Task` record."""

from audiorq.data.tasks.record import Split, Task

__all__ = ["Split", "Task"]
