"""Hypothesis properties of the math (seeds 000-002)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastxent as fx

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=64)
shapes = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float64, shapes, elements=finite), shift=st.floats(-1e3, 1e3))
def test_shift_invariance(x, shift):
    np.testing.assert_allclose(fx.softmax(x + shift), fx.softmax(x), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fx.logsumexp(x + shift), fx.logsumexp(x) + shift, rtol=1e-12, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(a=hnp.arrays(np.float64, shapes, elements=st.floats(0.0, 1.0)),
       b=st.data())
def test_cross_entropy_is_entropy_plus_kl(a, b):
    p = a + 1e-3
    p /= p.sum(-1, keepdims=True)
    q = b.draw(hnp.arrays(np.float64, p.shape, elements=st.floats(1e-3, 1.0)))
    q /= q.sum(-1, keepdims=True)
    np.testing.assert_allclose(fx.cross_entropy_probs(p, q), fx.entropy(p) + fx.kl_divergence(p, q),
                               rtol=1e-10, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float64, shapes, elements=finite), data=st.data())
def test_one_hot_probabilities_equal_index_targets(x, data):
    n, c = x.shape
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    one_hot = np.eye(c)[labels]
    np.testing.assert_allclose(fx.cross_entropy(x, one_hot), fx.cross_entropy(x, labels), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float64, shapes, elements=finite), data=st.data())
def test_gradient_rows_sum_to_zero(x, data):
    n, c = x.shape
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    _, grad = fx.cross_entropy_with_grad(x, labels, reduction="sum")
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-12)


shapes3 = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)
axes = st.sampled_from([-1, 0, None])


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float64, shapes3, elements=finite), shift=st.floats(-1e3, 1e3), axis=axes)
def test_shift_invariance_on_any_axis(x, shift, axis):
    np.testing.assert_allclose(fx.softmax(x + shift, axis=axis), fx.softmax(x, axis=axis), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fx.log_softmax(x + shift, axis=axis), fx.log_softmax(x, axis=axis),
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fx.logsumexp(x + shift, axis=axis), fx.logsumexp(x, axis=axis) + shift,
                               rtol=1e-12, atol=1e-9)
    # and the cross-entropy of a shifted row is unchanged, gradient included
    if x.ndim >= 1:
        labels = np.zeros(x.shape[:-1], dtype=np.int64)
        a = fx.cross_entropy_with_grad(x + shift, labels, label_smoothing=0.1)
        b = fx.cross_entropy_with_grad(x, labels, label_smoothing=0.1)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=shapes)
def test_decomposition_with_zeros_in_p(data, shape):
    """H(p, q) = H(p) + KL(p||q) also when p has exact zeros (0 log 0 = 0)."""
    p = data.draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0])))
    p[..., 0] += 1.0
    p /= p.sum(-1, keepdims=True)
    q = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(1e-6, 1.0)))
    q /= q.sum(-1, keepdims=True)
    np.testing.assert_allclose(fx.cross_entropy_probs(p, q), fx.entropy(p) + fx.kl_divergence(p, q),
                               rtol=1e-10, atol=1e-12)
    assert (fx.kl_divergence(p, q) >= -1e-12).all()  # Gibbs' inequality
    _, g_h = fx.cross_entropy_probs_with_grad(p, q)
    _, g_kl = fx.kl_divergence_with_grad(p, q)
    # H(p) does not depend on q: both are -p/q (to 1 ulp: fastmath may use p * (1/q))
    np.testing.assert_allclose(g_h, g_kl, rtol=4e-16, atol=0)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float64, shapes, elements=finite), data=st.data(),
       reduction=st.sampled_from(["none", "sum"]), smoothing=st.sampled_from([0.0, 0.2]))
def test_one_hot_equals_index_with_weights_and_smoothing(x, data, reduction, smoothing):
    """With class weights the means differ by definition (sum of w_y vs N), so
    the weighted check uses "none" and "sum"; the gradients agree too."""
    n, c = x.shape
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    w = data.draw(hnp.arrays(np.float64, (c,), elements=st.floats(0.1, 3.0)))
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    hard = fx.cross_entropy_with_grad(x, labels, **kw)
    soft = fx.cross_entropy_with_grad(x, np.eye(c)[labels], **kw)
    np.testing.assert_allclose(soft[0], hard[0], rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(soft[1], hard[1], rtol=1e-11, atol=1e-13)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float64, shapes, elements=finite), data=st.data(),
       reduction=st.sampled_from(["none", "sum", "mean"]), smoothing=st.sampled_from([0.0, 0.3]))
def test_gradient_rows_sum_to_zero_with_ignored_rows_and_soft_targets(x, data, reduction, smoothing):
    """Without class weights, every gradient row sums to zero (a softmax
    minus a distribution), with smoothing, ignored rows and soft targets too."""
    n, c = x.shape
    labels = np.array(data.draw(st.lists(st.integers(-1, c - 1), min_size=n, max_size=n)))
    upstream = data.draw(hnp.arrays(np.float64, (n,), elements=st.floats(0.1, 10.0))) if reduction == "none" else 2.0
    _, grad = fx.cross_entropy_with_grad(x, labels, ignore_index=-1, reduction=reduction,
                                         label_smoothing=smoothing, grad_output=upstream)
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-12)
    assert (grad[labels == -1] == 0).all()
    t = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(0.0, 1.0)))
    t[:, 0] += 1e-3
    t /= t.sum(-1, keepdims=True)
    _, grad = fx.cross_entropy_with_grad(x, t, reduction=reduction, label_smoothing=smoothing,
                                         grad_output=upstream)
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float64, shapes, elements=finite), data=st.data())
def test_cross_entropy_is_lse_minus_target_logit_and_bounds(x, data):
    n, c = x.shape
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    loss = fx.cross_entropy(x, labels, reduction="none")
    lse = fx.logsumexp(x)
    np.testing.assert_allclose(loss, lse - x[np.arange(n), labels], rtol=1e-12, atol=1e-12)
    assert (loss >= -1e-12).all()
    # softmax rows are distributions
    p = fx.softmax(x)
    assert (p >= 0).all() and (p <= 1).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-13)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float64, shapes, elements=st.floats(-15, 15)), data=st.data())
def test_bce_with_logits_is_bce_of_sigmoid(x, data):
    t = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(0.0, 1.0)))
    probs = 1 / (1 + np.exp(-x))
    # |x| <= 15: 1 - sigmoid(x) keeps ~10 digits in float64 (the probs path loses the rest)
    np.testing.assert_allclose(fx.binary_cross_entropy_with_logits(x, t, reduction="none"),
                               fx.binary_cross_entropy(probs, t, reduction="none"), rtol=1e-6, atol=1e-9)
