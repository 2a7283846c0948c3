"""Cross-entropy from logits and its fused gradient: against the float64
NumPy reference, PyTorch (values and autograd gradients) and finite
differences."""

import itertools

import numpy as np
import pytest

import fastxent as fx
from fastxent import reference
from tests.conftest import as64, assert_close, numeric_grad

REDUCTIONS = ["mean", "sum", "none"]


def _problem(rng, batch=(13,), n_classes=7, soft=False, ignore=True):
    logits = rng.standard_normal(batch + (n_classes,)) * 2
    if soft:
        t = rng.random(batch + (n_classes,))
        target = t / t.sum(-1, keepdims=True)
    else:
        target = rng.integers(0, n_classes, batch)
        if ignore:
            target.reshape(-1)[:: 5] = -100
    return logits, target


OPTIONS = list(itertools.product(REDUCTIONS, [0.0, 0.25], [False, True], [False, True]))


@pytest.mark.parametrize("reduction,smoothing,weighted,soft", OPTIONS)
def test_matches_reference(rng, reduction, smoothing, weighted, soft):
    logits, target = _problem(rng, batch=(5, 4), soft=soft)
    weight = rng.random(7) + 0.1 if weighted else None
    kw = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)
    grad_output = rng.random((5, 4)) if reduction == "none" else 0.7
    loss, grad = fx.cross_entropy_with_grad(logits, target, grad_output=grad_output, **kw)
    ref_loss, ref_grad = reference.cross_entropy_with_grad(logits, target, grad_output=grad_output, **kw)
    assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15)
    assert_close(fx.cross_entropy(logits, target, **kw), ref_loss, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction,smoothing,weighted,soft", OPTIONS)
def test_matches_torch(rng, reduction, smoothing, weighted, soft):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    logits, target = _problem(rng, batch=(11,), n_classes=6, soft=soft)
    weight = rng.random(6) + 0.1 if weighted else None
    x = torch.tensor(logits, requires_grad=True)
    t_loss = F.cross_entropy(x, torch.tensor(target), reduction=reduction, label_smoothing=smoothing,
                             weight=None if weight is None else torch.tensor(weight))
    upstream = rng.random(11) if reduction == "none" else 1.3
    t_loss.backward(torch.as_tensor(upstream, dtype=torch.float64))
    loss, grad = fx.cross_entropy_with_grad(logits, target, weight=weight, reduction=reduction,
                                            label_smoothing=smoothing, grad_output=upstream)
    assert_close(loss, t_loss.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert_close(grad, x.grad.numpy(), rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4096, 10), (64, 1000), (3, 40000)])
def test_torch_float32_and_float64_shapes(rng, dtype, shape):
    """Shapes that take every code path: blocks of short rows, long rows."""
    torch = pytest.importorskip("torch")
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0])
    x = torch.tensor(as64(logits), requires_grad=True)
    torch.nn.functional.cross_entropy(x, torch.tensor(labels)).backward()
    loss, grad = fx.cross_entropy_with_grad(logits, labels)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert loss.dtype == dtype and grad.dtype == dtype
    assert_close(loss, torch.nn.functional.cross_entropy(x, torch.tensor(labels)).item(), rtol=rtol)
    assert_close(grad, x.grad.numpy(), rtol=rtol, atol=rtol * np.abs(x.grad.numpy()).max())


@pytest.mark.parametrize("smoothing,weighted,soft", list(itertools.product([0.0, 0.3], [False, True], [False, True])))
def test_gradient_matches_finite_differences(rng, smoothing, weighted, soft):
    logits, target = _problem(rng, batch=(4,), n_classes=5, soft=soft)
    weight = rng.random(5) + 0.5 if weighted else None
    kw = dict(weight=weight, label_smoothing=smoothing, reduction="mean")
    _, grad = fx.cross_entropy_with_grad(logits, target, **kw)
    numeric = numeric_grad(lambda z: fx.cross_entropy(z, target, **kw), logits)
    assert_close(grad, numeric, rtol=1e-6, atol=1e-8)


def test_out_receives_gradient_and_in_place(rng):
    logits, target = _problem(rng, batch=(50,), n_classes=300)
    loss, grad = fx.cross_entropy_with_grad(logits, target)
    out = np.full_like(logits, np.nan)
    loss2, grad2 = fx.cross_entropy_with_grad(logits, target, out=out)
    assert grad2 is out and loss2 == loss
    np.testing.assert_array_equal(out, grad)
    inplace = logits.copy()
    loss3, grad3 = fx.cross_entropy_with_grad(inplace, target, out=inplace)
    assert grad3 is inplace and loss3 == loss
    np.testing.assert_array_equal(inplace, grad)


def test_out_overlapping_the_logits_is_still_right(rng):
    logits, target = _problem(rng, batch=(8,), n_classes=6, ignore=False)
    expected = fx.cross_entropy_with_grad(logits, target)[1]
    buf = np.concatenate([logits, logits])  # out is a shifted view of the same memory
    x = buf[:8]
    out = buf[4:12]
    fx.cross_entropy_with_grad(x.copy(), target)  # sanity
    _, got = fx.cross_entropy_with_grad(x, target, out=out)
    np.testing.assert_array_equal(got, expected)


def test_out_non_contiguous_and_float16(rng):
    logits, target = _problem(rng, batch=(10,), n_classes=8)
    expected = fx.cross_entropy_with_grad(logits, target)[1]
    holder = np.zeros((10, 16))
    out = holder[:, ::2]
    _, got = fx.cross_entropy_with_grad(logits, target, out=out)
    assert got is out
    np.testing.assert_array_equal(holder[:, ::2], expected)
    half = logits.astype(np.float16)
    out16 = np.empty_like(half)
    loss16, g16 = fx.cross_entropy_with_grad(half, target, out=out16)
    assert g16 is out16 and loss16.dtype == np.float16
    assert_close(g16, reference.cross_entropy_with_grad(half.astype(np.float32), target)[1],
                 rtol=1e-2, atol=1e-3)


def test_soft_one_hot_equals_hard_labels(rng):
    logits, target = _problem(rng, batch=(30,), n_classes=9, ignore=False)
    one_hot = np.eye(9)[target]
    for reduction in REDUCTIONS:
        hard = fx.cross_entropy_with_grad(logits, target, reduction=reduction)
        soft = fx.cross_entropy_with_grad(logits, one_hot, reduction=reduction)
        assert_close(hard[0], soft[0], rtol=1e-13, atol=1e-15)
        assert_close(hard[1], soft[1], rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("n_classes", [10, 1000, 32000, 262144])
def test_float32_within_1e5_of_float64(rng, n_classes):
    rows = max(2, 2_000_000 // n_classes)
    logits = (rng.standard_normal((rows, n_classes)) * 4).astype(np.float32)
    labels = rng.integers(0, n_classes, rows)
    ref_loss, ref_grad = reference.cross_entropy_with_grad(as64(logits), labels, reduction="none")
    loss, grad = fx.cross_entropy_with_grad(logits, labels, reduction="none")
    ref_lse = reference.logsumexp(as64(logits))
    # A row's loss is lse - x_y: when it is tiny (a confident, correct row)
    # it is a cancellation, and no float32 computation from float32 inputs
    # can be relatively exact; there the error is measured against |lse|.
    scale = np.maximum(np.abs(ref_loss), np.abs(ref_lse))
    assert np.max(np.abs(loss - ref_loss) / scale) < 1e-5
    mean = fx.cross_entropy(logits, labels)
    assert abs(mean - ref_loss.mean()) / ref_loss.mean() < 1e-5
    # the gradient is a probability (minus one): relative to its row's scale
    assert np.max(np.abs(grad - ref_grad)) < 1e-5 * np.max(np.abs(ref_grad))
    lse = fx.logsumexp(logits)
    # lse crosses 0 for some rows: relative to the row's magnitude there
    assert np.max(np.abs(lse - ref_lse) / np.maximum(np.abs(ref_lse), np.abs(logits).max(-1))) < 1e-5


def test_batch_axes_and_single_sample(rng):
    logits, target = _problem(rng, batch=(3, 4, 2), n_classes=5)
    loss = fx.cross_entropy(logits, target, reduction="none")
    assert loss.shape == (3, 4, 2)
    assert_close(loss, reference.cross_entropy(logits, target, reduction="none"), rtol=1e-12)
    single = fx.cross_entropy(logits[0, 0, 0], np.int64(2))
    assert np.ndim(single) == 0
    assert_close(single, reference.cross_entropy(logits[0, 0, 0][None], np.array([2])), rtol=1e-12)
