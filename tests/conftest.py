"""Shared fixtures: fresh random inputs (seed printed, so a failure can be
replayed with FASTXENT_TEST_SEED=<seed>), tolerances, and the oracle helpers."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings

# Hypothesis profiles: "fastxent" (the default: small and derandomised, so
# that CI takes a couple of minutes and a failure replays) and "long"
# (pytest --hypothesis-profile=long: a long random search, for local runs).
settings.register_profile("fastxent", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# "dev": the default's examples without shrinking, for quick iterations
settings.register_profile("dev", parent=settings.get_profile("fastxent"),
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile("fastxent")


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("FASTXENT_TEST_SEED", np.random.SeedSequence().entropy % 2**63))
    print(f"{request.node.name}: FASTXENT_TEST_SEED={seed}")
    return np.random.default_rng(seed)


def as64(a):
    """A float64 copy of an input, for the reference oracle."""
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def assert_close(got, expected, rtol, atol=0.0):
    """Elementwise comparison that also requires NaN where NaN is expected and
    equal infinities."""
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    if np.ndim(atol):  # a bound per element (numpy's own message wants a scalar)
        atol = np.broadcast_to(atol, got.shape)
        both_nan = np.isnan(got) & np.isnan(expected)
        with np.errstate(invalid="ignore"):  # inf - inf: caught by got == expected
            ok = both_nan | (got == expected) | (np.abs(got - expected) <= atol + rtol * np.abs(expected))
        bad = np.flatnonzero(~ok)
        assert bad.size == 0, (f"{bad.size} of {got.size} elements differ, first at flat index "
                               f"{bad[0]}: {got.flat[bad[0]]!r} vs {expected.flat[bad[0]]!r} "
                               f"(atol {atol.flat[bad[0]]:g}, rtol {rtol:g})") if bad.size else ""
        return
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)


def torch_or_skip():
    return pytest.importorskip("torch")


def numeric_grad(f, x, h=1e-6):
    """Central finite differences of the scalar function f at x (float64)."""
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        orig = flat[k]
        flat[k] = orig + h
        up = float(np.sum(f(x)))
        flat[k] = orig - h
        down = float(np.sum(f(x)))
        flat[k] = orig
        gflat[k] = (up - down) / (2 * h)
    return grad
