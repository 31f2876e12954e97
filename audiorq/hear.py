"""The HEAR 2021 API over `audiorq.load_model`, for hear-eval-kit and other HEAR tooling.

    import audiorq.hear as module
    model = module.load_model("rq.safetensors")          # or a run folder, checkpoint.pt, encoder.pth
    scene = module.get_scene_embeddings(audio, model)     # audio (n, S) float32 at model.sample_rate -> (n, D)
    frames, times = module.get_timestamp_embeddings(audio, model)   # (n, T, D), (n, T) in ms

Embeddings are computed in eval mode in batches of `BATCH_SIZE` clips; a clip's embedding does not depend
on the other clips in the call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from audiorq.model import AudioModel, load_model as _load_audio_model

BATCH_SIZE = 64  # clips per forward pass: bounds memory for long clips


def load_model(model_file_path: str | os.PathLike = "", device: str | torch.device = "auto",
               norm_stats: Sequence[float] | None = None) -> AudioModel:
    """HEAR `load_model`: an AudioModel with `sample_rate`, `scene_embedding_size`, `timestamp_embedding_size`."""
    if not str(model_file_path):
        raise ValueError("audiorq.hear.load_model needs a model file (an exported .safetensors, a run folder, "
                         "checkpoint.pt or encoder.pth)")
    model = _load_audio_model(model_file_path, device=device, norm_stats=norm_stats)
    model.scene_embedding_size = model.embedding_size
    model.timestamp_embedding_size = model.embedding_size
    return model


def _check_audio(audio: torch.Tensor, model: AudioModel) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor) or audio.dim() != 2:
        raise ValueError(f"audio must be a tensor (n_sounds, n_samples), got {getattr(audio, 'shape', type(audio))}")
    return audio.to(next(model.parameters()).device)


def get_scene_embeddings(audio: torch.Tensor, model: AudioModel) -> torch.Tensor:
    """HEAR scene embeddings: audio (n, S) at model.sample_rate -> (n, D) float32, on the audio's device."""
    x = _check_audio(audio, model)
    out = [model(x[i : i + BATCH_SIZE]) for i in range(0, x.shape[0], BATCH_SIZE)]
    return torch.cat(out).float() if out else torch.zeros(0, model.embedding_size, device=x.device)


def get_timestamp_embeddings(audio: torch.Tensor, model: AudioModel) -> tuple[torch.Tensor, torch.Tensor]:
    """HEAR timestamp embeddings: audio (n, S) -> (n, T, D) float32 and centre times (n, T) in ms, increasing."""
    x = _check_audio(audio, model)
    frames, times = [], None
    for i in range(0, x.shape[0], BATCH_SIZE):
        h, times = model.frames(x[i : i + BATCH_SIZE])
        frames.append(h.float())
    if not frames:
        return torch.zeros(0, 0, model.embedding_size, device=x.device), torch.zeros(0, 0, device=x.device)
    emb = torch.cat(frames)
    return emb, times.float().to(emb.device).expand(emb.shape[0], -1).contiguous()
