"""The one job runner of every preparation stage: parallel, bounded, in worker processes started one way.

Resumability lives in the jobs (each writes its outputs atomically and skips what is finished); the runner
only runs them and hands each result back to the calling process as it completes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch

from audiorq.atomic import atomic_write_text
from audiorq.audio import printable_path

if TYPE_CHECKING:
    from tqdm import tqdm

# forkserver: workers fork from a clean single-threaded server, not from a parent that may hold threads
# (torch's pools, tqdm's monitor, DataLoader workers) which fork() does not copy safely. Where the platform
# has no forkserver, spawn is the other start method that never forks a threaded parent.
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
# Imported once in the fork server rather than in every worker: torch and the job functions of every stage.
PRELOAD = ["audiorq.data.prepare"]


# Errors of the output side: every later write would fail the same way, so they stop the run.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class PrepareError(ValueError):
    """A preparation that cannot go on (the output folder cannot be written); names the folder and the reason."""


def is_output_error(e: BaseException) -> bool:
    """Whether `e` is a write failure that stops the whole run (disk full, quota, read-only file system)."""
    return isinstance(e, OSError) and e.errno in OUTPUT_ERRNOS


@contextlib.contextmanager
def output_errors(dst: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError raised by the block (a failed write, in this process or a worker) into PrepareError."""
    try:
        yield
    except OSError as e:
        where = printable_path(e.filename) if e.filename else printable_path(dst)
        raise PrepareError(f"cannot write {where}: {e.strerror or e} (finished outputs are kept; free space "
                           "or fix the folder, then run the same command again)") from None


@dataclasses.dataclass
class PrepareSummary:
    """What a preparation run did. `bad` lists (path, reason) of every file skipped as unusable."""

    src: str
    dst: str
    n_files: int  # audio files found in src
    n_done: int  # files (clips) processed in this run
    n_skipped: int  # files (clips) already finished by an earlier run
    n_bad: int
    bad: list[tuple[str, str]]
    complete: bool  # everything is finished (False after a run stopped by max_new_shards)
    seconds: float
    n_shards: int = 0
    stats: tuple[float, float] | None = None  # (mean, std) of the log-mel, for prepare_logmel

    def __str__(self) -> str:
        lines = [
            f"{self.src} -> {self.dst}: {self.n_files} files, {self.n_done} done now, "
            f"{self.n_skipped} already done, {self.n_bad} bad, {self.seconds:.1f} s"
            + ("" if self.complete else " (unfinished: run again to continue)")
        ]
        if self.n_shards:
            lines.append(f"shards: {self.n_shards}")
        if self.stats is not None:
            lines.append(f"log-mel mean {self.stats[0]:.6f}, std {self.stats[1]:.6f}")
        for path, reason in self.bad[:20]:
            lines.append(f"  bad: {printable_path(path)}: {reason}")
        if len(self.bad) > 20:
            lines.append(f"  ... and {len(self.bad) - 20} more bad files")
        return "\n".join(lines)


def default_workers() -> int:
    """The CPUs this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def check_destination(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """ValueError if the output folder `dst` is the source folder `src` or inside it."""
    src_r, dst_r = Path(src).resolve(), Path(dst).resolve()
    if dst_r == src_r or (src_r.is_dir() and src_r in dst_r.parents):
        raise ValueError(f"the output folder {dst} must not be the source folder or inside the source folder {src}")


def fix_plan(path: Path, plan: dict, names: dict[str, str] | None = None) -> None:
    """Write a preparation's `plan` to `path` on its first run; on a later run ValueError unless it is the same.

    The error names the keys that differ (`names` renames keys for the message, e.g. shards -> files).
    """
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}  # written atomically, so only a hand-edited file gets here: treat it as different
        old = old if isinstance(old, dict) else {}
        if old != plan:
            what = [(names or {}).get(k, k) for k in plan if old.get(k) != plan[k]]
            raise ValueError(f"{path.parent} was started with a different {', '.join(what)}; finish it with the "
                             "same settings or use a new destination folder")
        return
    atomic_write_text(path, json.dumps(plan))


def progress_bar(total: int, initial: int, desc: str, unit: str, enabled: bool) -> tqdm:
    """A tqdm bar (disabled unless `enabled`, and when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    # disable=None: no bar in a redirected log, where its carriage returns and escapes would be junk.
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=None if enabled else True,
                dynamic_ncols=True)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads (None: unchanged), restoring the count after."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init_worker() -> None:
    # One process per core already: torch's own threads would oversubscribe the CPU.
    torch.set_num_threads(1)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` worker processes started by START_METHOD, each with one torch thread."""
    context = multiprocessing.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        context.set_forkserver_preload(PRELOAD)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker)


def run_jobs(
    jobs: Iterable[tuple[Callable, tuple]],
    workers: int,
    on_result: Callable[[Any], None],
    inline_threads: int | None = None,
) -> None:
    """Run fn(*args) for each job, in `process_pool(workers)` if workers > 1, calling on_result in this process
    as each finishes (completion order). At most 2 * workers jobs are in flight, so memory stays bounded.

    With workers <= 1 the jobs run here, in order, with `inline_threads` torch threads (None: unchanged).
    Job functions must be module-level (they are sent to the workers by name).
    """
    if workers <= 1:
        with torch_threads(inline_threads):
            for fn, args in jobs:
                on_result(fn(*args))
        return
    pool = process_pool(workers)
    pending: set[Future] = set()

    def collect(block_until_fewer_than: int) -> None:
        nonlocal pending
        while len(pending) >= block_until_fewer_than and pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                on_result(future.result())

    try:
        for fn, args in jobs:
            pending.add(pool.submit(fn, *args))
            collect(2 * workers)
        collect(1)
    except BaseException:
        # A failed job or Ctrl-C: drop what has not started; finished work is already on disk.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def run_shard_jobs(
    groups: list[list[str]],
    finished: Callable[[int], dict | None],
    job: Callable[[int], tuple[Callable, tuple]],
    items: Callable[[dict], int],
    workers: int,
    progress: bool,
    desc: str,
    max_new: int | None = None,
) -> tuple[dict[int, dict], int, int]:
    """Build every shard of `groups` (clip lists) not `finished` yet, at most `max_new` of them, with a bar.

    `finished(i)` is shard i's result if an earlier run completed it, `job(i)` its (fn, args), `items(result)`
    the clips a result accounts for, and each result names its shard as result["shard"]. Returns (results by
    shard, clips done now, clips of shards finished before).
    """
    results = {i: r for i in range(len(groups)) if (r := finished(i)) is not None}
    todo = [i for i in range(len(groups)) if i not in results]
    if max_new is not None:
        todo = todo[: max(0, int(max_new))]
    n_skipped = sum(len(groups[i]) for i in results)
    n_done = 0
    bar = progress_bar(sum(len(g) for g in groups), n_skipped, desc, "clip", progress)

    def on_result(result: dict) -> None:
        nonlocal n_done
        results[result["shard"]] = result
        n_done += items(result)
        bar.update(items(result))

    try:
        run_jobs((job(i) for i in todo), workers, on_result)
    finally:
        bar.close()
    return results, n_done, n_skipped
