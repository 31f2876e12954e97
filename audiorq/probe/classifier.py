"""Linear classifier on frozen embeddings: StandardScaler + one nn.Linear-equivalent layer, Adam, early stopping.

Several runs (seeds) train together as one batched linear layer, weight (R, C, d): each run has its own
initialization, shuffling and validation carve-out, and Adam is element-wise, so every run gets exactly
the updates it would get alone, for the cost of one minibatch loop.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from tqdm.auto import tqdm

LOSSES = ("ce", "ce_over_c")


@dataclasses.dataclass
class StandardScaler:
    """Per-feature standardization fitted on training rows; constant features get scale 1 (like sklearn)."""

    mean: torch.Tensor  # (d,)
    scale: torch.Tensor  # (d,)

    @classmethod
    def fit(cls, x: torch.Tensor) -> "StandardScaler":
        """Fit on x (N, d); statistics in float64, population std."""
        var, mean = torch.var_mean(x.double(), dim=0, unbiased=False)
        scale = var.sqrt()
        scale = torch.where(scale > 1e-12 * mean.abs().clamp_min(1.0), scale, torch.ones_like(scale))
        return cls(mean.to(x.dtype), scale.to(x.dtype))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, d) standardized."""
        return (x - self.mean) / self.scale


@dataclasses.dataclass
class ClassifierRun:
    """One trained run: accuracies of the restored best epoch, the epoch history and the weights."""

    seed: int
    val_acc: float
    test_acc: float
    best_epoch: int  # 1-based epoch whose weights were restored
    epochs: int  # epochs trained before stopping
    val_history: list[float]  # validation accuracy after each epoch
    n_train: int  # rows the classifier was fitted on (after any validation carve-out)
    n_valid: int
    n_test: int
    weight: torch.Tensor  # (C, d), applied to standardized embeddings
    bias: torch.Tensor  # (C,)
    scaler: StandardScaler


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..N-1 into (fit, valid) with round(fraction * N) validation items covering every
    class that has at least two items: one random item per such class, the rest uniformly at random
    (never the only item of a class). Tiny sets get one item per class even when that exceeds the fraction."""
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    classes, counts = np.unique(labels, return_counts=True)
    coverable = set(classes[counts >= 2].tolist())
    n_valid = max(1, int(round(fraction * n)), len(coverable))
    first_of_class: dict[int, int] = {}
    for pos in order:
        c = int(labels[pos])
        if c in coverable and c not in first_of_class:
            first_of_class[c] = int(pos)
    chosen = np.zeros(n, dtype=bool)
    chosen[list(first_of_class.values())] = True
    # Items of single-item classes stay in train, or the classifier could never see those classes.
    singleton = np.isin(labels, classes[counts < 2])
    rest = order[~chosen[order] & ~singleton[order]]
    chosen[rest[: n_valid - len(first_of_class)]] = True
    return np.sort(np.flatnonzero(~chosen)), np.sort(np.flatnonzero(chosen))


def batched_accuracy(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Accuracy per run (R,) of a batched linear layer weight (R, C, d), bias (R, 1, C) on x (N, d) or
    (R, N, d) with labels y (N,) or (R, N); computed in row chunks to bound memory."""
    runs, n_classes, _ = weight.shape
    n = x.shape[-2]
    chunk = max(1, (1 << 24) // max(1, runs * n_classes))
    correct = torch.zeros(runs, device=weight.device)
    for start in range(0, n, chunk):
        xc = x[..., start : start + chunk, :]
        yc = y[..., start : start + chunk]
        pred = (torch.matmul(xc, weight.transpose(1, 2)) + bias).argmax(dim=-1)  # (R, n)
        correct += (pred == yc).sum(dim=-1)
    return correct / n


@torch.no_grad()
def linear_ce_gradients(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of scale * mean cross-entropy of softmax(x W^T + b), per run: x (R, b, d), y (R, b),
    weight (R, C, d), bias (R, 1, C) -> (dW (R, C, d), db (R, 1, C)).

    Written out ((softmax - onehot) / b) because autograd through the batched matmul is ~10x slower on CPU.
    """
    probs = torch.baddbmm(bias, x, weight.transpose(1, 2)).softmax(dim=-1)  # (R, b, C)
    probs.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(probs[..., :1], -1.0))
    probs *= scale / x.shape[1]
    return torch.bmm(probs.transpose(1, 2), x), probs.sum(dim=1, keepdim=True)


def _init_linear(runs: int, d: int, n_classes: int, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    # nn.Linear's default init (kaiming_uniform with a=sqrt(5)) is U(-1/sqrt(d), 1/sqrt(d)) for weight and bias.
    bound = 1.0 / d ** 0.5
    weight = torch.empty(runs, n_classes, d)
    bias = torch.empty(runs, 1, n_classes)
    for r, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        weight[r].uniform_(-bound, bound, generator=g)
        bias[r].uniform_(-bound, bound, generator=g)
    return weight, bias


def train_linear_classifier(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_valid: torch.Tensor | None,
    y_valid: torch.Tensor | None,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    n_classes: int,
    *,
    seeds: list[int] | tuple[int, ...] = (42,),
    lr: float = 1e-3,
    weight_decay: float = 1e-8,
    batch_size: int = 200,
    max_epochs: int = 200,
    patience: int = 10,
    loss: str = "ce",
    valid_fraction: float = 0.1,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str | None = None,
) -> list[ClassifierRun]:
    """Train one linear classifier per seed on embeddings x (N, d) with int labels y (N,).

    StandardScaler fitted on x_train (all of it, before any carve-out). When x_valid is None each run carves
    its own class-covering `valid_fraction` of train for early stopping. Adam, minibatches of
    min(batch_size, n_fit) reshuffled each epoch; after each epoch a validation accuracy >= the best so far
    (ties count) saves the weights; `patience` epochs without that stop the run (0: no early stopping, keep
    the last epoch). The best weights are restored before testing.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if (x_valid is None) != (y_valid is None):
        raise ValueError("give both x_valid and y_valid, or neither")
    seeds = [int(s) for s in seeds]
    runs = len(seeds)
    device = torch.device(device)
    y_train_cpu = torch.as_tensor(y_train, dtype=torch.long).cpu()
    if y_train_cpu.numel() and int(y_train_cpu.max()) >= n_classes:
        raise ValueError(f"label {int(y_train_cpu.max())} >= n_classes={n_classes}")

    x_train = torch.as_tensor(x_train, dtype=torch.float32).to(device)
    scaler = StandardScaler.fit(x_train)
    x_train = scaler(x_train)
    y_train = y_train_cpu.to(device)
    x_test = scaler(torch.as_tensor(x_test, dtype=torch.float32).to(device))
    y_test = torch.as_tensor(y_test, dtype=torch.long).to(device)

    if x_valid is None:
        carved = [carve_validation(y_train_cpu.numpy(), valid_fraction, seed) for seed in seeds]
        fit_idx = torch.from_numpy(np.stack([fit for fit, _ in carved]))  # (R, n_fit), CPU
        val_idx = torch.from_numpy(np.stack([val for _, val in carved])).to(device)
        x_val, y_val = x_train[val_idx], y_train[val_idx]  # (R, n_val, d), (R, n_val)
    else:
        fit_idx = torch.arange(len(x_train)).expand(runs, -1)
        x_val = scaler(torch.as_tensor(x_valid, dtype=torch.float32).to(device))
        y_val = torch.as_tensor(y_valid, dtype=torch.long).to(device)
    n_fit, n_val = fit_idx.shape[1], x_val.shape[-2]
    if n_fit == 0 or n_val == 0 or len(x_test) == 0:
        raise ValueError(f"empty set: n_fit={n_fit}, n_valid={n_val}, n_test={len(x_test)}")

    weight, bias = _init_linear(runs, x_train.shape[1], n_classes, seeds)
    weight, bias = weight.to(device), bias.to(device)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")
    shufflers = [torch.Generator().manual_seed(seed + 1_000_003) for seed in seeds]
    bs = min(batch_size, n_fit)
    loss_scale = 1.0 / n_classes if loss == "ce_over_c" else 1.0

    best_acc = torch.full((runs,), -1.0)
    best_epoch = torch.zeros(runs, dtype=torch.long)
    since_best = torch.zeros(runs, dtype=torch.long)
    active = torch.ones(runs, dtype=torch.bool)
    best_weight, best_bias = weight.clone(), bias.clone()
    epochs_run = torch.zeros(runs, dtype=torch.long)
    history: list[torch.Tensor] = []

    # disable=None: no bar when stderr is not a terminal, so redirected logs get no escape codes.
    bar = tqdm(range(1, max_epochs + 1), desc=f"{desc or 'linear classifier'} ({runs} runs)", unit="epoch",
               disable=None if progress else True, leave=False)
    for epoch in bar:
        order = torch.stack([fit_idx[r][torch.randperm(n_fit, generator=g)] for r, g in enumerate(shufflers)])
        order = order.to(device, non_blocking=True)
        for start in range(0, n_fit, bs):
            idx = order[:, start : start + bs]  # (R, b)
            weight.grad, bias.grad = linear_ce_gradients(x_train[idx], y_train[idx], weight, bias, loss_scale)
            optimizer.step()
        with torch.no_grad():
            acc = batched_accuracy(x_val, y_val, weight, bias).cpu()
            history.append(acc)
            epochs_run += active.long()
            improved = active & ((acc >= best_acc) | (patience == 0))
            if improved.any():
                mask = improved.to(device)
                best_weight[mask] = weight[mask]
                best_bias[mask] = bias[mask]
                best_acc = torch.where(improved, acc, best_acc)
                best_epoch = torch.where(improved, torch.tensor(epoch), best_epoch)
            since_best = torch.where(improved, torch.zeros_like(since_best), since_best + 1)
            if patience > 0:
                active &= since_best < patience
        bar.set_postfix(active=int(active.sum()), best_val=f"{best_acc.max().item():.3f}", refresh=False)
        if not active.any():
            break
    bar.close()

    with torch.no_grad():
        val_acc = batched_accuracy(x_val, y_val, best_weight, best_bias).cpu()
        test_acc = batched_accuracy(x_test, y_test, best_weight, best_bias).cpu()
    stacked = torch.stack(history)  # (epochs, R)
    return [
        ClassifierRun(
            seed=seed, val_acc=float(val_acc[r]), test_acc=float(test_acc[r]), best_epoch=int(best_epoch[r]),
            epochs=int(epochs_run[r]), val_history=stacked[: int(epochs_run[r]), r].tolist(), n_train=n_fit,
            n_valid=n_val, n_test=len(x_test), weight=best_weight[r].cpu(), bias=best_bias[r, 0].cpu(),
            scaler=StandardScaler(scaler.mean.cpu(), scaler.scale.cpu()),
        )
        for r, seed in enumerate(seeds)
    ]
