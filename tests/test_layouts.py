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
