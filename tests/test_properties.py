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
