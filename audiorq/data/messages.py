"""How the data and probe commands word what they report: warnings as one plain line each."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator


def _one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
              line: str | None = None) -> str:
    # The default format adds "file:line: Category:" and echoes the source line that raised it, which only
    # means something to a developer; a user needs the message.
    return f"warning: {message}\n"


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within the block, warnings print as ``warning: <message>`` on one line (no path, no source echo)."""
    # formatwarning, not showwarning: recorders (warnings.catch_warnings(record=True), pytest.warns) keep working.
    before = warnings.formatwarning
    warnings.formatwarning = _one_line
    try:
        yield
    finally:
        warnings.formatwarning = before
