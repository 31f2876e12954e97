"""Randomized quantization (RQ) of log-mel batches (B, 1, F, T) or (B, F, T): paper §3.2, docs/architecture.md.

Each row -- one (sample, mel bin) over time for ``per="channel"``, one whole sample for ``per="instance"`` --
gets its own quantizer: its value range [lo, hi] is split at bins - 1 sorted random cut points, and every value
is replaced by the reproduction value of its bin. The work is O(bins) numbers drawn per row plus streaming
passes over the data in cache-sized chunks; no (rows, bins, T) membership tensor is ever built. On CPU a fused
numba kernel (`quantize_kernel`) does a row's range, quantizer and mapping in one visit; the torch path below
serves CUDA, a forced `method`, and CPU without numba, with bit-identical results.
"""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np
import torch
from torch import nn

from audiorq.config import check_rq_options

__all__ = ["RandomizedQuantization", "quantize_rows", "randomized_quantization", "sample_quantizers"]

# Why chunks: the per-cut passes below re-read a chunk that is still in cache, and the temporaries (one fp32
# mask, or int64 indices for "search") stay chunk-sized, keeping peak extra memory near the output's 1x.
# On the 2-core dev CPU, 2^19 elements per chunk beat 2^17 (per-op overhead) and 2^21..2^23 (cache misses).
# On CUDA, chunks only bound the temporaries: 2^21 keeps int64 indices at 16 MiB.
_CHUNK_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 21}
_DEFAULT_CHUNK_ELEMENTS = 1 << 20

# Why two methods: "chain" costs two streaming passes per cut point (mask = x >= cut; out = lerp(out, y, mask));
# "search" costs one binary search per element (torch.searchsorted) plus a gather with int64 indices. On CPU,
# searchsorted is a scalar loop (about 8 ns per element) and gather is slow too, so chain won at every bins
# value measured (2..32; at 32 bins, 80 ms against 179 ms on (512, 1, 64, 96), 1 thread). On CUDA both are
# memory-bound: chain moves ~20 bytes per element per cut, search ~24 bytes in all, so search should win from
# 3 bins; that CUDA threshold is an estimate, not a measurement (no GPU in the dev session).
_SEARCH_FROM_BINS = {"cpu": 64, "cuda": 3}
_DEFAULT_SEARCH_FROM_BINS = 64

# The fused kernel copies only for non-contiguous or half-precision input, so its chunks just bound those
# copies (16 MiB in fp32); bigger chunks save per-call overhead (about 20 us a chunk).
_KERNEL_CHUNK_ELEMENTS = 1 << 22


@functools.cache
def _kernels() -> ModuleType | None:
    """The numba kernels module, or None when numba cannot be imported (the torch path is used then)."""
    try:
        from audiorq.augment import quantize_kernel
    except ImportError:
        return None
    return quantize_kernel


def _sorted_rows(fractions: torch.Tensor) -> torch.Tensor:
    """Each row of fractions (R, k), contiguous, sorted ascending; on CPU with numba, sorted in place."""
    kernels = _kernels() if fractions.device.type == "cpu" else None
    if kernels is None:
        return torch.sort(fractions, dim=1).values
    # Why not torch.sort: it costs 4x more on many short rows (27 ms against 6 ms for 32768 rows x 31).
    kernels.sort_rows(fractions.numpy())
    return fractions


def _uniform_fractions(
    shape: tuple[int, int], dtype: torch.dtype, device: torch.device, generator: torch.Generator | None,
) -> torch.Tensor:
    """U[0, 1) draws (bits mod 2^m) / 2^m of `dtype` (m = 24 or 53 significand bits), bits from the generator.

    On CPU these are exactly torch.rand's numbers (it keeps the same low bits of the same draws), but random_()
    costs 25% less per number; numba converts them in place, where torch ops would cost back the difference.
    Drawn on the generator's device and moved to `device`, so a CPU generator gives the same numbers on any
    device.
    """
    source = generator.device if generator is not None else device
    int_dtype = torch.int64 if dtype == torch.float64 else torch.int32
    bits = torch.empty(shape, dtype=int_dtype, device=source).random_(generator=generator).to(device)
    kernels = _kernels() if device.type == "cpu" else None
    if kernels is None:
        significand_bits = 53 if dtype == torch.float64 else 24
        return (bits & ((1 << significand_bits) - 1)).to(dtype).mul_(2.0 ** -significand_bits)
    fractions = bits.view(dtype)
    kernels.fractions_from_bits(bits.numpy(), fractions.numpy())
    return fractions


def _draw_fractions(
    rows: int, bins: int, random_bins: bool, random_values: bool, dtype: torch.dtype, device: torch.device,
    generator: torch.Generator | None, sort: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where cut points and values sit inside their ranges: cut fractions (R, bins - 1) or (1, bins - 1) in
    [0, 1), sorted per row unless `sort` is False, and value fractions (R, bins) or (1, bins). Draw order: cut
    fractions, then value fractions (`_uniform_fractions`; sorting floats gives the same numbers anywhere).
    """
    if random_bins:
        cut_fractions = _uniform_fractions((rows, bins - 1), dtype, device, generator)
        if sort:
            cut_fractions = _sorted_rows(cut_fractions)
    else:
        cut_fractions = (torch.arange(1, bins, dtype=dtype, device=device) / bins).unsqueeze(0)
    if random_values:
        value_fractions = _uniform_fractions((rows, bins), dtype, device, generator)
    else:
        value_fractions = torch.full((1, bins), 0.5, dtype=dtype, device=device)
    return cut_fractions, value_fractions


def _quantizers_from_fractions(
    lo: torch.Tensor, hi: torch.Tensor, cut_fractions: torch.Tensor, value_fractions: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin edges (R, bins + 1) and values (R, bins) of rows with range lo, hi (R,) from drawn fractions."""
    lo_col, hi_col = lo.unsqueeze(1), hi.unsqueeze(1)
    # lo + span * u is monotone in u, so sorted fractions give sorted cuts; the clamp keeps rounding from
    # pushing a cut above hi, which would knock hi out of the last bin.
    cuts = torch.minimum(lo_col + (hi_col - lo_col) * cut_fractions, hi_col)
    edges = torch.cat([lo_col, cuts, hi_col], dim=1)
    left, right = edges[:, :-1], edges[:, 1:]
    # The clamp keeps every value inside its own bin despite rounding, so the map stays monotone.
    values = torch.maximum(torch.minimum(left + (right - left) * value_fractions, right), left)
    return edges, values


def sample_quantizers(
    lo: torch.Tensor, hi: torch.Tensor, bins: int, random_bins: bool = True, random_values: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One quantizer per row from its range lo, hi (R,): bin edges (R, bins + 1) and values (R, bins).

    Edges are a_0 = lo <= a_1 <= ... <= a_bins = hi; bin i is [a_i, a_{i+1}) and hi falls in the last bin.
    Cut points a_1..a_{bins-1} are lo + (hi - lo) * u, u distributed as bins - 1 sorted U(0, 1) draws
    (``random_bins``) or u = k / bins.
    Values are a_i + (a_{i+1} - a_i) * v with v ~ U[0, 1) (``random_values``) or v = 1/2 (midpoints).
    With p = 1, `randomized_quantization` draws exactly these (same generator state, rows in order).
    """
    check_rq_options(bins, "channel", 1.0)
    fractions = _draw_fractions(lo.shape[0], bins, random_bins, random_values, lo.dtype, lo.device, generator)
    return _quantizers_from_fractions(lo, hi, *fractions)


def quantize_rows(
    rows: torch.Tensor, edges: torch.Tensor, values: torch.Tensor, out: torch.Tensor | None = None,
    method: str | None = None,
) -> torch.Tensor:
    """Replace each x in rows (R, L) by values[r, i] with i = #{cut points of row r <= x}: (R, L).

    `edges` (R, n + 1) and `values` (R, n) come from `sample_quantizers`; rows, edges and values share one
    dtype and device. `method` is "chain" or "search" (default: chosen by the number of bins and the device);
    both give identical results. `out` (R, L), if given, receives the result.
    """
    n_bins = values.shape[1]
    if out is None:
        out = torch.empty_like(rows)
    cuts = edges[:, 1:-1]
    if method is None:
        threshold = _SEARCH_FROM_BINS.get(rows.device.type, _DEFAULT_SEARCH_FROM_BINS)
        method = "search" if n_bins >= threshold else "chain"
    if method == "search" and n_bins > 1:
        index = torch.searchsorted(cuts.contiguous(), rows, right=True)
        return torch.gather(values, 1, index, out=out)
    if method not in ("chain", "search"):
        raise ValueError(f"quantize_rows: method must be 'chain' or 'search', got {method!r}")
    if n_bins == 1:
        return out.copy_(values.expand_as(out))
    # Cuts are sorted, so walking them upward and switching every x >= cut_k to values[k + 1] leaves x with
    # the value of the last cut it passes. lerp with a weight of exactly 0 or 1 returns one endpoint exactly
    # (torch computes end - (end - start) * (1 - w) for w >= 1/2), so this equals a table lookup bit for bit;
    # a float mask is used because comparison into a float buffer is vectorized where bool masks and
    # torch.where are not (10-25x slower per pass on CPU).
    out.copy_(values[:, :1].expand_as(out))
    mask = torch.empty_like(rows)
    for k in range(n_bins - 1):
        torch.ge(rows, cuts[:, k : k + 1], out=mask)
        out.lerp_(values[:, k + 1 : k + 2], mask)
    return out


def _check_finite(lo: torch.Tensor, hi: torch.Tensor, x: torch.Tensor) -> None:
    """Raise ValueError naming NaN or Inf if any row range (R,) is not finite (min/max propagate both)."""
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    if bool(finite.all()):
        return
    if bool(torch.isnan(lo).any() | torch.isnan(hi).any()):
        problem = "NaN"
    else:
        problem = "infinite values (Inf)"
    first_bad = int(torch.nonzero(~finite.reshape(x.shape[0], -1).all(dim=1))[0])
    raise ValueError(
        f"RandomizedQuantization: input contains {problem} (first in sample {first_bad} of a batch of "
        f"shape {tuple(x.shape)}); quantization needs finite input"
    )


def _quantize_chunk_fused(
    kernels: ModuleType, rows: torch.Tensor, cut_fractions: torch.Tensor, value_fractions: torch.Tensor,
    keep: np.ndarray, rows_per_sample: int, out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """RQ of a chunk's rows (R, L) by the fused kernel (unsorted cut fractions): result (R, L) (into `out` if
    given, contiguous), each row's lo, hi (R,), and the number of rows holding NaN or Inf."""
    rows = rows.detach().contiguous()
    result = torch.empty_like(rows) if out is None else out
    ranges = rows.new_empty((rows.shape[0], 2))
    key_dtype = np.int32 if rows.dtype == torch.float32 else np.int64
    rows_array, ranges_array = rows.numpy(), ranges.numpy()
    non_finite_rows = kernels.quantize_rows_fused(
        rows_array, rows_array.view(key_dtype), cut_fractions.numpy(), value_fractions.numpy(), keep,
        rows_per_sample, result.numpy(), ranges_array, ranges_array.view(key_dtype))
    return result, ranges[:, 0], ranges[:, 1], non_finite_rows


def randomized_quantization(
    x: torch.Tensor, bins: int = 5, random_bins: bool = True, random_values: bool = True, per: str = "channel",
    p: float = 1.0, generator: torch.Generator | None = None, *, method: str | None = None,
) -> torch.Tensor:
    """Randomized quantization of x (B, 1, F, T) or (B, F, T): same shape, dtype and device (contiguous).

    ``per="channel"`` quantizes each (sample, mel bin) row over time; ``per="instance"`` uses one quantizer
    per sample. Each sample is quantized with probability `p` and returned unchanged otherwise. Half
    precision input is computed in float32. `method` forces the torch path with that `quantize_rows` method
    (same result as the default: the fused numba kernel on CPU, when numba is installed).
    Raises ValueError on NaN/Inf input or a bad argument.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"RandomizedQuantization: input must be a floating-point tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"RandomizedQuantization: input must be (B, 1, F, T) or (B, F, T), got shape "
                         f"{tuple(x.shape)}")
    check_rq_options(bins, per, p)

    batch = x.shape[0]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    per_sample = x[0].numel()
    row_length = x.shape[-1] if per == "channel" else per_sample
    rows_per_sample = per_sample // row_length
    # Which samples stay unchanged is drawn before the quantizers (only when p < 1), so for one seed every
    # p < 1 gives the same quantizers.
    keep = None
    if p < 1.0:
        source = generator.device if generator is not None else x.device
        keep = (torch.rand((batch,), generator=generator, device=source, dtype=compute_dtype) >= p).to(x.device)
    # All rows' fractions are drawn up front (2 * bins - 1 numbers per row, small next to a row of T values),
    # so the result does not depend on the chunk size and matches `sample_quantizers` draw for draw.
    kernels = _kernels() if x.device.type == "cpu" and method is None else None
    cut_fractions, value_fractions = _draw_fractions(
        batch * rows_per_sample, bins, random_bins, random_values, compute_dtype, x.device, generator,
        sort=kernels is None)  # the kernel sorts each row's cut fractions itself, while they are in cache

    if kernels is not None:
        chunk_elements = _KERNEL_CHUNK_ELEMENTS
        keep_flags = keep.numpy() if keep is not None else np.zeros(batch, dtype=np.bool_)
    else:
        chunk_elements = _CHUNK_ELEMENTS.get(x.device.type, _DEFAULT_CHUNK_ELEMENTS)
    chunk_samples = max(1, chunk_elements // per_sample)
    lows, highs = [], []
    non_finite_rows = 0
    for start in range(0, batch, chunk_samples):
        stop = min(start + chunk_samples, batch)
        # reshape copies only a non-contiguous chunk, and .to only for half precision: both chunk-sized.
        rows = x[start:stop].reshape(-1, row_length).to(compute_dtype)
        first_row, last_row = start * rows_per_sample, stop * rows_per_sample
        chunk_cuts = cut_fractions[first_row:last_row] if random_bins else cut_fractions
        chunk_values = value_fractions[first_row:last_row] if random_values else value_fractions
        target = out[start:stop].view(-1, row_length)
        buffer = target if target.dtype == compute_dtype else None
        if kernels is not None:
            result, lo, hi, bad_rows = _quantize_chunk_fused(
                kernels, rows, chunk_cuts, chunk_values, keep_flags[start:stop], rows_per_sample, buffer)
            non_finite_rows += bad_rows
        else:
            lo, hi = rows.amin(dim=1), rows.amax(dim=1)
            edges, values = _quantizers_from_fractions(lo, hi, chunk_cuts, chunk_values)
            result = quantize_rows(rows, edges, values, out=buffer, method=method)
            if keep is not None:
                # Weights of exactly 0/1 select one side bit for bit, without a host sync or a bool mask.
                weight = keep[start:stop].to(compute_dtype).repeat_interleave(rows_per_sample).unsqueeze(1)
                result.lerp_(rows, weight)
        lows.append(lo)
        highs.append(hi)
        if result is not target:
            target.copy_(result)
    # One check after the loop: on CUDA it is the only host synchronisation. The kernel counted bad rows
    # already, so on its path the check (0.2 ms on 32768 rows) only runs to name the problem.
    if kernels is None or non_finite_rows:
        _check_finite(torch.cat(lows), torch.cat(highs), x)
    return out


class RandomizedQuantization(nn.Module):
    """Randomized quantization augmentation: (B, 1, F, T) or (B, F, T) -> same shape, dtype and device."""

    def __init__(self, bins: int = 5, random_bins: bool = True, random_values: bool = True,
                 per: str = "channel", p: float = 1.0):
        super().__init__()
        check_rq_options(bins, per, p)
        self.bins = bins
        self.random_bins = bool(random_bins)
        self.random_values = bool(random_values)
        self.per = per
        self.p = float(p)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return randomized_quantization(x, self.bins, self.random_bins, self.random_values, self.per, self.p,
                                       generator)

    def extra_repr(self) -> str:
        return (f"bins={self.bins}, random_bins={self.random_bins}, random_values={self.random_values}, "
                f"per={self.per!r}, p={self.p}")
