"""Spectrogram figures for `listen`: original and augmented log-mel views side by side, as a PNG.

Drawn on matplotlib's Agg canvas (no pyplot state, no GUI). matplotlib and librosa are imported inside
the functions that use them, so importing `audiorq.listen` (as the CLI does) stays fast.
"""

from __future__ import annotations

import io
import math
import os
from typing import TYPE_CHECKING

import torch

from audiorq.atomic import atomic_write

if TYPE_CHECKING:
    from audiorq.frontend import LogMelSpectrogram

__all__ = ["FIGURE_DPI", "draw_views", "figure_size", "frequency_ticks", "mel_center_frequencies"]

FIGURE_DPI = 100
TICK_HZ = (100, 250, 500, 1000, 2000, 4000, 7000)  # labelled on the frequency axis when inside the band


def mel_center_frequencies(frontend: LogMelSpectrogram) -> list[float]:
    """Centre frequency in Hz of each mel bin (the peak of its filter): n_mels floats, ascending."""
    import librosa

    return librosa.mel_frequencies(
        frontend.n_mels + 2, fmin=frontend.f_min, fmax=frontend.f_max, htk=frontend.mel_scale == "htk"
    )[1:-1].tolist()


def frequency_ticks(centres: list[float]) -> list[tuple[int, str]]:
    """(mel bin, label) for the round frequencies of TICK_HZ inside the band spanned by `centres` (Hz)."""
    ticks = []
    for hz in TICK_HZ:
        if centres[0] <= hz <= centres[-1]:
            b = min(range(len(centres)), key=lambda i: abs(centres[i] - hz))
            ticks.append((b, f"{hz // 1000}k" if hz >= 1000 else str(hz)))
    return ticks


def figure_size(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Figure size in inches for `draw_views`; pixels = inches * FIGURE_DPI."""
    return 1.75 + 3.0 * n_cols, 1.05 + 2.0 * n_rows


def draw_views(
    original: torch.Tensor, rows: dict[str, torch.Tensor], frontend: LogMelSpectrogram,
    path: str | os.PathLike, title: str | None = None, start: float = 0.0,
) -> None:
    """PNG of log-mel spectrograms: each row the original (F, T) then the views (V, F, T); shared colour scale.

    Time axis in seconds of the file (the span begins at `start`), frequency axis the mel bins labelled
    in Hz. Written atomically, size `figure_size(len(rows), 1 + V)` at FIGURE_DPI.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    original = original.detach().float().cpu()
    rows = {k: v.detach().float().cpu() for k, v in rows.items()}
    n_views = max(v.shape[0] for v in rows.values())
    # Colour scale from the original (its quietest 0.5 %, at most 80 dB below its peak) up to the highest
    # value anywhere, so every panel reads on the same scale.
    vmax = max(float(original.max()), *(float(v.max()) for v in rows.values()))
    vmin = max(float(original.max()) - 80.0 * math.log(10.0) / 10.0, float(torch.quantile(original.flatten(), 0.005)))
    n_freq, n_time = original.shape
    seconds = n_time * frontend.hop_length / frontend.sample_rate
    ticks = frequency_ticks(mel_center_frequencies(frontend))

    width, height = figure_size(len(rows), 1 + n_views)
    fig = Figure(figsize=(width, height), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    # Fixed margins in inches (a layout engine costs seconds per figure): labels left, colour bar right.
    left, right, top, bottom = 0.75, 1.0, 0.55, 0.5
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
        wspace=0.12, hspace=0.35,
    )
    axes = fig.subplots(len(rows), 1 + n_views, squeeze=False, sharex=True, sharey=True)
    image = None
    for r, (name, stack) in enumerate(rows.items()):
        panels = [("original", original)] + [(f"{name} view {i + 1}", stack[i]) for i in range(stack.shape[0])]
        for c, ax in enumerate(axes[r]):
            if c >= len(panels):  # rows with fewer views than the widest row
                ax.set_visible(False)
                continue
            label, spec = panels[c]
            image = ax.imshow(
                spec.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                extent=(start, start + seconds, -0.5, n_freq - 0.5), interpolation="nearest",
            )
            ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_yticks([b for b, _ in ticks], [hz for _, hz in ticks], fontsize=7)
                ax.set_ylabel("frequency (Hz)", fontsize=8)
            if r == len(rows) - 1:
                ax.tick_params(axis="x", labelsize=7)
                ax.set_xlabel("time (s)", fontsize=8)
    if image is not None:
        bar_axes = fig.add_axes((1 - (right - 0.2) / width, bottom / height, 0.15 / width, 1 - (top + bottom) / height))
        bar = fig.colorbar(image, cax=bar_axes)
        bar.set_label("log-mel (ln power)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    # Render fully before touching the file, so a failure leaves no half-written PNG.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
