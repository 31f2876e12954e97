"""Fused CPU kernels (numba) for randomized quantization: a row's range, quantizer and mapping in one visit.

`audiorq.augment.quantize` imports this module lazily and falls back to its torch path when numba is missing.
Every number is computed with the float operations of the torch path (`_quantizers_from_fractions`, the
"chain" walk of `quantize_rows`), in the same order and dtype, so both give bit-identical output.
Single-threaded, so it never uses more threads than torch.set_num_threads(1) allows, and nogil, so that
callers' threads (e.g. a DataLoader's) can run it side by side.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["fractions_from_bits", "quantize_rows_fused", "sort_rows"]


@njit(cache=True, nogil=True)
def fractions_from_bits(bits: np.ndarray, fractions: np.ndarray) -> None:
    """fractions = (bits mod 2^m) * 2^-m elementwise, m the significand width of fractions' dtype (24 or 53).

    `fractions` may be a float view of `bits` itself (same shape and itemsize).
    """
    float_type, int_type = fractions.dtype.type, bits.dtype.type
    significand_bits = np.finfo(fractions.dtype).nmant + 1
    mask = int_type((1 << significand_bits) - 1)
    scale = float_type(1.0 / (1 << significand_bits))
    flat_bits, flat_fractions = bits.reshape(-1), fractions.reshape(-1)
    # Why a block buffer: LLVM vectorizes a loop only when its input and output provably do not overlap, and
    # here they may be the same memory. The int_type cast keeps int32 & int32 from widening to int64, which
    # AVX2 cannot convert to float in vectors. Exact: an integer below 2^m, times 2^-m, is a float of the dtype.
    block = np.empty(256, fractions.dtype)
    for start in range(0, flat_bits.shape[0], block.shape[0]):
        stop = min(start + block.shape[0], flat_bits.shape[0])
        for i in range(start, stop):
            block[i - start] = float_type(int_type(flat_bits[i] & mask)) * scale
        for i in range(start, stop):
            flat_fractions[i] = block[i - start]


@njit(cache=True, nogil=True)
def _sort_into(source: np.ndarray, target: np.ndarray) -> None:
    """Write source (k,) sorted ascending into target (k,)."""
    # Insertion sort whose inner step is a branch-free compare-exchange: random draws make the branches of a
    # textbook insertion sort mispredict, which cost 2-5x more than these k(k-1)/2 selects (k = 4 .. 31).
    for i in range(source.shape[0]):
        value = source[i]
        for p in range(i, 0, -1):
            below = target[p - 1]
            target[p] = below if below > value else value
            value = value if below > value else below
        target[0] = value


@njit(cache=True, nogil=True)
def sort_rows(fractions: np.ndarray) -> None:
    """Sort each row of fractions (R, k) ascending, in place."""
    scratch = np.empty(fractions.shape[1], fractions.dtype)
    for r in range(fractions.shape[0]):
        _sort_into(fractions[r], scratch)
        fractions[r] = scratch


@njit(cache=True, nogil=True)
def _minimum(a: float, b: float) -> float:
    """torch.minimum of two scalars: NaN if either is NaN."""
    return a if (a < b) | (a != a) else b


@njit(cache=True, nogil=True)
def _maximum(a: float, b: float) -> float:
    """torch.maximum of two scalars: NaN if either is NaN."""
    return a if (a > b) | (a != a) else b


@njit(cache=True, nogil=True)
def _pass_of_one(row: np.ndarray, out_row: np.ndarray, first: float, cut: float, value: float) -> None:
    """out_row = value where row >= cut, else first."""
    for j in range(row.shape[0]):
        out_row[j] = value if row[j] >= cut else first


@njit(cache=True, nogil=True)
def _pass_of_two(row: np.ndarray, out_row: np.ndarray, first: float, cut_a: float, value_a: float,
                 cut_b: float, value_b: float) -> None:
    """out_row = first, then value_a where row >= cut_a, then value_b where row >= cut_b."""
    for j in range(row.shape[0]):
        x = row[j]
        result = value_a if x >= cut_a else first
        out_row[j] = value_b if x >= cut_b else result


@njit(cache=True, nogil=True)
def _pass_of_four(row: np.ndarray, out_row: np.ndarray, first: float, fresh: bool, cut_0: float, value_0: float,
                  cut_1: float, value_1: float, cut_2: float, value_2: float, cut_3: float, value_3: float) -> None:
    """Walk 4 cuts over the row: value_k where row >= cut_k, from out_row (or from `first` if fresh)."""
    for j in range(row.shape[0]):
        x = row[j]
        result = first if fresh else out_row[j]
        result = value_0 if x >= cut_0 else result
        result = value_1 if x >= cut_1 else result
        result = value_2 if x >= cut_2 else result
        out_row[j] = value_3 if x >= cut_3 else result


@njit(cache=True, nogil=True)
def quantize_rows_fused(
    rows: np.ndarray, row_keys: np.ndarray, cut_fractions: np.ndarray, value_fractions: np.ndarray,
    keep: np.ndarray, rows_per_sample: int, out: np.ndarray, ranges: np.ndarray, range_keys: np.ndarray,
) -> int:
    """Randomized quantization of rows (R, L) into out (R, L): writes each row's lo, hi into ranges (R, 2) and
    returns how many rows hold NaN or Inf (their output is meaningless).

    `row_keys` and `range_keys` are signed-integer views (same itemsize) of `rows` and `ranges`.
    `cut_fractions` (R, bins - 1) are unsorted U[0, 1) draws, sorted here per row, or (1, bins - 1) fixed ones
    for every row; `value_fractions` is (R or 1, bins). The rows of sample s (rows_per_sample each) are copied
    unchanged where keep[s] is set.
    """
    length = rows.shape[1]
    n_cuts = cut_fractions.shape[1]
    key_type = row_keys.dtype.type
    magnitude_mask = key_type(np.iinfo(row_keys.dtype).max)
    cuts = np.empty(n_cuts, rows.dtype)
    values = np.empty(n_cuts + 1, rows.dtype)
    head = n_cuts % 4
    non_finite_rows = 0
    for s in range(rows.shape[0] // rows_per_sample):
        first_row, stop_row = s * rows_per_sample, (s + 1) * rows_per_sample
        for r in range(first_row, stop_row):
            # Why integer keys: flipping the magnitude bits of negative floats makes signed-integer order the
            # float order, and integer min/max vectorize where float ones do not (LLVM wants no-NaN flags).
            # A NaN maps beyond +-Inf, so it reaches lo or hi and the caller's finite check sees it, as with
            # torch.amin/amax. The same map turns the keys back into float bits.
            key_row = row_keys[r]
            low_key = key_type(np.iinfo(row_keys.dtype).max)
            high_key = key_type(np.iinfo(row_keys.dtype).min)
            for j in range(length):
                bits = key_row[j]
                key = key_type(bits ^ magnitude_mask) if bits < 0 else bits
                low_key = key if key < low_key else low_key
                high_key = key if key > high_key else high_key
            range_keys[r, 0] = key_type(low_key ^ magnitude_mask) if low_key < 0 else low_key
            range_keys[r, 1] = key_type(high_key ^ magnitude_mask) if high_key < 0 else high_key
            lo, hi = ranges[r, 0], ranges[r, 1]
            non_finite_rows += not (lo > -np.inf and hi < np.inf)  # False for NaN as for Inf
            if keep[s]:
                continue  # copied below: a copy here, in the row loop, slows every row by 10 ns
            row, out_row = rows[r], out[r]

            # The quantizer: the float ops of `_quantizers_from_fractions`, in its order, on this row's draws.
            _sort_into(cut_fractions[r if cut_fractions.shape[0] > 1 else 0], cuts)
            value_row = value_fractions[r if value_fractions.shape[0] > 1 else 0]
            span = hi - lo
            left = lo
            for i in range(n_cuts):
                right = _minimum(lo + span * cuts[i], hi)
                cuts[i] = right
                values[i] = _maximum(_minimum(left + (right - left) * value_row[i], right), left)
                left = right
            values[n_cuts] = _maximum(_minimum(left + (hi - left) * value_row[n_cuts], hi), left)

            # The chain walk of `quantize_rows` over a row held in L1, up to 4 cuts per vectorized pass. The
            # n_cuts % 4 lowest cuts go first, from values[0] (3 of them as 4, repeating one: selecting the same
            # value again changes nothing), then 4 at a time. Why no pass of 1 cut after another pass: LLVM
            # turns its select into a conditional store, a branch per element that mispredicts (3x slower).
            first = values[0]
            if n_cuts == 0:
                for j in range(length):
                    out_row[j] = first
            elif head == 3:
                _pass_of_four(row, out_row, first, True, cuts[0], values[1], cuts[1], values[2], cuts[2], values[3],
                              cuts[2], values[3])
            elif head == 2:
                _pass_of_two(row, out_row, first, cuts[0], values[1], cuts[1], values[2])
            elif head == 1:
                _pass_of_one(row, out_row, first, cuts[0], values[1])
            for c in range(head, n_cuts, 4):
                _pass_of_four(row, out_row, first, c == 0, cuts[c], values[c + 1], cuts[c + 1], values[c + 2],
                              cuts[c + 2], values[c + 3], cuts[c + 3], values[c + 4])
        if keep[s]:
            out[first_row:stop_row] = rows[first_row:stop_row]
    return non_finite_rows
