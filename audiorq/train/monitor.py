"""Online monitor: is the run learning? kNN / linear accuracy on a small labeled task, and label-free health.

Two parts, both on rank 0 and both read-only for training (eval mode, no gradient, private random streams,
so a run with the monitor takes exactly the steps of a run without it):
- `OnlineEvaluator`: before the first step of a fresh run (the untrained network), every
  `monitor.every_steps` steps and at each epoch end, the online encoder, frozen in eval mode, embeds a fixed
  labeled set (the first split of any probe task, at most `monitor.max_clips` clips of `monitor.clip_sec`
  seconds, decoded once); it reports the cosine kNN accuracy (k = `monitor.k`, votes weighted by
  exp(similarity / 0.07) as in InstDisc / solo-learn) and the test accuracy of a logistic regression
  fitted on the standardized train embeddings (`knn_acc`, `linear_acc`, in %).
- `HealthMonitor`: on every log step, from the training batch itself, `projection_std` and `embedding_std`
  (the per-dimension std of the L2-normalized projector outputs / clip embeddings, times sqrt(dim), so that
  1 is an isotropic spread and 0 all samples at one point, as SimSiam measures collapse) and
  `effective_rank` (RankMe: exp of the entropy of the normalized singular values of the last
  `monitor.buffer_size` clip embeddings; 1 = one direction). A collapse warning is logged when
  projection_std < `monitor.collapse_std` or effective_rank < `monitor.collapse_rank` for
  `monitor.collapse_checks` log steps in a row.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audiorq.config import FrontendConfig, MonitorConfig

log = logging.getLogger(__name__)

KNN_TEMPERATURE = 0.07
EMBED_BATCH = 64


# ----------------------------------------------------------------------------------------------
# Pure measurements


def normalized_std(x: torch.Tensor) -> float:
    """(N, D) -> sqrt(D) * mean over dims of the std over samples of the L2-normalized rows (1 spread, 0 collapsed)."""
    z = F.normalize(x.float(), dim=1)
    return float(z.std(dim=0, unbiased=False).mean() * math.sqrt(x.shape[1]))


def effective_rank(x: torch.Tensor) -> float:
    """RankMe of (N, D) embeddings: exp(entropy of singular values / their sum), in [1, min(N, D)]."""
    x = x.float()
    # The Gram matrix is N x N, much smaller than D x D for wide encoders; its eigenvalues are sigma^2. It is
    # formed on the embeddings' device, and only the small eigenproblem runs in float64 on the CPU.
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    lam = torch.linalg.eigvalsh(gram.double().cpu())
    # Eigenvalues under float32's resolution of this Gram matrix are rounding noise, not directions.
    lam[lam < lam.max() * gram.shape[0] * torch.finfo(torch.float32).eps] = 0
    sigma = lam.sqrt()
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 k: int = 20, temperature: float = KNN_TEMPERATURE) -> float:
    """Accuracy (%) of a cosine kNN classifier: (N, D) train, (M, D) test, labels (N,), (M,) in 0..C-1."""
    a, b = F.normalize(train_x.float(), dim=1), F.normalize(test_x.float(), dim=1)
    sim = b @ a.T
    k = min(k, a.shape[0])
    top, idx = sim.topk(k, dim=1)
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    votes = torch.zeros(b.shape[0], n_classes, dtype=torch.float64)
    votes.scatter_add_(1, train_y[idx], (top.double() / temperature).exp())
    return float((votes.argmax(dim=1) == test_y).double().mean() * 100)


def linear_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    """Test accuracy (%) of an L2-regularized logistic regression on standardized (N, D) / (M, D) embeddings."""
    from sklearn.linear_model import LogisticRegression

    mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6)
    xa, xb = ((train_x - mean) / std).double().numpy(), ((test_x - mean) / std).double().numpy()
    clf = LogisticRegression(max_iter=300, C=1.0)  # lbfgs: deterministic, no random stream consumed
    clf.fit(xa, train_y.numpy())
    return float((clf.predict(xb) == test_y.numpy()).mean() * 100)


# ----------------------------------------------------------------------------------------------
# Label-free health


class HealthMonitor:
    """Collapse signals from training batches: a ring buffer of recent clip embeddings and a streak counter."""

    def __init__(self, cfg: MonitorConfig):
        self.cfg = cfg
        self.buffer: torch.Tensor | None = None
        self.filled = self.position = 0
        self.streak = 0
        self.warned = False

    def state_dict(self) -> dict[str, Any]:
        """The buffer (on the CPU) and counters, so a resumed run measures what the straight run would."""
        return {"buffer": None if self.buffer is None else self.buffer.cpu(), "filled": self.filled,
                "position": self.position, "streak": self.streak, "warned": self.warned}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore `state_dict()`'s values, the buffer onto `device`; a buffer of another size starts afresh."""
        buffer = state["buffer"]
        if buffer is not None and buffer.shape[0] != self.cfg.buffer_size:  # monitor.buffer_size changed on resume
            return
        self.buffer = None if buffer is None else buffer.to(device)
        self.filled, self.position = int(state["filled"]), int(state["position"])
        self.streak, self.warned = int(state["streak"]), bool(state["warned"])

    def add(self, embeddings: torch.Tensor) -> None:
        """Append (B, d) clip embeddings of one step (on their device, no host sync)."""
        size = self.cfg.buffer_size
        e = embeddings.detach()[-size:]
        if self.buffer is None:
            self.buffer = torch.zeros(size, e.shape[1], dtype=torch.float32, device=e.device)
        n = e.shape[0]
        idx = (torch.arange(n, device=e.device) + self.position) % size
        self.buffer[idx] = e.float()
        self.position = (self.position + n) % size
        self.filled = min(size, self.filled + n)

    def measure(self, embeddings: torch.Tensor, projections: torch.Tensor, step: int) -> dict[str, float]:
        """The health values of this log step from its (B, d) embeddings and (B, p) projections; warns on collapse."""
        values = {
            "embedding_std": normalized_std(embeddings),
            "projection_std": normalized_std(projections),
            "effective_rank": effective_rank(self.buffer[: self.filled]) if self.filled else float("nan"),
        }
        collapsed = (values["projection_std"] < self.cfg.collapse_std
                     or values["effective_rank"] < self.cfg.collapse_rank)
        self.streak = self.streak + 1 if collapsed else 0
        if self.streak >= self.cfg.collapse_checks and not self.warned:
            self.warned = True
            log.warning(
                "representation collapse at step %d: projection_std %.3f (threshold %.3f), effective_rank %.2f "
                "(threshold %.2f) for %d log steps in a row; the encoder is mapping clips to (nearly) one point "
                "(see docs/architecture.md, Online monitor)", step, values["projection_std"], self.cfg.collapse_std,
                values["effective_rank"], self.cfg.collapse_rank, self.streak,
            )
        elif self.streak == 0:
            self.warned = False  # recovered: warn again if it collapses again
        return values


# ----------------------------------------------------------------------------------------------
# kNN / linear evaluation on a labeled task


@dataclasses.dataclass
class MonitorSet:
    """The fixed labeled set: normalized log-mels (N, 1, F, T) and labels (N,), train then test rows."""

    lms: torch.Tensor
    labels: torch.Tensor
    n_train: int
    task: str
    classes: int


def load_monitor_set(cfg: MonitorConfig, frontend: FrontendConfig) -> MonitorSet:
    """Decode the first split of task `cfg.task` (at most `cfg.max_clips` clips of `cfg.clip_sec`) into normalized log-mels."""
    from audiorq.data.tasks import load_task
    from audiorq.frontend import LogMelSpectrogram
    from audiorq.probe.embed import ClipDataset, clip_batches, crop_role
    from audiorq.probe.presets import probe_config

    task = load_task(cfg.task, cfg.data)
    if cfg.clip_sec:
        task = dataclasses.replace(task, unit_sec=cfg.clip_sec)
    split = task.splits[0]
    train = _stratified(task.labels[split.train], split.train, cfg.max_clips * len(split.train)
                        // max(1, len(split.train) + len(split.test)))
    test = _stratified(task.labels[split.test], split.test, cfg.max_clips - len(train))
    policy = probe_config("byola").pad_crop
    mel = LogMelSpectrogram.from_config(frontend)
    parts = []
    for indices, name in ((train, "train"), (test, "test")):
        clips = ClipDataset(task, indices, policy, crop_role(policy, name), seed=0)
        # The probe's loader: an undecodable clip stops the run with a ProbeError that names it.
        for waves in clip_batches(clips, EMBED_BATCH, 0, torch.device("cpu")):
            with torch.no_grad():
                parts.append(mel(waves))
    lms = torch.cat(parts)
    train_part = lms[: len(train)]
    lms = (lms - train_part.mean()) / train_part.std()  # the probe's scalar normalization, from the train clips
    labels = torch.as_tensor(np.concatenate([task.labels[train], task.labels[test]]), dtype=torch.int64)
    return MonitorSet(lms, labels, len(train), task.name, task.n_classes)


def _stratified(labels: np.ndarray, indices: np.ndarray, n: int) -> np.ndarray:
    """At most `n` of `indices`, the same share of each class, chosen by a fixed seed; sorted."""
    indices = np.asarray(indices)
    if len(indices) <= n:
        return np.sort(indices)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(indices))
    # Round-robin over classes in a shuffled order keeps the class shares of the full split.
    by_class: dict[int, list[int]] = {}
    for i in order:
        by_class.setdefault(int(labels[i]), []).append(int(indices[i]))
    picked: list[int] = []
    while len(picked) < n:
        for members in by_class.values():
            if members and len(picked) < n:
                picked.append(members.pop())
    return np.sort(np.asarray(picked, dtype=np.int64))


class OnlineEvaluator:
    """kNN and linear accuracy of an encoder on a `MonitorSet`; the encoder's train/eval mode is restored."""

    def __init__(self, data: MonitorSet, cfg: MonitorConfig, device: torch.device):
        self.data, self.cfg, self.device = data, cfg, device

    @torch.no_grad()
    def embed(self, encoder: nn.Module) -> torch.Tensor:
        """(N, d) embeddings of the monitor set by `encoder` in eval mode."""
        was_training = encoder.training
        encoder.eval()
        try:
            out = [encoder(self.data.lms[i: i + EMBED_BATCH].to(self.device)).float().cpu()
                   for i in range(0, len(self.data.lms), EMBED_BATCH)]
        finally:
            encoder.train(was_training)
        return torch.cat(out)

    def evaluate(self, encoder: nn.Module) -> dict[str, float]:
        """{"knn_acc", "linear_acc"} in % on the set's test rows."""
        emb, y, n = self.embed(encoder), self.data.labels, self.data.n_train
        return {
            "knn_acc": knn_accuracy(emb[:n], y[:n], emb[n:], y[n:], k=self.cfg.k),
            "linear_acc": linear_accuracy(emb[:n], y[:n], emb[n:], y[n:]),
        }
