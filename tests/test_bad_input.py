"""Every bad input of DESIGN.md is a clear exception that changes nothing."""

import re

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


# ----------------------------------------------------------------- more
BAD_DTYPES = [np.zeros(4, dtype=np.complex128), np.array(["a", "b", "c", "d"]), np.array([object()] * 4),
              np.zeros(4, dtype="datetime64[s]"), np.zeros(4, dtype="timedelta64[s]"),
              np.zeros(4, dtype=[("a", "f8")])]
BAD_IDS = ["complex", "str", "object", "datetime", "timedelta", "structured"]


def _every_call(bad):
    """Every public function, with ``bad`` in each array argument in turn."""
    x2 = np.zeros((1, 4))
    b2 = bad.reshape(1, 4)
    half = np.full(4, 0.5)
    calls = []
    for name in ("logsumexp", "softmax", "log_softmax", "entropy", "entropy_with_grad"):
        calls.append((name, (bad,), {}))
    for name in ("kl_divergence", "kl_divergence_with_grad", "cross_entropy_probs", "cross_entropy_probs_with_grad",
                 "binary_cross_entropy", "binary_cross_entropy_with_grad",
                 "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad"):
        calls.append((name, (bad, half), {}))
        calls.append((name, (half, bad), {}))
    for name in ("cross_entropy", "cross_entropy_with_grad"):
        calls.append((name, (b2, np.array([0])), {}))
        calls.append((name, (x2, bad.reshape(1, 4)), {}))  # as a probability target
        calls.append((name, (x2, bad[:1]), {}))  # as a class-index target
        calls.append((name, (x2, np.array([0])), {"weight": bad}))
    calls.append(("binary_cross_entropy", (half, half), {"weight": bad}))
    calls.append(("binary_cross_entropy_with_logits", (half, half), {"weight": bad}))
    calls.append(("binary_cross_entropy_with_logits", (half, half), {"pos_weight": bad}))
    return calls


@pytest.mark.parametrize("bad", BAD_DTYPES, ids=BAD_IDS)
def test_every_function_rejects_unsupported_dtypes(impl, bad):
    for name, args, kwargs in _every_call(bad):
        with pytest.raises(TypeError, match=re.escape(str(bad.dtype)) if bad.dtype.names is None else "dtype"):
            getattr(impl, name)(*args, **kwargs)


def test_bad_grad_output_dtype(impl):
    with pytest.raises(TypeError, match="complex"):
        impl.cross_entropy_with_grad(np.zeros((2, 3)), np.array([0, 1]), grad_output=np.complex128(1))


@pytest.mark.parametrize("target,label,row", [
    (np.array([0, 1, 2, 3, 1]), 3, 3),  # exactly C
    (np.array([0, 2**40, 1, 2, 1]), 2**40, 1),  # huge
    (np.array([-2**40, 0, 0, 0, 0]), -2**40, 0),
    (np.array([0, 1, -101, 5, 1]), -101, 2),  # the first bad row is named
    (np.array([0, 1, 2, 1, 3], dtype=np.int8), 3, 4),
    (np.array([0, 255, 2, 1, 0], dtype=np.uint8), 255, 1),
    (np.array([0, 2**63 + 5, 0, 0, 0], dtype=np.uint64), 2**63 + 5, 1),
])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_label_errors_name_label_and_row(impl, target, label, row, smoothing):
    logits = np.zeros((5, 3))
    with pytest.raises(IndexError, match=rf"target {label} at row {row}\b"):
        impl.cross_entropy(logits, target, label_smoothing=smoothing)
    with pytest.raises(IndexError, match=rf"target {label} at row {row}\b"):
        impl.cross_entropy_with_grad(logits, target, weight=np.ones(3), label_smoothing=smoothing)


def test_label_errors_on_float32_and_batch_axes(impl):
    logits = np.zeros((2, 3, 4), dtype=np.float32)
    target = np.zeros((2, 3), dtype=np.int32)
    target[1, 2] = 4
    with pytest.raises(IndexError, match=r"target 4 at row \(1, 2\)"):
        impl.cross_entropy_with_grad(logits, target)
    with pytest.raises(IndexError, match="target 7"):
        impl.cross_entropy(np.zeros(3), np.int64(7))  # one sample


def _calls_that_must_fail(logits):
    labels = np.array([0, 1, 2, 3, 0])
    return [
        (IndexError, dict(target=np.array([0, 1, 2, 9, 0]))),
        (IndexError, dict(target=np.array([0, 1, 2, 3, 0]), ignore_index=3, weight=np.ones(4),
                          label_smoothing=0.5, reduction="none", grad_output=np.ones(5), extra_bad=True)),
        (ValueError, dict(target=labels, reduction="bogus")),
        (ValueError, dict(target=labels, label_smoothing=2.0)),
        (ValueError, dict(target=labels, weight=np.ones(5))),
        (ValueError, dict(target=labels, grad_output=np.ones(5))),  # array for a scalar loss
        (ValueError, dict(target=labels, reduction="none", grad_output=np.ones(4))),
        (ValueError, dict(target=labels[:4])),
        (ValueError, dict(target=np.full((5, 3), 0.25))),
        (ValueError, dict(target=labels, ignore_index="x")),
    ]


@pytest.mark.parametrize("case", range(10))
@pytest.mark.parametrize("in_place", [False, True])
def test_bad_input_changes_nothing(rng, case, in_place):
    """After any error the logits, the target and out are exactly as before."""
    logits = rng.standard_normal((5, 4))
    error, kwargs = _calls_that_must_fail(logits)[case]
    kwargs = dict(kwargs)
    if kwargs.pop("extra_bad", False):
        kwargs["target"] = np.array([0, 1, 2, 3, -1])  # -1 is bad; 3 is ignored
    target = kwargs.pop("target")
    before_logits, before_target = logits.copy(), target.copy()
    out = logits if in_place else np.full((5, 4), 7.0)
    before_out = out.copy()
    with pytest.raises(error):
        fx.cross_entropy_with_grad(logits, target, out=out, **kwargs)
    np.testing.assert_array_equal(logits, before_logits)
    np.testing.assert_array_equal(target, before_target)
    np.testing.assert_array_equal(out, before_out)


def test_out_errors_name_the_problem():
    logits, labels = np.zeros((2, 3)), np.array([0, 1])
    cases = [
        (np.zeros((2, 3, 1)), "shape"),
        (np.zeros(6), "shape"),
        (np.zeros((2, 3), dtype=np.float16), "dtype"),
        (np.zeros((2, 3), dtype=np.complex128), "dtype"),
        ((0.0,) * 6, "out"),
        (3.0, "out"),
    ]
    for out, match in cases:
        with pytest.raises(ValueError, match=match):
            fx.cross_entropy_with_grad(logits, labels, out=out)
    # float32 logits want a float32 out, float16 logits a float16 out
    with pytest.raises(ValueError, match="dtype"):
        fx.cross_entropy_with_grad(logits.astype(np.float32), labels, out=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dtype"):
        fx.cross_entropy_with_grad(logits.astype(np.float16), labels, out=np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("value", [1.5, None, "3", True, 2.0**70])
def test_bad_ignore_index(impl, value):
    with pytest.raises((ValueError, TypeError)):
        impl.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), ignore_index=value)


@pytest.mark.parametrize("value", [None, [0.1], "x", float("inf"), -float("inf"), 1 + 1e-12, -1e-300])
def test_bad_label_smoothing(impl, value):
    with pytest.raises(ValueError, match="label_smoothing"):
        impl.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), label_smoothing=value)


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, np.float32(0.5)])
def test_label_smoothing_edges_are_legal(impl, value):
    assert np.isfinite(impl.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), label_smoothing=value))


@pytest.mark.parametrize("reduction", ["avg", "MEAN", "", None, 0, "elementwise_mean"])
def test_bad_reduction_everywhere(impl, reduction):
    half = np.full((2, 3), 0.5)
    for fn, args in ((impl.cross_entropy, (np.zeros((2, 3)), np.array([0, 1]))),
                     (impl.binary_cross_entropy, (half, half)),
                     (impl.binary_cross_entropy_with_grad, (half, half)),
                     (impl.binary_cross_entropy_with_logits, (half, half)),
                     (impl.binary_cross_entropy_with_logits_with_grad, (half, half))):
        with pytest.raises(ValueError, match="reduction"):
            fn(*args, reduction=reduction)


def test_bce_bad_weights_and_grad_output(impl):
    half = np.full((3, 4), 0.5)
    for kwargs in (dict(weight=np.ones(3)), dict(weight=np.ones((4, 4))), dict(weight=np.ones((3, 4, 1)))):
        with pytest.raises(ValueError):
            impl.binary_cross_entropy(half, half, **kwargs)
        with pytest.raises(ValueError):
            impl.binary_cross_entropy_with_logits(half, half, **kwargs)
    for kwargs in (dict(pos_weight=np.ones(3)), dict(pos_weight=np.ones((2, 4)))):
        with pytest.raises(ValueError):
            impl.binary_cross_entropy_with_logits_with_grad(half, half, **kwargs)
    with pytest.raises(ValueError):
        impl.binary_cross_entropy_with_grad(half, half, reduction="none", grad_output=np.ones(5))
    with pytest.raises(ValueError):
        impl.binary_cross_entropy_with_logits(half, np.full((4, 3), 0.5))


def test_bce_grad_output_must_be_scalar_for_reductions():
    half = np.full((3, 4), 0.5)
    for reduction in ("mean", "sum"):
        with pytest.raises(ValueError, match="grad_output"):
            fx.binary_cross_entropy_with_grad(half, half, reduction=reduction, grad_output=np.ones((3, 4)))
        with pytest.raises(ValueError, match="grad_output"):
            fx.binary_cross_entropy_with_logits_with_grad(half, half, reduction=reduction,
                                                          grad_output=np.ones((3, 4)))


def test_probabilities_out_of_range_everywhere(impl):
    t = np.zeros(5)
    for bad in (1.0 + 1e-12, -1e-300, np.inf, -np.inf):
        p = np.full(5, 0.5)
        p[3] = bad
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            impl.binary_cross_entropy(p, t)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            impl.binary_cross_entropy_with_grad(p, t, reduction="none")
    for bad in (1.5, -0.25, np.inf):  # representable in float32
        p = np.full(5, 0.5, dtype=np.float32)
        p[3] = bad
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            impl.binary_cross_entropy_with_grad(p, t.astype(np.float32))


def test_no_function_modifies_its_inputs(rng):
    x = rng.standard_normal((6, 5))
    p = rng.random((6, 5))
    q = rng.random((6, 5))
    y = rng.integers(0, 5, 6)
    w = rng.random(5)
    copies = [a.copy() for a in (x, p, q, y, w)]
    fx.logsumexp(x), fx.softmax(x), fx.log_softmax(x, axis=0)
    fx.cross_entropy_with_grad(x, y, weight=w, label_smoothing=0.1)
    fx.cross_entropy_with_grad(x, p / p.sum(-1, keepdims=True), weight=w)
    fx.binary_cross_entropy_with_grad(p, q, weight=w)
    fx.binary_cross_entropy_with_logits_with_grad(x, q, weight=w, pos_weight=w)
    fx.entropy_with_grad(p), fx.kl_divergence_with_grad(p, q), fx.cross_entropy_probs_with_grad(p, q, axis=0)
    for a, c in zip((x, p, q, y, w), copies):
        np.testing.assert_array_equal(a, c)


PUBLIC = ["logsumexp", "softmax", "log_softmax", "cross_entropy", "cross_entropy_with_grad",
          "binary_cross_entropy", "binary_cross_entropy_with_grad", "binary_cross_entropy_with_logits",
          "binary_cross_entropy_with_logits_with_grad", "entropy", "entropy_with_grad", "kl_divergence",
          "kl_divergence_with_grad", "cross_entropy_probs", "cross_entropy_probs_with_grad"]


@pytest.mark.parametrize("name", PUBLIC)
def test_reference_has_the_public_signatures(name):
    """fastxent and fastxent.reference take the same arguments (names, kinds
    and defaults), so that either can stand in for the other."""
    import inspect

    def params(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(inspect.unwrap(fn)).parameters.values()]

    assert name in fx.__all__
    assert params(getattr(fx, name)) == params(getattr(reference, name))
