"""BYOL learner: projector/predictor MLP heads, EMA target, symmetric 2 - 2·cos loss.

Small composable pieces (an MLP head, a momentum update, the loss) and a
`BYOLLearner` module that ties them to an encoder such as `AudioNTT2020`.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from audiorq.config import BN_VIEWS


class MLPHead(nn.Module):
    """BYOL projector / predictor: Linear -> BatchNorm1d -> ReLU -> Linear, (B, in_dim) -> (B, out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.net(x)


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, decay: float) -> None:
    """In place: target <- decay * target + (1 - decay) * online for parameters; buffers are copied.

    Both modules must have the same structure. Buffers (BatchNorm running statistics) are copied
    rather than averaged, so the target evaluates with the online network's statistics.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    online_params = list(online.parameters())
    target_params = list(target.parameters())
    if len(online_params) != len(target_params):
        raise ValueError("online and target modules have different parameter lists")
    # One fused kernel over all tensors instead of a Python loop of small ops.
    torch._foreach_lerp_(target_params, [p.detach() for p in online_params], 1.0 - decay)
    for b_t, b_o in zip(target.buffers(), online.buffers()):
        b_t.copy_(b_o)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2·cos(p, z) per sample, averaged: p, z (B, D) -> scalar; no gradient flows into z."""
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.detach().float(), dim=-1)
    return (2.0 - 2.0 * (p * z).sum(dim=-1)).mean()


class BYOLOutput(NamedTuple):
    """What one BYOL step computed: the loss and, detached, the online network's outputs for both views."""

    loss: torch.Tensor  # scalar
    embeddings: torch.Tensor  # (2B, d) encoder outputs, view 1 then view 2
    projections: torch.Tensor  # (2B, proj_dim) projector outputs, same order


class BYOLLearner(nn.Module):
    """Online encoder + projector + predictor and their EMA target (encoder + projector).

    forward(view1, view2) with views (B, 1, F, T) returns the symmetric loss
    byol_loss(q1, z2') + byol_loss(q2, z1'), a scalar in [0, 8] (a `BYOLOutput` with `outputs=True`);
    `update_target(decay)` does the EMA step. The target gets no gradients and is kept in the same
    train/eval mode as the online network.

    bn_views "separate": each view goes through the networks on its own, so every BatchNorm normalizes
    one view's B samples (BYOL-A); "joint": both views as one 2B batch (one kernel launch per layer).
    `freeze_encoder(True)` keeps the online encoder in eval mode and out of the graph (heads-only training).
    """

    def __init__(self, encoder: nn.Module, d: int, hidden_dim: int = 4096, proj_dim: int = 256,
                 bn_views: str = "separate"):
        super().__init__()
        if bn_views not in BN_VIEWS:
            raise ValueError(f"bn_views must be one of {BN_VIEWS}, got {bn_views!r}")
        self.bn_views = bn_views
        self.encoder = encoder
        self.projector = MLPHead(d, hidden_dim, proj_dim)
        self.predictor = MLPHead(proj_dim, hidden_dim, proj_dim)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in self.target_parameters():
            p.requires_grad_(False)
        self.encoder_frozen = False

    def target_parameters(self) -> list[nn.Parameter]:
        """Parameters of the EMA target (encoder + projector)."""
        return list(self.target_encoder.parameters()) + list(self.target_projector.parameters())

    def freeze_encoder(self, frozen: bool) -> None:
        """Frozen: the online encoder runs in eval mode under no_grad (weights and BN statistics kept)."""
        self.encoder_frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> "BYOLLearner":
        """As nn.Module.train, except that a frozen online encoder stays in eval mode."""
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def online(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 1, F, T) -> encoder output (B, d), projection (B, proj_dim), prediction (B, proj_dim)."""
        if self.encoder_frozen:
            with torch.no_grad():
                y = self.encoder(x)
        else:
            y = self.encoder(x)
        z = self.projector(y)
        return y, z, self.predictor(z)

    @torch.no_grad()
    def target_projections(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) -> target projection (B, proj_dim), no gradient."""
        return self.target_projector(self.target_encoder(x))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, outputs: bool = False) -> torch.Tensor | BYOLOutput:
        """Symmetric BYOL loss of two views (B, 1, F, T) each -> scalar (or a BYOLOutput with `outputs`)."""
        b = view1.shape[0]
        if self.bn_views == "joint":
            both = torch.cat([view1, view2])
            y, z, q = self.online(both)
            t = self.target_projections(both)
            q1, q2, t1, t2 = q[:b], q[b:], t[:b], t[b:]
        else:
            (y1, z1, q1), (y2, z2, q2) = self.online(view1), self.online(view2)
            t1, t2 = self.target_projections(view1), self.target_projections(view2)
            y, z = torch.cat([y1, y2]), torch.cat([z1, z2])
        loss = byol_loss(q1, t2) + byol_loss(q2, t1)
        return BYOLOutput(loss, y.detach(), z.detach()) if outputs else loss

    @torch.no_grad()
    def update_target(self, decay: float) -> None:
        """EMA step of the target towards the online encoder + projector."""
        momentum_update(self.encoder, self.target_encoder, decay)
        momentum_update(self.projector, self.target_projector, decay)
