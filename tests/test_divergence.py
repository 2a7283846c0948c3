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


@pytest.mark.parametrize("axis", [-1, 0, 1, (0, 2), (2, 1), None])
def test_with_grad_matches_reference_on_axes(rng, axis):
    p = rng.random((4, 5, 6))
    p[..., ::3] = 0.0
    q = rng.random((4, 5, 6)) + 0.01
    for variant_p, variant_q in ((p, q), (np.asfortranarray(p), q[::-1][::-1]), (p[:, ::-1], q[:, ::-1])):
        rp, rq = variant_p.copy(), variant_q.copy()
        for name, args, ref_args in (("entropy_with_grad", (variant_p,), (rp,)),
                                     ("kl_divergence_with_grad", (variant_p, variant_q), (rp, rq)),
                                     ("cross_entropy_probs_with_grad", (variant_p, variant_q), (rp, rq))):
            value, grad = getattr(fx, name)(*args, axis=axis)
            ref_value, ref_grad = getattr(reference, name)(*ref_args, axis=axis)
            # sums over up to 120 terms in another order: 1e-12 (KL terms cancel: atol)
            assert_close(value, ref_value, rtol=1e-12, atol=1e-14)
            # -(log p + 1) cancels near p = 1/e: absolute error on the scale of 1
            assert_close(grad, ref_grad, rtol=1e-13, atol=1e-14)
        assert_close(fx.entropy(variant_p, axis=axis), np.sum(special.entr(rp), axis=axis), rtol=1e-12)
        assert_close(fx.kl_divergence(variant_p, variant_q, axis=axis),
                     np.sum(special.rel_entr(rp, rq), axis=axis), rtol=1e-12, atol=1e-14)


def test_float32_at_256k_classes(rng):
    """Sums over 262144 float32 terms stay within 1e-5 relative of float64."""
    p, q = _dists(rng, (3, 262144))
    p[1] = rng.dirichlet(np.full(262144, 0.05))  # spiky: many near-zero terms
    p32, q32 = p.astype(np.float32), q.astype(np.float32)
    p64, q64 = p32.astype(np.float64), q32.astype(np.float64)
    for name, args, ref in (("entropy", (p32,), special.entr(p64).sum(-1)),
                            ("kl_divergence", (p32, q32), special.rel_entr(p64, q64).sum(-1)),
                            ("cross_entropy_probs", (p32, q32), -special.xlogy(p64, q64).sum(-1))):
        got = getattr(fx, name)(*args)
        assert got.dtype == np.float32
        assert np.max(np.abs(got - ref) / np.abs(ref)) < 1e-5, name


def test_negative_and_nan_entries_give_scipy_values_in_long_rows(rng):
    """Special values in the vectorised body and in the remainder of long rows."""
    p, q = _dists(rng, (6, 1027))
    p[0, 500], p[1, 1026], q[2, 3], q[3, 1025], p[4, 7], q[5, 700] = -0.1, np.nan, 0.0, np.nan, 0.0, -0.5
    q[4, 7] = 0.0  # 0 log 0/0 = 0 in rel_entr
    with np.errstate(all="ignore"):
        assert_close(fx.entropy(p), special.entr(p).sum(-1), rtol=1e-12)
        assert_close(fx.kl_divergence(p, q), special.rel_entr(p, q).sum(-1), rtol=1e-12)
        assert_close(fx.cross_entropy_probs(p, q), -special.xlogy(p, q).sum(-1), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kl_of_a_distribution_with_itself_is_exactly_zero(rng, dtype):
    """p log(p/p) = p log 1 = 0 term by term, so KL(p||p) is exactly 0 (never
    negative), with or without the gradient, and the two values agree."""
    p = rng.random((300, 37)).astype(dtype)
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_array_equal(fx.kl_divergence(p, p.copy()), np.zeros(300, dtype=dtype))
    value, grad = fx.kl_divergence_with_grad(p, p.copy())
    np.testing.assert_array_equal(value, np.zeros(300, dtype=dtype))
    ulp = np.finfo(dtype).eps
    np.testing.assert_allclose(grad, -np.ones((300, 37), dtype=dtype), rtol=2 * ulp)  # -p/q, arcp allowed
    q = rng.random((300, 37)).astype(dtype)
    np.testing.assert_allclose(fx.kl_divergence_with_grad(p, q)[0], fx.kl_divergence(p, q), rtol=40 * ulp)
