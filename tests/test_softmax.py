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
