"""The vectorised exp/log helpers of fastxent.cpu._fastmath, against NumPy in
float64 (exp, log) over the whole range, with the special values.  The exps
are checked over 2 million random arguments per test and seed, plus every
argument within 1e-5 of a range-reduction boundary (k + 1/2) ln 2."""

import math

import numpy as np
import pytest
from numba import njit

from fastxent.cpu._fastmath import FASTMATH, fast_exp, fast_exp_shifted, fast_log, fast_log1p


@njit(fastmath=FASTMATH, error_model="numpy")
def _exp_loop(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_exp(x[i])


@njit(fastmath=FASTMATH, error_model="numpy")
def _exp_shifted_loop(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_exp_shifted(x[i])


# (loop, largest argument with a finite result it must get right, per dtype)
EXPS = {"fast_exp": (_exp_loop, {np.float32: 88.7, np.float64: 709.7}),
        "fast_exp_shifted": (_exp_shifted_loop, {np.float32: 44.0, np.float64: 665.0})}


@njit(fastmath=FASTMATH, error_model="numpy")
def _log_loop(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_log(x[i])


@njit(fastmath=FASTMATH, error_model="numpy")
def _log1p_loop(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_log1p(x[i])


@pytest.fixture
def rng():
    seed = np.random.SeedSequence().entropy
    print(f"fastmath test seed: {seed}")
    return np.random.default_rng(seed)


def _apply(loop, x):
    out = np.empty_like(x)
    loop(x, out)
    return out


def _ulps(got, exact, dtype):
    """|got - exact| in units of the last place of ``exact`` rounded to dtype."""
    rounded = exact.astype(dtype)
    return np.abs(got.astype(np.float64) - exact) / np.spacing(np.abs(rounded)).astype(np.float64)


def _with_boundaries(x, lo, hi):
    """x plus the arguments around every (k + 1/2) ln 2 in [lo, hi], where
    the rounding of n flips and |r| is largest."""
    k = np.arange(np.floor(lo / np.log(2)), np.ceil(hi / np.log(2)))
    near = ((k + 0.5)[:, None] * np.log(2) + np.linspace(-1e-5, 1e-5, 201)).ravel()
    x = np.concatenate([x, near.astype(x.dtype)])
    return x[(x >= lo) & (x <= hi)]


@pytest.mark.parametrize("name", EXPS)
def test_exp_float32_within_2_ulp(rng, name):
    loop, top = EXPS[name]
    x = _with_boundaries(rng.uniform(-87.3, top[np.float32], 2_000_000).astype(np.float32),
                         -87.3, top[np.float32])  # normal results
    got = _apply(loop, x)
    exact = np.exp(x.astype(np.float64))
    assert _ulps(got, exact, np.float32).max() <= 2.0


@pytest.mark.parametrize("name", EXPS)
def test_exp_float32_subnormal_results_are_correctly_rounded(rng, name):
    x = rng.uniform(-104.0, -87.4, 200_000).astype(np.float32)
    got = _apply(EXPS[name][0], x).astype(np.float64)
    exact = np.exp(x.astype(np.float64))
    smallest = float(np.nextafter(np.float32(0), np.float32(1)))
    assert np.abs(got - exact).max() <= 1.0 * smallest


@pytest.mark.parametrize("name", EXPS)
def test_exp_float64_within_2_ulp(rng, name):
    loop, top = EXPS[name]
    x = _with_boundaries(rng.uniform(-708.0, top[np.float64], 2_000_000), -708.0, top[np.float64])
    got = _apply(loop, x)
    assert (np.abs(got - np.exp(x)) / np.spacing(np.exp(x))).max() <= 2.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_special_values(dtype):
    big = 89.0 if dtype == np.float32 else 710.0
    x = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, -1e30, 1e30, big, -big * 2], dtype=dtype)
    got = _apply(_exp_loop, x)
    expected = np.array([0.0, np.inf, np.nan, 1.0, 1.0, 0.0, np.inf, np.inf, 0.0], dtype=dtype)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_shifted_special_values_and_cut(dtype):
    """Exact ends as fast_exp; +inf from the cut on (44.0147 / 665.0712), where
    a target-shifted row is redone with the max shift."""
    cut = 63.5 * np.log(2) if dtype == np.float32 else 959.5 * np.log(2)
    below = np.nextafter(dtype(cut), dtype(0))
    above = np.nextafter(dtype(cut), dtype(np.inf))
    x = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, -1e30, 1e30, above, cut + 10, -1e4, below],
                 dtype=dtype)
    got = _apply(_exp_shifted_loop, x)
    expected = np.array([0.0, np.inf, np.nan, 1.0, 1.0, 0.0, np.inf, np.inf, np.inf, 0.0, 0.0],
                        dtype=dtype)
    np.testing.assert_array_equal(got[:-1], expected[:-1])
    assert _ulps(got[-1:], np.exp(x[-1:].astype(np.float64)), dtype).max() <= 2.0


def test_log_float64_within_2_ulp(rng):
    x = np.exp(rng.uniform(-740, 709, 2_000_000))
    got = _apply(_log_loop, x)
    exact = np.log(x)
    nonzero = exact != 0
    assert (np.abs(got - exact)[nonzero] / np.spacing(np.abs(exact[nonzero]))).max() <= 2.0


def test_log_special_values():
    x = np.array([0.0, -0.0, np.inf, np.nan, -1.0, -np.inf, 5e-324, 1.0])
    got = _apply(_log_loop, x)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(got, np.log(x))


def test_log_float32_input(rng):
    x = rng.random(100_000).astype(np.float32) + np.float32(1e-30)
    got = _apply(_log_loop, x)
    assert got.dtype == np.float32
    assert _ulps(got, np.log(x.astype(np.float64)), np.float32).max() <= 1.0


def test_log1p_relative_error(rng):
    x = np.concatenate([rng.uniform(-1e-3, 1e-3, 100_000), np.exp(rng.uniform(-300, 0, 100_000)),
                        rng.uniform(-0.9, 5, 100_000)])
    got = _apply(_log1p_loop, x)
    exact = np.log1p(x)
    assert (np.abs(got - exact) / np.abs(exact)).max() < 1e-15


def test_log1p_ends():
    """log1p at -1 is -inf and at inf is inf (the rounding correction would be
    NaN there); below -1 and at NaN it is NaN; tiny arguments keep their digits."""
    x = np.array([-1.0, np.inf, np.nan, -2.0, 0.0, 1e-300, -1e-17, 4.2e-18])
    with np.errstate(all="ignore"):
        expected = np.log1p(x)
    np.testing.assert_array_equal(_apply(_log1p_loop, x), expected)


@njit(fastmath=FASTMATH, error_model="numpy")
def _not_finite_mask(x, out):
    """Vectorised (the loop) and scalar (the last element, after the loop)
    uses of the tests the kernels make: math.isfinite and x != x."""
    for i in range(x.shape[0]):
        out[i] = 0 if math.isfinite(x[i]) else 1
        out[i] += 2 if x[i] != x[i] else 0
    last = x[x.shape[0] - 1]
    return (0 if math.isfinite(last) else 1) + (2 if last != last else 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_infinity_and_nan_tests_survive_the_kernels_fastmath_flags(dtype):
    """Under ``nnan``/``ninf`` LLVM may fold math.isfinite to True and
    x != x to False (max_shift_sum_exp, row_shift and finish_rows in _rows.py
    rely on them): the kernels' flag set must keep them."""
    x = np.array([1.0, np.inf, -np.inf, np.nan, 0.0, -3.5, np.finfo(dtype).max, np.nan] * 5,
                 dtype=dtype)
    out = np.empty(x.shape[0], dtype=np.int64)
    last = _not_finite_mask(x, out)
    expected = (~np.isfinite(x)).astype(np.int64) + 2 * np.isnan(x)
    np.testing.assert_array_equal(out, expected)
    assert last == 3
