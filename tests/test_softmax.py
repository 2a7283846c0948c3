"""logsumexp, softmax and log_softmax against scipy.special and the reference,
over every kind of axis."""

import numpy as np
import pytest

import fastxent as fx
from fastxent import reference
from tests.conftest import as64, assert_close

special = pytest.importorskip("scipy.special")

AXES = [-1, 0, 1, (0, 2), (2, 0), None]


@pytest.mark.parametrize("axis", AXES)
def test_against_scipy(rng, axis):
    x = rng.standard_normal((4, 5, 6)) * 5
    assert_close(fx.logsumexp(x, axis=axis), special.logsumexp(x, axis=axis), rtol=1e-13)
    assert_close(fx.logsumexp(x, axis=axis, keepdims=True),
                 special.logsumexp(x, axis=axis, keepdims=True), rtol=1e-13)
    assert_close(fx.softmax(x, axis=axis), special.softmax(x, axis=axis), rtol=1e-13, atol=1e-300)
    assert_close(fx.log_softmax(x, axis=axis), special.log_softmax(x, axis=axis), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shape", [(70000, 3), (300, 1000), (2, 100000)])
def test_float32_code_paths(rng, shape):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    ref_lse = special.logsumexp(as64(x), axis=-1)
    assert fx.logsumexp(x).dtype == np.float32
    assert np.max(np.abs(fx.logsumexp(x) - ref_lse) / np.maximum(np.abs(ref_lse), 1)) < 1e-6
    p = fx.softmax(x)
    assert p.dtype == np.float32
    assert_close(p, special.softmax(as64(x), axis=-1), rtol=1e-5, atol=1e-12)
    assert_close(p.sum(-1, dtype=np.float64), np.ones(shape[0]), rtol=1e-5)
    assert_close(fx.log_softmax(x), special.log_softmax(as64(x), axis=-1), rtol=1e-5, atol=2e-6)


def test_log_softmax_is_not_log_of_softmax():
    x = np.array([[0.0, -1000.0, 1000.0]])
    np.testing.assert_array_equal(fx.log_softmax(x), [[-1000.0, -2000.0, 0.0]])


def test_matches_reference_on_float64(rng):
    x = rng.standard_normal((33, 17))
    for name in ("logsumexp", "softmax", "log_softmax"):
        assert_close(getattr(fx, name)(x), getattr(reference, name)(x), rtol=1e-13, atol=1e-300)


def test_scalar_and_vector_inputs():
    assert fx.logsumexp(3.0, axis=None) == 3.0
    assert np.ndim(fx.logsumexp(np.array([1.0, 2.0]))) == 0
    assert_close(fx.softmax(np.array([1.0, 1.0, 1.0, 1.0])), np.full(4, 0.25), rtol=1e-15)


@pytest.mark.parametrize("axis", AXES + [(0, 1, 2), [1, 2], -2])
def test_reference_against_scipy_and_fastxent_on_nd_layouts(rng, axis):
    """The oracle itself agrees with scipy, and fastxent agrees with the oracle
    on C-ordered, Fortran-ordered and negatively strided 3-D inputs."""
    x = rng.standard_normal((5, 6, 7)) * 4
    sp_axis = tuple(axis) if isinstance(axis, list) else axis  # scipy takes no lists
    assert_close(reference.logsumexp(x, axis=axis), special.logsumexp(x, axis=sp_axis), rtol=1e-13,
                 atol=1e-14 * np.abs(x).max())
    assert_close(reference.softmax(x, axis=axis), special.softmax(x, axis=sp_axis), rtol=1e-13, atol=1e-300)
    assert_close(reference.log_softmax(x, axis=axis), special.log_softmax(x, axis=sp_axis), rtol=1e-13,
                 atol=1e-13)
    for variant in (x, np.asfortranarray(x), x[::-1, :, ::-1]):
        ref = variant.copy()
        for keepdims in (False, True):
            # lse = max + log(sum) can cancel to ~1e-3: absolute error on the scale of max
            assert_close(fx.logsumexp(variant, axis=axis, keepdims=keepdims),
                         reference.logsumexp(ref, axis=axis, keepdims=keepdims), rtol=1e-13,
                         atol=1e-14 * np.abs(x).max())
        assert_close(fx.softmax(variant, axis=axis), reference.softmax(ref, axis=axis), rtol=1e-13, atol=1e-300)
        assert_close(fx.log_softmax(variant, axis=axis), reference.log_softmax(ref, axis=axis), rtol=1e-13,
                     atol=1e-13)


@pytest.mark.parametrize("n_classes", [262144])
def test_float32_at_256k_classes(rng, n_classes):
    """Sums over 262144 float32 terms stay within 1e-5 relative of float64."""
    x = (rng.standard_normal((4, n_classes)) * 3).astype(np.float32)
    x[1] -= 50.0  # all-negative row: lse ~ -37
    x[2, 12345] = 30.0  # one dominant class
    x64 = as64(x)
    ref_lse = special.logsumexp(x64, axis=-1)
    lse = fx.logsumexp(x)
    assert lse.dtype == np.float32
    assert np.max(np.abs(lse - ref_lse) / np.abs(ref_lse)) < 1e-5
    # softmax entries are tiny; each is relatively exact, and the rows sum to 1
    p = fx.softmax(x)
    assert_close(p, special.softmax(x64, axis=-1), rtol=1e-5, atol=1e-30)
    assert_close(p.sum(-1, dtype=np.float64), np.ones(4), rtol=1e-5)
    # log_softmax = x - lse: the error is relative to |x| + |lse|
    ls = fx.log_softmax(x)
    err = np.abs(ls - special.log_softmax(x64, axis=-1)) / (np.abs(x64) + np.abs(ref_lse)[:, None])
    assert err.max() < 1e-6


def test_identities(rng):
    x = rng.standard_normal((50, 30)) * 10
    assert_close(fx.log_softmax(x), x - fx.logsumexp(x, keepdims=True), rtol=1e-13, atol=1e-13)
    assert_close(fx.softmax(x), np.exp(fx.log_softmax(x)), rtol=1e-13, atol=1e-300)
    assert_close(fx.logsumexp(x, axis=None), special.logsumexp(fx.logsumexp(x)), rtol=1e-13)


def _long_rows(dtype, c):
    """Rows of c classes (the one-read online path: blocks of 256; softmax
    from 8192 classes) whose max moves, hides behind -inf / NaN blocks, or is
    infinite."""
    base = np.linspace(-5.0, 5.0, c)
    rows = {
        "ascending (a new max in every block)": base,
        "descending": base[::-1].copy(),
        "first block -inf": np.where(np.arange(c) < 256, -np.inf, base),
        "first block NaN": np.where(np.arange(c) < 256, np.nan, base),
        "one NaN in the last block": np.where(np.arange(c) == 990, np.nan, base),
        "all -inf": np.full(c, -np.inf),
        "+inf in the second block": np.where(np.arange(c) == 300, np.inf, base),
        "-inf and +inf": np.where(np.arange(c) < 500, -np.inf, np.inf),
        "huge shift": base + 1e30,
        "one term dominates": np.where(np.arange(c) == 700, 0.0, -60.0),
    }
    return list(rows), np.array(list(rows.values()), dtype=dtype)


def _assert_rows_match(names, got, want, rtol, size_of_row, x=None):
    """Row by row (named for the message): NaN positions and infinities of
    ``got`` exact against the float64 ``want``, finite values within rtol
    and an absolute tol * size_of_row(x row, want row)."""
    got = as64(got).reshape(len(names), -1)
    want = want.reshape(len(names), -1)
    rows = as64(x).reshape(len(names), -1) if x is not None else want
    for name, row, g, w in zip(names, rows, got, want):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=name)
        finite = np.isfinite(w)
        np.testing.assert_array_equal(g[~finite], w[~finite], err_msg=name)
        np.testing.assert_allclose(g[finite], w[finite], rtol=rtol,
                                   atol=rtol * size_of_row(row, w) + 1e-300, err_msg=name)


@pytest.mark.parametrize("n_classes", [1000, 9000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_rows_online_max_and_sum(dtype, n_classes):
    """The one-read (max, sum) of long rows against the float64 reference,
    NaN / inf placement included."""
    names, x = _long_rows(dtype, n_classes)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    with np.errstate(all="ignore"):
        checks = [(fx.logsumexp(x), reference.logsumexp(as64(x))),
                  (fx.softmax(x), reference.softmax(as64(x))),
                  (fx.log_softmax(x), reference.log_softmax(as64(x)))]
    for got, want in checks:
        _assert_rows_match(names, got, want, tol,
                           lambda row, w: np.abs(w[np.isfinite(w)]).max(initial=0))


def _short_rows(rng, dtype, n_classes, n_rows=700):
    """(names, x): n_rows random rows of n_classes (several column-major
    blocks of the short-row path), with special rows at block edges."""
    x = (rng.standard_normal((n_rows, n_classes)) * 4).astype(dtype)
    specials = {
        "all -inf": np.full(n_classes, -np.inf),
        "+inf": np.r_[np.inf, np.zeros(n_classes - 1)],
        "+inf and -inf": np.r_[np.inf, np.full(n_classes - 1, -np.inf)],
        "NaN": np.r_[np.zeros(n_classes - 1), np.nan],
        "ties at the max": np.full(n_classes, 3.0),
        "one term dominating (lse near 0)": np.r_[0.0, np.full(n_classes - 1, -40.0)],
        "huge": np.r_[1e30, np.full(n_classes - 1, -1e30)],
        "subnormal gaps": np.r_[0.0, np.full(n_classes - 1, -87.0 if dtype == np.float32 else -740.0)],
    }
    names = ["random"] * n_rows
    for k, (name, row) in enumerate(specials.items()):
        i = [0, 255, 256, 511, 512, 699, 300, 100][k]  # first/last rows of the blocks
        x[i] = row.astype(dtype)
        names[i] = name
    return names, x


@pytest.mark.parametrize("n_classes", [1, 2, 10, 63, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_short_rows_column_major_blocks(rng, dtype, n_classes):
    """logsumexp and log_softmax of short rows (column-major blocks of 256
    rows under 64 classes, row by row from 64) against the float64
    reference: NaN and inf placement exact, relative accuracy also where
    the logsumexp is near 0 (its excess summed without the max's term)."""
    names, x = _short_rows(rng, dtype, n_classes)
    tol = 4e-6 if dtype == np.float32 else 1e-14
    with np.errstate(all="ignore"):
        lse, want_lse = fx.logsumexp(x), reference.logsumexp(as64(x))
        lsm, want_lsm = fx.log_softmax(x), reference.log_softmax(as64(x))
    for got, want in ((lse, want_lse), (lsm, want_lsm)):
        # conditioning: lse = max + log1p(excess) cancels up to |max|
        _assert_rows_match(names, got, want, tol,
                           lambda row, w: np.abs(row[np.isfinite(row)]).max(initial=0), x)
    if n_classes > 1:  # [0, -40, ...]: lse = (C - 1) e^-40, kept to rtol
        i = names.index("one term dominating (lse near 0)")
        assert 0 < lse[i] < 1e-15
        assert abs(lse[i] / ((n_classes - 1) * np.exp(-40.0)) - 1) < tol
