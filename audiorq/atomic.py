"""Atomic file writes (temporary file in the same folder + fsync + rename) and locked CSV appends.

A reader sees the old file or the new one, never half of one. Temporaries are named `.NAME.XXXXXXXX.tmp`
(`temporary_pattern`), so a folder's owner can recognise and remove the ones a killed process left behind.
Every written file gets the permissions a new file from a plain `open()` would (0o666 minus the umask). A
write that fails for lack of space (or any other OS error) raises `FileWriteError` naming the file, and the
previous version stays as it was. `file_lock` serialises writers of one file across processes (flock).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no flock; appends there are atomic but not serialised between processes
    fcntl = None  # type: ignore[assignment]

TEMP_SUFFIX = ".tmp"
LOCK_SUFFIX = ".lock"
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # what tempfile.mkstemp used before, so old names match
_NAME_LEN = 8


class FileWriteError(OSError):
    """A file could not be written (disk full, permissions, ...); the previous version is unchanged."""

    def __str__(self) -> str:
        return f"{self.filename}: could not write it ({self.strerror}); the previous version is unchanged"


def temporary_pattern(name: str) -> re.Pattern[str]:
    """The names `atomic_write` gives the temporaries of a file called `name` (same folder)."""
    return re.compile(rf"\.{re.escape(name)}\.[{_NAME_CHARS}]{{{_NAME_LEN}}}{re.escape(TEMP_SUFFIX)}")


def remove_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the leftover temporaries of the files `names` in `folder` (never anything else); returns them."""
    folder = Path(folder)
    patterns = [temporary_pattern(n) for n in names]
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if any(p.fullmatch(entry.name) for p in patterns) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, exclusive temporary next to `path`; the kernel applies the umask (mkstemp would force 0o600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        token = "".join(secrets.choice(_NAME_CHARS) for _ in range(_NAME_LEN))
        tmp = path.parent / f".{path.name}.{token}{TEMP_SUFFIX}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (torch.save wraps a failed write in a RuntimeError), if there is one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(fileobj)`` on a temporary file next to `path`, fsync, then rename it over `path`.

    FileWriteError (an OSError) naming `path` when the disk is full or the folder not writable.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
    except OSError as e:
        raise FileWriteError(e.errno, e.strerror or str(e), str(path)) from e
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # Only the write's own failures: an OSError, or torch.save's RuntimeError wrapping one.
        cause = e if isinstance(e, OSError) else _os_error_in(e) if isinstance(e, RuntimeError) else None
        if cause is not None and not isinstance(e, FileWriteError):
            raise FileWriteError(cause.errno, cause.strerror or str(cause), str(path)) from e
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to `path` atomically (a crash mid-write leaves the previous file intact)."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


_held = threading.local()  # per thread: lock path -> depth, so a holder may re-enter


def _acquire(lock: Path) -> int:
    """Open and flock `lock`; retries when a releaser unlinked it meanwhile (then our fd is a dead inode)."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise FileWriteError(e.errno, e.strerror or str(e), str(lock)) from e
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive inter-process lock of `path` (flock on `.NAME.lock` beside it); re-entrant per thread.

    The lock file exists only while held (a process killed holding it leaves it behind, harmlessly: the
    kernel drops the flock with the process).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileWriteError(e.errno, e.strerror or str(e), str(path)) from e
    lock = path.parent.resolve() / f".{path.name}{LOCK_SUFFIX}"
    key = str(lock)
    held = getattr(_held, "locks", None)
    if held is None:
        held = _held.locks = {}
    if key in held:
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    fd = _acquire(lock)
    held[key] = 1
    try:
        yield
    finally:
        del held[key]
        try:
            # Unlinked while still held: a waiter on this inode then sees it gone and opens a fresh one.
            with contextlib.suppress(OSError):
                lock.unlink()
        finally:
            os.close(fd)  # closing releases the flock


def append_csv_rows(path: str | os.PathLike, rows: Iterable[dict[str, Any]], fieldnames: list[str]) -> None:
    """Append rows to a CSV atomically, keeping earlier rows; a new header is written on first use.

    Concurrent appenders (processes or threads) are serialised by `file_lock(path)`, so none loses
    another's rows. If the existing file has other columns, the union is kept (old rows get blanks), so
    results from older versions are never dropped.
    """
    path = Path(path)
    rows = list(rows)
    with file_lock(path):
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
