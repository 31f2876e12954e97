"""`audiorq export SRC OUT`: a trained encoder as one shareable file, with a model card beside it.

OUT.safetensors holds the weights and what is needed to use them (`audiorq.runs.save_model_file`);
OUT.onnx holds the whole waveform -> embedding graph, log-mel frontend included (`audiorq.onnx_export`).
Either way OUT.md is the model card: what the model is, how it was trained, how it scored, how to use it.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audiorq import __version__
from audiorq.atomic import atomic_write_text
from audiorq.model import ARCHITECTURE, AudioModel, ModelError, model_from_encoder_file
from audiorq.probe.encoders import state_dict_hash
from audiorq.runs import MODEL_SUFFIX, ModelFile, RunFileError, RunFolder, read_encoder_file, save_model_file
from audiorq.train.metrics import last_interval

ONNX_SUFFIX = ".onnx"
FORMATS = (MODEL_SUFFIX, ONNX_SUFFIX)


def training_summary(source: Path, config: dict[str, Any]) -> dict[str, Any]:
    """What the card says about training: recipe essentials from the config, steps and loss from metrics.jsonl."""
    summary: dict[str, Any] = {"exported_from": str(source)}
    if config:
        aug = config.get("augment") or {}
        summary.update({
            "data": (config.get("data") or {}).get("source"),
            "augment_chain": aug.get("chain"),
            "rq_bins": (aug.get("rq") or {}).get("bins") if "rq" in (aug.get("chain") or []) else None,
            "epochs": config.get("epochs"), "max_steps": config.get("max_steps"),
            "batch_size": config.get("batch_size"), "seed": config.get("seed"),
            "optimizer": config.get("optim"), "model": config.get("model"),
        })
    last = last_interval(RunFolder(source.parent).metrics)
    if last:
        summary.update({"steps": last.get("step"), "final_loss": last.get("loss")})
        summary.update({k: last[k] for k in ("knn_acc", "linear_acc", "effective_rank") if k in last})
    return {k: v for k, v in summary.items() if v is not None}


def probe_scores(scores_csv: str | os.PathLike, weights_hash: str) -> dict[str, float]:
    """Mean test accuracy per task of the scores.csv rows of these weights (matched by weights hash prefix);
    quick looks (`--max-per-class` rows) are left out."""
    per_task: dict[str, list[float]] = {}
    with open(scores_csv, newline="") as f:
        for row in csv.DictReader(f):
            quick_look = bool((row.get("quick_look") or "").strip())  # --max-per-class rows are not results
            if row.get("encoder_hash") and weights_hash.startswith(row["encoder_hash"]) and not quick_look:
                per_task.setdefault(row["task"], []).append(float(row["test_acc"]))
    return {task: sum(v) / len(v) for task, v in sorted(per_task.items())}


def model_card(name: str, model: AudioModel, weights_hash: str, scores: dict[str, float], license: str,
               file_name: str) -> str:
    """The markdown model card of an exported model."""
    info, t = model.info, model.info.get("training", {})
    n_params = sum(p.numel() for p in model.encoder.parameters())
    f = model.frontend_config
    lines = [
        f"# {name}",
        "",
        f"An audio encoder pretrained with [audiorq](https://pypi.org/project/audiorq/) {__version__}: "
        f"{ARCHITECTURE} (BYOL-A's convolutional encoder), {model.embedding_size}-d clip embeddings, "
        f"{n_params:,} parameters. Weights sha256 `{weights_hash[:16]}`.",
        "",
        "## Use",
        "",
        "```python",
        "import audiorq",
        f'model = audiorq.load_model("{file_name}")   # 16 kHz mono waveforms (B, S) -> (B, {model.embedding_size})',
        "embeddings = model(waves)",
        "frames, times_ms = model.frames(waves)     # (B, T, D), one frame every "
        f"{model.frame_hop_ms:g} ms",
        "```",
        "",
        f"HEAR 2021: `audiorq.hear.load_model(\"{file_name}\")`. Command line: `audiorq embed {file_name} FILES "
        "--out embeddings.npz`.",
        "",
        "## Input",
        "",
        f"- {f.sample_rate} Hz mono waveforms; log-mel with n_fft {f.n_fft}, hop {f.hop_length}, {f.n_mels} "
        f"{f.mel_scale} mel bins from {f.f_min:g} to {f.f_max:g} Hz, `log(mel + eps)`.",
        f"- Normalized with the pretraining data's statistics: mean {model.norm_mean:.4f}, std {model.norm_std:.4f}.",
        f"- Clips shorter than {model.min_samples} samples are zero-padded at both ends.",
        "",
        "## Training",
        "",
    ]
    if t.get("augment_chain") or t.get("steps"):
        for key, label in (("data", "data"), ("augment_chain", "augmentations (in order)"), ("rq_bins", "RQ bins"),
                           ("batch_size", "batch size"), ("epochs", "epochs"), ("steps", "optimizer steps"),
                           ("final_loss", "final BYOL loss"), ("seed", "seed")):
            if key in t:
                value = t[key]
                value = f"{value:.4f}" if isinstance(value, float) else value
                lines.append(f"- {label}: {value}")
        for key in ("knn_acc", "linear_acc", "effective_rank"):
            if key in t and isinstance(t[key], (int, float)) and math.isfinite(t[key]):
                lines.append(f"- online monitor at the end: {key} {t[key]:.4f}")
    else:
        lines.append(f"Not recorded: exported from a bare state dict ({info.get('source')}).")
    lines += ["", "## Evaluation", ""]
    if scores:
        lines += ["Linear probe, test accuracy % (`audiorq probe`):", "", "| task | accuracy |", "|---|---|"]
        lines += [f"| {task} | {100 * acc:.1f} |" for task, acc in scores.items()]
    else:
        lines.append("No probe scores recorded (export with `--scores results/scores.csv` after `audiorq probe`).")
    lines += [
        "", "## Intended use and limitations", "",
        "A general-purpose audio representation for linear probes, retrieval and as a frozen feature extractor. "
        "Its quality depends on the pretraining data and length above; check it on your task with "
        "`audiorq probe` before relying on it. Not for decisions about people (speaker identity, health).",
        "", "## License", "", license, "",
    ]
    return "\n".join(lines)


def export_model(src: str | os.PathLike, out: str | os.PathLike, norm_stats: Sequence[float] | None = None,
                 frontend_overrides: Sequence[str] = (), name: str | None = None, license: str = "unspecified",
                 scores_csv: str | os.PathLike | None = None, overwrite: bool = False) -> tuple[Path, Path]:
    """Export SRC (run folder, checkpoint.pt, encoder.pth, BYOL-A .pth, model file) to OUT (.safetensors | .onnx).

    Returns (OUT, OUT.md). Refuses to replace existing files unless `overwrite`.
    """
    out = Path(out)
    if out.suffix not in FORMATS:
        raise ModelError(f"{out}: the output must end in {' or '.join(FORMATS)}")
    card_path = out.with_suffix(".md")
    existing = [p.name for p in (out, card_path) if p.exists()]
    if existing and not overwrite:
        raise ModelError(f"{out.parent}: {', '.join(existing)} already exist; choose another OUT or pass --overwrite")
    try:
        found = read_encoder_file(src)
    except RunFileError as e:
        raise ModelError(str(e)) from None
    model = model_from_encoder_file(found, norm_stats, frontend_overrides)
    weights_hash = state_dict_hash(found.state)
    training = model.info["training"] or training_summary(found.path, found.config)
    model.info["training"] = training
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == MODEL_SUFFIX:
        save_model_file(out, ModelFile(
            state=model.encoder.state_dict(), model={"architecture": ARCHITECTURE, "d": model.embedding_size,
                                                     "n_mels": model.frontend_config.n_mels},
            frontend=model.info["frontend"], norm_stats=model.info["norm_stats"], training=training,
            audiorq_version=__version__,
        ))
    else:
        from audiorq.onnx_export import export_onnx

        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise ModelError(f"{out}: ONNX export needs the export extra: pip install 'audiorq[export]'") from None
        export_onnx(model, out)
    scores = probe_scores(scores_csv, weights_hash) if scores_csv else {}
    atomic_write_text(card_path, model_card(name or out.stem, model, weights_hash, scores, license, out.name))
    return out, card_path
