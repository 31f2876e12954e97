"""`audiorq embed MODEL FILES_OR_DIR --out embeddings.npz`: clip (and frame) embeddings of many audio files.

Whole files are embedded, batched on the model's device: clips of the same length share a batch, so
padding never changes an embedding. Unreadable files are skipped, counted and listed. The output
(written atomically, never over an existing file unless asked):

  .npz      files (N,) str, embeddings (N, D) float32; with frames: frame_embeddings (sum T_i, D),
            frame_offsets (N + 1,) int64 (file i owns rows offsets[i]:offsets[i+1]), frame_times_ms (sum T_i,)
  .parquet  one row per file: file, embedding (list of D floats) [, frames, frame_times_ms]; needs pyarrow
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from audiorq.atomic import atomic_write
from audiorq.audio import AudioError, load_audio
from audiorq.data.pretrain import list_audio_files
from audiorq.model import AudioModel

OUTPUT_SUFFIXES = (".npz", ".parquet")
MAX_BATCH_SAMPLES = 16_000 * 600  # samples per forward pass (10 min of audio): bounds memory for long files


class EmbedError(ValueError):
    """An embed request that cannot be carried out (no files, bad output name, existing output)."""


@dataclasses.dataclass
class EmbedResult:
    """What `embed_files` computed and where it wrote it."""

    files: list[str]
    embeddings: np.ndarray  # (N, D) float32
    bad: list[tuple[str, str]]  # (file, reason) of every skipped file
    out: Path | None = None
    frames: list[np.ndarray] | None = None  # per file (T_i, D)
    frame_times_ms: list[np.ndarray] | None = None  # per file (T_i,)


def collect_audio_files(sources: Sequence[str | os.PathLike]) -> list[str]:
    """Audio files named by `sources`: files as given, folders scanned recursively (sorted)."""
    files: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files += [str(path / f) for f in list_audio_files(path)[0]]
        elif path.exists():
            files.append(str(path))
        else:
            raise EmbedError(f"{path}: no such file or folder")
    if not files:
        raise EmbedError(f"no audio files in {', '.join(map(str, sources))}")
    return files


def embed_files(model: AudioModel, sources: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                frames: bool = False, batch_size: int = 32, overwrite: bool = False,
                progress: bool = True) -> EmbedResult:
    """Embed every audio file of `sources` with `model`; write `out` (.npz or .parquet) when given."""
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        if out_path.suffix not in OUTPUT_SUFFIXES:
            raise EmbedError(f"{out_path}: the output must end in {' or '.join(OUTPUT_SUFFIXES)}")
        if out_path.exists() and not overwrite:
            raise EmbedError(f"{out_path} already exists; choose another --out or pass --overwrite")
        if out_path.suffix == ".parquet":
            _pyarrow(out_path)
    files = collect_audio_files(sources)
    device = next(model.parameters()).device
    bad: list[tuple[str, str]] = []
    clip: dict[int, np.ndarray] = {}
    frame_rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    bar = tqdm(total=len(files), desc="embed", unit="file", disable=not progress)
    # Files are read a window at a time (memory stays bounded for any number of files); inside a window,
    # same-length clips share batches of at most batch_size clips and MAX_BATCH_SAMPLES samples.
    window = 8 * batch_size
    for first in range(0, len(files), window):
        by_length: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for i in range(first, min(first + window, len(files))):
            try:
                wave = load_audio(files[i], sample_rate=model.sample_rate)
            except AudioError as e:
                bad.append((files[i], e.reason))
                bar.update(1)
                continue
            by_length.setdefault(wave.shape[-1], []).append((i, wave))
        for length, members in sorted(by_length.items()):
            step = max(1, min(batch_size, MAX_BATCH_SAMPLES // max(1, length)))
            for k in range(0, len(members), step):
                idx = [i for i, _ in members[k : k + step]]
                x = torch.stack([w for _, w in members[k : k + step]]).to(device)
                if frames:
                    h, times = model.frames(x)
                    emb = model.encoder.pool(h)  # the clip embedding, from the same pass
                    for j, i in enumerate(idx):
                        frame_rows[i] = (h[j].float().cpu().numpy(), times.cpu().numpy().astype(np.float64))
                else:
                    emb = model(x)
                for j, i in enumerate(idx):
                    clip[i] = emb[j].float().cpu().numpy()
                bar.update(len(idx))
    bar.close()
    if not clip:
        raise EmbedError(f"none of the {len(files)} files could be read (e.g. {bad[0][0]}: {bad[0][1]})")
    order = sorted(clip)
    result = EmbedResult(files=[files[i] for i in order], embeddings=np.stack([clip[i] for i in order]), bad=bad,
                         out=out_path)
    if frames:
        result.frames = [frame_rows[i][0] for i in order]
        result.frame_times_ms = [frame_rows[i][1] for i in order]
    if out_path is not None:
        write_embeddings(result, out_path)
    return result


def write_embeddings(result: EmbedResult, path: Path) -> None:
    """Write `result` as .npz or .parquet, atomically (layouts in the module docstring)."""
    if path.suffix == ".npz":
        arrays = {"files": np.array(result.files, dtype=str), "embeddings": result.embeddings.astype(np.float32)}
        if result.frames is not None:
            offsets = np.cumsum([0] + [len(f) for f in result.frames]).astype(np.int64)
            arrays.update(frame_embeddings=np.concatenate(result.frames).astype(np.float32), frame_offsets=offsets,
                          frame_times_ms=np.concatenate(result.frame_times_ms))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(path, lambda f: f.write(buffer.getvalue()))
        return
    pa, pq = _pyarrow(path)
    columns = {"file": result.files, "embedding": [e.tolist() for e in result.embeddings]}
    if result.frames is not None:
        columns["frames"] = [f.tolist() for f in result.frames]
        columns["frame_times_ms"] = [t.tolist() for t in result.frame_times_ms]
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _pyarrow(path: Path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise EmbedError(f"{path}: writing .parquet needs pyarrow (pip install pyarrow), or use .npz") from None
    return pa, pq
