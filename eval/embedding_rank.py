"""How many directions do an encoder's clip embeddings use? Effective rank of embeddings over a folder of audio.

A diagnostic for RESULTS.md: an encoder whose embeddings concentrate in a few directions (dimensional
collapse, common early in BYOL training) gives a linear probe little to separate classes with.

    python eval/embedding_rank.py AUDIO_DIR ENCODER [ENCODER ...] [--clips 300]

ENCODER is any `audiorq probe` encoder spec (encoder.pth, random:d=256,seed=0, logmel). Prints, per encoder,
the effective rank (exp of the entropy of the normalized singular value spectrum) of the centred embeddings,
raw and with every dimension standardized (as the linear probe sees them), and the variance share of the top
direction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from audiorq.audio import SAMPLE_RATE, load_audio, pad_or_crop
from audiorq.data.pretrain import list_audio_files
from audiorq.frontend import LogMelSpectrogram
from audiorq.probe.encoders import load_encoder


def effective_rank(embeddings: np.ndarray) -> tuple[float, float]:
    """exp(entropy of the normalized squared singular values) of centred (N, d) embeddings, and the top share."""
    centred = embeddings - embeddings.mean(axis=0)
    energy = np.linalg.svd(centred, compute_uv=False) ** 2
    share = energy / energy.sum()
    nonzero = share[share > 0]
    return float(np.exp(-(nonzero * np.log(nonzero)).sum())), float(share[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio_dir")
    parser.add_argument("encoders", nargs="+")
    parser.add_argument("--clips", type=int, default=300, help="clips taken evenly from the sorted file list")
    parser.add_argument("--seconds", type=float, default=0.95)
    args = parser.parse_args()

    files, _ = list_audio_files(args.audio_dir)  # relative paths
    files = [Path(args.audio_dir) / f for f in files[:: max(1, len(files) // args.clips)][: args.clips]]
    n_samples = int(args.seconds * SAMPLE_RATE)
    generator = torch.Generator().manual_seed(0)
    waves = torch.stack([pad_or_crop(load_audio(f), n_samples, "byola", "test", generator) for f in files])
    logmel = LogMelSpectrogram()(waves)
    logmel = (logmel - logmel.mean()) / logmel.std()  # the probe's pre-normalization, with this set's stats

    print(f"{len(files)} clips of {args.seconds} s from {args.audio_dir}\n")
    print("| encoder | d | effective rank (raw) | effective rank (standardized) | top direction share (raw) |")
    print("|---|---|---|---|---|")
    for spec in args.encoders:
        encoder, _ = load_encoder(spec)
        with torch.no_grad():
            embeddings = encoder(logmel).double().numpy()
        raw_rank, top = effective_rank(embeddings)
        standardized = embeddings / np.maximum(embeddings.std(axis=0), 1e-12)
        std_rank, _ = effective_rank(standardized)
        print(f"| {spec} | {embeddings.shape[1]} | {raw_rank:.1f} | {std_rank:.1f} | {top:.2f} |")


if __name__ == "__main__":
    main()
