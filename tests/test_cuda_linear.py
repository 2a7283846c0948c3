"""The fused linear cross-entropy on CUDA arrays (``fastxent._linear`` with
``fastxent.cuda.backend.CudaOps``), on Numba's CUDA simulator without a GPU.

The simulator runs the GEMM with 8 x 8 tiles, 4 deep, 2 x 2 per thread
(``fastxent.cuda._config``), so the small shapes here span several tiles,
partial ones and split inner dimensions.  Everything is compared with the
NumPy path (same chunks, tight tolerances) and the float64 reference (full
logits).  The simulator is about 1e5 times slower than a GPU: shapes stay
small and the option grid is covered by a list of cases rather than their
product.
"""

import numpy as np
import pytest

try:
    from fastxent.cuda import _numba_cuda
except ImportError as exc:  # no numba.cuda, or no GPU without the simulator
    pytest.skip(f"numba.cuda unavailable: {exc}", allow_module_level=True)

import fastxent as fx
from fastxent import reference
from fastxent.cuda import _arrays, _config
from fastxent.cuda.backend import CudaBackend
from fastxent._backend import is_cuda_array

from tests.conftest import assert_close
from tests.test_linear import assert_both_raise

cuda = _numba_cuda.cuda
SIM = _numba_cuda.SIMULATED


def dev(a):
    return cuda.to_device(np.asarray(a))


def host(a):
    if a is None:
        return None
    assert is_cuda_array(a), type(a)
    return np.asarray(a.copy_to_host())


def _problem(rng, n=37, d=11, c=29, *, soft=False, dtype=np.float64):
    x = rng.standard_normal((n, d)).astype(dtype)
    W = (rng.standard_normal((c, d)) * 0.5).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    if soft:
        t = rng.random((n, c))
        target = (t / t.sum(-1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, c, n)
        target[::7] = -100
    return x, W, bias, target


def _compare(got, expected, rtol, atol):
    loss, grads = got
    e_loss, e_grads = expected
    assert_close(host(loss), np.asarray(e_loss), rtol=rtol, atol=atol)
    for g, e in zip(grads, e_grads):
        if e is None:
            assert g is None
        else:
            gh = host(g)
            assert gh.dtype == e.dtype and gh.shape == e.shape
            assert_close(gh, e, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ the GEMM
def _matmul(a, b, out, **kw):
    CudaBackend(out).matmul(a, b, out, **kw)


@pytest.mark.parametrize("shape", [(13, 19, 7), (8, 8, 4), (3, 29, 50), (21, 2, 33), (5, 6, 40),
                                   (1, 1, 1), (6, 5, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_layouts(rng, shape, dtype):
    """The three products of a chunk (x W^T + b, G W, accumulated G^T x) against
    NumPy, for outputs that are not multiples of the tile, split inner
    dimensions (a small output over a long one) and an empty one."""
    M, N, K = shape
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    bias = rng.standard_normal(N).astype(dtype)
    start = rng.standard_normal((M, N)).astype(dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    atol = 1e-5 if dtype == np.float32 else 1e-13
    out = dev(np.full((M, N), np.nan, dtype))
    _matmul(dev(a), dev(np.ascontiguousarray(b.T)), out, transpose_b=True, bias=dev(bias))
    assert_close(host(out), a @ b + bias, rtol=rtol, atol=atol)
    out = dev(np.full((M, N), np.nan, dtype))
    _matmul(dev(a), dev(b), out)
    assert_close(host(out), a @ b, rtol=rtol, atol=atol)
    out = dev(start)
    _matmul(dev(np.ascontiguousarray(a.T)), dev(b), out, transpose_a=True, accumulate=True)
    assert_close(host(out), start + a @ b, rtol=rtol, atol=atol)


def test_gemm_split_inner_dimension_is_used_and_deterministic(rng):
    (grid, _, per_slice) = _config.gemm_launch(5, 6, 40)
    assert grid[2] > 1 and per_slice % _config.GEMM_TILE_K == 0
    assert _config.gemm_launch(40, 40, 40)[0][2] == 1  # enough tiles: no split
    a, b = rng.standard_normal((5, 40)), rng.standard_normal((40, 6))
    first, second = dev(np.zeros((5, 6))), dev(np.zeros((5, 6)))
    _matmul(dev(a), dev(b), first)
    _matmul(dev(a), dev(b), second)
    assert np.array_equal(host(first), host(second))


def test_gemm_strided_operands(rng):
    """Operands are read through their strides (views, never copies)."""
    big = rng.standard_normal((14, 22))
    a, b = big[::2, 1::2], rng.standard_normal((11, 9))  # a: (7, 11), strided both ways
    out = dev(np.zeros((7, 9)))
    _matmul(dev(big)[::2, 1::2], dev(b), out)
    assert_close(host(out), a @ b, rtol=1e-13, atol=1e-13)
    wide = rng.standard_normal((9, 30))
    out = dev(np.zeros((7, 9)))
    _matmul(dev(big)[::2, 1::2], dev(wide)[:, 3:14], out, transpose_b=True)
    assert_close(host(out), a @ wide[:, 3:14].T, rtol=1e-13, atol=1e-13)


def test_gemm_grid_limit():
    with pytest.raises(ValueError, match="rows"):
        _config.gemm_launch(65536 * _config.GEMM_TILE, 1, 1)


# -------------------------------------------------- linear cross-entropy
# (reduction, label_smoothing, class weights, probabilities, bias, l2, chunk_size)
CASES = [
    ("mean", 0.0, False, False, True, 0.3, 16),
    ("mean", 0.1, True, False, False, 0.0, 10),
    ("sum", 0.2, True, False, True, 0.5, 37),
    ("none", 0.0, False, False, True, 0.0, 16),
    ("none", 0.1, True, False, False, 0.0, 5),
    ("mean", 0.1, True, True, True, 0.2, 16),
    ("sum", 0.0, False, True, False, 0.0, 11),
    ("none", 0.05, False, True, True, 0.0, 16),
]


@pytest.mark.parametrize("reduction,smoothing,weighted,soft,with_bias,l2,chunk", CASES)
def test_matches_numpy_path_and_reference(rng, reduction, smoothing, weighted, soft, with_bias,
                                          l2, chunk):
    x, W, bias, target = _problem(rng, soft=soft)
    weight = rng.random(W.shape[0]) + 0.5 if weighted else None
    grad_output = rng.random(x.shape[0]) if reduction == "none" else 1.7
    kw = dict(reduction=reduction, label_smoothing=smoothing, l2=l2,
              bias=bias if with_bias else None, weight=weight)
    expected = fx.linear_cross_entropy_with_grad(x, W, target, grad_output=grad_output,
                                                 chunk_size=chunk, **kw)
    dkw = dict(kw, bias=None if kw["bias"] is None else dev(kw["bias"]),
               weight=None if weight is None else dev(weight))
    got = fx.linear_cross_entropy_with_grad(
        dev(x), dev(W), dev(target), chunk_size=chunk,
        grad_output=dev(grad_output) if reduction == "none" else grad_output, **dkw)
    _compare(got, expected, rtol=1e-12, atol=1e-13)
    _compare(got, reference.linear_cross_entropy_with_grad(x, W, target, grad_output=grad_output,
                                                           **kw), rtol=1e-11, atol=1e-12)
    assert _numba_cuda.is_device_array(got[0]) and got[0].shape == (() if reduction != "none"
                                                                    else (x.shape[0],))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_forward_only(rng, reduction):
    x, W, bias, target = _problem(rng, n=21, c=17)
    kw = dict(reduction=reduction, bias=bias, label_smoothing=0.1,
              l2=0.4 if reduction != "none" else 0.0)
    got = fx.linear_cross_entropy(dev(x), dev(W), dev(target), bias=dev(bias), chunk_size=8,
                                  **{k: v for k, v in kw.items() if k != "bias"})
    assert_close(host(got), fx.linear_cross_entropy(x, W, target, chunk_size=8, **kw),
                 rtol=1e-13, atol=1e-14)


def test_float32_and_promotion(rng):
    x, W, bias, target = _problem(rng, n=19, d=9, c=23, dtype=np.float32)
    kw = dict(label_smoothing=0.1, l2=0.1, chunk_size=8)
    loss, grads = fx.linear_cross_entropy_with_grad(dev(x), dev(W), dev(target), bias=dev(bias),
                                                    **kw)
    e_loss, e_grads = fx.linear_cross_entropy_with_grad(x, W, target, bias=bias, **kw)
    assert host(loss).dtype == np.float32
    _compare((loss, grads), (e_loss, e_grads), rtol=2e-5, atol=2e-6)
    r_loss, r_grads = reference.linear_cross_entropy_with_grad(
        x.astype(np.float64), W.astype(np.float64), target, bias=bias.astype(np.float64), **kw)
    assert_close(host(loss), r_loss, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, r_grads):
        assert_close(host(g), r, rtol=1e-4, atol=1e-6)
    # float32 x with float64 W: computed and returned in float64, as NumPy promotes
    loss, grads = fx.linear_cross_entropy_with_grad(dev(x), dev(W.astype(np.float64)), dev(target),
                                                    chunk_size=8)
    e_loss, e_grads = fx.linear_cross_entropy_with_grad(x, W.astype(np.float64), target,
                                                        chunk_size=8)
    _compare((loss, grads), (e_loss, e_grads), rtol=1e-12, atol=1e-13)
    # float16 x: computed in float32, returned in float32 as on the host
    xh = x.astype(np.float16)
    loss, (dx, dW, _) = fx.linear_cross_entropy_with_grad(dev(xh), dev(W), dev(target), chunk_size=8)
    e_loss, (e_dx, e_dW, _) = fx.linear_cross_entropy_with_grad(xh, W, target, chunk_size=8)
    assert host(dx).dtype == e_dx.dtype and host(loss).dtype == np.asarray(e_loss).dtype
    assert_close(host(dW), e_dW, rtol=2e-5, atol=2e-6)


def test_batch_axes_layouts_and_grad_output_kinds(rng):
    """Leading batch axes, a strided x, a Fortran-order W and a device
    scalar grad_output give the NumPy path's results."""
    x, W, bias, target = _problem(rng, n=24, d=7, c=13)
    x3, t3 = x.reshape(2, 12, 7), target.reshape(2, 12)
    big = np.zeros((2, 24, 14))
    big[:, ::2, ::2] = x3
    Wf = np.asfortranarray(W)
    kw = dict(bias=bias, l2=0.2, label_smoothing=0.1, chunk_size=10)
    expected = fx.linear_cross_entropy_with_grad(x3, W, t3, grad_output=0.6, **kw)
    got = fx.linear_cross_entropy_with_grad(
        dev(big)[:, ::2, ::2], cuda.to_device(Wf), dev(t3), grad_output=dev(np.array(0.6)),
        **dict(kw, bias=dev(bias)))
    assert host(got[1][0]).shape == (2, 12, 7)
    _compare(got, expected, rtol=1e-12, atol=1e-13)


def test_host_round_trips_are_per_call_not_per_chunk(rng, monkeypatch):
    """Class-index targets cost two small reads (the label check and the
    mean's denominator) however many chunks there are; probabilities none;
    the loss stays on the device."""
    reads = []
    original = _arrays.Call.read
    monkeypatch.setattr(_arrays.Call, "read", lambda self, buf: reads.append(1) or original(self, buf))
    x, W, bias, target = _problem(rng, n=30, d=5, c=9)
    fx.linear_cross_entropy_with_grad(dev(x), dev(W), dev(target), bias=dev(bias), chunk_size=4)
    assert len(reads) == 2
    reads.clear()
    _, _, _, soft = _problem(rng, n=30, d=5, c=9, soft=True)
    fx.linear_cross_entropy_with_grad(dev(x), dev(W), dev(soft), chunk_size=4)
    assert len(reads) == 0


@pytest.mark.parametrize("soft", [False, True])
def test_empty_batch(rng, soft):
    x, W, bias, target = _problem(rng, n=0, d=4, c=6, soft=soft)
    for reduction in ("mean", "sum", "none"):
        l2 = 0.0 if reduction == "none" else 0.3
        expected = fx.linear_cross_entropy_with_grad(x, W, target, bias=bias, l2=l2,
                                                     reduction=reduction)
        got = fx.linear_cross_entropy_with_grad(dev(x), dev(W), dev(target), bias=dev(bias), l2=l2,
                                                reduction=reduction)
        _compare(got, expected, rtol=1e-14, atol=1e-15)
        if reduction == "mean":
            assert np.isnan(host(got[0]))


def test_torch_tensors_on_the_library_and_the_numba_gemm(rng, monkeypatch):
    """torch tensors in, torch tensors out; the products by torch.matmul
    (``LIBRARY_GEMM``) or by the GEMM kernel, with the same results."""
    torch = pytest.importorskip("torch")
    from tests.test_cuda import torch_tensors

    x, W, bias, target = _problem(rng, n=18, d=6, c=14)
    kw = dict(label_smoothing=0.1, l2=0.2, chunk_size=7)
    expected = fx.linear_cross_entropy_with_grad(x, W, target, bias=bias, **kw)
    for library_gemm in (True, False):
        monkeypatch.setattr(_config, "LIBRARY_GEMM", library_gemm)
        tx, tW, tt, tb = torch_tensors(torch, x, W, target, bias)
        loss, grads = fx.linear_cross_entropy_with_grad(tx, tW, tt, bias=tb, **kw)
        assert isinstance(loss, torch.Tensor) and loss.shape == ()
        assert all(isinstance(g, torch.Tensor) for g in grads)
        assert_close(loss.detach().cpu().numpy(), expected[0], rtol=1e-12, atol=1e-13)
        for g, e in zip(grads, expected[1]):
            assert_close(g.cpu().numpy(), e, rtol=1e-12, atol=1e-13)


# -------------------------------------------------------------- bad input
def _bad_cases(rng):
    x, W, bias, target = _problem(rng, n=13, d=5, c=7)
    bad_label = target.copy()
    bad_label[9] = 7
    return x, W, bias, target, [
        (dict(W=dev(np.zeros((7, 4)))), ValueError, "features"),
        (dict(W=dev(np.zeros(5))), ValueError, "2-D"),
        (dict(bias=dev(np.zeros(6))), ValueError, "bias must have shape"),
        (dict(target=dev(np.zeros(12, np.int64))), ValueError, "shape"),
        (dict(target=dev(bad_label)), IndexError, r"target 7 at row 9"),
        (dict(x=dev(np.zeros((13, 5), complex))), TypeError, "complex"),
        (dict(reduction="none", l2=0.1), ValueError, "l2"),
        (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
        (dict(weight=dev(np.ones(6))), ValueError, "weight"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(grad_output=dev(np.ones(13))), ValueError, "grad_output"),
        (dict(target=target), TypeError, "host"),
        (dict(weight=np.ones(7)), TypeError, "host"),
        (dict(reduction="none", grad_output=np.ones(13)), TypeError, "host"),
    ]


def test_bad_input(rng):
    """The host path's errors, raised before any kernel writes (a bad
    label leaves nothing half-done)."""
    x, W, bias, target, cases = _bad_cases(rng)
    for change, error, match in cases:
        args = dict(x=dev(x), W=dev(W), target=dev(target), bias=dev(bias))
        args.update(change)
        assert_both_raise(args, error, match)
