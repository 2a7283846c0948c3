"""The backend interface and the registry of array kinds.

The public functions (``_api.py``, ``_linear.py``) hold every semantic rule;
they never touch a kernel or an array library directly.  Instead each call
asks :func:`backend_of` for the :class:`Backend` of its arguments' *array
kind* and talks to it through the narrow interface below: conversion in
(:meth:`Backend.array`, :meth:`Backend.operand`), work arrays and buffers
(:meth:`Backend.rows`, :meth:`Backend.flat`, :meth:`Backend.empty`), memory
questions for the ``out=`` rule, conversion out (:meth:`Backend.result`,
:meth:`Backend.copy_into`), and one launch method per kernel family.

Native arrays
    A backend's *native* arrays are what its kernels take: ``numpy.ndarray``
    for the CPU backend, Numba device arrays for the CUDA backend.  The front
    end reads only their metadata (``.shape``, ``.dtype``, ``.ndim``) and
    passes them back to the same backend.

Array kinds
    An :class:`ArrayKind` is a recogniser, plus either a backend (conversion in
    and out + kernels) or a delegate module.  Kinds are tried in registration
    order; an argument that no kind recognises is NumPy-like and runs on the
    CPU backend.  Registered here:

    ========== ================================== ==============================
    kind       recognised by                      runs on
    ========== ================================== ==============================
    ``cuda``   :func:`is_cuda_array`              ``fastxent.cuda.backend``
    ``torch``  ``torch.Tensor`` on the CPU (only  ``fastxent.cpu.backend`` through
               looked for once ``torch`` is       zero-copy ``Tensor.numpy()``
               imported)                          views; torch tensors out
    ``dask``   ``__dask_graph__``                 the whole call is delegated to
                                                  ``fastxent.dask.<function>``
    ========== ================================== ==============================

    The ``dask`` kind delegates instead of converting: a call whose
    positional array arguments include a dask array runs
    ``fastxent.dask.<same function name>(*args, **kwargs)`` (a graph of
    per-block calls of the public functions).  Until ``fastxent.dask``
    exists such a call falls back to the NumPy path, which computes the
    graph with ``np.asarray`` (today's behaviour).

    Adding a kind of array = writing a backend module that implements
    :class:`Backend` and calling :func:`register` with a recogniser; the
    front end's semantics do not change.

Label scans
    :meth:`Backend.scan_labels` returns a :class:`LabelScan`.  The front end
    asks it for the first bad row *before* any kernel writes (so that an
    ``out=logits`` buffer is never corrupted by a failing call) and passes the
    scan itself to :meth:`Backend.cross_entropy_hard`, which reads the mean's
    denominator from it.  A backend may keep the denominator on its device
    and answer ``bad_row()`` lazily; see :class:`LabelScan`.
"""

from __future__ import annotations

import enum
import functools
import importlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Tuple, TypeVar, Union

import numpy as np

F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------ options
class Reduction(enum.Enum):
    """How per-row (or per-element) losses are combined."""

    NONE = "none"
    MEAN = "mean"
    SUM = "sum"


class SoftmaxMode(enum.IntEnum):
    """What the softmax-family row kernels compute (values are the kernels')."""

    LOGSUMEXP = 0
    SOFTMAX = 1
    LOG_SOFTMAX = 2


class Divergence(enum.IntEnum):
    """The divergence-family row kernels (values are the kernels')."""

    ENTROPY = 0  # H(p) = -sum p log p; q is not used
    KL = 1       # KL(p || q) = sum p log(p / q)
    XENT = 2     # H(p, q) = -sum p log q


class BinaryInput(enum.Enum):
    """What the binary cross-entropy kernel's ``values`` are."""

    PROBS = "probs"
    LOGITS = "logits"


class GradScale:
    """The factor of a gradient, as the front end resolved it from
    ``grad_output``: ``factor`` (a host number) times ``rows`` (None, or a
    native float64 1-D array with one value per row / element), divided by
    the mean's denominator when ``mean`` is True.  (A plain class with
    __slots__: one is built on every call.)"""

    __slots__ = ("factor", "rows", "mean")

    def __init__(self, factor: float = 1.0, rows: Any = None, mean: bool = False):
        self.factor, self.rows, self.mean = factor, rows, mean


# ---------------------------------------------------------------- interface
class LabelScan(Protocol):
    """The result of :meth:`Backend.scan_labels` over class-index targets."""

    def bad_row(self) -> Optional[int]:
        """The first row whose label is outside [0, C) and not ``ignore_index``;
        -1 when every label is valid; None when the backend defers the check
        (it must then raise the IndexError itself, when the result is first
        read, and never write through a bad label)."""

    def denominator(self) -> float:
        """The mean's denominator as a host number (may wait for a device)."""


class Backend(Protocol):
    """What every backend module provides (``fastxent.cpu.backend``,
    ``fastxent.cuda.backend``).  All shapes are tuples of ints; dtypes are
    NumPy dtypes; "native" arrays are the backend's own (see the module
    docstring).  Arguments reach a launch method only after the front end
    has validated them: launch methods never check semantics."""

    name: str

    # ---- conversion in
    def array(self, obj: Any, name: str) -> Any:
        """A required array argument as a native array, zero-copy where
        possible (no dtype or layout change).  TypeError for an object of a
        kind this backend cannot take (e.g. a host array on the GPU)."""

    def operand(self, obj: Any, name: str) -> Union[float, Any]:
        """An optional operand (``grad_output``, a BCE ``weight``): a host
        scalar (Python number, NumPy scalar or 0-d host array) as a float
        (its dtype checked), anything else as :meth:`array` gives it."""

    # ---- work arrays and buffers
    def rows(self, a: Any, perm: Tuple[int, ...], n_rows: int, n_classes: int,
             dtype: np.dtype) -> Any:
        """``a.transpose(perm)`` as a C-contiguous (n_rows, n_classes) native
        array of ``dtype`` (a view when it already is one)."""

    def flat(self, a: Any, dtype: np.dtype, shape: Optional[Tuple[int, ...]] = None) -> Any:
        """``a`` broadcast to ``shape`` (``a.shape`` if None; the front end
        has checked that it broadcasts) as a C-contiguous 1-D native array
        of ``dtype`` (a view when possible)."""

    def empty(self, shape: Tuple[int, ...], dtype: np.dtype) -> Any:
        """An uninitialised native array."""

    def full(self, shape: Tuple[int, ...], dtype: np.dtype, value: float) -> Any:
        """A native array filled with ``value``."""

    def read_element(self, a: Any, index: int) -> Any:
        """``a[index]`` of a 1-D native array as a host scalar (may wait for a device)."""

    def is_c_contiguous(self, a: Any) -> bool:
        """True when ``a`` is C-contiguous."""

    def same_memory(self, a: Any, b: Any) -> bool:
        """True when ``a`` and ``b`` are the same C-contiguous memory of one shape."""

    def may_overlap(self, a: Any, b: Any) -> bool:
        """True when ``a`` and ``b`` may share memory."""

    # ---- conversion out
    def user_output(self, out: Any, name: str) -> Any:
        """A user-supplied ``out=`` array as a writeable native array view
        (ValueError, from ``_checks``, if it is not of this backend's kind or
        is read-only)."""

    def result(self, a: Any, dtype: np.dtype, shape: Tuple[int, ...],
               axes: Optional[Tuple[int, ...]] = None) -> Any:
        """``a`` as the caller's kind of array: reshaped to ``shape``,
        transposed by ``axes`` (None: no transpose), cast to ``dtype``.  A 0-d
        result is a NumPy scalar on the host backends (NumPy's convention)
        and a 0-d array of the caller's library elsewhere.  A host float
        (a reduced loss on the CPU) is accepted as ``a`` too."""

    def copy_into(self, dst: Any, src: Any) -> None:
        """``dst[...] = src`` for a native ``dst`` of any strides and dtype and
        a C-contiguous ``src`` of its size."""

    # ---- launches, one per kernel family.  Inputs may be empty.
    def softmax_rows(self, x2: Any, mode: SoftmaxMode) -> Any:
        """Row-wise log-sum-exp (a (n_rows,) array, float64 or x2's dtype),
        softmax or log-softmax (x2's shape and dtype) of a (rows, classes)
        array with at least one class."""

    def scan_labels(self, labels: Any, n_classes: int, ignore_index: int,
                    weight: Optional[Any]) -> LabelScan:
        """Check int64 labels and sum the mean's denominator (w[y], or 1, over
        the rows whose label is not ``ignore_index``)."""

    def cross_entropy_hard(self, x2: Any, labels: Any, scan: LabelScan, weight: Optional[Any], *,
                           ignore_index: int, smoothing: float, reduction: Reduction,
                           grad_scale: Optional[GradScale], grad: Optional[Any]) -> Any:
        """Class-index cross-entropy of (rows, classes) logits: returns the
        losses, (n_rows,) for ``Reduction.NONE``, else the reduced value
        (shape (1,), or a host float; the mean is divided by the scan's
        denominator and is NaN when that is 0); writes ``grad_scale`` times
        the gradient into ``grad`` (which may be ``x2`` itself) unless None.
        ``weight``: float64 (C,) or None."""

    def cross_entropy_soft(self, x2: Any, target2: Any, weight: Optional[Any], *,
                           smoothing: float, reduction: Reduction,
                           grad_scale: Optional[GradScale], grad: Optional[Any]) -> Any:
        """Probability-target cross-entropy, as :meth:`cross_entropy_hard`
        (the mean's denominator is the row count)."""

    def binary_cross_entropy(self, values: Any, target: Any, weight: Optional[Any],
                             pos_weight: Optional[Any], *, kind: BinaryInput,
                             reduction: Reduction, grad_scale: Optional[GradScale],
                             grad: Optional[Any]) -> Tuple[Any, int]:
        """Elementwise BCE of flat arrays (``weight``/``pos_weight`` float64,
        already broadcast): (losses as in :meth:`cross_entropy_hard`, index
        of the first probability outside [0, 1], or -1)."""

    def divergence_rows(self, kind: Divergence, p2: Any, q2: Any, *,
                        want_grad: bool) -> Tuple[Any, Optional[Any]]:
        """Row-wise entropy (q2 is p2) / KL / cross-entropy of probability
        rows: ((n_rows,) values, d/dp for entropy or d/dq otherwise, or None)."""


# ------------------------------------------------------------------ registry
def is_cuda_array(obj: Any) -> bool:
    """The one answer to "is this a CUDA array": True for objects that live
    on an NVIDIA GPU.

    Numba device arrays (simulated ones included) are recognised by their
    marker attribute and PyTorch tensors by ``is_cuda`` (their interface
    property raises when they require grad; a CPU tensor exposes none),
    anything else by ``__cuda_array_interface__``."""
    if getattr(obj, "__cuda_ndarray__", False):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        if obj.is_cuda:
            return True
        obj = obj.detach()  # simulated device tensors expose the interface on the host
    return hasattr(obj, "__cuda_array_interface__")


def _is_torch_cpu_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # never imports torch
    return torch is not None and isinstance(obj, torch.Tensor) and not is_cuda_array(obj)


def _is_dask_collection(obj: Any) -> bool:
    return hasattr(type(obj), "__dask_graph__")


@dataclass(frozen=True)
class ArrayKind:
    """One kind of array: ``recognise(obj)``, and either ``load(obj)`` (the
    :class:`Backend` that converts and runs a call whose first array of this
    kind is ``obj``; its module is imported on first use) or ``delegate`` (a
    module whose function of the same name runs the whole call, imported on
    first use)."""

    name: str
    recognise: Callable[[Any], bool]
    load: Optional[Callable[[Any], Backend]] = None
    delegate: Optional[str] = None


_KINDS: list = []


def register(kind: ArrayKind, *, first: bool = False) -> None:
    """Add an array kind (tried after the registered ones, or before them with
    ``first=True``)."""
    if (kind.load is None) == (kind.delegate is None):
        raise ValueError("an ArrayKind has either a backend loader or a delegate module")
    _KINDS.insert(0, kind) if first else _KINDS.append(kind)


def _load_cuda(primary: Any) -> Backend:
    try:
        from fastxent.cuda.backend import backend_for
    except ImportError as exc:  # numba-cuda missing, or no CUDA driver
        raise RuntimeError(
            "a CUDA array was passed, but fastxent's CUDA kernels cannot be loaded: "
            f"{exc}. Install the 'cuda' extra (pip install 'fastxent[cuda]') on a machine "
            "with an NVIDIA GPU and driver."
        ) from exc
    return backend_for(primary)  # one backend object per call: its stream and library


@functools.lru_cache(maxsize=None)
def cpu_backend() -> Backend:
    """The backend of NumPy arrays (and of anything ``np.asarray`` accepts)."""
    from fastxent.cpu.backend import BACKEND

    return BACKEND


def _load_torch_cpu(primary: Any) -> Backend:
    from fastxent.cpu.backend import TORCH_BACKEND

    return TORCH_BACKEND


register(ArrayKind("cuda", is_cuda_array, load=_load_cuda))
register(ArrayKind("torch", _is_torch_cpu_tensor, load=_load_torch_cpu))
register(ArrayKind("dask", _is_dask_collection, delegate="fastxent.dask"))


def kind_of(*arrays: Any) -> Optional[ArrayKind]:
    """The kind of the first argument that some registered kind recognises
    (None: all NumPy-like).  Plain ndarrays and None are skipped at once."""
    for a in arrays:
        if a is None or type(a) is np.ndarray:
            continue
        for kind in _KINDS:
            if kind.recognise(a):
                return kind
    return None


def backend_of(*arrays: Any) -> Backend:
    """The backend that runs a call on ``arrays`` (see the module docstring)."""
    for a in arrays:
        if a is None or type(a) is np.ndarray:
            continue
        kind = kind_of(a)
        if kind is not None and kind.load is not None:
            return kind.load(a)
    return cpu_backend()


@functools.lru_cache(maxsize=None)
def _delegate_module(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return None


def public(fn: F) -> F:
    """Mark a public function: a call whose positional arguments include an
    array of a delegating kind (Dask) runs ``<delegate module>.<same name>``
    instead of the body; everything else runs the body, which picks its
    backend with :func:`backend_of`.  A delegate module that is not installed
    yet leaves the call to the body (NumPy converts the array)."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for a in args:
            if type(a) is np.ndarray:
                continue
            for kind in _KINDS:
                if kind.delegate is not None and kind.recognise(a):
                    module = _delegate_module(kind.delegate)
                    if module is not None:
                        return getattr(module, name)(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
