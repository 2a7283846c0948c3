"""The CUDA kernels against the NumPy reference, on Numba's CUDA simulator.

Without a GPU, ``tests/_environment.py`` switches the simulator on before
numba is imported; every kernel then runs as Python threads (one per CUDA
thread), so the shapes are small.  ``fastxent.cuda._config`` uses blocks of
32 threads there: C = 70 runs one row per block with a row longer than the
block, C <= 8 several rows per block, and batches of more than a block's rows
run several blocks (the last-block reductions).  On a machine with a GPU the
same tests run on it.

Inputs are Numba device arrays (``cuda.to_device``); the public ``fastxent``
functions route them to ``fastxent.cuda.backend``.  PyTorch's wrapping is tested
with a CPU tensor that exposes ``__cuda_array_interface__`` (the simulator's
device memory is host memory), CuPy's only where CuPy and a GPU exist.
"""

import math

import numpy as np
import pytest

try:
    from fastxent.cuda import _numba_cuda
except ImportError as exc:  # no numba.cuda, or no GPU without the simulator
    pytest.skip(f"numba.cuda unavailable: {exc}", allow_module_level=True)

import fastxent as fx
from fastxent import reference as ref
from fastxent.cuda import _arrays, _config
from fastxent._backend import backend_of, is_cuda_array

from tests.conftest import as64, assert_close

cuda = _numba_cuda.cuda
SIM = _numba_cuda.SIMULATED
RTOL = 1e-12
ATOL = 1e-13


def dev(a):
    return cuda.to_device(np.array(a, order="C"))


def host(a):
    """A device result (Numba array, 0-d included) as a NumPy array."""
    return np.asarray(a.copy_to_host())


def check(got, expected, rtol=RTOL, atol=ATOL):
    if isinstance(got, tuple):
        assert isinstance(expected, tuple) and len(got) == len(expected)
        for g, e in zip(got, expected):
            check(g, e, rtol, atol)
        return
    assert is_cuda_array(got), type(got)
    g = host(got)
    e = np.asarray(expected)
    assert g.dtype == e.dtype, (g.dtype, e.dtype)
    assert_close(g, e, rtol, atol)


SMALL_LAUNCHES = dict(BLOCK=32, MAX_THREADS_PER_ROW=32, ELEMENTS_PER_THREAD=4, MAX_BLOCKS=8)


@pytest.fixture(autouse=True)
def _small_launches(request, monkeypatch):
    """The simulator's launch geometry (also on a GPU, so that the small
    shapes below cover the same paths), and reductions through shared memory
    (the simulator has no warp shuffles; on a GPU this is the fallback path).
    Tests named test_default_launches* keep the defaults."""
    if request.node.name.startswith("test_default_launches"):
        return
    for name, value in SMALL_LAUNCHES.items():
        monkeypatch.setattr(_config, name, value)
    monkeypatch.setattr(_config, "USE_SHUFFLE", False)


def test_launch_geometry():
    """The shapes below exercise both paths: a row longer than the block
    (one row per block) and several rows per block."""
    blocks, threads, tpr = _config.row_launch(3, 70)
    assert tpr == threads == max(_config.BLOCK, _config.MAX_THREADS_PER_ROW) and 70 > threads
    blocks, threads, tpr = _config.row_launch(40, 5)
    assert threads // tpr > 1 and blocks >= 2


# ------------------------------------------------------------------ softmax
SOFTMAX_SHAPES = [(3, 70), (40, 5), (2, 3, 1)]


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_softmax_family(rng, shape):
    x = rng.normal(size=shape) * 3
    d = dev(x)
    for name in ("logsumexp", "softmax", "log_softmax"):
        check(getattr(fx, name)(d), getattr(ref, name)(x))


def test_axes_and_layouts(rng):
    x = rng.normal(size=(3, 4, 5))
    d = dev(x)
    check(fx.logsumexp(d, axis=0, keepdims=True), ref.logsumexp(x, axis=0, keepdims=True))
    check(fx.logsumexp(d, axis=(0, 2)), ref.logsumexp(x, axis=(0, 2)))
    check(fx.logsumexp(d, axis=None), ref.logsumexp(x, axis=None))
    got = fx.softmax(d, axis=1)  # a transposed view of the contiguous result
    check(got, ref.softmax(x, axis=1))
    # a non-contiguous (strided, transposed) device input
    t = d.T[::2]
    check(fx.log_softmax(t), ref.log_softmax(x.T[::2]))


def test_nasty_rows():
    inf, nan = math.inf, math.nan
    x = np.array([[0.0, 1.0, 2.0, -inf],
                  [inf, 0.0, 1.0, 2.0],
                  [-inf, -inf, -inf, -inf],
                  [0.0, nan, 1.0, 2.0],
                  [1e30, -1e30, 1e30, 0.0],
                  [inf, inf, 0.0, 0.0]])
    d = dev(x)
    for name in ("logsumexp", "softmax", "log_softmax"):
        check(getattr(fx, name)(d), getattr(ref, name)(x))


def test_float32_float16_and_int(rng):
    x = rng.normal(size=(4, 70))
    for dtype, rtol in ((np.float32, 1e-5), (np.float16, 2e-3)):
        got = fx.softmax(dev(x.astype(dtype)))
        expected = ref.softmax(x).astype(dtype)
        assert got.dtype == dtype
        assert_close(host(got), expected, rtol=rtol, atol=rtol * 1e-2)
    xi = rng.integers(-3, 3, size=(4, 6))
    check(fx.logsumexp(dev(xi)), ref.logsumexp(xi))


# ------------------------------------------------------------ cross-entropy
CE_CASES = [
    # shape, kwargs
    ((40, 5), dict()),
    ((40, 5), dict(reduction="sum", ignore_index=2)),
    ((6, 70), dict(reduction="none", label_smoothing=0.2)),
    ((6, 70), dict(label_smoothing=0.1, weight=True)),
    ((2, 3, 4), dict(weight=True, ignore_index=1, reduction="none")),
]


def _ce_inputs(rng, shape, kwargs):
    x = rng.normal(size=shape) * 2
    c = shape[-1]
    y = rng.integers(0, c, size=shape[:-1])
    if "ignore_index" in kwargs:
        y.reshape(-1)[::3] = kwargs["ignore_index"]
    kw = dict(kwargs)
    w = rng.uniform(0.5, 2.0, size=c) if kw.pop("weight", False) else None
    return x, y, w, kw


@pytest.mark.parametrize("shape,kwargs", CE_CASES)
def test_cross_entropy_with_grad(rng, shape, kwargs):
    x, y, w, kw = _ce_inputs(rng, shape, kwargs)
    got = fx.cross_entropy_with_grad(dev(x), dev(y), weight=None if w is None else dev(w), **kw)
    check(got, ref.cross_entropy_with_grad(x, y, weight=w, **kw))


def test_cross_entropy_forward_and_soft_targets(rng):
    x = rng.normal(size=(40, 5))
    y = rng.integers(0, 5, size=40)
    check(fx.cross_entropy(dev(x), dev(y), label_smoothing=0.3), ref.cross_entropy(x, y, label_smoothing=0.3))
    p = rng.dirichlet(np.ones(70), size=6)
    xs = rng.normal(size=(6, 70))
    w = rng.uniform(0.5, 2.0, size=70)
    check(fx.cross_entropy_with_grad(dev(xs), dev(p), weight=dev(w), label_smoothing=0.1),
          ref.cross_entropy_with_grad(xs, p, weight=w, label_smoothing=0.1))
    check(fx.cross_entropy(dev(xs), dev(p), reduction="none"), ref.cross_entropy(xs, p, reduction="none"))


def test_cross_entropy_grad_output(rng):
    x = rng.normal(size=(40, 5))
    y = rng.integers(0, 5, size=40)
    g = rng.normal(size=40)
    check(fx.cross_entropy_with_grad(dev(x), dev(y), reduction="none", grad_output=dev(g)),
          ref.cross_entropy_with_grad(x, y, reduction="none", grad_output=g))
    # a 0-d device grad_output (what autograd passes) and a host scalar
    check(fx.cross_entropy_with_grad(dev(x), dev(y), grad_output=dev(np.array(0.5))),
          ref.cross_entropy_with_grad(x, y, grad_output=0.5))
    check(fx.cross_entropy_with_grad(dev(x), dev(y), reduction="sum", grad_output=2.0),
          ref.cross_entropy_with_grad(x, y, reduction="sum", grad_output=2.0))


def test_cross_entropy_in_place_and_out(rng):
    x = rng.normal(size=(6, 70))
    y = rng.integers(0, 70, size=6)
    expected = ref.cross_entropy_with_grad(x, y)
    d = dev(x)
    loss, grad = fx.cross_entropy_with_grad(d, dev(y), out=d)
    assert grad is d
    check((loss, grad), expected)
    # a separate, non-contiguous out
    big = dev(np.zeros((6, 140)))
    out = big[:, ::2]
    loss, grad = fx.cross_entropy_with_grad(dev(x), dev(y), out=out)
    assert grad is out
    assert_close(host(big)[:, ::2], expected[1], RTOL, ATOL)
    assert not host(big)[:, 1::2].any()


def test_cross_entropy_nasty_rows():
    inf, nan = math.inf, math.nan
    x = np.array([[0.0, 1.0, -inf], [inf, 0.0, 1.0], [nan, 0.0, 1.0], [1e30, -1e30, 0.0]])
    y = np.array([0, 1, 2, 0])
    check(fx.cross_entropy_with_grad(dev(x), dev(y), reduction="none"),
          ref.cross_entropy_with_grad(x, y, reduction="none"))


def test_cross_entropy_float32(rng):
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.integers(0, 5, size=40)
    loss, grad = fx.cross_entropy_with_grad(dev(x), dev(y))
    rl, rg = ref.cross_entropy_with_grad(as64(x), y)
    assert host(loss).dtype == np.float32 and grad.dtype == np.float32
    assert_close(host(loss), rl, 1e-5)
    assert_close(host(grad), rg, 1e-5, 1e-7)


def test_bad_labels_raise_before_writing(rng):
    x = rng.normal(size=(40, 5))
    y = rng.integers(0, 5, size=40)
    y[7], y[30] = 5, -3
    d = dev(x)
    with pytest.raises(IndexError, match=r"target 5 at row 7 .*5 classes"):
        fx.cross_entropy_with_grad(d, dev(y), out=d)
    np.testing.assert_array_equal(host(d), x)  # nothing was written
    with pytest.raises(IndexError, match=r"target -3 at row \(1, 0\)"):
        y2 = np.zeros((2, 10), dtype=np.int64)
        y2[1, 0] = -3
        fx.cross_entropy(dev(rng.normal(size=(2, 10, 3))), dev(y2))


def test_empty_batch_and_checks(rng):
    x = np.zeros((0, 5))
    y = np.zeros(0, dtype=np.int64)
    assert math.isnan(host(fx.cross_entropy(dev(x), dev(y))))
    assert host(fx.cross_entropy(dev(x), dev(y), reduction="sum")) == 0
    assert host(fx.cross_entropy(dev(x), dev(y), reduction="none")).shape == (0,)
    d = dev(rng.normal(size=(4, 3)))
    t = dev(np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="reduction"):
        fx.cross_entropy(d, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        fx.cross_entropy(d, t, label_smoothing=2.0)
    with pytest.raises(ValueError, match="weight"):
        fx.cross_entropy(d, t, weight=dev(np.ones(4)))
    with pytest.raises(ValueError, match="shape"):
        fx.cross_entropy_with_grad(d, t, out=dev(np.zeros((4, 4))))
    with pytest.raises(ValueError, match="CUDA array"):
        fx.cross_entropy_with_grad(d, t, out=np.zeros((4, 3)))
    with pytest.raises(TypeError, match="host"):  # mixed host and device arrays
        fx.cross_entropy(d, np.array([0, 1, 2, 0]))
    with pytest.raises(TypeError, match="complex"):
        fx.softmax(dev(np.zeros((2, 2), dtype=np.complex128)))


# ---------------------------------------------------- binary cross-entropy
def test_binary_cross_entropy(rng):
    p = rng.uniform(0, 1, size=(4, 9))
    p[0, 0], p[1, 1] = 0.0, 1.0
    t = rng.uniform(0, 1, size=(4, 9))
    w = rng.uniform(0.5, 2, size=9)
    check(fx.binary_cross_entropy_with_grad(dev(p), dev(t), weight=dev(w)),
          ref.binary_cross_entropy_with_grad(p, t, weight=w))
    check(fx.binary_cross_entropy(dev(p), dev(t), reduction="none"),
          ref.binary_cross_entropy(p, t, reduction="none"))
    bad = p.copy()
    bad[2, 3] = 1.5
    with pytest.raises(ValueError) as on_cpu:
        fx.binary_cross_entropy(bad, t)
    with pytest.raises(ValueError, match="probs must be in") as on_gpu:
        fx.binary_cross_entropy(dev(bad), dev(t))
    assert str(on_gpu.value) == str(on_cpu.value)  # the CPU's message, same index


def test_binary_cross_entropy_with_logits(rng):
    x = rng.normal(size=(4, 9)) * 5
    x[0, 0], x[0, 1] = 800.0, -800.0
    t = rng.uniform(0, 1, size=(4, 9))
    pw = rng.uniform(0.5, 2, size=9)
    g = rng.normal(size=(4, 9))
    check(fx.binary_cross_entropy_with_logits_with_grad(dev(x), dev(t), pos_weight=dev(pw),
                                                        weight=2.0, reduction="sum"),
          ref.binary_cross_entropy_with_logits_with_grad(x, t, pos_weight=pw, weight=2.0,
                                                         reduction="sum"))
    check(fx.binary_cross_entropy_with_logits_with_grad(dev(x), dev(t), reduction="none",
                                                        grad_output=dev(g)),
          ref.binary_cross_entropy_with_logits_with_grad(x, t, reduction="none", grad_output=g))


# -------------------------------------------------------------- divergences
def test_divergences(rng):
    p = rng.dirichlet(np.ones(70), size=3)
    q = rng.dirichlet(np.ones(70), size=3)
    p[0, :5] = 0.0
    q[1, 3] = 0.0
    dp, dq = dev(p), dev(q)
    check(fx.entropy_with_grad(dp), ref.entropy_with_grad(p))
    check(fx.kl_divergence_with_grad(dp, dq), ref.kl_divergence_with_grad(p, q))
    check(fx.cross_entropy_probs_with_grad(dp, dq), ref.cross_entropy_probs_with_grad(p, q))


def test_divergences_small_rows_and_axis(rng):
    p = rng.dirichlet(np.ones(4), size=(5, 8)).transpose(0, 2, 1)  # class axis 1
    q = rng.dirichlet(np.ones(4), size=(5, 8)).transpose(0, 2, 1)
    check(fx.kl_divergence(dev(p), dev(q), axis=1), ref.kl_divergence(p, q, axis=1))
    check(fx.entropy(dev(p), axis=1), ref.entropy(p, axis=1))


# ------------------------------------------------------ launches and arrays
def test_grid_stride_and_last_block(rng, monkeypatch):
    """More row groups than blocks: every block loops, and the last block
    to finish reduces the partial sums of all of them."""
    monkeypatch.setattr(_config, "MAX_BLOCKS", 2)
    x = rng.normal(size=(70, 3))
    y = rng.integers(0, 3, size=70)
    check(fx.cross_entropy_with_grad(dev(x), dev(y), ignore_index=0),
          ref.cross_entropy_with_grad(x, y, ignore_index=0))


def test_direct_api_and_dispatch(rng):
    x = rng.normal(size=(3, 4))
    assert backend_of(dev(x)).name == "cuda" and backend_of(x).name == "cpu"
    check(fx.log_softmax(dev(x)), ref.log_softmax(x))
    assert isinstance(fx.softmax(x), np.ndarray)  # host arrays stay on the CPU


class ForeignArray:
    """An array of an unknown library: only ``__cuda_array_interface__``
    (version 3, with a stream), backed by a Numba device array."""

    def __init__(self, a, stream=None):
        self._dev = dev(a)
        self.stream = stream

    @property
    def __cuda_array_interface__(self):
        interface = dict(self._dev.__cuda_array_interface__)
        interface["stream"] = self.stream
        return interface


def test_foreign_array_interface(rng):
    x = rng.normal(size=(5, 6))
    y = rng.integers(0, 6, size=5)
    for stream in (None, 1, 2):
        loss, grad = fx.cross_entropy_with_grad(ForeignArray(x, stream), ForeignArray(y, stream))
        rl, rg = ref.cross_entropy_with_grad(x, y)
        assert _numba_cuda.is_device_array(grad)  # unknown libraries get Numba arrays back
        assert_close(host(loss), rl, RTOL)
        assert_close(host(grad), rg, RTOL, ATOL)


_SHUFFLES = []


def _emulated_shfl_xor_sync(self, mask, value, lane_mask):
    """cuda.shfl_xor_sync for the simulator: an exchange through a dict
    between two block barriers.  Valid for kernels in which every thread of
    the block shuffles together (as fastxent's reductions do)."""
    import threading

    me = threading.current_thread()
    _SHUFFLES.append(lane_mask)
    store = self.__dict__.setdefault("_shuffle_store", {})
    tid = me.threadIdx.x
    store[tid] = value
    me.syncthreads()
    other = store[(tid // 32) * 32 + ((tid % 32) ^ lane_mask)]
    me.syncthreads()
    return other


@pytest.mark.skipif(not SIM, reason="emulates warp shuffles on the simulator")
def test_shuffle_reductions_emulated(rng, monkeypatch):
    """The warp-shuffle reduction path (real GPUs) on the simulator, with an
    emulated shfl_xor_sync: groups within a warp (C = 5) and groups of two
    warps (64 threads per row, C = 300)."""
    from numba.cuda.simulator.kernelapi import FakeCUDAModule

    monkeypatch.setattr(FakeCUDAModule, "shfl_xor_sync", _emulated_shfl_xor_sync, raising=False)
    monkeypatch.setattr(_config, "USE_SHUFFLE", True)
    monkeypatch.setattr(_config, "BLOCK", 64)
    monkeypatch.setattr(_config, "MAX_THREADS_PER_ROW", 64)
    for shape in ((70, 5), (2, 300)):
        x = rng.normal(size=shape)
        y = rng.integers(0, shape[1], size=shape[0])
        check(fx.cross_entropy_with_grad(dev(x), dev(y), label_smoothing=0.1),
              ref.cross_entropy_with_grad(x, y, label_smoothing=0.1))
    assert set(_SHUFFLES) == {1, 2, 4, 8, 16}  # both geometries shuffled


def _pointer(stream):
    handle = stream.handle
    return int(handle.value if hasattr(handle, "value") else handle)


def test_stream_selection():
    if SIM:
        assert _arrays._stream_from_pointer(None) == _numba_cuda.default_stream()
    else:  # on a GPU: an external stream wraps the producer's pointer
        s = cuda.stream()
        assert _pointer(_arrays._stream_from_pointer(_pointer(s))) == _pointer(s)


@pytest.mark.skipif(SIM, reason="warp shuffles and full-size blocks need a GPU")
def test_default_launches_with_shuffles(rng):
    """The GPU's own geometry and warp-shuffle reductions."""
    assert _config.USE_SHUFFLE
    for shape in ((300, 10), (5, 3000), (3, 40000)):
        x = rng.normal(size=shape)
        y = rng.integers(0, shape[1], size=shape[0])
        check(fx.cross_entropy_with_grad(dev(x), dev(y), label_smoothing=0.1),
              ref.cross_entropy_with_grad(x, y, label_smoothing=0.1))
        check(fx.logsumexp(dev(x)), ref.logsumexp(x))


# ----------------------------------------------------------------- PyTorch
def _sim_tensor_class(torch):
    class SimCudaTensor(torch.Tensor):
        """A CPU tensor posing as a CUDA tensor: on the simulator device
        memory is host memory."""

        @property
        def __cuda_array_interface__(self):
            a = self.detach().numpy()
            ai = a.__array_interface__
            return {"shape": ai["shape"], "typestr": ai["typestr"], "data": ai["data"],
                    "strides": ai["strides"], "version": 3, "stream": None}

    return SimCudaTensor


def torch_tensors(torch, *arrays):
    if not SIM:
        if not torch.cuda.is_available():
            pytest.skip("PyTorch without CUDA")
        return [torch.as_tensor(a, device="cuda") for a in arrays]
    cls = _sim_tensor_class(torch)
    return [torch.as_tensor(a).as_subclass(cls) for a in arrays]


def test_torch_tensors(rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(5, 6))
    y = rng.integers(0, 6, size=5)
    tx, ty = torch_tensors(torch, x, y)
    tx.requires_grad_(True)
    loss, grad = fx.cross_entropy_with_grad(tx, ty, reduction="sum")
    assert isinstance(loss, torch.Tensor) and loss.shape == ()
    assert isinstance(grad, torch.Tensor) and grad.shape == (5, 6)
    rl, rg = ref.cross_entropy_with_grad(x, y, reduction="sum")
    assert_close(loss.detach().cpu().numpy(), rl, RTOL)
    assert_close(grad.cpu().numpy(), rg, RTOL, ATOL)
    sm = fx.softmax(tx.detach(), axis=0)  # permuted view of the result
    assert isinstance(sm, torch.Tensor)
    assert_close(sm.cpu().numpy(), ref.softmax(x, axis=0), RTOL, ATOL)


def test_cupy_arrays(rng):
    cupy = pytest.importorskip("cupy")
    if SIM:
        pytest.skip("CuPy needs a GPU")
    x = rng.normal(size=(5, 6))
    y = rng.integers(0, 6, size=5)
    loss, grad = fx.cross_entropy_with_grad(cupy.asarray(x), cupy.asarray(y))
    assert isinstance(loss, cupy.ndarray) and isinstance(grad, cupy.ndarray)
    check_pairs = ref.cross_entropy_with_grad(x, y)
    assert_close(cupy.asnumpy(loss), check_pairs[0], RTOL)
    assert_close(cupy.asnumpy(grad), check_pairs[1], RTOL, ATOL)


# ------------------------------------------- row passes: vector and scalar paths
@pytest.mark.parametrize("vector", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_row_paths_head_body_tail(rng, monkeypatch, vector, dtype):
    """Rows of odd length start at every offset from a 16-byte boundary, so
    the vector path meets every head/tail split (and rows of a few chunks
    per thread meet the masked last batch); the scalar path covers the rest.
    Nasty values sit in the head, body and tail."""
    monkeypatch.setattr(_config, "VECTOR_ACCESS", vector)
    for n_classes in (67, 9, 130):
        x = rng.normal(size=(5, n_classes)) * 3
        x[1, 0], x[1, -1], x[2, n_classes // 2] = 40.0, -math.inf, 1e30
        x[3, :] = -math.inf
        x[4, 2] = math.inf
        xd = x.astype(dtype)
        y = rng.integers(0, n_classes, size=5)
        y[0], y[1] = 0, n_classes - 1
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=RTOL, atol=ATOL)
        x64 = xd.astype(np.float64)
        for name in ("logsumexp", "softmax", "log_softmax"):
            got = host(getattr(fx, name)(dev(xd)))
            assert_close(got, getattr(ref, name)(x64).astype(dtype), **tol)
        loss, grad = fx.cross_entropy_with_grad(dev(xd), dev(y), reduction="none", label_smoothing=0.1)
        rl, rg = ref.cross_entropy_with_grad(x64, y, reduction="none", label_smoothing=0.1)
        assert_close(host(loss), rl.astype(dtype), **tol)
        assert_close(host(grad), rg.astype(dtype), **tol)


def test_in_place_gradient_on_both_paths(rng, monkeypatch):
    """out=logits (vector path: same alignment) and an out at another
    offset from a 16-byte boundary (scalar path), both poisoned first."""
    x = rng.normal(size=(6, 70)).astype(np.float32)
    y = rng.integers(0, 70, size=6)
    rl, rg = ref.cross_entropy_with_grad(x.astype(np.float64), y)
    d = dev(x)
    fx.cross_entropy_with_grad(d, dev(y), out=d)
    assert_close(host(d), rg.astype(np.float32), 1e-5, 1e-7)
    big = dev(np.full(6 * 70 + 1, np.nan, dtype=np.float32))
    shifted = big[1:].reshape(6, 70)  # 4 bytes off: the scalar path
    fx.cross_entropy_with_grad(dev(x), dev(y), out=shifted)
    assert_close(host(shifted), rg.astype(np.float32), 1e-5, 1e-7)
    assert np.isnan(host(big)[0])


def test_block_checks_for_shuffles(monkeypatch):
    """Warp shuffles need whole warps: other geometries are refused."""
    monkeypatch.setattr(_config, "USE_SHUFFLE", True)
    monkeypatch.setattr(_config, "BLOCK", 48)
    with pytest.raises(ValueError, match="whole warps"):
        _config.row_launch(100, 5)
    monkeypatch.setattr(_config, "BLOCK", 64)
    _config.row_launch(100, 5)
    monkeypatch.setattr(_config, "ELEMENTWISE_BLOCK", 80)
    with pytest.raises(ValueError, match="whole warps"):
        _config.elementwise_launch(1000)
    monkeypatch.setattr(_config, "USE_SHUFFLE", False)
    _config.elementwise_launch(1000)


def test_status_tickets_reset(rng):
    """The last block resets its ticket, so a status array can be reused."""
    from fastxent.cuda import _rows

    x = rng.normal(size=(70, 3))
    y = rng.integers(0, 3, size=70)
    call = _arrays.Call(dev(x))
    status = call.status(70)
    partials = call.empty((64,), np.float64)
    labels = dev(y)
    den = _numba_cuda.cuda.to_device(np.zeros(1))
    from fastxent.cuda import xent

    for _ in range(2):
        blocks, threads = _config.elementwise_launch(70)
        xent.scan_labels[blocks, threads](labels, np.int64(3), np.int64(-100), None, status.dev,
                                          partials.dev, den, False)
        assert host(status.dev)[_rows.TICKET_A] == 0
        assert host(den)[0] == 70


def test_stream_handle_zero_is_the_legacy_stream(monkeypatch):
    """PyTorch's and CuPy's default stream (handle 0) is the legacy default
    stream, also when Numba uses per-thread default streams."""
    legacy, per_thread = object(), object()
    monkeypatch.setattr(_arrays, "legacy_default_stream", lambda: legacy)
    monkeypatch.setattr(_arrays, "per_thread_default_stream", lambda: per_thread)
    assert _arrays._stream_from_pointer(0) is legacy
    assert _arrays._stream_from_pointer(1) is legacy
    assert _arrays._stream_from_pointer(2) is per_thread


def test_launch_selects_the_arrays_device(rng, monkeypatch):
    """A launch makes the arrays' GPU current (simulated here: device 0)."""
    entered = []

    class Recorder(_arrays.on_device):
        def __enter__(self):
            entered.append(self.device_id)
            return self

    call = _arrays.Call(dev(rng.normal(size=(3, 4))))
    monkeypatch.setattr(_arrays, "on_device", Recorder)
    call.device_id = 0
    x = dev(rng.normal(size=(3, 4)))
    out = dev(np.zeros((3, 1)))
    from fastxent.cuda import softmax as softmax_kernels

    call.launch(softmax_kernels.softmax_rows, 1, 32)(x, out, softmax_kernels.LOGSUMEXP, 8, False)
    assert entered == [0]
    assert_close(host(out)[:, 0], ref.logsumexp(host(x)), RTOL)
