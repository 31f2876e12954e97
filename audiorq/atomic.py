"""Atomic file writes (temporary file in the same folder + rename): results are never half-written."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(fileobj)`` on a temporary file next to `path`, fsync, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to `path` atomically (a crash mid-write leaves the previous file intact)."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def append_csv_rows(path: str | os.PathLike, rows: Iterable[dict[str, Any]], fieldnames: list[str]) -> None:
    """Append rows to a CSV atomically, keeping earlier rows; a new header is written on first use.

    If the existing file has other columns, the union is kept (old rows get blanks), so results from
    older versions are never dropped.
    """
    path = Path(path)
    old_rows: list[dict[str, Any]] = []
    names = list(fieldnames)
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old_names = reader.fieldnames or []
            old_rows = list(reader)
        names = list(old_names) + [n for n in fieldnames if n not in old_names]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, extrasaction="raise")
    writer.writeheader()
    writer.writerows(old_rows)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
