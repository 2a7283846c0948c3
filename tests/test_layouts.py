"""Non-contiguous, Fortran-ordered, read-only and memory-mapped inputs give
the results of contiguous ones; float16, integer and bool inputs follow the
dtype rules."""

import numpy as np
import pytest

import fastxent as fx

FUNCTIONS = {
    "logsumexp": lambda x, y, p: fx.logsumexp(x),
    "softmax": lambda x, y, p: fx.softmax(x),
    "log_softmax": lambda x, y, p: fx.log_softmax(x),
    "cross_entropy_with_grad": lambda x, y, p: fx.cross_entropy_with_grad(x, y, reduction="none"),
    "soft_cross_entropy": lambda x, y, p: fx.cross_entropy_with_grad(x, p, reduction="none"),
    "bce_logits": lambda x, y, p: fx.binary_cross_entropy_with_logits_with_grad(x, p),
    "bce": lambda x, y, p: fx.binary_cross_entropy_with_grad(p, p),
    "entropy": lambda x, y, p: fx.entropy_with_grad(p),
    "kl": lambda x, y, p: fx.kl_divergence_with_grad(p, p[::-1].copy()),
}


def _results(fn, x, y, p):
    out = fn(x, y, p)
    return [np.asarray(o) for o in (out if isinstance(out, tuple) else (out,))]


def _base(rng):
    x = rng.standard_normal((37, 23))
    y = rng.integers(0, 23, 37)
    p = rng.random((37, 23))
    return x, y, p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_layouts_give_identical_results(rng, tmp_path, name):
    x, y, p = _base(rng)
    fn = FUNCTIONS[name]
    expected = _results(fn, x, y, p)

    strided_x = np.zeros((37, 46))
    strided_x[:, ::2] = x
    strided_p = np.zeros((74, 23))
    strided_p[::2] = p
    variants = {
        "strided": (strided_x[:, ::2], y, strided_p[::2]),
        "fortran": (np.asfortranarray(x), y, np.asfortranarray(p)),
    }
    ro_x, ro_p = x.copy(), p.copy()
    ro_x.flags.writeable = False
    ro_p.flags.writeable = False
    variants["read-only"] = (ro_x, y, ro_p)
    mx = np.memmap(tmp_path / "x.dat", dtype=x.dtype, mode="w+", shape=x.shape)
    mx[:] = x
    mp = np.memmap(tmp_path / "p.dat", dtype=p.dtype, mode="w+", shape=p.shape)
    mp[:] = p
    mx.flush()
    mp.flush()
    variants["memmap"] = (np.memmap(tmp_path / "x.dat", dtype=x.dtype, mode="r", shape=x.shape), y,
                          np.memmap(tmp_path / "p.dat", dtype=p.dtype, mode="r", shape=p.shape))
    for label, args in variants.items():
        got = _results(fn, *args)
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e, err_msg=f"{name} with {label} inputs")


def test_float16_computed_in_float32(rng):
    x = rng.standard_normal((20, 9)).astype(np.float16)
    y = rng.integers(0, 9, 20)
    loss, grad = fx.cross_entropy_with_grad(x, y)
    assert loss.dtype == np.float16 and grad.dtype == np.float16
    loss32, grad32 = fx.cross_entropy_with_grad(x.astype(np.float32), y)
    assert loss == np.float16(loss32)
    np.testing.assert_array_equal(grad, grad32.astype(np.float16))
    for name in ("logsumexp", "softmax", "log_softmax", "entropy"):
        got = getattr(fx, name)(x)
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, getattr(fx, name)(x.astype(np.float32)).astype(np.float16))


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16, bool])
def test_integer_and_bool_inputs_promote_to_float64(dtype):
    x = np.array([[0, 1, 1], [1, 0, 0]], dtype=dtype)
    expected = fx.logsumexp(x.astype(np.float64))
    got = fx.logsumexp(x)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    loss = fx.cross_entropy(x, np.array([0, 1]))
    assert loss.dtype == np.float64
    assert loss == fx.cross_entropy(x.astype(np.float64), np.array([0, 1]))


def test_python_lists_and_label_dtypes():
    assert fx.cross_entropy([[1.0, 2.0], [3.0, 0.0]], [1, 0]) == fx.cross_entropy(
        np.array([[1.0, 2.0], [3.0, 0.0]]), np.array([1, 0], dtype=np.uint8))


# ----------------------------------------------------------------- more
def _variants_3d(a, tmp_path, tag):
    """The same values as C-ordered, Fortran-ordered, negatively strided,
    transposed-back, read-only and memory-mapped arrays."""
    out = {"C": a, "fortran": np.asfortranarray(a)}
    flipped = np.ascontiguousarray(a[::-1, :, ::-1])[::-1, :, ::-1]
    out["negative strides"] = flipped
    out["transposed"] = np.ascontiguousarray(a.transpose(2, 0, 1)).transpose(1, 2, 0)
    ro = a.copy()
    ro.flags.writeable = False
    out["read-only"] = ro
    m = np.memmap(tmp_path / f"{tag}.dat", dtype=a.dtype, mode="w+", shape=a.shape, order="F")
    m[:] = a
    m.flush()
    out["memmap F"] = np.memmap(tmp_path / f"{tag}.dat", dtype=a.dtype, mode="r", shape=a.shape, order="F")
    return out


@pytest.mark.parametrize("axis", [-1, 0, 1, (0, 2), None])
def test_3d_layouts_over_every_axis(rng, tmp_path, axis):
    x = rng.standard_normal((4, 5, 6)) * 3
    p = rng.random((4, 5, 6))
    q = rng.random((4, 5, 6)) + 0.1
    expected = {
        "logsumexp": fx.logsumexp(x, axis=axis), "softmax": fx.softmax(x, axis=axis),
        "log_softmax": fx.log_softmax(x, axis=axis), "entropy": fx.entropy_with_grad(p, axis=axis),
        "kl": fx.kl_divergence_with_grad(p, q, axis=axis), "H": fx.cross_entropy_probs_with_grad(p, q, axis=axis),
    }
    xs, ps, qs = (_variants_3d(a, tmp_path, t) for a, t in ((x, "x"), (p, "p"), (q, "q")))
    for label in xs:
        got = {
            "logsumexp": fx.logsumexp(xs[label], axis=axis), "softmax": fx.softmax(xs[label], axis=axis),
            "log_softmax": fx.log_softmax(xs[label], axis=axis), "entropy": fx.entropy_with_grad(ps[label], axis=axis),
            "kl": fx.kl_divergence_with_grad(ps[label], qs[label], axis=axis),
            "H": fx.cross_entropy_probs_with_grad(ps[label], qs[label], axis=axis),
        }
        for name in expected:
            for g, e in zip(_tuple(got[name]), _tuple(expected[name])):
                np.testing.assert_array_equal(g, e, err_msg=f"{name}, {label}, axis={axis}")


def _tuple(v):
    return v if isinstance(v, tuple) else (v,)


def test_cross_entropy_layouts_with_every_option(rng, tmp_path):
    """Logits, labels, soft targets, weights and grad_output as views, Fortran
    arrays, memmaps and other integer dtypes: identical results."""
    x = rng.standard_normal((6, 7, 9)) * 2
    y = rng.integers(0, 9, (6, 7))
    y[::2, 1] = -100
    t = rng.random((6, 7, 9))
    t /= t.sum(-1, keepdims=True)
    w = rng.random(9) + 0.1
    g = rng.random((6, 7))
    kw = dict(label_smoothing=0.1, reduction="none")
    hard = fx.cross_entropy_with_grad(x, y, weight=w, grad_output=g, **kw)
    soft = fx.cross_entropy_with_grad(x, t, weight=w, grad_output=g, **kw)
    wide_w = np.zeros(18)
    wide_w[::2] = w
    ym = np.memmap(tmp_path / "y.dat", dtype=np.int16, mode="w+", shape=y.shape)
    ym[:] = y
    cases = [
        (np.asfortranarray(x), np.asfortranarray(y), np.asfortranarray(t), wide_w[::2], np.asfortranarray(g)),
        (_variants_3d(x, tmp_path, "x")["memmap F"], ym, _variants_3d(t, tmp_path, "t")["negative strides"],
         w[::-1].copy()[::-1], g.T.copy().T),
    ]
    for label_dtype in (np.int8, np.int32, np.uint16, np.int64, np.uint64):
        yy = np.where(y < 0, 0, y).astype(label_dtype)
        ref = fx.cross_entropy_with_grad(x, np.where(y < 0, 0, y), weight=w, **kw)
        for a, b in zip(fx.cross_entropy_with_grad(x, yy, weight=w, **kw), ref):
            np.testing.assert_array_equal(a, b, err_msg=str(label_dtype))
    for xx, yy, tt, ww, gg in cases:
        for a, b in zip(fx.cross_entropy_with_grad(xx, yy, weight=ww, grad_output=gg, **kw), hard):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(fx.cross_entropy_with_grad(xx, tt, weight=ww, grad_output=gg, **kw), soft):
            np.testing.assert_array_equal(a, b)


def test_bce_layouts(rng):
    x = rng.standard_normal((8, 5)) * 3
    t = rng.random((8, 5))
    w = rng.random((8, 1))
    pw = rng.random(5) + 0.5
    expected = fx.binary_cross_entropy_with_logits_with_grad(x, t, weight=w, pos_weight=pw, reduction="none")
    wide = np.zeros((8, 10))
    wide[:, ::2] = x
    got = fx.binary_cross_entropy_with_logits_with_grad(wide[:, ::2], np.asfortranarray(t), weight=w[::-1][::-1],
                                                        pos_weight=np.repeat(pw, 2)[::2], reduction="none")
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float16, np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64, bool])
def test_every_function_follows_the_dtype_rules(rng, dtype):
    """float16 is computed in float32 and returned as float16; integers and
    bool are computed and returned as float64, as np.asarray(x, float) would."""
    if dtype == np.float16:
        x = (rng.standard_normal((7, 6)) * 3).astype(dtype)
        work, result = np.float32, np.float16
    else:
        x = (rng.integers(0, 2, (7, 6)) if dtype == bool else rng.integers(0, 4, (7, 6))).astype(dtype)
        work, result = np.float64, np.float64
    p = (np.abs(x) > 1).astype(dtype) if dtype != bool else x
    y = rng.integers(0, 6, 7)
    calls = {
        "logsumexp": ((x,), {}), "softmax": ((x,), {}), "log_softmax": ((x,), {}),
        "cross_entropy_with_grad": ((x, y), dict(label_smoothing=0.1)),
        "binary_cross_entropy_with_logits_with_grad": ((x, p), {}),
        "binary_cross_entropy_with_grad": ((p, p), {}),
        "entropy_with_grad": ((p,), {}), "kl_divergence_with_grad": ((p, p), {}),
        "cross_entropy_probs_with_grad": ((p, p), {}),
    }
    for name, (args, kwargs) in calls.items():
        got = _tuple(getattr(fx, name)(*args, **kwargs))
        expected = _tuple(getattr(fx, name)(*[a if a is y else a.astype(work) for a in args], **kwargs))
        for g, e in zip(got, expected):
            assert np.asarray(g).dtype == result, (name, np.asarray(g).dtype)
            np.testing.assert_array_equal(g, np.asarray(e).astype(result), err_msg=name)


def test_float16_soft_targets_and_out(rng):
    x = rng.standard_normal((5, 4)).astype(np.float16)
    t = rng.random((5, 4)).astype(np.float16)
    out = np.empty_like(x)
    loss, grad = fx.cross_entropy_with_grad(x, t, reduction="none", out=out)
    loss32, grad32 = fx.cross_entropy_with_grad(x.astype(np.float32), t.astype(np.float32), reduction="none")
    assert grad is out and loss.dtype == np.float16
    np.testing.assert_array_equal(loss, loss32.astype(np.float16))
    np.testing.assert_array_equal(out, grad32.astype(np.float16))
