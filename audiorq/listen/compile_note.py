"""A line before numba's first compilation of the RQ kernel, so ~10 s of silence is explained."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def announce_kernel_compile(announce: Callable[[str], None]) -> None:
    """Say so before numba compiles the RQ kernel (seconds of silence otherwise); quiet when it is cached."""
    from audiorq.augment import quantize

    kernels = quantize._kernels()
    if kernels is None:  # no numba: the torch path, nothing to compile
        return
    dispatchers = [f for f in vars(kernels).values() if hasattr(f, "signatures") and hasattr(f, "py_func")]
    if any(f.signatures for f in dispatchers):  # compiled (or loaded) earlier in this process
        return
    if _kernel_cache_present(Path(kernels.__file__)):
        return
    announce("compiling the RQ kernel (first use, ~10 s; cached afterwards)")


def _kernel_cache_present(source: Path) -> bool:
    """Whether numba's on-disk cache holds the kernel module's index files (NUMBA_CACHE_DIR, else beside it)."""
    pattern = f"{source.stem}.*.nbi"
    cache_dir = os.environ.get("NUMBA_CACHE_DIR")
    if cache_dir:  # numba then uses only this folder (its user-provided locator comes first)
        return any(Path(cache_dir).rglob(pattern))
    return any((source.parent / "__pycache__").glob(pattern))
