"""Entropy, KL divergence and H(p, q) against scipy.special and finite
differences, with the zero/negative/NaN conventions of scipy."""

import numpy as np
import pytest

import fastxent as fx
from fastxent import reference
from tests.conftest import assert_close, numeric_grad

special = pytest.importorskip("scipy.special")


def _dists(rng, shape):
    p = rng.random(shape)
    p[..., 0] = 0.0  # 0 log 0 = 0
    q = rng.random(shape) + 0.01
    return p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)


@pytest.mark.parametrize("axis", [-1, 0, (0, 1), None])
def test_against_scipy(rng, axis):
    p, q = _dists(rng, (6, 7))
    assert_close(fx.entropy(p, axis=axis), np.sum(special.entr(p), axis=axis), rtol=1e-13)
    assert_close(fx.kl_divergence(p, q, axis=axis), np.sum(special.rel_entr(p, q), axis=axis), rtol=1e-12, atol=1e-15)
    assert_close(fx.cross_entropy_probs(p, q, axis=axis), -np.sum(special.xlogy(p, q), axis=axis), rtol=1e-13)


def test_special_values_follow_scipy():
    p = np.array([0.0, 0.5, 0.5, -0.1, np.nan, 0.0, 0.2])
    q = np.array([0.0, 0.0, 0.5, 0.3, 0.2, np.nan, -0.2])
    for k in range(p.size):
        assert_close(fx.entropy(p[k:k + 1]), special.entr(p[k:k + 1]).sum(), rtol=0)
        assert_close(fx.kl_divergence(p[k:k + 1], q[k:k + 1]), special.rel_entr(p[k:k + 1], q[k:k + 1]).sum(), rtol=0)
        assert_close(fx.cross_entropy_probs(p[k:k + 1], q[k:k + 1]), -special.xlogy(p[k:k + 1], q[k:k + 1]).sum(), rtol=0)


def test_decomposition_and_reference(rng):
    p, q = _dists(rng, (40, 30))
    assert_close(fx.cross_entropy_probs(p, q), fx.entropy(p) + fx.kl_divergence(p, q), rtol=1e-12)
    for name in ("entropy_with_grad",):
        got, ref = getattr(fx, name)(p), getattr(reference, name)(p)
        assert_close(got[0], ref[0], rtol=1e-13)
        assert_close(got[1], ref[1], rtol=1e-13)
    for name in ("kl_divergence_with_grad", "cross_entropy_probs_with_grad"):
        got, ref = getattr(fx, name)(p, q), getattr(reference, name)(p, q)
        assert_close(got[0], ref[0], rtol=1e-12, atol=1e-15)
        assert_close(got[1], ref[1], rtol=1e-13)
    p32, q32 = p.astype(np.float32), q.astype(np.float32)
    assert fx.kl_divergence(p32, q32).dtype == np.float32
    assert_close(fx.cross_entropy_probs(p32, q32), reference.cross_entropy_probs(p32.astype(float), q32.astype(float)), rtol=1e-6)


@pytest.mark.parametrize("name,wrt", [("entropy", "p"), ("kl_divergence", "q"), ("cross_entropy_probs", "q")])
def test_finite_differences(rng, name, wrt):
    p, q = _dists(rng, (3, 4))
    p[:, 0] = 0.05  # keep away from the kink at 0
    fn = getattr(fx, name)
    args = (p,) if name == "entropy" else (p, q)
    _, grad = getattr(fx, name + "_with_grad")(*args)
    if wrt == "p":
        numeric = numeric_grad(lambda v: fn(v), p, h=1e-7)
    else:
        numeric = numeric_grad(lambda v: fn(p, v), q, h=1e-7)
    assert_close(grad, numeric, rtol=1e-6, atol=1e-7)


def test_gradient_seed_formula(rng):
    """Seed 002: dH(p, q)/dq_e = -p_e / q_e."""
    p, q = _dists(rng, (5, 6))
    _, grad = fx.cross_entropy_probs_with_grad(p, q)
    assert_close(grad, np.where(p == 0, 0.0, -p / q), rtol=1e-15)
