"""Fused linear cross-entropy: against PyTorch autograd (matmul -> F.cross_entropy
-> backward), the float64 NumPy reference, finite differences, chunk-size
invariance, bad input, and the extra memory (tracemalloc)."""

import itertools
import tracemalloc

import numpy as np
import pytest

import fastxent as fx
from fastxent import _linear, reference
from tests.conftest import as64, assert_close

REDUCTIONS = ["mean", "sum", "none"]


def _problem(rng, batch=(13,), n_features=5, n_classes=7, soft=False, ignore=True):
    x = rng.standard_normal(batch + (n_features,))
    W = rng.standard_normal((n_classes, n_features))
    bias = rng.standard_normal(n_classes)
    if soft:
        t = rng.random(batch + (n_classes,))
        target = t / t.sum(-1, keepdims=True)
    else:
        target = rng.integers(0, n_classes, batch)
        if ignore:
            target.reshape(-1)[::5] = -100
    return x, W, bias, target


def _torch_grads(x, W, bias, target, *, weight=None, reduction="mean", label_smoothing=0.0,
                 l2=0.0, grad_output=None):
    """PyTorch autograd of cross_entropy(x @ W.T + b) + l2/2 ||W||^2, in float64."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    xt = torch.tensor(x, requires_grad=True)
    Wt = torch.tensor(W, requires_grad=True)
    bt = None if bias is None else torch.tensor(bias, requires_grad=True)
    logits = xt @ Wt.T if bt is None else xt @ Wt.T + bt
    C = W.shape[0]
    loss = F.cross_entropy(logits.reshape(-1, C),
                           torch.tensor(target.reshape(-1, C) if target.dtype.kind == "f"
                                        else target.reshape(-1)),
                           weight=None if weight is None else torch.tensor(weight),
                           reduction=reduction, label_smoothing=label_smoothing)
    if reduction == "none":
        loss = loss.reshape(x.shape[:-1])
    if l2:
        loss = loss + l2 / 2 * Wt.square().sum()
    upstream = 1.0 if grad_output is None else grad_output
    loss.backward(torch.as_tensor(upstream, dtype=torch.float64).expand_as(loss))
    grads = (xt.grad.numpy(), Wt.grad.numpy(), None if bt is None else bt.grad.numpy())
    return loss.detach().numpy(), grads


def _assert_grads(got, expected, rtol, atol):
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
        else:
            assert_close(g, e, rtol=rtol, atol=atol)


OPTIONS = list(itertools.product(REDUCTIONS, [0.0, 0.2], [False, True], [False, True],
                                 [False, True]))


@pytest.mark.parametrize("reduction,smoothing,weighted,soft,with_bias", OPTIONS)
def test_matches_torch_autograd(rng, reduction, smoothing, weighted, soft, with_bias):
    x, W, bias, target = _problem(rng, batch=(23,), soft=soft)
    bias = bias if with_bias else None
    weight = rng.random(7) + 0.1 if weighted else None
    l2 = 0.0 if reduction == "none" else 0.35
    grad_output = rng.random(23) if reduction == "none" else 1.7
    kw = dict(weight=weight, reduction=reduction, label_smoothing=smoothing, l2=l2)
    expected_loss, expected = _torch_grads(x, W, bias, target, grad_output=grad_output, **kw)
    kw["bias"] = bias
    for chunk_size in (None, 4, 23):
        loss, grads = fx.linear_cross_entropy_with_grad(x, W, target, grad_output=grad_output,
                                                        chunk_size=chunk_size, **kw)
        assert_close(loss, expected_loss, rtol=1e-13, atol=1e-14)
        _assert_grads(grads, expected, rtol=1e-12, atol=1e-14)
        assert_close(fx.linear_cross_entropy(x, W, target, chunk_size=chunk_size, **kw), loss,
                     rtol=1e-15, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference(rng, reduction):
    x, W, bias, target = _problem(rng, batch=(6, 5))
    kw = dict(bias=bias, reduction=reduction, label_smoothing=0.1,
              l2=0.0 if reduction == "none" else 0.5, weight=rng.random(7) + 0.5)
    loss, grads = fx.linear_cross_entropy_with_grad(x, W, target, chunk_size=7, **kw)
    ref_loss, ref_grads = reference.linear_cross_entropy_with_grad(x, W, target, **kw)
    assert_close(loss, ref_loss, rtol=1e-13, atol=1e-14)
    _assert_grads(grads, ref_grads, rtol=1e-12, atol=1e-14)
    assert_close(reference.linear_cross_entropy(x, W, target, **kw), ref_loss, rtol=0, atol=0)


def test_leading_batch_axes(rng):
    x, W, bias, target = _problem(rng, batch=(3, 4, 2))
    loss, (dx, dW, db) = fx.linear_cross_entropy_with_grad(x, W, target, bias=bias,
                                                           reduction="none", chunk_size=5)
    assert loss.shape == (3, 4, 2) and dx.shape == x.shape and dW.shape == W.shape
    flat_loss, (flat_dx, flat_dW, flat_db) = fx.linear_cross_entropy_with_grad(
        x.reshape(-1, 5), W, target.reshape(-1), bias=bias, reduction="none")
    assert_close(loss.reshape(-1), flat_loss, rtol=1e-15)
    assert_close(dx.reshape(-1, 5), flat_dx, rtol=1e-15)
    assert_close(dW, flat_dW, rtol=1e-13, atol=1e-15)
    assert_close(db, flat_db, rtol=1e-13, atol=1e-15)


def test_single_sample(rng):
    x, W, bias, _ = _problem(rng, batch=())
    loss, (dx, dW, db) = fx.linear_cross_entropy_with_grad(x, W, np.int64(3), bias=bias)
    expected_loss, expected = _torch_grads(x[None], W, bias, np.array([3]))
    assert np.ndim(loss) == 0 and dx.shape == x.shape
    assert_close(loss, expected_loss, rtol=1e-13)
    _assert_grads((dx[None], dW, db), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 8, 29, 30, 1000])
def test_chunk_size_does_not_change_results(rng, chunk_size):
    x, W, bias, target = _problem(rng, batch=(29,), n_classes=11)
    kw = dict(bias=bias, l2=0.1, label_smoothing=0.05)
    base_loss, base = fx.linear_cross_entropy_with_grad(x, W, target, chunk_size=29, **kw)
    loss, grads = fx.linear_cross_entropy_with_grad(x, W, target, chunk_size=chunk_size, **kw)
    assert_close(loss, base_loss, rtol=1e-14)
    _assert_grads(grads, base, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("soft", [False, True])
def test_finite_differences(rng, soft):
    x, W, bias, target = _problem(rng, batch=(9,), n_features=4, n_classes=5, soft=soft)
    kw = dict(bias=bias, l2=0.7, weight=rng.random(5) + 0.5, label_smoothing=0.1, chunk_size=4)
    _, (dx, dW, db) = fx.linear_cross_entropy_with_grad(x, W, target, **kw)

    def numeric(array, name):
        grad = np.zeros_like(array)
        h = 1e-6
        for idx in np.ndindex(array.shape):
            saved = array[idx]
            values = []
            for step in (h, -h):
                array[idx] = saved + step
                args = dict(kw)
                if name == "bias":
                    args["bias"] = array
                values.append(fx.linear_cross_entropy(x if name != "x" else array,
                                                      W if name != "W" else array, target, **args))
            array[idx] = saved
            grad[idx] = (values[0] - values[1]) / (2 * h)
        return grad

    assert_close(dx, numeric(x.copy(), "x"), rtol=1e-6, atol=1e-8)
    assert_close(dW, numeric(W.copy(), "W"), rtol=1e-6, atol=1e-8)
    assert_close(db, numeric(bias.copy(), "bias"), rtol=1e-6, atol=1e-8)


def test_sum_reduction_is_the_seed_objective(rng):
    """reduction='sum': sum_n L_n + (l2/2)||W||^2 and its gradient sum (p - onehot) x + l2 W."""
    x, W, _, target = _problem(rng, batch=(15,), ignore=False)
    l2 = 0.9
    loss, (_, dW, db) = fx.linear_cross_entropy_with_grad(x, W, target, l2=l2, reduction="sum")
    logits = x @ W.T
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    onehot = np.eye(W.shape[0])[target]
    assert db is None
    assert_close(loss, -logp[np.arange(15), target].sum() + l2 / 2 * (W ** 2).sum(), rtol=1e-13)
    assert_close(dW, (np.exp(logp) - onehot).T @ x + l2 * W, rtol=1e-12, atol=1e-14)


def test_mean_over_no_rows_is_nan_as_in_torch(rng):
    x, W, bias, _ = _problem(rng, batch=(6,))
    target = np.full(6, -100)
    loss, grads = fx.linear_cross_entropy_with_grad(x, W, target, bias=bias, l2=0.5, chunk_size=4)
    expected_loss, expected = _torch_grads(x, W, bias, target, l2=0.5)
    assert np.isnan(loss) and np.isnan(expected_loss)
    _assert_grads(grads, expected, rtol=1e-14, atol=0)
    # class weights that are zero on every kept row: NaN gradients on those rows
    weight = np.ones(7)
    target = np.array([0, 0, -100, 0, -100, 0])
    weight[0] = 0.0
    loss, grads = fx.linear_cross_entropy_with_grad(x, W, target, bias=bias, weight=weight,
                                                    chunk_size=4)
    expected_loss, expected = _torch_grads(x, W, bias, target, weight=weight)
    assert np.isnan(loss)
    _assert_grads(grads, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(rng, reduction):
    _, W, bias, _ = _problem(rng)
    x = np.zeros((0, 5))
    loss, (dx, dW, db) = fx.linear_cross_entropy_with_grad(
        x, W, np.zeros(0, np.int64), bias=bias, reduction=reduction,
        l2=0.0 if reduction == "none" else 0.5)
    assert dx.shape == (0, 5) and db.shape == (7,) and not db.any()
    if reduction == "none":
        assert loss.shape == (0,) and not dW.any()
    else:
        expected = 0.25 * (W ** 2).sum()
        assert np.isnan(loss) if reduction == "mean" else loss == pytest.approx(expected)
        assert_close(dW, 0.5 * W, rtol=1e-15)


def test_float32_close_to_float64(rng):
    x, W, bias, target = _problem(rng, batch=(300,), n_features=16, n_classes=1000)
    x32, W32, b32 = (a.astype(np.float32) for a in (x, W, bias))
    kw = dict(l2=0.01, label_smoothing=0.1)
    loss, grads = fx.linear_cross_entropy_with_grad(x32, W32, target, bias=b32, chunk_size=64, **kw)
    assert np.asarray(loss).dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    ref_loss, ref_grads = reference.linear_cross_entropy_with_grad(
        as64(x32), as64(W32), target, bias=as64(b32), **kw)
    assert_close(loss, ref_loss, rtol=1e-5)
    for g, e in zip(grads, ref_grads):
        assert_close(g, e, rtol=1e-4, atol=1e-5 * np.abs(e).max())


def test_dtypes(rng):
    x, W, bias, target = _problem(rng)
    loss, (dx, dW, db) = fx.linear_cross_entropy_with_grad(x.astype(np.float16),
                                                           W.astype(np.float16), target,
                                                           bias=bias.astype(np.float16))
    assert np.asarray(loss).dtype == np.float16
    assert dx.dtype == dW.dtype == db.dtype == np.float16
    xi = rng.integers(-3, 4, x.shape)
    loss, (dx, dW, _) = fx.linear_cross_entropy_with_grad(xi, W, target)
    ref_loss, (ref_dx, ref_dW, _) = reference.linear_cross_entropy_with_grad(xi.astype(float), W, target)
    assert dx.dtype == np.float64
    assert_close(loss, ref_loss, rtol=1e-13)
    assert_close(dW, ref_dW, rtol=1e-12, atol=1e-14)
    # mixed float32 / float64 promotes as NumPy does
    loss, (dx, dW, _) = fx.linear_cross_entropy_with_grad(x.astype(np.float32), W, target)
    assert dx.dtype == dW.dtype == np.float64


def test_layouts_and_read_only(rng):
    x, W, bias, target = _problem(rng, batch=(17,), n_features=6)
    kw = dict(bias=bias, l2=0.2, chunk_size=5)
    base_loss, base = fx.linear_cross_entropy_with_grad(x, W, target, **kw)
    xf, Wf = np.asfortranarray(x), np.asfortranarray(W)
    big = np.zeros((34, 12))
    big[::2, ::2] = x
    Wbig = np.zeros((14, 6))
    Wbig[::2] = W
    ro = x.copy()
    ro.flags.writeable = False
    for xv, Wv in ((xf, Wf), (big[::2, ::2], Wbig[::2]), (ro, W)):
        loss, grads = fx.linear_cross_entropy_with_grad(xv, Wv, target, **kw)
        assert_close(loss, base_loss, rtol=1e-14)
        _assert_grads(grads, base, rtol=1e-13, atol=1e-15)
    assert grads[1].flags.c_contiguous


def test_label_errors_name_the_global_row(rng):
    x, W, bias, target = _problem(rng, batch=(20,), ignore=False)
    target[13] = 7
    with pytest.raises(IndexError, match=r"target 7 at row 13"):
        fx.linear_cross_entropy_with_grad(x, W, target, chunk_size=4)
    target[13] = -1
    with pytest.raises(IndexError, match=r"target -1 at row 13"):
        fx.linear_cross_entropy(x, W, target, chunk_size=4)
    target[13] = -1
    loss = fx.linear_cross_entropy(x, W, target, ignore_index=-1)  # now ignored: fine
    assert np.isfinite(loss)


BAD = [
    (dict(W=np.zeros((7, 4))), ValueError, "features"),
    (dict(W=np.zeros(5)), ValueError, "2-D"),
    (dict(bias=np.zeros(6)), ValueError, "bias must have shape"),
    (dict(target=np.zeros(12, np.int64)), ValueError, "shape"),
    (dict(target=np.zeros((13, 6))), ValueError, "shape"),
    (dict(x=np.zeros((13, 5), complex)), TypeError, "complex"),
    (dict(W=np.zeros((7, 5), object)), TypeError, "object"),
    (dict(l2=-1.0), ValueError, "l2"),
    (dict(l2=float("nan")), ValueError, "l2"),
    (dict(l2="big"), ValueError, "l2"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(chunk_size=2.5), ValueError, "chunk_size"),
    (dict(chunk_size=True), ValueError, "chunk_size"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(reduction="none", l2=0.1), ValueError, "l2"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
    (dict(weight=np.ones(6)), ValueError, "weight"),
    (dict(grad_output=np.ones(13)), ValueError, "grad_output"),
    (dict(reduction="none", grad_output=np.ones(12)), ValueError, "grad_output"),
    (dict(x=np.float64(1.0)), ValueError, "scalar"),
]


@pytest.mark.parametrize("change,error,match", BAD)
def test_bad_input(rng, change, error, match):
    x, W, bias, target = _problem(rng)
    args = dict(x=x, W=W, target=target, bias=bias)
    args.update(change)
    assert_both_raise(args, error, match)


def assert_both_raise(args, error, match):
    """linear_cross_entropy_with_grad, and linear_cross_entropy unless
    grad_output is given, raise ``error`` on ``args`` (x, W, target and
    keywords)."""
    operands = (args.pop("x"), args.pop("W"), args.pop("target"))
    with pytest.raises(error, match=match):
        fx.linear_cross_entropy_with_grad(*operands, **args)
    if "grad_output" not in args:
        with pytest.raises(error, match=match):
            fx.linear_cross_entropy(*operands, **args)


def test_auto_chunk_size():
    rows = _linear.auto_chunk_rows(8192, 32000, 4)
    assert 32 <= rows <= 8192 // 8 and rows % 8 == 0
    assert _linear.auto_chunk_rows(10, 32000, 4) == 10
    assert _linear.auto_chunk_rows(10 ** 6, 10, 8) >= 1024
    assert _linear.auto_chunk_rows(100, 10 ** 7, 4) == 32


def test_peak_memory_is_a_fraction_of_the_logits(rng):
    """N=8192, C=32000 float32 (full logits: 1 GiB): the memory allocated
    beyond inputs and outputs stays under 1/8 of the logits (the goal)."""
    N, D, C = 8192, 32, 32000
    x = rng.standard_normal((N, D), dtype=np.float32)
    W = rng.standard_normal((C, D), dtype=np.float32) * 0.1
    bias = np.zeros(C, np.float32)
    target = rng.integers(0, C, N)
    logits_bytes = N * C * 4
    outputs = x.nbytes + W.nbytes + bias.nbytes  # dx, dW, dbias
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        loss, grads = fx.linear_cross_entropy_with_grad(x, W, target, bias=bias, l2=1e-3)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads)
    extra = peak - outputs
    print(f"extra memory {extra / 2**20:.1f} MiB = 1/{logits_bytes / extra:.1f} of the logits")
    assert extra <= logits_bytes / 8


def test_host_and_device_arrays_do_not_mix(rng):
    """CUDA arrays run on the GPU path (tests/test_cuda_linear.py); a host
    array among them is a TypeError, as for every other function."""
    pytest.importorskip("fastxent.cuda._numba_cuda")
    from numba import cuda

    x, W, bias, target = _problem(rng)
    with pytest.raises(TypeError, match="host"):
        fx.linear_cross_entropy_with_grad(cuda.to_device(x), W, target)
    with pytest.raises(TypeError, match="host"):
        fx.linear_cross_entropy(x, W, target, bias=cuda.to_device(bias))
