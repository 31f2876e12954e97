"""Randomized quantization: invariants, edge cases, exact agreement with dense and uniform references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from audiorq.augment import quantize as quantize_module
from audiorq.augment.quantize import (
    RandomizedQuantization, quantize_rows, randomized_quantization, sample_quantizers,
)

FAST = settings(max_examples=40, deadline=None)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, F, T) or (B, F, T) -> (B * F, T): the rows RQ quantizes per channel."""
    return x.reshape(-1, x.shape[-1])


def _dense_reference(rows: torch.Tensor, edges: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Literal definition: one-hot membership in [a_i, a_{i+1}) (hi in the last bin), times values, summed."""
    n = values.shape[1]
    member = torch.zeros(rows.shape[0], n, rows.shape[1], dtype=rows.dtype)
    for i in range(n):
        upper = rows <= edges[:, -1:] if i == n - 1 else rows < edges[:, i + 1 : i + 2]
        member[:, i] = ((rows >= edges[:, i : i + 1]) & upper).to(rows.dtype)
    return (member * values[:, :, None]).sum(dim=1)


def _uniform_midpoint_reference(row: np.ndarray, bins: int) -> np.ndarray:
    """Fixed uniform quantizer of one float32 row, scalar by scalar: cuts lo + (hi - lo) * (k / n), midpoints."""
    f32 = np.float32
    lo, hi = f32(row.min()), f32(row.max())
    cuts = [min(f32(lo + f32(hi - lo) * (f32(k) / f32(bins))), hi) for k in range(1, bins)]
    edges = [lo, *cuts, hi]
    mids = [f32(edges[i] + f32(edges[i + 1] - edges[i]) * f32(0.5)) for i in range(bins)]
    return np.array([mids[sum(c <= v for c in cuts)] for v in row], dtype=np.float32)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 40))


@FAST
@given(shape=shapes, bins=st.integers(1, 12), seed=st.integers(0, 2**16), random_bins=st.booleans(),
       random_values=st.booleans())
def test_rows_take_at_most_bins_values_inside_their_range_and_map_is_monotone(
        shape, bins, seed, random_bins, random_values):
    b, f, t = shape
    x = torch.randn(b, 1, f, t, generator=_gen(seed)) * 3
    out = RandomizedQuantization(bins, random_bins, random_values)(x, generator=_gen(seed + 1))
    assert out.shape == x.shape and out.dtype == x.dtype
    rows, out_rows = _rows(x), _rows(out)
    for row, q in zip(rows, out_rows):
        assert len(torch.unique(q)) <= bins
        assert row.min() <= q.min() and q.max() <= row.max()
        order = torch.argsort(row)
        assert torch.all(q[order][1:] >= q[order][:-1])  # monotone non-decreasing in x


@FAST
@given(bins=st.integers(1, 40), seed=st.integers(0, 2**16), n_rows=st.integers(1, 6), length=st.integers(1, 30))
def test_both_methods_equal_dense_reference_including_ties_on_cut_points(bins, seed, n_rows, length):
    g = _gen(seed)
    rows = torch.randn(n_rows, length, generator=g)
    edges, values = sample_quantizers(rows.amin(1), rows.amax(1), bins, generator=g)
    # Put values exactly on cut points: ties must go to the upper bin [a_i, a_{i+1}).
    rows = torch.cat([rows, edges[:, 1:-1]], dim=1)
    expected = _dense_reference(rows, edges, values)
    for method in ("chain", "search"):
        assert torch.equal(quantize_rows(rows, edges, values, method=method), expected)


@pytest.mark.parametrize("bins", [1, 2, 5, 16, 32])
def test_module_equals_dense_reference_with_the_same_draws(bins):
    x = torch.randn(6, 1, 8, 50, generator=_gen(3))
    out = RandomizedQuantization(bins)(x, generator=_gen(4))
    rows = _rows(x)
    edges, values = sample_quantizers(rows.amin(1), rows.amax(1), bins, generator=_gen(4))
    assert torch.equal(_rows(out), _dense_reference(rows, edges, values))


@pytest.mark.parametrize("bins", [1, 2, 3, 5, 7, 16])
def test_uniform_bins_with_midpoints_reproduce_a_fixed_uniform_quantizer(bins):
    x = torch.randn(3, 1, 7, 61, generator=_gen(bins))
    # One row with range [-1, 1] that also holds every uniform cut point exactly (ties go to the upper bin).
    x[0, 0, 0] = x[0, 0, 0].clamp(-0.99, 0.99)
    x[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])
    x[0, 0, 0, 2 : bins + 1] = -1.0 + 2.0 * (torch.arange(1, bins, dtype=torch.float32) / bins)
    rq = RandomizedQuantization(bins, random_bins=False, random_values=False)
    out = rq(x, generator=_gen(0))
    assert torch.equal(out, rq(x, generator=_gen(1)))  # nothing random left
    expected = np.stack([_uniform_midpoint_reference(row, bins) for row in _rows(x).numpy()])
    np.testing.assert_array_equal(_rows(out).numpy(), expected)


def test_hand_made_quantizer_ties_and_maximum_in_last_bin():
    rows = torch.tensor([[0.0, 0.49, 0.5, 0.7, 1.0], [0.0, 0.2, 1.0, 1.0, 0.9]])
    edges = torch.tensor([[0.0, 0.5, 1.0], [0.0, 1.0, 1.0]])  # row 2: the cut sits on hi itself
    values = torch.tensor([[0.25, 0.75], [0.5, 1.0]])
    expected = torch.tensor([[0.25, 0.25, 0.75, 0.75, 0.75], [0.5, 0.5, 1.0, 1.0, 0.5]])
    for method in ("chain", "search"):
        assert torch.equal(quantize_rows(rows, edges, values, method=method), expected)


def test_row_maximum_lands_in_last_bin():
    x = torch.randn(4, 1, 16, 30, generator=_gen(5))
    rq = RandomizedQuantization(bins=6, random_bins=False, random_values=False)
    out = _rows(rq(x))
    rows = _rows(x)
    lo, hi = rows.amin(1), rows.amax(1)
    last_cut = lo + (hi - lo) * (torch.tensor(5.0) / 6)
    last_mid = last_cut + (hi - last_cut) * 0.5
    assert torch.equal(out.gather(1, rows.argmax(1, keepdim=True)).squeeze(1), last_mid)
    assert torch.equal(out.amax(1), last_mid)


def test_rows_get_different_cut_points():
    row = torch.linspace(-2, 2, 400)
    x = row.expand(4, 1, 16, 400).clone()  # 64 identical rows
    out = _rows(RandomizedQuantization(bins=5, random_values=False)(x, generator=_gen(0)))
    assert len({tuple(q.tolist()) for q in out}) == 64


def test_same_seed_same_output_different_seed_different():
    x = torch.randn(8, 1, 64, 96, generator=_gen(0))
    rq = RandomizedQuantization()
    a, b, c = rq(x, generator=_gen(1)), rq(x, generator=_gen(1)), rq(x, generator=_gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_p_zero_is_identity_and_p_selects_whole_samples():
    x = torch.randn(64, 1, 8, 40, generator=_gen(0))
    assert torch.equal(RandomizedQuantization(p=0.0)(x, generator=_gen(1)), x)
    out = RandomizedQuantization(bins=3, p=0.5)(x, generator=_gen(2))
    unchanged = [bool(torch.equal(o, i)) for o, i in zip(out, x)]
    assert 10 < sum(unchanged) < 54  # about half the samples, drawn per sample
    for o, keep in zip(out, unchanged):
        if not keep:
            assert all(len(torch.unique(q)) <= 3 for q in o.reshape(-1, 40))


def test_constant_rows_are_unchanged():
    x = torch.randn(3, 1, 6, 25, generator=_gen(0))
    x[0, 0, 2] = 1.5
    x[2, 0, 5] = -0.25
    for bins in (1, 2, 5):
        out = RandomizedQuantization(bins)(x, generator=_gen(bins))
        assert torch.equal(out[0, 0, 2], x[0, 0, 2])
        assert torch.equal(out[2, 0, 5], x[2, 0, 5])
    constant = torch.full((2, 1, 4, 5), 3.0)
    assert torch.equal(RandomizedQuantization(per="instance")(constant), constant)


def test_one_bin_drops_each_row_to_one_value():
    x = torch.randn(5, 1, 10, 30, generator=_gen(0))
    rows = _rows(x)
    out = _rows(RandomizedQuantization(bins=1)(x, generator=_gen(1)))
    assert torch.all(out == out[:, :1])
    assert torch.all((out[:, 0] >= rows.amin(1)) & (out[:, 0] <= rows.amax(1)))
    assert len(torch.unique(out[:, 0])) == len(rows)  # a random value per row, not a shared one
    mid = _rows(RandomizedQuantization(bins=1, random_values=False)(x))
    lo, hi = rows.amin(1), rows.amax(1)
    assert torch.equal(mid[:, 0], lo + (hi - lo) * 0.5)


@pytest.mark.parametrize("bad, name", [(float("nan"), "NaN"), (float("inf"), "Inf"), (float("-inf"), "Inf")])
def test_non_finite_input_raises_naming_the_problem(bad, name):
    x = torch.randn(4, 1, 8, 20)
    x[2, 0, 3, 7] = bad
    with pytest.raises(ValueError, match=name) as info:
        RandomizedQuantization()(x)
    assert "sample 2" in str(info.value)
    with pytest.raises(ValueError, match=name):
        RandomizedQuantization(p=0.0)(x)  # checked even when no sample is selected


@FAST
@given(bins=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_instance_mode_one_quantizer_per_sample(bins, seed):
    x = torch.randn(3, 1, 6, 20, generator=_gen(seed))
    out = RandomizedQuantization(bins, per="instance")(x, generator=_gen(seed + 1))
    for sample, q in zip(x, out):
        assert len(torch.unique(q)) <= bins
        assert sample.min() <= q.min() and q.max() <= sample.max()
    flat = x.reshape(3, -1)
    edges, values = sample_quantizers(flat.amin(1), flat.amax(1), bins, generator=_gen(seed + 1))
    assert torch.equal(out.reshape(3, -1), _dense_reference(flat, edges, values))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_keep_their_dtype_and_follow_the_float32_path(dtype):
    x = torch.randn(4, 1, 16, 30, generator=_gen(0)).to(dtype)
    out = RandomizedQuantization()(x, generator=_gen(1))
    assert out.dtype == dtype
    if dtype != torch.float64:
        expected = RandomizedQuantization()(x.float(), generator=_gen(1)).to(dtype)
        assert torch.equal(out, expected)
    for row, q in zip(_rows(x), _rows(out)):
        assert len(torch.unique(q)) <= 5 and row.min() <= q.min() and q.max() <= row.max()


def test_non_contiguous_input_matches_contiguous_result():
    base = torch.randn(4, 1, 30, 16, generator=_gen(0))
    transposed = base.transpose(-1, -2)  # (4, 1, 16, 30), non-contiguous
    sliced = torch.randn(8, 1, 16, 60, generator=_gen(1))[::2, :, :, ::2]
    for x in (transposed, sliced):
        assert not x.is_contiguous()
        for p in (1.0, 0.5):
            rq = RandomizedQuantization(p=p)
            assert torch.equal(rq(x, generator=_gen(2)), rq(x.contiguous(), generator=_gen(2)))


def test_three_dimensional_input_matches_four_dimensional():
    x = torch.randn(5, 16, 30, generator=_gen(0))
    for per in ("channel", "instance"):
        rq = RandomizedQuantization(per=per)
        out = rq(x, generator=_gen(1))
        assert out.shape == x.shape
        assert torch.equal(out, rq(x.unsqueeze(1), generator=_gen(1)).squeeze(1))


def test_result_does_not_depend_on_chunk_size(monkeypatch):
    x = torch.randn(9, 1, 8, 21, generator=_gen(0))
    expected = randomized_quantization(x, bins=4, p=0.7, generator=_gen(1))
    monkeypatch.setitem(quantize_module._CHUNK_ELEMENTS, "cpu", 50)  # one sample per chunk
    monkeypatch.setattr(quantize_module, "_KERNEL_CHUNK_ELEMENTS", 50)
    assert torch.equal(randomized_quantization(x, bins=4, p=0.7, generator=_gen(1)), expected)
    for method in ("chain", "search"):
        assert torch.equal(randomized_quantization(x, bins=4, p=0.7, generator=_gen(1), method=method), expected)


@pytest.mark.parametrize("kwargs, key", [({"bins": 0}, "bins"), ({"bins": 2.5}, "bins"), ({"per": "time"}, "per"),
                                         ({"p": 1.5}, "p"), ({"p": -0.1}, "p")])
def test_bad_arguments_raise(kwargs, key):
    with pytest.raises(ValueError, match=key):
        RandomizedQuantization(**kwargs)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="floating-point"):
        RandomizedQuantization()(torch.zeros(2, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(B, 1, F, T\)"):
        RandomizedQuantization()(torch.zeros(4, 4))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bins", [2, 5, 32])
def test_cuda_matches_cpu_with_a_cpu_generator_and_is_seeded_on_device(bins):
    x = torch.randn(16, 1, 64, 96, generator=_gen(0))
    rq = RandomizedQuantization(bins)
    expected = rq(x, generator=_gen(1))
    assert torch.equal(rq(x.cuda(), generator=_gen(1)).cpu(), expected)
    cuda_gen = lambda seed: torch.Generator(device="cuda").manual_seed(seed)  # noqa: E731
    out = rq(x.cuda().half(), generator=cuda_gen(3))
    assert out.dtype == torch.float16 and out.is_cuda
    assert torch.equal(out, rq(x.cuda().half(), generator=cuda_gen(3)))
    with pytest.raises(ValueError, match="NaN"):
        rq(torch.full((2, 1, 4, 4), float("nan"), device="cuda"))


def test_cut_points_never_pass_hi_even_when_rounding_would_push_them_over():
    # hi - lo rounds up in float32 here, so lo + (hi - lo) * 1.0 lands above hi without the guard.
    lo, hi = torch.tensor([-1.0]), torch.tensor([7e-8])
    assert lo + (hi - lo) * 1.0 > hi
    edges, values = quantize_module._quantizers_from_fractions(
        lo, hi, torch.tensor([[1.0]]), torch.tensor([[0.5, 1.0]]))
    assert torch.all(edges <= hi) and torch.all(values <= hi)
    assert quantize_rows(hi[:, None], edges, values).item() == values[0, -1].item()


needs_kernel = pytest.mark.skipif(quantize_module._kernels() is None, reason="needs numba")


@needs_kernel
def test_cpu_default_runs_the_fused_kernel_not_the_torch_path(monkeypatch):
    def torch_path(*args, **kwargs):
        raise AssertionError("the torch path ran")

    monkeypatch.setattr(quantize_module, "quantize_rows", torch_path)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        RandomizedQuantization(p=0.5)(torch.randn(3, 1, 4, 10).to(dtype))


def _kernel_and_torch_outputs(x: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """randomized_quantization of x by default (fused kernel on CPU) and by the torch chain path, same seed."""
    return (randomized_quantization(x, generator=_gen(7), **kwargs),
            randomized_quantization(x, generator=_gen(7), method="chain", **kwargs))


@needs_kernel
@settings(max_examples=150, deadline=None)
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 50)), bins=st.integers(1, 40),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
       p=st.sampled_from([1.0, 0.5, 0.0]), per=st.sampled_from(["channel", "instance"]),
       random_bins=st.booleans(), random_values=st.booleans(), layout=st.sampled_from(["contiguous", "transposed",
                                                                                        "integers"]),
       seed=st.integers(0, 2**16))
def test_fused_kernel_is_bit_identical_to_the_torch_chain_path(
        shape, bins, dtype, p, per, random_bins, random_values, layout, seed):
    b, f, t = shape
    if layout == "transposed":
        x = torch.randn(b, 1, t, f, generator=_gen(seed)).transpose(-1, -2)  # non-contiguous
    elif layout == "integers":
        # Few distinct values: ties with lo, hi and (for uniform bins) with the cut points themselves.
        x = torch.randint(-3, 4, (b, 1, f, t), generator=_gen(seed)).float()
    else:
        x = torch.randn(b, 1, f, t, generator=_gen(seed)) * 10
    x = x.to(dtype)
    fused, chain = _kernel_and_torch_outputs(x, bins=bins, random_bins=random_bins, random_values=random_values,
                                             per=per, p=p)
    assert fused.dtype == dtype and fused.is_contiguous()
    assert torch.equal(fused, chain)


@needs_kernel
def test_fused_kernel_matches_the_torch_path_on_the_benchmark_shape_and_extreme_ranges():
    x = torch.randn(32, 1, 64, 96, generator=_gen(0))
    for bins in (2, 3, 4, 5, 8, 9, 16, 32, 64):
        assert torch.equal(*_kernel_and_torch_outputs(x, bins=bins))
    # hi - lo overflows to Inf: the float ops (NaN from Inf * 0 included) must still agree.
    huge = torch.tensor([-3e38, 3e38, 0.0, 1e38, -1e38, 2e38]).repeat(2, 1, 3, 2)
    for bins in (1, 2, 5):
        fused, chain = _kernel_and_torch_outputs(huge, bins=bins)
        torch.testing.assert_close(fused, chain, rtol=0, atol=0, equal_nan=True)
    subnormal = torch.tensor([0.0, 1e-45, 3e-45, -1e-45, -0.0]).repeat(3, 1, 2, 4)
    assert torch.equal(*_kernel_and_torch_outputs(subnormal, bins=3))


@needs_kernel
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_fused_kernel_finds_non_finite_values_anywhere_in_a_row(bad):
    for position in (0, 7, 95):
        x = torch.randn(3, 1, 4, 96, generator=_gen(position))
        x[1, 0, 2, position] = bad
        with pytest.raises(ValueError, match="NaN" if bad != bad else "Inf") as info:
            randomized_quantization(x)
        assert "sample 1" in str(info.value)


def test_without_numba_the_torch_path_gives_the_same_result(monkeypatch):
    x = torch.randn(4, 1, 16, 30, generator=_gen(0))
    rows = _rows(x)
    expected = [randomized_quantization(x, bins=6, p=0.5, generator=_gen(1)),
                sample_quantizers(rows.amin(1), rows.amax(1), 6, generator=_gen(2))]
    monkeypatch.setattr(quantize_module, "_kernels", lambda: None)
    assert torch.equal(randomized_quantization(x, bins=6, p=0.5, generator=_gen(1)), expected[0])
    edges, values = sample_quantizers(rows.amin(1), rows.amax(1), 6, generator=_gen(2))
    assert torch.equal(edges, expected[1][0]) and torch.equal(values, expected[1][1])


@needs_kernel
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 7, 31])
def test_kernel_sort_rows_equals_torch_sort_including_ties(k):
    fractions = torch.rand(200, k, generator=_gen(k))
    if k > 1:
        fractions[::3, -1] = fractions[::3, 0]  # ties
    expected = torch.sort(fractions, dim=1).values
    quantize_module._kernels().sort_rows(fractions.numpy())
    assert torch.equal(fractions, expected)


def test_uniform_fractions_are_torch_rand_numbers_on_cpu():
    for dtype in (torch.float32, torch.float64):
        fractions = quantize_module._uniform_fractions((300, 7), dtype, torch.device("cpu"), _gen(3))
        assert fractions.dtype == dtype
        assert torch.equal(fractions, torch.rand((300, 7), generator=_gen(3), dtype=dtype))

