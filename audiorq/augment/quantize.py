"""Randomized quantization (RQ) of log-mel batches (B, 1, F, T) or (B, F, T): paper §3.2, design.md.

Each row -- one (sample, mel bin) over time for ``per="channel"``, one whole sample for ``per="instance"`` --
gets its own quantizer: its value range [lo, hi] is split at bins - 1 sorted random cut points, and every value
is replaced by the reproduction value of its bin. The work is O(bins) numbers drawn per row plus streaming
passes over the data in cache-sized chunks; no (rows, bins, T) membership tensor is ever built.
"""

from __future__ import annotations

import torch
from torch import nn

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


def _draw_fractions(
    rows: int, bins: int, random_bins: bool, random_values: bool, dtype: torch.dtype, device: torch.device,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where cut points and values sit inside their ranges: sorted cut fractions (R, bins - 1) in [0, 1] and
    value fractions (R, bins) or (1, bins). Draw order: cut fractions, then value fractions.

    Drawn on the generator's device and moved to `device`, so a CPU generator gives the same quantizers on
    any device.
    """
    source = generator.device if generator is not None else device
    if random_bins:
        # Sorted U(0, 1) draws without a sort: with E_1..E_bins ~ Exp(1) and S_k = E_1 + ... + E_k,
        # (S_1, ..., S_{bins-1}) / S_bins has exactly the law of bins - 1 sorted uniforms (uniform spacings).
        # Why: torch.sort over many short rows costs far more on CPU (27 ms against 6 ms for 32768 rows x 31
        # cuts) and, at 32 bins, more than all the passes over the data.
        spacings = torch.rand((rows, bins), generator=generator, device=source, dtype=dtype)
        spacings = spacings.log_().neg_()  # Exp(1); rand can return 0, giving +inf: handled below
        sums = spacings.cumsum_(dim=1)
        cut_fractions = (sums[:, :-1] / sums[:, -1:]).nan_to_num_(nan=1.0).clamp_(0.0, 1.0)
        if source.type != "cpu":
            # A parallel scan may round partial sums out of order; the cut walk relies on sorted cuts.
            cut_fractions = torch.cummax(cut_fractions, dim=1).values
        cut_fractions = cut_fractions.to(device)
    else:
        cut_fractions = (torch.arange(1, bins, dtype=dtype, device=device) / bins).expand(rows, bins - 1)
    if random_values:
        value_fractions = torch.rand((rows, bins), generator=generator, device=source, dtype=dtype).to(device)
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
    if bins < 1:
        raise ValueError(f"RandomizedQuantization: bins must be >= 1, got {bins}")
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


def randomized_quantization(
    x: torch.Tensor, bins: int = 5, random_bins: bool = True, random_values: bool = True, per: str = "channel",
    p: float = 1.0, generator: torch.Generator | None = None, *, method: str | None = None,
) -> torch.Tensor:
    """Randomized quantization of x (B, 1, F, T) or (B, F, T): same shape, dtype and device (contiguous).

    ``per="channel"`` quantizes each (sample, mel bin) row over time; ``per="instance"`` uses one quantizer
    per sample. Each sample is quantized with probability `p` and returned unchanged otherwise. Half
    precision input is computed in float32. `method` forces a `quantize_rows` method (same result).
    Raises ValueError on NaN/Inf input or a bad argument.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"RandomizedQuantization: input must be a floating-point tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"RandomizedQuantization: input must be (B, 1, F, T) or (B, F, T), got shape "
                         f"{tuple(x.shape)}")
    if per not in ("channel", "instance"):
        raise ValueError(f"RandomizedQuantization: per must be 'channel' or 'instance', got {per!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"RandomizedQuantization: p must be in [0, 1], got {p}")
    if bins < 1:
        raise ValueError(f"RandomizedQuantization: bins must be >= 1, got {bins}")

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
    cut_fractions, value_fractions = _draw_fractions(
        batch * rows_per_sample, bins, random_bins, random_values, compute_dtype, x.device, generator)

    chunk_elements = _CHUNK_ELEMENTS.get(x.device.type, _DEFAULT_CHUNK_ELEMENTS)
    chunk_samples = max(1, chunk_elements // per_sample)
    lows, highs = [], []
    for start in range(0, batch, chunk_samples):
        stop = min(start + chunk_samples, batch)
        # reshape copies only a non-contiguous chunk, and .to only for half precision: both chunk-sized.
        rows = x[start:stop].reshape(-1, row_length).to(compute_dtype)
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        lows.append(lo)
        highs.append(hi)
        first_row, last_row = start * rows_per_sample, stop * rows_per_sample
        edges, values = _quantizers_from_fractions(
            lo, hi, cut_fractions[first_row:last_row],
            value_fractions[first_row:last_row] if random_values else value_fractions)
        target = out[start:stop].view(-1, row_length)
        result = quantize_rows(rows, edges, values, out=target if target.dtype == compute_dtype else None,
                               method=method)
        if keep is not None:
            # Weights of exactly 0/1 select one side bit for bit, without a host sync or a bool mask.
            weight = keep[start:stop].to(compute_dtype).repeat_interleave(rows_per_sample).unsqueeze(1)
            result.lerp_(rows, weight)
        if result is not target:
            target.copy_(result)
    # One check after the loop: on CUDA it is the only host synchronisation.
    _check_finite(torch.cat(lows), torch.cat(highs), x)
    return out


class RandomizedQuantization(nn.Module):
    """Randomized quantization augmentation: (B, 1, F, T) or (B, F, T) -> same shape, dtype and device."""

    def __init__(self, bins: int = 5, random_bins: bool = True, random_values: bool = True,
                 per: str = "channel", p: float = 1.0):
        super().__init__()
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"RandomizedQuantization: bins must be an integer >= 1, got {bins!r}")
        if per not in ("channel", "instance"):
            raise ValueError(f"RandomizedQuantization: per must be 'channel' or 'instance', got {per!r}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"RandomizedQuantization: p must be in [0, 1], got {p}")
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
