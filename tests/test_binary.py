"""Binary cross-entropy (probabilities and logits) against PyTorch, the
reference and finite differences."""

import itertools

import numpy as np
import pytest

import fastxent as fx
from fastxent import reference
from tests.conftest import assert_close, numeric_grad

REDUCTIONS = ["mean", "sum", "none"]


def _log_weight_terms(target, pos_weight):
    """|1| + |(pw - 1) t|: the size of the terms of lw = 1 + (pw - 1) t.  lw
    itself cancels for t ~ 1 and pw ~ 0 (1 - 0.995 = 0.005), so its rounding
    is an ulp of this, not of |lw|."""
    return 1.0 + np.abs(((1.0 if pos_weight is None else pos_weight) - 1.0) * target)


def _logits_loss_atol(logits, target, weight=None, pos_weight=None):
    """Absolute rounding bound of the logits loss per element: it adds terms
    of size |x| that cancel (to 3e-5 from terms of 8, say), so float64
    rounding is a few ulps of the terms, not of the result."""
    w = 1.0 if weight is None else np.abs(weight)
    lw = _log_weight_terms(target, pos_weight)
    terms = w * (np.abs((1 - target) * logits) + lw * (np.abs(logits) + 1.0))
    return 16 * np.finfo(np.float64).eps * np.where(np.isfinite(terms), terms, 0.0)


def _logits_grad_atol(target, weight=None, pos_weight=None, scale=1.0):
    """Absolute rounding bound of the logits gradient per element:
    w (sigmoid lw - pw t) cancels when sigmoid lw ~ pw t (t ~ 1, x > 3), to
    1e-5 from terms of 2, say, so the error is a few ulps of the terms
    |w scale| (|lw| + |pw t|), not of the result (measured: under 3 ulps of
    the terms against the reference and PyTorch over 2M elements)."""
    w = 1.0 if weight is None else np.abs(weight)
    pw = 1.0 if pos_weight is None else pos_weight
    terms = w * np.abs(scale) * (_log_weight_terms(target, pos_weight) + np.abs(pw * target))
    return 8 * np.finfo(np.float64).eps * np.where(np.isfinite(terms), terms, 0.0)


def _inputs(rng, shape=(9, 4)):
    probs = rng.uniform(0.001, 0.999, shape)
    probs.reshape(-1)[:3] = [0.0, 1.0, 1e-300]  # clamped logs
    target = rng.random(shape)
    target.reshape(-1)[:2] = [1.0, 0.0]
    logits = rng.standard_normal(shape) * 8
    logits.reshape(-1)[:2] = [60.0, -800.0]
    return probs, target, logits


@pytest.mark.parametrize("reduction,weighted", list(itertools.product(REDUCTIONS, [False, True])))
def test_probs_against_torch(rng, reduction, weighted):
    torch = pytest.importorskip("torch")
    probs, target, _ = _inputs(rng)
    weight = rng.random(4) if weighted else None
    p = torch.tensor(probs, requires_grad=True)
    t_loss = torch.nn.functional.binary_cross_entropy(
        p, torch.tensor(target), weight=None if weight is None else torch.tensor(weight), reduction=reduction)
    upstream = rng.random(probs.shape) if reduction == "none" else 0.9
    t_loss.backward(torch.as_tensor(upstream, dtype=torch.float64))
    loss, grad = fx.binary_cross_entropy_with_grad(probs, target, weight=weight, reduction=reduction,
                                                   grad_output=upstream)
    assert_close(loss, t_loss.detach().numpy(), rtol=1e-12)
    assert_close(grad, p.grad.numpy(), rtol=1e-12)
    assert_close(fx.binary_cross_entropy(probs, target, weight=weight, reduction=reduction),
                 t_loss.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("reduction,weighted,pos", list(itertools.product(REDUCTIONS, [False, True], [False, True])))
def test_logits_against_torch(rng, reduction, weighted, pos):
    torch = pytest.importorskip("torch")
    _, target, logits = _inputs(rng)
    weight = rng.random((9, 1)) if weighted else None
    pos_weight = rng.random(4) * 3 if pos else None
    x = torch.tensor(logits, requires_grad=True)
    t_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        x, torch.tensor(target), weight=None if weight is None else torch.tensor(weight),
        pos_weight=None if pos_weight is None else torch.tensor(pos_weight), reduction=reduction)
    t_loss.backward(torch.ones_like(t_loss))
    loss, grad = fx.binary_cross_entropy_with_logits_with_grad(
        logits, target, weight=weight, pos_weight=pos_weight, reduction=reduction)
    # (1 - t) x + lw (log1p(e) + max(-x, 0)) cancels: see _logits_loss_atol
    atol = _logits_loss_atol(logits, target, weight, pos_weight) if reduction == "none" else 1e-300
    assert_close(loss, t_loss.detach().numpy(), rtol=1e-12, atol=atol)
    # sigmoid(x) lw - pw t cancels: absolute error on the scale of the terms
    scale = 1.0 / target.size if reduction == "mean" else 1.0
    assert_close(grad, x.grad.numpy(), rtol=1e-12, atol=_logits_grad_atol(target, weight, pos_weight, scale))


@pytest.mark.parametrize("from_logits", [False, True])
def test_finite_differences(rng, from_logits):
    probs, target, logits = _inputs(rng, (3, 3))
    values = logits / 8 if from_logits else rng.uniform(0.05, 0.95, (3, 3))
    loss_fn = fx.binary_cross_entropy_with_logits if from_logits else fx.binary_cross_entropy
    grad_fn = (fx.binary_cross_entropy_with_logits_with_grad if from_logits
               else fx.binary_cross_entropy_with_grad)
    _, grad = grad_fn(values, target, reduction="sum")
    numeric = numeric_grad(lambda v: loss_fn(v, target, reduction="sum"), values)
    assert_close(grad, numeric, rtol=1e-6, atol=1e-8)


def test_matches_reference_and_float32(rng):
    probs, target, logits = _inputs(rng, (300, 50))
    for name, v in (("binary_cross_entropy_with_grad", probs), ("binary_cross_entropy_with_logits_with_grad", logits)):
        got = getattr(fx, name)(v, target, reduction="none")
        ref = getattr(reference, name)(v, target, reduction="none")
        assert_close(got[0], ref[0], rtol=1e-12, atol=1e-300)
        got32 = getattr(fx, name)(v.astype(np.float32), target.astype(np.float32))
        ref32 = getattr(reference, name)(v.astype(np.float32).astype(np.float64), target.astype(np.float32).astype(np.float64))
        assert got32[0].dtype == np.float32
        assert abs(got32[0] - ref32[0]) / abs(ref32[0]) < 1e-5


def test_probabilities_outside_unit_interval_raise():
    with pytest.raises(ValueError, match=r"\[0, 1\].*1.5"):
        fx.binary_cross_entropy(np.array([0.2, 1.5]), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="-0.1"):
        fx.binary_cross_entropy_with_grad(np.array([[0.2], [-0.1]]), np.array([[1.0], [0.0]]))
    # NaN is not an error: it propagates
    assert np.isnan(fx.binary_cross_entropy(np.array([np.nan, 0.5]), np.array([1.0, 0.0]), reduction="none")[0])


WEIGHT_SHAPES = [None, (4,), (9, 1), (9, 4), ()]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_shape", WEIGHT_SHAPES)
@pytest.mark.parametrize("pos_shape", [None, (4,), (9, 4)])
def test_logits_broadcasting_and_grad_output_against_torch(rng, reduction, weight_shape, pos_shape):
    torch = pytest.importorskip("torch")
    _, target, logits = _inputs(rng)
    weight = None if weight_shape is None else rng.random(weight_shape) + 0.1
    pos_weight = None if pos_shape is None else rng.random(pos_shape) * 3
    upstream = rng.random(logits.shape) if reduction == "none" else 0.35
    x = torch.tensor(logits, requires_grad=True)
    t_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        x, torch.tensor(target), weight=None if weight is None else torch.tensor(weight),
        pos_weight=None if pos_weight is None else torch.tensor(pos_weight), reduction=reduction)
    t_loss.backward(torch.as_tensor(upstream, dtype=torch.float64).expand_as(t_loss))
    kw = dict(weight=weight, pos_weight=pos_weight, reduction=reduction)
    loss, grad = fx.binary_cross_entropy_with_logits_with_grad(logits, target, grad_output=upstream, **kw)
    # (1 - t) x + lw (log1p(e) + max(-x, 0)) cancels for x < 0, t ~ 1: the
    # absolute error is on the scale of |x| lw (~1e-16 * 10), not of the loss
    atol = _logits_loss_atol(logits, target, weight, pos_weight) if reduction == "none" else 1e-14
    assert_close(loss, t_loss.detach().numpy(), rtol=1e-12, atol=atol)
    scale = upstream / target.size if reduction == "mean" else upstream
    assert_close(grad, x.grad.numpy(), rtol=1e-12, atol=_logits_grad_atol(target, weight, pos_weight, scale))
    assert_close(fx.binary_cross_entropy_with_logits(logits, target, **kw), t_loss.detach().numpy(),
                 rtol=1e-12, atol=atol)


@pytest.mark.parametrize("weight_shape", WEIGHT_SHAPES)
def test_probs_weight_broadcasting_against_torch(rng, weight_shape):
    torch = pytest.importorskip("torch")
    probs, target, _ = _inputs(rng)
    weight = None if weight_shape is None else rng.random(weight_shape) + 0.1
    for reduction in REDUCTIONS:
        p = torch.tensor(probs, requires_grad=True)
        t_loss = torch.nn.functional.binary_cross_entropy(
            p, torch.tensor(target), weight=None if weight is None else torch.tensor(weight),
            reduction=reduction)
        upstream = rng.random(probs.shape) if reduction == "none" else 1.9
        t_loss.backward(torch.as_tensor(upstream, dtype=torch.float64).expand_as(t_loss))
        loss, grad = fx.binary_cross_entropy_with_grad(probs, target, weight=weight, reduction=reduction,
                                                       grad_output=upstream)
        assert_close(loss, t_loss.detach().numpy(), rtol=1e-12)
        assert_close(grad, p.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("from_logits", [False, True])
def test_finite_differences_weighted(rng, reduction, from_logits):
    _, target, logits = _inputs(rng, (3, 4))
    weight = rng.random((3, 1)) + 0.5
    upstream = rng.random((3, 4)) + 0.5 if reduction == "none" else 0.8
    if from_logits:
        values = logits / 8
        kw = dict(weight=weight, pos_weight=rng.random(4) * 2 + 0.5, reduction=reduction)
        loss_fn, grad_fn = fx.binary_cross_entropy_with_logits, fx.binary_cross_entropy_with_logits_with_grad
    else:
        values = rng.uniform(0.05, 0.95, (3, 4))
        kw = dict(weight=weight, reduction=reduction)
        loss_fn, grad_fn = fx.binary_cross_entropy, fx.binary_cross_entropy_with_grad
    _, grad = grad_fn(values, target, grad_output=upstream, **kw)
    numeric = numeric_grad(lambda v: upstream * loss_fn(v, target, **kw), values)
    assert_close(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference_with_options(rng, reduction):
    probs, target, logits = _inputs(rng, (70, 33))
    weight = rng.random(33)
    pos_weight = rng.random((70, 33)) * 4
    upstream = rng.random((70, 33)) if reduction == "none" else 3.0
    got = fx.binary_cross_entropy_with_grad(probs, target, weight=weight, reduction=reduction,
                                            grad_output=upstream)
    ref = reference.binary_cross_entropy_with_grad(probs, target, weight=weight, reduction=reduction,
                                                   grad_output=upstream)
    # the mean/sum add 2310 terms in another order
    assert_close(got[0], ref[0], rtol=1e-12, atol=1e-300)
    assert_close(got[1], ref[1], rtol=1e-12, atol=1e-300)
    kw = dict(weight=weight, pos_weight=pos_weight, reduction=reduction)
    got = fx.binary_cross_entropy_with_logits_with_grad(logits, target, grad_output=upstream, **kw)
    ref = reference.binary_cross_entropy_with_logits_with_grad(logits, target, grad_output=upstream, **kw)
    atol = _logits_loss_atol(logits, target, weight, pos_weight) if reduction == "none" else 1e-300
    assert_close(got[0], ref[0], rtol=1e-12, atol=atol)
    scale = upstream / target.size if reduction == "mean" else upstream
    assert_close(got[1], ref[1], rtol=1e-12, atol=_logits_grad_atol(target, weight, pos_weight, scale))


def test_float32_mean_over_many_elements(rng):
    """A mean over 2^21 float32 losses stays within 1e-5 of float64."""
    probs = rng.uniform(0.01, 0.99, (2048, 1024)).astype(np.float32)
    target = rng.random((2048, 1024)).astype(np.float32)
    logits = (rng.standard_normal((2048, 1024)) * 4).astype(np.float32)
    for fn, v in ((fx.binary_cross_entropy, probs), (fx.binary_cross_entropy_with_logits, logits)):
        got = fn(v, target)
        ref = getattr(reference, fn.__name__)(v.astype(np.float64), target.astype(np.float64))
        assert got.dtype == np.float32
        assert abs(got - ref) / abs(ref) < 1e-5


def test_logits_agree_with_probs_of_sigmoid(rng):
    _, target, _ = _inputs(rng)
    x = rng.standard_normal((9, 4)) * 3
    probs = 1 / (1 + np.exp(-x))
    # the logits form cancels (x + (|x| + log1p(e)) for x < -8, t = 0): its
    # error is a few ulps of |x|, up to 1e-11 relative to a loss of 3e-4.
    # probs carries ~2 ulps of rounding, which -log(1 - p) amplifies by
    # p / (1 - p) = e^x (1e-11 at x = 13) and -log p by (1 - p) / p.
    cond = np.abs(1 - target) * probs / (1 - probs) + np.abs(target) * (1 - probs) / probs
    assert_close(fx.binary_cross_entropy_with_logits(x, target, reduction="none"),
                 fx.binary_cross_entropy(probs, target, reduction="none"), rtol=1e-12,
                 atol=_logits_loss_atol(x, target) + 4 * np.finfo(np.float64).eps * cond)
    # chain rule: d/dx = d/dp * p (1 - p)
    assert_close(fx.binary_cross_entropy_with_logits_with_grad(x, target)[1],
                 fx.binary_cross_entropy_with_grad(probs, target)[1] * probs * (1 - probs), rtol=1e-11, atol=1e-16)


@pytest.mark.parametrize("n", [1, 511, 512, 513, 16383, 16385, 70003])
def test_sizes_across_block_and_task_edges(rng, n):
    """The kernels work through blocks of BLOCK elements inside tasks of
    TASK_ELEMENTS; every element, at every edge, serial (n < 65536) and
    parallel, matches the reference, nasty values at the edges included."""
    from fastxent.cpu._config import TASK_ELEMENTS
    from fastxent.cpu.binary import BLOCK

    probs = rng.uniform(0.0, 1.0, n)
    logits = rng.standard_normal(n) * 20
    target = rng.random(n)
    weight = rng.random(n) + 0.5
    edges = [i for i in (0, BLOCK - 1, BLOCK, TASK_ELEMENTS - 1, TASK_ELEMENTS, n - 1) if i < n]
    probs[edges] = [0.0, 1.0, 1e-300, 0.5, 1.0 - 1e-16, 0.0][:len(edges)]
    logits[edges] = [np.inf, -np.inf, 800.0, np.nan, -1e30, 0.0][:len(edges)]
    upstream = rng.random(n)
    for fn, values, kw in ((fx.binary_cross_entropy_with_grad, probs, {}),
                           (fx.binary_cross_entropy_with_logits_with_grad, logits,
                            dict(pos_weight=rng.random(n) * 3))):
        ref_fn = getattr(reference, fn.__name__)
        got = fn(values, target, weight=weight, reduction="none", grad_output=upstream, **kw)
        ref = ref_fn(values, target, weight=weight, reduction="none", grad_output=upstream, **kw)
        atol = _logits_loss_atol(values, target, weight, kw["pos_weight"]) if kw else 1e-300
        assert_close(got[0], ref[0], rtol=1e-12, atol=atol)
        gatol = _logits_grad_atol(target, weight, kw["pos_weight"], upstream) if kw else 1e-15
        assert_close(got[1], ref[1], rtol=1e-12, atol=gatol)
        got_sum = fn(values, target, weight=weight, reduction="sum", **kw)[0]
        ref_sum = ref_fn(values, target, weight=weight, reduction="sum", **kw)[0]
        assert_close(got_sum, ref_sum, rtol=1e-12)


@pytest.mark.parametrize("n", [5000, 70_000])  # the serial and the parallel kernel
@pytest.mark.parametrize("from_logits", [False, True])
def test_loss_sum_does_not_depend_on_where_the_gradient_lies(rng, from_logits, n):
    """The element loop is vectorised behind a run-time check that the
    gradient does not overlap the inputs; when the gradient starts a few
    elements after the weights, the check fails and scalar code runs.  The
    summed loss must be the same bits either way (it once was not: the sum
    lived in that loop and changed its order)."""
    from fastxent.cpu.binary import bce_flat

    values = rng.standard_normal(n) * 4 if from_logits else rng.random(n)
    target, weight = rng.random(n), rng.random(n) + 0.1
    pos_weight = rng.random(n) * 3 if from_logits else None
    far = np.empty(n)
    expected = bce_flat(values, target, weight, pos_weight, from_logits, None, 1.0, None, far, 4096)
    for gap in range(0, 9):  # gradient right after the weights, 0..8 elements apart
        buf = np.empty(2 * n + gap)
        buf[:n] = weight
        grad = buf[n + gap:]
        got = bce_flat(values, target, buf[:n], pos_weight, from_logits, None, 1.0, None, grad, 4096)
        assert got == expected, gap
        np.testing.assert_array_equal(grad, far)
