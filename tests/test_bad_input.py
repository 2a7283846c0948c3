"""Every bad input of DESIGN.md is a clear exception that changes nothing."""

import numpy as np
import pytest

import fastxent as fx
from fastxent import reference


@pytest.fixture(params=["fastxent", "reference"])
def impl(request):
    return fx if request.param == "fastxent" else reference


def test_label_out_of_range_names_label_and_row(impl):
    logits = np.zeros((4, 3))
    with pytest.raises(IndexError, match=r"target 3 at row 2 .*3 classes"):
        impl.cross_entropy(logits, np.array([0, 1, 3, 0]))
    with pytest.raises(IndexError, match=r"target -1 at row 0"):
        impl.cross_entropy(logits, np.array([-1, 1, 2, 0]))
    with pytest.raises(IndexError, match=r"row \(1, 0\)"):
        impl.cross_entropy(np.zeros((2, 2, 3)), np.array([[0, 1], [7, 0]]))
    # ignore_index is not an error, even when negative or large
    assert np.isfinite(impl.cross_entropy(logits, np.array([5, 1, 2, 0]), ignore_index=5))


def test_bad_label_leaves_out_untouched():
    logits = np.random.default_rng(0).standard_normal((5, 4))
    before = logits.copy()
    with pytest.raises(IndexError):
        fx.cross_entropy_with_grad(logits, np.array([0, 1, 2, 3, 4]), out=logits)
    np.testing.assert_array_equal(logits, before)
    out = np.full((5, 4), 7.0)
    with pytest.raises(IndexError):
        fx.cross_entropy_with_grad(logits, np.array([0, 9, 2, 3, 1]), out=out)
    assert (out == 7.0).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(reduction="avg"), "reduction"),
    (dict(label_smoothing=1.5), "label_smoothing"),
    (dict(label_smoothing=-0.1), "label_smoothing"),
    (dict(label_smoothing=float("nan")), "label_smoothing"),
    (dict(weight=np.ones(4)), "weight"),
    (dict(weight=np.ones((3, 1))), "weight"),
])
def test_bad_options_are_value_errors(impl, kwargs, match):
    with pytest.raises(ValueError, match=match):
        impl.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), **kwargs)


@pytest.mark.parametrize("target", [np.array([0, 1, 2]), np.zeros((2, 4)), np.zeros((2,), dtype=np.float64)])
def test_target_shape_mismatch(impl, target):
    with pytest.raises(ValueError):
        impl.cross_entropy(np.zeros((2, 3)), target)


def test_bad_out():
    logits, labels = np.zeros((2, 3)), np.array([0, 1])
    for out in (np.zeros((3, 2)), np.zeros((2, 3), dtype=np.float32), [[0.0] * 3] * 2):
        with pytest.raises(ValueError, match="out"):
            fx.cross_entropy_with_grad(logits, labels, out=out)
    read_only = np.zeros((2, 3))
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fx.cross_entropy_with_grad(logits, labels, out=read_only)
    ints = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="dtype"):
        fx.cross_entropy_with_grad(ints, labels, out=ints)


def test_bad_grad_output():
    with pytest.raises(ValueError, match="grad_output"):
        fx.cross_entropy_with_grad(np.zeros((2, 3)), np.array([0, 1]), grad_output=np.ones(2))
    with pytest.raises(ValueError, match="grad_output"):
        fx.cross_entropy_with_grad(np.zeros((2, 3)), np.array([0, 1]), reduction="none",
                                   grad_output=np.ones(3))


@pytest.mark.parametrize("bad", [np.zeros(3, dtype=complex), np.array(["a", "b"]), np.array([object(), 1])])
def test_unsupported_dtypes_are_type_errors(impl, bad):
    with pytest.raises(TypeError, match=str(np.asarray(bad).dtype)):
        impl.logsumexp(bad)
    with pytest.raises(TypeError):
        impl.softmax(bad)
    with pytest.raises(TypeError):
        impl.entropy(bad)


def test_bool_targets_are_rejected():
    with pytest.raises(TypeError, match="bool"):
        fx.cross_entropy(np.zeros((2, 3)), np.array([True, False]))


def test_shape_mismatches_elsewhere(impl):
    with pytest.raises(ValueError):
        impl.kl_divergence(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError):
        impl.binary_cross_entropy(np.full(3, 0.5), np.ones(4))
    with pytest.raises(ValueError):
        impl.binary_cross_entropy_with_logits(np.zeros((2, 3)), np.ones((2, 3)), pos_weight=np.ones(4))
    with pytest.raises(ValueError):
        impl.cross_entropy(np.float64(1.0), np.int64(0))


def test_bad_axis(impl):
    with pytest.raises(np.exceptions.AxisError if hasattr(np, "exceptions") else ValueError):
        impl.logsumexp(np.zeros((2, 3)), axis=2)
    with pytest.raises(TypeError):
        fx.softmax(np.zeros((2, 3)), axis=1.5)
