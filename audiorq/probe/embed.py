"""Log-mel normalization statistics of a task and frozen-encoder embeddings of its clips, cached on disk.

Cache layout under `cache_dir`:
  norm/<task>-<key16>.json                 log-mel mean/std of a task (depends on task, preset, frontend)
  <task>[-<variant>]-<preset>-<encoder>-<key16>.pt   embeddings; <key16> hashes everything that changes them
Each file stores its full key and is only used when the stored key equals the wanted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from audiorq.atomic import atomic_torch_save, atomic_write_text
from audiorq.audio import AudioError, load_audio, pad_or_crop, printable_path
from audiorq.config import SAMPLE_RATE, to_dict
from audiorq.data.pretrain.scan import unusable_reason
from audiorq.data.tasks import Split, Task, restrict_task, task_fingerprint
from audiorq.frontend import LogMelSpectrogram
from audiorq.probe.encoders import EncoderInfo, calibrate_batchnorm
from audiorq.probe.presets import ProbeConfig
from audiorq.runs import load_weights_only

CACHE_VERSION = 1


class ProbeError(ValueError):
    """A task or setting the probe cannot evaluate; the message says which file, class or key, and why."""


# ----------------------------------------------------------------------------------------------
# Clips


SKIP_BAD_HINT = "pass skip_bad=True / --skip-bad to leave undecodable files out"


class ClipDataset(torch.utils.data.Dataset):
    """Items `indices` of a task as fixed-length waveforms (unit_sec * 16 kHz,), padded/cropped by `policy`.

    Each item's random crop comes from its own generator seeded by (seed, role, path, span), so a clip gets
    the same crop whatever batch, worker or subset it is loaded in. `item(k)` gives (k, wave or None, reason)
    instead of raising, for loaders that skip undecodable files.
    """

    def __init__(self, task: Task, indices: np.ndarray, policy: str, role: str, seed: int):
        self.task, self.indices, self.policy, self.role, self.seed = task, np.asarray(indices), policy, role, seed
        self.n_samples = int(round(task.unit_sec * SAMPLE_RATE))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> torch.Tensor:
        i = int(self.indices[k])
        path = self.task.files[i]
        start, duration = self.task.span(i)
        wave = load_audio(path, start=start, duration=duration)
        item_seed = zlib.crc32(f"{self.seed}|{self.role}|{path}|{start}".encode())
        generator = torch.Generator().manual_seed(item_seed)
        return pad_or_crop(wave, self.n_samples, self.policy, self.role, generator)

    def item(self, k: int) -> tuple[int, torch.Tensor | None, str]:
        """(k, the item, "") or (k, None, why its audio cannot be used)."""
        try:
            return k, self[k], ""
        except AudioError as e:
            return k, None, unusable_reason(e)


class _Items(torch.utils.data.Dataset):
    # A view whose items carry the decode outcome, so that an error in a DataLoader worker comes back as data.
    def __init__(self, clips: ClipDataset):
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor | None, str]:
        return self.clips.item(k)


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> tuple[torch.Tensor | None, list[tuple[int, str]]]:
    good = [w for _, w, _ in items if w is not None]
    return (torch.stack(good) if good else None), [(k, r) for k, w, r in items if w is None]


def clip_batches(dataset: ClipDataset, batch_size: int, workers: int, device: torch.device,
                 bad: dict[int, str] | None = None):
    """Batches of good clips on `device`; an undecodable clip raises ProbeError naming it, or, when `bad` is
    a dict, is left out and recorded there as {position in dataset: reason}."""
    loader = torch.utils.data.DataLoader(
        _Items(dataset), batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", collate_fn=_collate,
        # Its own generator: iterating a loader draws a base seed, and drawing it from the global RNG would
        # shift a caller's stream (the trainer's dropout, when the online monitor loads its clips).
        generator=torch.Generator().manual_seed(0),
    )
    for wave, failed in loader:
        for k, reason in failed:
            if bad is None:
                path = dataset.task.files[int(dataset.indices[k])]
                raise ProbeError(f"{printable_path(path)}: {reason} ({SKIP_BAD_HINT})")
            bad[k] = reason
        if wave is not None:
            yield wave.to(device, non_blocking=True)


def embed_label(task: Task, policy: str, role: str) -> str:
    """A progress label that says what is embedded: the task, the splits served and the crop."""
    splits = [n for n in ("train", "valid", "test")
              if crop_role(policy, n) == role and any(getattr(s, n) is not None for s in task.splits)]
    if len(task.splits) > 1:
        splits = ["all folds"]
    crop = "head crop" if role == "test" else "random crop"
    return f"{task.name} embed {'+'.join(splits)} ({crop})"


def crop_role(policy: str, split: str) -> str:
    """Which crop a clip gets in `split`: "test" (head crop) only for evar's test split, else "train"."""
    return "test" if (policy == "evar" and split == "test") else "train"


# ----------------------------------------------------------------------------------------------
# Normalization statistics (docs/protocol.md §1.5)


def norm_stats_files(task: Task, config: ProbeConfig) -> np.ndarray:
    """Indices of the clips the norm stats are computed from: min(norm_files, pool) drawn at random."""
    first = task.splits[0]
    carved = all(s.valid is None for s in task.splits) and len(task.splits) > 1
    if config.norm_source == "train_or_all_folds" and carved:
        pool = np.unique(np.concatenate([np.concatenate([s.train, s.test]) for s in task.splits]))
    else:
        pool = np.asarray(first.train)
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(pool, size=min(config.norm_files, len(pool)), replace=False))


@torch.no_grad()
def task_norm_stats(
    task: Task,
    config: ProbeConfig,
    frontend: LogMelSpectrogram,
    device: str | torch.device = "cpu",
    workers: int = 0,
    progress: bool = True,
    skip_bad: bool = False,
) -> tuple[float, float]:
    """Scalar mean and std of the padded/cropped log-mels of the `norm_stats_files` clips (float64 sums).

    An undecodable clip raises ProbeError naming it, unless `skip_bad` (then it is left out).
    """
    device = torch.device(device)
    frontend = frontend.to(device)
    dataset = ClipDataset(task, norm_stats_files(task, config), config.pad_crop, "train", config.seed)
    total = torch.zeros((), dtype=torch.float64, device=device)
    total_sq = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    bar = tqdm(total=len(dataset), desc=f"{task.name} norm stats", unit="clip", disable=None if progress else True,
               leave=False)
    bad: dict[int, str] | None = {} if skip_bad else None
    for wave in clip_batches(dataset, config.embed_batch_size, workers, device, bad):
        lms = frontend(wave).double()
        total += lms.sum()
        total_sq += lms.square().sum()
        count += lms.numel()
        bar.update(len(wave))
    bar.close()
    if count == 0:
        raise ProbeError(f"{task.name}: none of the {len(dataset)} clips drawn for the normalization statistics "
                         "could be decoded")
    mean = (total / count).item()
    var = max((total_sq / count).item() - mean * mean, 0.0)
    return mean, var ** 0.5


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)[:60]


def cached_norm_stats(
    task: Task,
    config: ProbeConfig,
    frontend: LogMelSpectrogram,
    frontend_config: dict,
    cache_dir: str | os.PathLike | None,
    device: str | torch.device = "cpu",
    workers: int = 0,
    progress: bool = True,
    skip_bad: bool = False,
) -> tuple[float, float]:
    """`task_norm_stats`, read from / written to `cache_dir/norm/` when a cache folder is given."""
    key = {
        "version": CACHE_VERSION, "task": task_fingerprint(task), "pad_crop": config.pad_crop,
        "norm_files": config.norm_files, "norm_source": config.norm_source, "seed": config.seed,
        "frontend": frontend_config,
    }
    path = Path(cache_dir) / "norm" / f"{_safe(task.name)}-{_key_hash(key)[:16]}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            if not isinstance(stored, dict):
                raise TypeError("not a mapping")
            if stored.get("key") == key:
                return float(stored["mean"]), float(stored["std"])
        except (OSError, ValueError, KeyError, TypeError):
            warnings.warn(f"ignoring unreadable norm-stats cache {path}", stacklevel=2)
    mean, std = task_norm_stats(task, config, frontend, device, workers, progress, skip_bad)
    if path is not None:
        atomic_write_text(path, json.dumps({"key": key, "mean": mean, "std": std}, indent=1))
    return mean, std


# ----------------------------------------------------------------------------------------------
# Embeddings (docs/protocol.md §1.6)


@dataclasses.dataclass
class TaskEmbeddings:
    """Embeddings of a task's clips, per crop role ("train"; and "test" under evar's head crop).

    `roles[role]` = (indices (n,) int64 into task.files, embeddings (n, d) float32 on the CPU).
    """

    task: Task
    roles: dict[str, tuple[np.ndarray, torch.Tensor]]
    norm_mean: float
    norm_std: float
    policy: str
    cache_path: Path | None = None
    from_cache: bool = False
    bad: dict[int, str] = dataclasses.field(default_factory=dict)  # task index -> why it could not be decoded

    def without_bad(self) -> TaskEmbeddings:
        """These embeddings on the task without its `bad` items (split indices renumbered), checked."""
        if not self.bad:
            return self
        keep = np.ones(len(self.task.files), dtype=bool)
        keep[list(self.bad)] = False
        task = restrict_task(self.task, keep)
        new_index = np.cumsum(keep) - 1
        roles = {}
        for role, (idx, emb) in self.roles.items():
            ok = keep[idx]
            roles[role] = (new_index[idx[ok]].astype(np.int64), emb[torch.from_numpy(ok)])
        return dataclasses.replace(self, task=task, roles=roles, bad={})

    def get(self, split: str, indices: np.ndarray) -> torch.Tensor:
        """Embeddings (len(indices), d) of task items `indices` as they are cropped in `split`."""
        stored, emb = self.roles[crop_role(self.policy, split)]
        pos = np.searchsorted(stored, indices)
        if np.any(pos >= len(stored)) or np.any(stored[np.minimum(pos, len(stored) - 1)] != indices):
            raise ProbeError(f"{self.task.name}: items requested for {split} were not embedded")
        return emb[torch.from_numpy(pos)]

    def split_data(self, split: Split) -> dict[str, tuple[torch.Tensor, torch.Tensor] | None]:
        """{"train"|"valid"|"test": (x (n, d), y (n,) int64) or None (valid to be carved)} for one split."""
        out: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
        for name in ("train", "valid", "test"):
            idx = getattr(split, name)
            out[name] = None if idx is None else (self.get(name, idx), torch.from_numpy(self.task.labels[idx]))
        return out


def role_indices(task: Task, policy: str) -> dict[str, np.ndarray]:
    """Which items need embedding under each crop role (sorted unique indices)."""
    wanted: dict[str, list[np.ndarray]] = {}
    for s in task.splits:
        for name in ("train", "valid", "test"):
            idx = getattr(s, name)
            if idx is not None:
                wanted.setdefault(crop_role(policy, name), []).append(np.asarray(idx))
    return {role: np.unique(np.concatenate(parts)).astype(np.int64) for role, parts in wanted.items()}


@torch.no_grad()
def embed_clips(
    encoder: nn.Module,
    frontend: LogMelSpectrogram,
    dataset: ClipDataset,
    norm_mean: float,
    norm_std: float,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int = 0,
    progress: bool = True,
    desc: str = "embedding",
    bad: dict[int, str] | None = None,
) -> torch.Tensor:
    """Waveforms -> log-mel -> (x - mean) / std -> frozen encoder: (len(dataset), d) float32 on the CPU.

    An undecodable clip raises ProbeError naming it; with a dict `bad` it is left out (rows follow the good
    clips in order) and recorded there as {position in dataset: reason}.
    """
    device = torch.device(device)
    frontend = frontend.to(device)
    encoder.eval()
    out = []
    # disable=None: no bar when stderr is not a terminal, so redirected logs get no escape codes.
    bar = tqdm(total=len(dataset), desc=desc, unit="clip", disable=None if progress else True, leave=False)
    for wave in clip_batches(dataset, batch_size, workers, device, bad):
        lms = (frontend(wave) - norm_mean) / norm_std
        out.append(encoder(lms).float().cpu())
        bar.update(len(wave))
    bar.close()
    if not out:
        why = f": none of its {len(dataset)} clips could be decoded" if bad else ""
        raise ProbeError(f"{dataset.task.name}: nothing to embed{why}")
    return torch.cat(out)


def embed_task(
    encoder: nn.Module,
    info: EncoderInfo,
    task: Task,
    config: ProbeConfig,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    workers: int = 0,
    progress: bool = True,
    skip_bad: bool = False,
) -> TaskEmbeddings:
    """Norm stats + embeddings of every clip a task's splits use, from the cache when the key matches.

    An undecodable clip raises ProbeError naming it, unless `skip_bad`: then the result's `bad` maps each such
    item to its reason (`TaskEmbeddings.without_bad` drops them). The cache remembers them.

    The key holds everything that changes the embeddings: encoder weights hash, task fingerprint (name,
    variant, files, labels, spans, splits), preset and its crop/norm settings, unit_sec, frontend config.
    """
    frontend_config = to_dict(info.frontend)
    frontend = LogMelSpectrogram.from_config(info.frontend)
    mean, std = cached_norm_stats(task, config, frontend, frontend_config, cache_dir, device, workers, progress,
                                  skip_bad)
    key = {
        "version": CACHE_VERSION, "encoder": info.weights_hash, "encoder_kind": info.kind, "task": task.name,
        "variant": task.variant, "task_fingerprint": task_fingerprint(task), "preset": config.preset,
        "pad_crop": config.pad_crop, "seed": config.seed, "unit_sec": task.unit_sec, "frontend": frontend_config,
        "norm_stats": [mean, std],
    }
    if info.calibrate:
        key["calibrated_on"] = "train clips"
    path = None
    if cache_dir is not None:
        stem = "-".join(_safe(p) for p in (task.name, task.variant, config.preset, info.name) if p)
        path = Path(cache_dir) / f"{stem}-{_key_hash(key)[:16]}.pt"
        cached = _read_cache(path, key)
        if cached is not None:
            roles, bad = cached
            if bad and not skip_bad:
                i, reason = next(iter(bad.items()))
                raise ProbeError(f"{printable_path(task.files[i])}: {reason} ({SKIP_BAD_HINT})")
            return TaskEmbeddings(task, roles, mean, std, config.pad_crop, path, from_cache=True, bad=bad)
    if info.calibrate:
        encoder = calibrated_encoder(encoder, frontend, task, config, mean, std, device, workers, skip_bad)
    roles, bad = {}, {}
    for role, idx in role_indices(task, config.pad_crop).items():
        dataset = ClipDataset(task, idx, config.pad_crop, role, config.seed)
        failed: dict[int, str] | None = {} if skip_bad else None
        emb = embed_clips(
            encoder, frontend, dataset, mean, std, config.embed_batch_size, device, workers, progress,
            desc=embed_label(task, config.pad_crop, role), bad=failed,
        )
        ok = np.ones(len(idx), dtype=bool)
        for k, reason in (failed or {}).items():
            ok[k] = False
            bad[int(idx[k])] = reason
        roles[role] = (idx[ok], emb)
    if path is not None:
        payload = {
            "key": key,
            "roles": {r: {"indices": torch.from_numpy(i), "embeddings": e} for r, (i, e) in roles.items()},
            "bad": {"indices": torch.tensor(sorted(bad), dtype=torch.int64), "reasons": [bad[i] for i in sorted(bad)]},
        }
        try:
            atomic_torch_save(payload, path)
        except (OSError, RuntimeError) as e:  # a full disk: the embeddings are still good for this run
            warnings.warn(f"could not write the embedding cache {path}: {e}", RuntimeWarning, stacklevel=2)
    return TaskEmbeddings(task, roles, mean, std, config.pad_crop, path, from_cache=False, bad=bad)


def calibrated_encoder(encoder: nn.Module, frontend: LogMelSpectrogram, task: Task, config: ProbeConfig,
                       mean: float, std: float, device: str | torch.device, workers: int = 0,
                       skip_bad: bool = False) -> nn.Module:
    """`encoder` with BatchNorm statistics recomputed on the clips any split trains on, as the probe embeds them.

    For fold tasks (ESC-10, US8K) that is every clip: label-free statistics of the task's audio, which the
    harness's pretrained encoders have also seen, unlabeled, in their corpus.
    """
    train = np.unique(np.concatenate([np.asarray(s.train) for s in task.splits])).astype(np.int64)
    dataset = ClipDataset(task, train, config.pad_crop, crop_role(config.pad_crop, "train"), config.seed)
    device = torch.device(device)
    frontend = frontend.to(device)
    batches = ((frontend(wave) - mean) / std
               for wave in clip_batches(dataset, config.embed_batch_size, workers, device, {} if skip_bad else None))
    return calibrate_batchnorm(encoder, batches)


def _read_cache(path: Path, key: dict) -> tuple[dict[str, tuple[np.ndarray, torch.Tensor]], dict[int, str]] | None:
    if not path.is_file():
        return None
    try:
        payload = load_weights_only(path)
        if payload.get("key") != key:
            return None
        roles = {r: (v["indices"].numpy().astype(np.int64), v["embeddings"]) for r, v in payload["roles"].items()}
        stored = payload.get("bad") or {"indices": torch.zeros(0, dtype=torch.int64), "reasons": []}
        bad = {int(i): str(r) for i, r in zip(stored["indices"].tolist(), stored["reasons"])}
        return roles, bad
    except Exception as e:  # a truncated or foreign file: recompute rather than fail
        warnings.warn(f"ignoring unreadable embedding cache {path}: {e}", stacklevel=2)
        return None
