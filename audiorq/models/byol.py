"""BYOL learner: projector/predictor MLP heads, EMA target, symmetric 2 - 2·cos loss.

Small composable pieces (an MLP head, a momentum update, the loss) and a
`BYOLLearner` module that ties them to an encoder such as `AudioNTT2020`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


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


class BYOLLearner(nn.Module):
    """Online encoder + projector + predictor and their EMA target (encoder + projector).

    forward(view1, view2) with views (B, 1, F, T) returns the symmetric loss
    byol_loss(q1, z2') + byol_loss(q2, z1'), a scalar in [0, 8]; `update_target(decay)` does the EMA step.
    The target gets no gradients and is kept in the same train/eval mode as the online network.
    """

    def __init__(self, encoder: nn.Module, d: int, hidden_dim: int = 4096, proj_dim: int = 256):
        super().__init__()
        self.encoder = encoder
        self.projector = MLPHead(d, hidden_dim, proj_dim)
        self.predictor = MLPHead(proj_dim, hidden_dim, proj_dim)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in self.target_parameters():
            p.requires_grad_(False)

    def target_parameters(self) -> list[nn.Parameter]:
        """Parameters of the EMA target (encoder + projector)."""
        return list(self.target_encoder.parameters()) + list(self.target_projector.parameters())

    def online_predictions(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) -> predictor output (B, proj_dim)."""
        return self.predictor(self.projector(self.encoder(x)))

    @torch.no_grad()
    def target_projections(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) -> target projection (B, proj_dim), no gradient."""
        return self.target_projector(self.target_encoder(x))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Symmetric BYOL loss of two views (B, 1, F, T) each -> scalar."""
        # Both views go through the networks as one batch: BatchNorm then sees 2B samples, as in
        # BYOL-A's implementation, and one large kernel launch is cheaper than two.
        b = view1.shape[0]
        both = torch.cat([view1, view2])
        q = self.online_predictions(both)
        z = self.target_projections(both)
        return byol_loss(q[:b], z[b:]) + byol_loss(q[b:], z[:b])

    @torch.no_grad()
    def update_target(self, decay: float) -> None:
        """EMA step of the target towards the online encoder + projector."""
        momentum_update(self.encoder, self.target_encoder, decay)
        momentum_update(self.projector, self.target_projector, decay)
