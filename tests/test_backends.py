"""One table drives every public function on every backend.

``CASES`` lists (public function, input maker, keyword options, reference).
Each case runs on every array kind available here -- NumPy (the CPU backend),
PyTorch CPU tensors (the CPU backend through zero-copy views), and CUDA
arrays (Numba device arrays; Numba's simulator without a GPU) -- and must
give the CPU's result (and agree with the float64 NumPy reference).
``ERRORS`` lists bad calls: each backend must raise the CPU's exception type.
A public function missing from the table, or a backend missing a method of
the ``Backend`` protocol, fails the run.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import fastxent as fx
from fastxent import _backend
from fastxent import reference as ref
from tests.conftest import as64, assert_close

# ------------------------------------------------------------------ inputs
def logits(rng, shape=(5, 7)):
    return (rng.normal(size=shape) * 3,)


def probs(rng, shape=(5, 7)):
    p = rng.random(shape) + 0.05
    return (p / p.sum(-1, keepdims=True),)


def two_probs(rng, shape=(5, 7)):
    return probs(rng, shape) + probs(rng, shape)


def hard_targets(rng, shape=(5, 7)):
    y = rng.integers(0, shape[-1], size=shape[:-1])
    y.flat[0] = -100  # one ignored row
    return logits(rng, shape) + (y,)


def soft_targets(rng, shape=(5, 7)):
    return logits(rng, shape) + probs(rng, shape)


def binary_probs(rng, shape=(4, 6)):
    return (rng.uniform(0.01, 0.99, size=shape), rng.random(shape))


def binary_logits(rng, shape=(4, 6)):
    return (rng.normal(size=shape) * 3, rng.random(shape))


CASES = [
    # (function, maker, options)
    ("logsumexp", logits, {}),
    ("logsumexp", lambda rng: logits(rng, (3, 4, 5)), {"axis": (0, 2), "keepdims": True}),
    ("softmax", logits, {}),
    ("softmax", lambda rng: logits(rng, (3, 4, 5)), {"axis": 1}),
    ("log_softmax", logits, {}),
    ("log_softmax", lambda rng: logits(rng, (4, 5)), {"axis": 0}),
    ("cross_entropy", hard_targets, {}),
    ("cross_entropy", hard_targets, {"reduction": "none", "label_smoothing": 0.2}),
    ("cross_entropy", lambda rng: hard_targets(rng, (2, 3, 6)), {"reduction": "sum"}),
    ("cross_entropy", soft_targets, {"label_smoothing": 0.1}),
    ("cross_entropy_with_grad", hard_targets, {"label_smoothing": 0.1}),
    ("cross_entropy_with_grad", hard_targets, {"reduction": "sum", "grad_output": 0.5}),
    ("cross_entropy_with_grad", soft_targets, {"reduction": "none"}),
    ("binary_cross_entropy", binary_probs, {}),
    ("binary_cross_entropy_with_grad", binary_probs, {"reduction": "none"}),
    ("binary_cross_entropy_with_logits", binary_logits, {"reduction": "sum"}),
    ("binary_cross_entropy_with_logits_with_grad", binary_logits, {}),
    ("entropy", probs, {}),
    ("entropy_with_grad", lambda rng: probs(rng, (3, 4, 5)), {"axis": 1}),
    ("kl_divergence", two_probs, {}),
    ("kl_divergence_with_grad", two_probs, {}),
    ("cross_entropy_probs", two_probs, {}),
    ("cross_entropy_probs_with_grad", two_probs, {}),
]

# Public names outside this table, and where they are tested.
NOT_IN_TABLE = {
    "linear_cross_entropy", "linear_cross_entropy_with_grad",  # CPU only: tests/test_linear.py
    "SoftmaxRegression", "reference",
}

ERRORS = [
    # (function, maker, options, exception)
    ("cross_entropy", lambda rng: (logits(rng)[0], np.array([0, 1, 7, 0, 0])), {}, IndexError),
    ("cross_entropy", hard_targets, {"reduction": "avg"}, ValueError),
    ("cross_entropy", soft_targets, {"ignore_index": -100}, ValueError),
    ("cross_entropy", hard_targets, {"label_smoothing": 1.5}, ValueError),
    ("cross_entropy_with_grad", hard_targets, {"grad_output": np.ones(5)}, ValueError),
    ("cross_entropy", lambda rng: (logits(rng)[0], np.zeros(4, np.int64)), {}, ValueError),
    ("binary_cross_entropy", lambda rng: (np.array([0.5, 1.5]), np.array([0.0, 1.0])), {},
     ValueError),
    ("kl_divergence", lambda rng: (probs(rng)[0], probs(rng, (5, 6))[0]), {}, ValueError),
    ("softmax", lambda rng: (np.ones(3, np.complex128),), {}, TypeError),
]


# ------------------------------------------------------------ array kinds
def _cuda():
    try:
        from fastxent.cuda import _numba_cuda
    except ImportError as exc:  # no numba.cuda, or no GPU without the simulator
        pytest.skip(f"numba.cuda unavailable: {exc}")
    return _numba_cuda.cuda


def _torch():
    return pytest.importorskip("torch")


KINDS = {
    "numpy": (lambda a: a, np.asarray),
    "torch": (lambda a: _torch().from_numpy(np.array(a, order="C")),
              lambda r: r.numpy()),
    "cuda": (lambda a: _cuda().to_device(np.array(a, order="C")),
             lambda r: np.asarray(r.copy_to_host())),
}


def _kind_of_result(kind, value):
    if kind == "numpy":
        return isinstance(value, (np.ndarray, np.generic))
    if kind == "torch":
        return isinstance(value, _torch().Tensor)
    return _backend.is_cuda_array(value)


def _run(name, kind, args, options):
    to_kind, from_kind = KINDS[kind]
    result = getattr(fx, name)(*(to_kind(a) for a in args), **options)
    parts = result if isinstance(result, tuple) else (result,)
    for part in parts:
        assert _kind_of_result(kind, part), (kind, type(part))
    return tuple(np.asarray(from_kind(p)) for p in parts)


def _options_for(kind, options):
    to_kind = KINDS[kind][0]
    return {k: (to_kind(v) if isinstance(v, np.ndarray) else v) for k, v in options.items()}


# ------------------------------------------------------------------ tests
def test_table_covers_every_public_function():
    public = set(fx.__all__) - NOT_IN_TABLE
    assert public == {case[0] for case in CASES}


@pytest.mark.parametrize("module,cls", [("fastxent.cpu.backend", "CpuBackend"),
                                        ("fastxent.cpu.backend", "TorchCpuBackend"),
                                        ("fastxent.cuda.backend", "CudaBackend")])
def test_backends_implement_the_protocol(module, cls):
    if "cuda" in module:
        _cuda()
    import importlib

    backend = getattr(importlib.import_module(module), cls)
    wanted = {n for n, v in vars(_backend.Backend).items()
              if inspect.isfunction(v) and not n.startswith("_")}
    missing = {n for n in wanted if not callable(getattr(backend, n, None))}
    assert not missing, f"{cls} lacks {sorted(missing)}"
    for n in wanted:  # same parameters as the protocol
        want = list(inspect.signature(getattr(_backend.Backend, n)).parameters)
        got = list(inspect.signature(getattr(backend, n)).parameters)
        assert got == want, (cls, n, got, want)


@pytest.mark.parametrize("kind", ["torch", "cuda"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{sorted(c[2])}")
def test_every_backend_matches_the_cpu(case, kind, rng):
    name, maker, options = case
    args = maker(rng)
    expected = _run(name, "numpy", args, options)
    got = _run(name, kind, args, _options_for(kind, options))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, e.shape, g.dtype, e.dtype)
        assert_close(g, e, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{sorted(c[2])}")
def test_cpu_matches_the_reference(case, rng):
    name, maker, options = case
    args = maker(rng)
    got = _run(name, "numpy", args, options)
    expected = getattr(ref, name)(*(as64(a) for a in args), **options)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for g, e in zip(got, expected):
        assert_close(g, np.asarray(e), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["numpy", "torch", "cuda"])
@pytest.mark.parametrize("case", ERRORS, ids=lambda c: f"{c[0]}-{c[3].__name__}")
def test_every_backend_raises_the_cpu_errors(case, kind, rng):
    name, maker, options, error = case
    args = maker(rng)
    to_kind = KINDS[kind][0]
    try:
        converted = [to_kind(a) for a in args]
    except TypeError:  # e.g. complex arrays the library cannot hold
        pytest.skip(f"{kind} cannot hold these inputs")
    with pytest.raises(error):
        getattr(fx, name)(*converted, **_options_for(kind, options))


@pytest.mark.parametrize("kind", ["numpy", "cuda"])
def test_zero_d_results(kind):
    """0-d results: NumPy scalars for NumPy input (NumPy's and SciPy's
    convention), 0-d arrays of the caller's library elsewhere."""
    to_kind = KINDS[kind][0]
    cases = [fx.softmax(to_kind(np.float64(1000.0))),
             fx.logsumexp(to_kind(np.float64(3.0))),
             fx.logsumexp(to_kind(np.ones((2, 3))), axis=None),
             fx.entropy(to_kind(np.array([0.5, 0.5]))),
             fx.cross_entropy(to_kind(np.zeros((2, 3))), to_kind(np.array([0, 1])))]
    for value in cases:
        if kind == "numpy":
            assert isinstance(value, np.generic), type(value)
        else:
            assert _backend.is_cuda_array(value) and value.shape == ()
    assert float(KINDS[kind][1](cases[0])) == 1.0


def test_dask_arrays_are_delegated(monkeypatch):
    """A call on a dask array runs fastxent.dask.<same name> when it exists;
    without that module NumPy converts the array (the whole graph is computed)."""
    class Lazy:
        def __dask_graph__(self):
            return {}

        def __array__(self, dtype=None, copy=None):
            return np.array([0.0, 1.0])

    seen = []

    class FakeDask:
        @staticmethod
        def softmax(x, axis=-1):
            seen.append((type(x).__name__, axis))
            return "delegated"

    monkeypatch.setattr(_backend, "_delegate_module", lambda name: FakeDask)
    assert fx.softmax(Lazy(), axis=-1) == "delegated" and seen == [("Lazy", -1)]
    monkeypatch.setattr(_backend, "_delegate_module", lambda name: None)
    assert_close(fx.softmax(Lazy()), ref.softmax(np.array([0.0, 1.0])), 1e-15)


# ------------------------------------------------- rules of the one front end
def test_mean_over_zero_weight_is_nan_like_torch():
    """Every kept row of weight 0 gives a zero denominator: the mean is NaN,
    with label smoothing too (PyTorch: 0/0 plus a finite term)."""
    x, y, w = np.array([[0.0, 1.0]]), np.array([0]), np.array([0.0, 1.0])
    for smoothing in (0.0, 0.5):
        assert np.isnan(fx.cross_entropy(x, y, weight=w, label_smoothing=smoothing))
        assert np.isnan(ref.cross_entropy(x, y, weight=w, label_smoothing=smoothing))
        loss, grad = fx.cross_entropy_with_grad(x, y, weight=w, label_smoothing=smoothing)
        assert np.isnan(loss) and np.isnan(grad).all()
        assert np.isnan(fx.linear_cross_entropy(np.eye(2)[:1], np.eye(2), y, weight=w,
                                                label_smoothing=smoothing))
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    expected = F.cross_entropy(torch.tensor(x), torch.tensor(y), weight=torch.tensor(w),
                               label_smoothing=0.5)
    assert torch.isnan(expected)


def test_explicit_ignore_index_with_probability_targets_is_refused():
    x, p = np.zeros((2, 3)), np.full((2, 3), 1 / 3)
    for impl in (fx, ref):
        impl.cross_entropy(x, p)  # the default is fine
        for value in (-100, 0, 5):
            with pytest.raises(ValueError, match="ignore_index"):
                impl.cross_entropy(x, p, ignore_index=value)
    with pytest.raises(ValueError, match="ignore_index"):
        fx.linear_cross_entropy(np.ones((2, 4)), np.ones((3, 4)), p, ignore_index=-100)
    assert "ignore_index: 'int' = -100" in str(inspect.signature(fx.cross_entropy))


def test_bool_probability_targets_are_promoted_to_float():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3))
    t = np.eye(3, dtype=bool)[[0, 2, 1, 1]]
    assert_close(fx.cross_entropy(x, t), fx.cross_entropy(x, t.astype(np.float64)), 0.0)
    got, expected = fx.cross_entropy_with_grad(x, t), ref.cross_entropy_with_grad(x, t * 1.0)
    assert_close(got[1], expected[1], 1e-12, 1e-15)
    assert_close(fx.binary_cross_entropy(np.full(3, 0.5), np.array([True, False, True])),
                 np.log(2.0), 1e-15)


def test_ignored_rows_get_zero_gradient_even_with_non_finite_logits():
    """An ignored row's loss does not depend on its logits: gradient 0
    (PyTorch gives NaN there)."""
    x = np.array([[np.nan, 1.0], [np.inf, -np.inf], [0.0, 1.0]])
    y = np.array([-100, -100, 1])
    loss, grad = fx.cross_entropy_with_grad(x, y, reduction="sum")
    assert np.isfinite(loss) and (grad[:2] == 0).all() and np.isfinite(grad[2]).all()
