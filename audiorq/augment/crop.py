"""BYOL-A random resize crop on log-mel, batched: every sample gets its own crop in one grid_sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from audiorq.augment.sampling import uniform


class RandomResizeCrop(nn.Module):
    """Crop a random (freq, time) box from a zero-padded virtual canvas and resize it back.

    The input sits centred on a canvas `virtual_crop_scale` times its size (zeros elsewhere, which is the
    mean after normalization); the box is `freq_scale` x `time_scale` times the input size (clipped to the
    canvas) at a uniform random position; it is resampled to the input size with `interpolation`.
    Input (B, 1, F, T) or (B, F, T) -> same shape.
    """

    def __init__(
        self,
        virtual_crop_scale: tuple[float, float] = (1.0, 1.5),
        freq_scale: tuple[float, float] = (0.6, 1.5),
        time_scale: tuple[float, float] = (0.6, 1.5),
        interpolation: str = "bicubic",
    ):
        super().__init__()
        self.virtual_crop_scale = tuple(virtual_crop_scale)
        self.freq_scale = tuple(freq_scale)
        self.time_scale = tuple(time_scale)
        self.interpolation = interpolation

    def sample_boxes(
        self, batch: int, n_freq: int, n_time: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        """Crop boxes in input pixel coordinates: (B, 4) = (top, left, height, width), float32."""
        canvas_f = int(n_freq * self.virtual_crop_scale[0])
        canvas_t = int(n_time * self.virtual_crop_scale[1])
        u = uniform((batch, 4), 0.0, 1.0, generator, device)
        # Integer box sizes and offsets, as an image crop would take, so the sample-wise reference matches.
        h = (n_freq * (self.freq_scale[0] + (self.freq_scale[1] - self.freq_scale[0]) * u[:, 0])).floor()
        w = (n_time * (self.time_scale[0] + (self.time_scale[1] - self.time_scale[0]) * u[:, 1])).floor()
        h = h.clamp(1, canvas_f)
        w = w.clamp(1, canvas_t)
        top = ((canvas_f - h + 1) * u[:, 2]).floor().clamp(max=canvas_f - h)
        left = ((canvas_t - w + 1) * u[:, 3]).floor().clamp(max=canvas_t - w)
        # Canvas -> input coordinates: the input is centred on the canvas.
        top = top - (canvas_f - n_freq) // 2
        left = left - (canvas_t - n_time) // 2
        return torch.stack([top, left, h, w], dim=1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 1, F, T) or (B, F, T) -> same shape and dtype."""
        squeeze = x.dim() == 3
        if squeeze:
            x = x.unsqueeze(1)
        if x.dim() != 4:
            raise ValueError(f"expected (B, 1, F, T) or (B, F, T), got {tuple(x.shape)}")
        b, _, n_freq, n_time = x.shape
        boxes = self.sample_boxes(b, n_freq, n_time, generator, x.device)
        out = crop_and_resize(x, boxes, self.interpolation)
        return out.squeeze(1) if squeeze else out

    def extra_repr(self) -> str:
        return (
            f"virtual_crop_scale={self.virtual_crop_scale}, freq_scale={self.freq_scale}, "
            f"time_scale={self.time_scale}, interpolation={self.interpolation!r}"
        )


def crop_and_resize(x: torch.Tensor, boxes: torch.Tensor, interpolation: str = "bicubic") -> torch.Tensor:
    """Resample box (top, left, h, w) of each sample to the full size: (B, C, F, T), (B, 4) -> (B, C, F, T).

    Pixels outside the input read as zero. Pixel centres follow align_corners=False, the convention of
    `F.interpolate`, so a box equal to the input is the identity.
    """
    b, _, n_freq, n_time = x.shape
    top, left, h, w = (boxes[:, i].to(torch.float32).view(b, 1) for i in range(4))
    k_f = torch.arange(n_freq, device=x.device, dtype=torch.float32).view(1, -1)
    k_t = torch.arange(n_time, device=x.device, dtype=torch.float32).view(1, -1)
    # Output pixel k samples the box at (k + 0.5) * size / n - 0.5, then normalize to [-1, 1] of the input.
    y = top + (k_f + 0.5) * h / n_freq - 0.5
    t = left + (k_t + 0.5) * w / n_time - 0.5
    y = (2 * y + 1) / n_freq - 1  # (B, F)
    t = (2 * t + 1) / n_time - 1  # (B, T)
    grid = torch.stack(torch.broadcast_tensors(t.unsqueeze(1), y.unsqueeze(2)), dim=-1)  # (B, F, T, 2)
    out = F.grid_sample(x.float(), grid, mode=interpolation, padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)
