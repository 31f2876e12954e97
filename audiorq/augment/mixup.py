"""BYOL-A Mixup: mix each input with a random earlier input from a memory bank, in the linear domain."""

from __future__ import annotations

import torch
from torch import nn

from audiorq.augment.sampling import uniform


class MixupBYOLA(nn.Module):
    """x' = log((1 - l) exp(x) + l exp(m)), l ~ U(0, ratio), m a random entry of a bank of past inputs.

    The bank is a ring buffer of the last `memory_size` inputs (detached), filled after mixing, so a
    batch never mixes with itself; with an empty bank the input passes unchanged. With
    `log_mixup_exp=False` the mix is linear in the log domain. Input (B, 1, F, T) -> same shape.
    The bank is part of the module's state (`get_extra_state`), so a resumed run continues exactly.
    """

    def __init__(self, ratio: float = 0.4, memory_size: int = 2048, log_mixup_exp: bool = True):
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        if memory_size < 1:
            raise ValueError(f"memory_size must be >= 1, got {memory_size}")
        self.ratio, self.memory_size, self.log_mixup_exp = ratio, memory_size, log_mixup_exp
        self.memory: torch.Tensor | None = None  # (memory_size, *item_shape)
        self.filled = 0
        self.position = 0

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 1, F, T) -> same shape and dtype."""
        if self.memory is not None and (self.memory.shape[1:] != x.shape[1:] or self.memory.device != x.device):
            self.reset()  # a different input size or device starts a fresh bank
        out = x
        if self.filled > 0:
            b = x.shape[0]
            pick = (uniform((b,), 0.0, 1.0, generator, x.device) * self.filled).long().clamp(max=self.filled - 1)
            partner = self.memory[pick].to(torch.float32)
            lam = uniform((b,), 0.0, self.ratio, generator, x.device).view(b, *([1] * (x.dim() - 1)))
            xf = x.float()
            if self.log_mixup_exp:
                # logaddexp form of log((1-l) e^x + l e^m): stable for large log-mel values.
                mixed = torch.logaddexp(xf + torch.log1p(-lam), partner + torch.log(lam.clamp_min(1e-12)))
                mixed = torch.where(lam > 0, mixed, xf)
            else:
                mixed = (1 - lam) * xf + lam * partner
            out = mixed.to(x.dtype)
        self._remember(x.detach())
        return out

    def _remember(self, x: torch.Tensor) -> None:
        if self.memory is None:
            self.memory = torch.empty((self.memory_size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        items = x[-self.memory_size :]
        n = items.shape[0]
        idx = (self.position + torch.arange(n, device=x.device)) % self.memory_size
        self.memory[idx] = items.to(self.memory.dtype)
        self.position = (self.position + n) % self.memory_size
        self.filled = min(self.memory_size, self.filled + n)

    def reset(self) -> None:
        """Empty the memory bank."""
        self.memory, self.filled, self.position = None, 0, 0

    def get_extra_state(self) -> dict:
        memory = None if self.memory is None else self.memory[: self.filled].clone()
        return {"memory": memory, "filled": self.filled, "position": self.position}

    def set_extra_state(self, state: dict) -> None:
        self.reset()
        if state.get("memory") is not None:
            mem = state["memory"]
            self.memory = torch.empty((self.memory_size, *mem.shape[1:]), dtype=mem.dtype, device=mem.device)
            self.memory[: mem.shape[0]] = mem
            self.filled, self.position = int(state["filled"]), int(state["position"])

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, memory_size={self.memory_size}, log_mixup_exp={self.log_mixup_exp}"
