"""The vectorised exp/log helpers of fastxent.cpu._fastmath, against NumPy in
float64 (exp, log) over the whole range, with the special values."""

import numpy as np
import pytest
from numba import njit

from fastxent.cpu._fastmath import FASTMATH, fast_exp, fast_log, fast_log1p


@njit(fastmath=FASTMATH, error_model="numpy")
def _exp_loop(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_exp(x[i])


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


def test_exp_float32_within_2_ulp(rng):
    x = rng.uniform(-87.3, 88.7, 2_000_000).astype(np.float32)  # normal results
    got = _apply(_exp_loop, x)
    exact = np.exp(x.astype(np.float64))
    assert _ulps(got, exact, np.float32).max() <= 2.0


def test_exp_float32_subnormal_results_are_correctly_rounded(rng):
    x = rng.uniform(-104.0, -87.4, 200_000).astype(np.float32)
    got = _apply(_exp_loop, x).astype(np.float64)
    exact = np.exp(x.astype(np.float64))
    smallest = float(np.nextafter(np.float32(0), np.float32(1)))
    assert np.abs(got - exact).max() <= 1.0 * smallest


def test_exp_float64_within_2_ulp(rng):
    x = rng.uniform(-708.0, 709.7, 2_000_000)
    got = _apply(_exp_loop, x)
    assert (np.abs(got - np.exp(x)) / np.spacing(np.exp(x))).max() <= 2.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_special_values(dtype):
    big = 89.0 if dtype == np.float32 else 710.0
    x = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, -1e30, 1e30, big, -big * 2], dtype=dtype)
    got = _apply(_exp_loop, x)
    expected = np.array([0.0, np.inf, np.nan, 1.0, 1.0, 0.0, np.inf, np.inf, 0.0], dtype=dtype)
    np.testing.assert_array_equal(got, expected)


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
