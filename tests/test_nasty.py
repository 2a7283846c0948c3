"""Nasty values and shapes: +-inf, NaN, 1e30, empty batch, one class, all
rows ignored, 256k classes."""

import numpy as np
import pytest

import fastxent as fx
from fastxent import reference
from tests.conftest import assert_close

NASTY_ROWS = np.array([
    [1.0, np.inf, 0.0, 2.0],          # +inf
    [-np.inf, -np.inf, -np.inf, -np.inf],  # all masked
    [np.nan, 1.0, 2.0, 3.0],          # NaN
    [1e30, -1e30, 0.0, 5.0],          # huge finite
    [-np.inf, 0.0, 1.0, -np.inf],     # some masked
    [-1e30, -1e30, -1e30, -1e30],     # all very negative
    [800.0, 799.0, -800.0, 0.0],      # exp would overflow unshifted
    [-800.0, -801.0, -900.0, -805.0],  # exp would underflow unshifted
])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_family_on_nasty_rows(dtype):
    x = NASTY_ROWS.astype(dtype)
    ref = x.astype(np.float64)
    with np.errstate(all="ignore"):
        lse = fx.logsumexp(x)
        assert_close(lse, reference.logsumexp(ref).astype(dtype), rtol=1e-6)
        assert lse[0] == np.inf and lse[1] == -np.inf and np.isnan(lse[2])
        assert lse[3] == np.float32(1e30) if dtype == np.float32 else lse[3] == 1e30
        assert_close(fx.softmax(x), reference.softmax(ref), rtol=1e-6, atol=1e-30)
        assert_close(fx.log_softmax(x), reference.log_softmax(ref), rtol=1e-6)
    assert np.isnan(fx.softmax(x)[[0, 1, 2]]).all()
    assert np.isfinite(fx.softmax(x)[3:]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_on_nasty_rows(dtype):
    x = NASTY_ROWS.astype(dtype)
    labels = np.array([0, 1, 2, 3, 2, 0, 1, 3])
    loss, grad = fx.cross_entropy_with_grad(x, labels, reduction="none")
    ref_loss, ref_grad = reference.cross_entropy_with_grad(x.astype(np.float64), labels, reduction="none")
    assert_close(loss, ref_loss, rtol=1e-6)
    assert_close(grad, ref_grad, rtol=1e-6, atol=1e-7)
    assert np.isnan(loss[:3]).all() and np.isnan(grad[:3]).all()  # NaN rows stay NaN
    assert np.isfinite(loss[3:]).all() and np.isfinite(grad[3:]).all()
    assert np.isnan(fx.cross_entropy(x, labels))  # never silently zeroed


def test_masked_class_as_target_is_infinite_loss():
    x = np.array([[-np.inf, 0.0, 1.0]])
    assert fx.cross_entropy(x, np.array([0])) == np.inf
    assert np.isfinite(fx.cross_entropy(x, np.array([1])))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(reduction):
    logits = np.zeros((0, 5), dtype=np.float32)
    loss, grad = fx.cross_entropy_with_grad(logits, np.zeros(0, dtype=np.int64), reduction=reduction)
    assert grad.shape == (0, 5)
    if reduction == "mean":
        assert np.isnan(loss)
    elif reduction == "sum":
        assert loss == 0
    else:
        assert loss.shape == (0,)
    assert fx.logsumexp(logits).shape == (0,)
    assert fx.softmax(logits).shape == (0, 5)
    assert fx.entropy(logits).shape == (0,)
    assert np.isnan(fx.binary_cross_entropy(np.zeros(0), np.zeros(0)))


def test_one_class():
    x = np.random.default_rng(0).standard_normal((6, 1))
    loss, grad = fx.cross_entropy_with_grad(x, np.zeros(6, dtype=np.int64), reduction="none")
    assert_close(loss, np.zeros(6), rtol=0, atol=1e-15)
    assert_close(grad, np.zeros((6, 1)), rtol=0, atol=1e-15)
    assert_close(fx.softmax(x), np.ones((6, 1)), rtol=1e-15)
    assert_close(fx.logsumexp(x), x[:, 0], rtol=1e-15)


def test_all_rows_ignored():
    x = np.random.default_rng(0).standard_normal((3, 4))
    labels = np.full(3, -100)
    loss, grad = fx.cross_entropy_with_grad(x, labels)
    assert np.isnan(loss)
    assert (grad == 0).all()
    assert fx.cross_entropy(x, labels, reduction="sum") == 0
    assert np.isnan(fx.cross_entropy(x, labels, label_smoothing=0.2))


def test_256k_classes(rng):
    x = (rng.standard_normal((3, 262144)) * 2).astype(np.float32)
    x[1, 100] = 40.0
    labels = np.array([5, 100, 262143])
    loss, grad = fx.cross_entropy_with_grad(x, labels, reduction="none")
    ref_loss, ref_grad = reference.cross_entropy_with_grad(x.astype(np.float64), labels, reduction="none")
    assert np.max(np.abs(loss - ref_loss) / np.maximum(np.abs(ref_loss), 1)) < 1e-5
    assert np.max(np.abs(grad - ref_grad)) < 1e-6
    assert_close(grad.sum(-1, dtype=np.float64), np.zeros(3), rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("FASTXENT_TEST_HUGE"),
                    reason="needs ~17 GB of memory and minutes: set FASTXENT_TEST_HUGE=1")
def test_more_than_2_to_31_elements():
    """64-bit indexing: a (2^16 + 1) x 2^15 float32 problem, 2^31 + 2^15 elements.
    Not run by default (memory); run with FASTXENT_TEST_HUGE=1."""
    rows, classes = 2 ** 16 + 1, 2 ** 15
    x = np.zeros((rows, classes), dtype=np.float32)
    x[-1, -1] = 10.0
    labels = np.full(rows, classes - 1)
    loss = fx.cross_entropy(x, labels, reduction="none")
    expected_last = np.log(np.exp(10.0) + classes - 1) - 10.0
    assert abs(loss[-1] - expected_last) < 1e-5
    assert abs(loss[0] - np.log(classes)) < 1e-5
    lse = fx.logsumexp(x)
    assert abs(lse[-1] - np.log(np.exp(10.0) + classes - 1)) < 1e-5
