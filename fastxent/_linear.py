"""Fused linear cross-entropy: loss and gradients of a linear softmax classifier
without ever holding the full (rows x classes) logits.

The model: scores f = x Wᵀ + b with W of shape (C, D), per-row loss
Lₙ = log Σ_c exp f_cn − f_yn, gradient Σₙ (ŷₙ − δₙ) xₙᵀ (+ λW).  The rows are
processed in chunks; for each chunk

1. ``logits = x_chunk @ W.T (+ b)`` by BLAS into one reused buffer,
2. the fused kernel :func:`fastxent.cross_entropy_with_grad` overwrites that
   buffer in place with the gradient G = grad_output · ∂loss/∂logits (already
   scaled by the reduction: 1 / denominator for ``"mean"``, computed up front
   over all rows),
3. ``dx_chunk = G @ W``, ``dW += Gᵀ @ x_chunk``, ``dbias += Σ_rows G``.

The extra memory is one chunk of logits plus one (C, D) block for the dW
update, independent of the number of rows.  The chunk size comes from the
class count and the cache size (:func:`auto_chunk_rows`), or ``chunk_size``.

The ``l2`` penalty ((λ/2)‖W‖²) is *added to the reduced loss*, and
its gradient l2·W is added to dW, both times ``grad_output``:

    loss = reduce(Lₙ) + (l2/2)‖W‖²,   dW = ∂reduce(Lₙ)/∂W + l2·W.

With ``reduction="sum"`` this is exactly the objective Σₙ Lₙ +
(λ/2)‖W‖²; with ``"mean"`` only the data term is divided by the denominator
(like ``F.cross_entropy(x @ W.T, y) + l2/2 * W.square().sum()``).  The
penalty belongs to no single row, so ``reduction="none"`` with ``l2 != 0`` is a
ValueError.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Any, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from fastxent import _checks as checks
from fastxent._api import (check_labels, class_weight, cross_entropy, cross_entropy_with_grad,
                           grad_scale)
from fastxent._backend import Reduction, backend_of, cpu_backend
from fastxent._backend import _is_dask_collection

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad", "auto_chunk_rows",
           "LinearProblem", "run"]

# ------------------------------------------------------------- chunk sizes
# A block of logits of about the last-level cache size keeps the three GEMMs
# of a chunk efficient (at C = 32000 float32: 256 rows, M = 256) while the
# extra memory stays a small fraction of the full logits.  Measured on a
# 2-core AMD EPYC (32 MiB L3): 128 .. 1024 rows at C = 32000 are within ~10%.
_MIN_BLOCK_BYTES = 8 << 20
_MAX_BLOCK_BYTES = 64 << 20
_MIN_CHUNK_ROWS = 32  # below this the GEMMs lose efficiency quickly
_MEMORY_FRACTION = 16  # never more than 1/16 of the available memory per block


def _sysfs_cache_bytes(level: int) -> Optional[int]:
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = os.listdir(base)
    except OSError:
        return None
    best = None
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            with open(os.path.join(base, entry, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip().upper()
        except (OSError, ValueError):
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            size = int(text.rstrip("KMG")) * unit
        except ValueError:
            continue
        best = max(best or 0, size)
    return best


@lru_cache(maxsize=None)
def _block_bytes() -> int:
    """Target size of one chunk of logits: the last-level cache, clamped to
    [8, 64] MiB and to 1/16 of the available memory."""
    cache = _sysfs_cache_bytes(3) or _sysfs_cache_bytes(2) or (32 << 20)
    block = min(max(cache, _MIN_BLOCK_BYTES), _MAX_BLOCK_BYTES)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        block = min(block, max(available // _MEMORY_FRACTION, 1 << 20))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux
        pass
    return int(block)


def auto_chunk_rows(n_rows: int, n_classes: int, itemsize: int, *,
                    block_bytes: Optional[int] = None) -> int:
    """Rows per chunk: a logits block of about ``block_bytes`` (default: the
    cache size, see ``_block_bytes``), at least 32 rows, at most all of them;
    a multiple of 8."""
    rows = (block_bytes or _block_bytes()) // max(n_classes * itemsize, 1)
    rows = max(_MIN_CHUNK_ROWS, rows - rows % 8)
    return int(max(1, min(rows, n_rows)))


# -------------------------------------------------------------- validation
def _check_l2(l2: Any) -> float:
    try:
        value = float(l2)
    except (TypeError, ValueError):
        raise ValueError(f"l2 must be a non-negative number, got {l2!r}") from None
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"l2 must be a finite non-negative number, got {l2!r}")
    return value


def _check_chunk_size(chunk_size: Any) -> Optional[int]:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return int(chunk_size)


class LinearProblem:
    """One validated, normalised linear cross-entropy problem: the inputs of
    :func:`linear_cross_entropy` as the chunked loop (:func:`run`) takes them.

    Built by :meth:`from_arguments` (which checks everything the public
    functions check); the model can be swapped with :meth:`set_parameters`
    without validating the data again (``fastxent.sklearn`` evaluates one
    problem at many (W, bias)).

    Fields: ``x2`` (rows, D) and ``W`` (C, D) in the compute ``dtype``,
    ``bias`` (C,) or None, ``labels`` (int64 (rows,), class indices) or
    ``soft`` ((rows, C) probabilities), ``weight`` (float64 (C,) or None),
    ``ignore_index``, ``reduction`` (a :class:`~fastxent._backend.Reduction`),
    ``smoothing``, ``l2``, ``denominator`` (the mean's: the kept rows' summed
    weight, or the row count), ``batch_shape`` and ``x_shape`` (for the
    results), ``result_dtype``, ``chunk_rows``; ``backend`` (whose native
    arrays the fields are: NumPy's, the torch-CPU kind's, or the CUDA
    backend of the call) and ``scan`` (the label scan of hard targets, which
    the CUDA chunk loop reuses for every chunk; None otherwise)."""

    __slots__ = ("x2", "W", "bias", "labels", "soft", "batch_shape", "x_shape", "dtype",
                 "result_dtype", "n_classes", "weight", "ignore_index", "reduction",
                 "smoothing", "l2", "denominator", "chunk_rows", "backend", "scan")

    @property
    def hard(self) -> bool:
        """True for class-index targets."""
        return self.labels is not None

    @classmethod
    def from_arguments(cls, x: Any, W: Any, target: Any, *, bias: Any = None, l2: Any = 0.0,
                       weight: Any = None, ignore_index: Any = checks.IGNORE_INDEX_DEFAULT,
                       reduction: Any = "mean", label_smoothing: Any = 0.0,
                       chunk_size: Any = None) -> "LinearProblem":
        """Validate the public functions' arguments (errors as they raise them)."""
        backend = _backend(x, W, target, bias, weight)
        p = cls()
        p.backend = backend
        xa = backend.array(x, "x")
        Wa = backend.array(W, "W")
        ba = None if bias is None else backend.array(bias, "bias")
        named = [(xa.dtype, "x"), (Wa.dtype, "W")] + ([] if ba is None else [(ba.dtype, "bias")])
        work, result = checks.common_compute_dtype(*named)

        # shapes as tuples (a simulated device array's shape takes no negative index)
        x_shape, W_shape = tuple(xa.shape), tuple(Wa.shape)
        if not x_shape:
            raise ValueError("x must have at least one dimension (the feature axis), got a scalar")
        if len(W_shape) != 2:
            raise ValueError(f"W must be a 2-D array of shape (classes, features), got shape {W_shape}")
        n_classes, n_features = W_shape
        if x_shape[-1] != n_features:
            raise ValueError(
                f"x has {x_shape[-1]} features (last axis) but W has {n_features} "
                f"(W must have shape (classes, features) = (C, {x_shape[-1]})), got x {x_shape} "
                f"and W {W_shape}"
            )
        if ba is not None and tuple(ba.shape) != (n_classes,):
            raise ValueError(f"bias must have shape (classes,) = ({n_classes},), got {tuple(ba.shape)}")

        p.reduction = checks.check_reduction(reduction)
        p.smoothing = checks.check_label_smoothing(label_smoothing)
        p.l2 = _check_l2(l2)
        if p.l2 != 0.0 and p.reduction is Reduction.NONE:
            raise ValueError(
                "l2 != 0 needs reduction='mean' or 'sum': the penalty (l2/2)*||W||^2 belongs to no "
                "single row (add it to the summed per-row losses yourself)"
            )
        chunk_size = _check_chunk_size(chunk_size)

        batch_shape = x_shape[:-1]
        n_rows = math.prod(batch_shape)
        t = backend.array(target, "target")
        hard = checks.is_class_index_target(t.dtype, tuple(t.shape), batch_shape + (n_classes,))
        p.ignore_index = checks.check_ignore_index(ignore_index, class_indices=hard)
        p.weight = class_weight(backend, weight, n_classes)
        if hard:
            p.labels = backend.flat(t, np.dtype(np.int64))
            scan = check_labels(backend, t, p.labels, n_classes, p.ignore_index, p.weight,
                                batch_shape)
            p.denominator = scan.denominator()
            p.soft, p.scan = None, scan
        else:
            checks.compute_dtype(t.dtype, "target")
            p.soft = t
            p.labels = p.scan = None
            p.denominator = float(n_rows)

        # Everything checked: now the (possibly copying) conversions.
        p.dtype, p.result_dtype = np.dtype(work), np.dtype(result)
        if backend.name == "cuda":  # C-contiguous (rows, .) work arrays, made on the device
            p.x2 = backend.rows(xa, tuple(range(xa.ndim)), n_rows, n_features, work)
            if not hard:
                p.soft = backend.rows(t, tuple(range(t.ndim)), n_rows, n_classes, work)
        else:
            x2 = xa.reshape(n_rows, n_features)
            p.x2 = x2 if x2.dtype == work else x2.astype(work)
            if not hard:
                p.soft = t.reshape(n_rows, n_classes)
        p.n_classes = n_classes
        p.set_parameters(Wa, ba)
        p.batch_shape, p.x_shape = batch_shape, x_shape
        # a backend may size the chunks itself (the CUDA backend: device memory, not a cache)
        p.chunk_rows = chunk_size or auto_chunk_rows(n_rows, n_classes, p.dtype.itemsize,
                                                     block_bytes=getattr(backend, "chunk_bytes", None))
        return p

    def set_parameters(self, W: np.ndarray, bias: Optional[np.ndarray]) -> None:
        """Use the model (W, bias), of the shapes the problem was built with,
        in the problem's compute dtype."""
        if self.backend.name == "cuda":  # the GEMM reads any strides: a copy only to cast
            self.W = W if W.dtype == self.dtype else self.backend.rows(W, (0, 1), *W.shape,
                                                                        self.dtype)
            self.bias = None if bias is None else self.backend.flat(bias, self.dtype)
            return
        Wc = W if W.dtype == self.dtype else W.astype(self.dtype)
        if not (Wc.flags.c_contiguous or Wc.flags.f_contiguous):
            Wc = np.ascontiguousarray(Wc)  # else every chunk's matmul would copy it
        self.W = Wc
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=self.dtype)


def _backend(*arrays: Any) -> Any:
    """The backend whose native arrays the chunk loop works on: NumPy's, the
    torch-CPU kind's (NumPy views in, tensors out), or the CUDA backend."""
    backend = backend_of(*arrays)
    return backend if backend.name in ("torch-cpu", "cuda") else cpu_backend()


def _as_kind_of(backend: Any, value: Any) -> Any:
    """A result of the loop as the backend gives results back (None stays
    None; the CUDA loop's results already are the caller's kind)."""
    if value is None or backend.name in ("cpu", "cuda"):
        return value
    a = np.asarray(value)
    return backend.result(a, a.dtype, a.shape)


def _grad_scale(grad_output: Any, p: LinearProblem) -> Tuple[float, Optional[Any]]:
    """(host factor of the data gradient, native per-row factors or None; rows
    only for "none")."""
    backend = p.backend if p.backend.name == "cuda" else cpu_backend()
    scale = grad_scale(backend, grad_output, p.reduction, p.batch_shape, broadcast=False)
    if scale.rows is not None and p.reduction is not Reduction.NONE:
        # a device scalar, broadcast over the rows: its value, read once
        return scale.factor * float(backend.read_element(scale.rows, 0)), None
    return scale.factor, scale.rows


# ---------------------------------------------------------------- the loop
class NumPyOps:
    """What the chunk loop (:func:`run`) does with arrays, for NumPy arrays:
    allocation, the three matrix products, the bias, the fused cross-entropy
    of a chunk and the reductions.

    :func:`run` takes any object with these methods: ``fastxent.torch`` passes
    one made of torch operations (PyTorch's BLAS; CPU and CUDA tensors), and
    CUDA problems get ``fastxent.cuda.backend.CudaOps``, so the loop itself
    exists once.  Every array that reaches the loop from the problem goes
    through :meth:`asarray` first."""

    def __init__(self) -> None:
        self._scratch: Optional[np.ndarray] = None

    def asarray(self, a: Any) -> Any:
        """A problem field (or None) as this library's array."""
        return a

    def empty(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def gemm_operand(self, a: np.ndarray) -> np.ndarray:
        """``a`` in a layout BLAS takes without a copy per product."""
        return a if a.flags.c_contiguous or a.flags.f_contiguous else np.ascontiguousarray(a)

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        """out = a @ b."""
        np.matmul(a, b, out=out)

    def matmul_add(self, acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """acc += a @ b, through one scratch block of acc's size (reused)."""
        if self._scratch is None or self._scratch.shape != acc.shape:
            self._scratch = np.empty_like(acc)
        np.matmul(a, b, out=self._scratch)
        acc += self._scratch

    def logits(self, x: np.ndarray, W: np.ndarray, bias: Optional[np.ndarray],
               out: np.ndarray) -> None:
        """out = x @ W.T (+ bias)."""
        self.matmul(x, W.T, out)
        if bias is not None:
            out += bias

    def weight_grad(self, dW: np.ndarray, G: np.ndarray, x: np.ndarray, *,
                    accumulate: bool) -> None:
        """dW = G.T @ x, or dW += G.T @ x when ``accumulate``."""
        if accumulate:
            self.matmul_add(dW, G.T, x)
        else:
            self.matmul(G.T, x, dW)

    def cross_entropy(self, logits: np.ndarray, target: np.ndarray, *, reduction: str,
                      want_grad: bool, grad_output: Any = None, **options: Any) -> Any:
        """The cross-entropy of one chunk of logits, reduced by ``reduction``
        ("sum" or "none"); with ``want_grad``, its gradient times
        ``grad_output`` (a host factor, or the chunk's per-row factors)
        overwrites ``logits``.  ``options``: weight, label_smoothing and, for
        class indices, ignore_index."""
        if not want_grad:
            return cross_entropy(logits, target, reduction=reduction, **options)
        value, _ = cross_entropy_with_grad(logits, target, reduction=reduction,
                                           grad_output=grad_output, out=logits, **options)
        return value

    def copy_rows(self, dst: np.ndarray, start: int, src: np.ndarray) -> None:
        """dst[start:start + len(src)] = src."""
        dst[start:start + src.shape[0]] = src

    def add_loss(self, total: Any, value: Any) -> Any:
        """``total`` (None before the first chunk) plus a chunk's reduced loss,
        in float64."""
        return (0.0 if total is None else total) + float(value)

    def reduced_loss(self, total: Any, denominator: Optional[float], half_l2: float,
                     W: np.ndarray, dtype: np.dtype) -> Any:
        """The reduced loss as a 0-d result of ``dtype``: ``total`` (of
        :meth:`add_loss`; None: no rows) divided by ``denominator`` (the
        mean's; None for the sum), plus ``half_l2 * ||W||**2``."""
        value = 0.0 if total is None else total
        if denominator is not None:
            value = checks.mean_of(value, denominator)
        if half_l2 != 0.0:
            value += half_l2 * self.squared_norm(W)
        return dtype.type(value)

    def scale_into(self, out: np.ndarray, a: np.ndarray, factor: float) -> None:
        """out = factor * a."""
        np.multiply(a, out.dtype.type(factor), out=out)

    def add_column_sums(self, acc: np.ndarray, G: np.ndarray) -> None:
        """acc (float64) += the sums of G's columns, accumulated in float64."""
        acc += np.add.reduce(G, axis=0, dtype=np.float64)

    def squared_norm(self, W: np.ndarray) -> float:
        """‖W‖² accumulated in float64, a block of rows at a time (no W-sized copy)."""
        rows = max(1, (1 << 16) // max(W.shape[1], 1))
        total = 0.0
        for start in range(0, W.shape[0], rows):
            block = W[start:start + rows].astype(np.float64).ravel()
            total += float(np.dot(block, block))
        return total

    def result(self, a: np.ndarray, dtype: np.dtype) -> Any:
        """A result array in the result dtype (0-d: a NumPy scalar)."""
        a = a.astype(dtype, copy=False)
        return a[()] if a.ndim == 0 else a


def _default_ops(p: LinearProblem) -> Any:
    if p.backend.name == "cuda":
        from fastxent.cuda.backend import CudaOps

        return CudaOps(p)
    return NumPyOps()


def run(p: LinearProblem, *, want_grad: bool, grad_output: Any = None, want_dx: bool = True,
        ops: Optional[Any] = None):
    """The chunked loop over ``p``'s rows.  Returns (loss in the result dtype, dx, dW, dbias).
    ``ops`` does the array work (default :class:`NumPyOps`, or ``CudaOps`` for
    a problem on CUDA arrays)."""
    ops = _default_ops(p) if ops is None else ops
    x2, W, bias = ops.asarray(p.x2), ops.asarray(p.W), ops.asarray(p.bias)
    labels, soft = ops.asarray(p.labels), ops.asarray(p.soft)
    n_rows = x2.shape[0]
    C, D = W.shape
    chunk = p.chunk_rows
    none = p.reduction is Reduction.NONE
    ce_kw = dict(weight=ops.asarray(p.weight), label_smoothing=p.smoothing)
    if p.hard:
        ce_kw["ignore_index"] = p.ignore_index

    g, row_scale = (1.0, None)
    if want_grad:
        g, row_scale = _grad_scale(grad_output, p)
        row_scale = ops.asarray(row_scale)
    # the data term's gradient factor (NaN for a zero denominator, as its mean)
    scale = checks.mean_of(g, p.denominator) if p.reduction is Reduction.MEAN else g

    losses = ops.empty((n_rows,), p.dtype) if none else None
    total = None
    dx2 = dW = dbias = None
    if want_grad:
        dx2 = ops.empty((n_rows, D), p.dtype) if want_dx else None
        dW = ops.zeros((C, D), p.dtype)
        if p.l2 != 0.0:
            ops.scale_into(dW, W, g * p.l2)
        dbias = ops.zeros((C,), np.dtype(np.float64)) if bias is not None else None

    buf = ops.empty((min(chunk, n_rows), C), p.dtype) if n_rows else None
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        xc = ops.gemm_operand(x2[start:stop])
        logits = buf[: stop - start]
        ops.logits(xc, W, bias, logits)
        tc = labels[start:stop] if p.hard else soft[start:stop]
        factor = scale if row_scale is None else row_scale[start:stop]
        value = ops.cross_entropy(logits, tc, reduction="none" if none else "sum",
                                  want_grad=want_grad, grad_output=factor, **ce_kw)
        if none:
            ops.copy_rows(losses, start, value)
        else:
            total = ops.add_loss(total, value)
        if not want_grad:
            continue
        # the logits buffer now holds the chunk's scaled gradient G
        if dx2 is not None:
            ops.matmul(logits, W, dx2[start:stop])
        ops.weight_grad(dW, logits, xc, accumulate=start > 0 or p.l2 != 0.0)
        if dbias is not None:
            ops.add_column_sums(dbias, logits)

    rdt = p.result_dtype
    if none:
        loss = ops.result(losses.reshape(p.batch_shape), rdt)
    else:
        loss = ops.reduced_loss(total, p.denominator if p.reduction is Reduction.MEAN else None,
                                0.5 * p.l2, W, rdt)
    if not want_grad:
        return loss, None, None, None
    dx = None
    if dx2 is not None:
        dx = ops.result(dx2.reshape(p.x_shape), rdt)
    dW = ops.result(dW, rdt)
    if dbias is not None:
        dbias = ops.result(dbias, rdt)
    return loss, dx, dW, dbias


# ------------------------------------------------------------------ public
def linear_cross_entropy(x: ArrayLike, W: ArrayLike, target: ArrayLike, *,
                         bias: Optional[ArrayLike] = None, l2: float = 0.0,
                         weight: Optional[ArrayLike] = None,
                         ignore_index: int = checks.IGNORE_INDEX_DEFAULT,
                         reduction: str = "mean", label_smoothing: float = 0.0,
                         chunk_size: Optional[int] = None) -> Any:
    """Cross-entropy of the linear scores ``x @ W.T + bias`` against ``target``,
    plus ``(l2/2) * ||W||**2``, without materialising the full logits.

    ``x`` has shape (..., D) (leading axes are batch axes), ``W`` (C, D), ``bias`` (C,).  ``target`` and every other keyword have the
    meaning of :func:`fastxent.cross_entropy` (class indices of shape
    ``x.shape[:-1]`` or probabilities of shape ``x.shape[:-1] + (C,)``).
    The penalty is added to the *reduced* loss (not divided by the mean's
    denominator); ``reduction="none"`` needs ``l2=0``.  Rows are processed
    ``chunk_size`` at a time (default: chosen from C and the cache size).

    >>> import numpy as np, fastxent as fx
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0]]); W = np.array([[2.0, 0.0], [0.0, 2.0]])
    >>> round(float(fx.linear_cross_entropy(x, W, np.array([0, 1]))), 6)
    0.126928
    """
    if any(_is_dask_collection(a) for a in (x, W, target, bias)):  # lazy graphs (fastxent.dask)
        from fastxent import dask as dask_backend

        return dask_backend.linear_cross_entropy(
            x, W, target, bias=bias, l2=l2, weight=weight, ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing, chunk_size=chunk_size)
    p = LinearProblem.from_arguments(x, W, target, bias=bias, l2=l2, weight=weight,
                                     ignore_index=ignore_index, reduction=reduction,
                                     label_smoothing=label_smoothing, chunk_size=chunk_size)
    return _as_kind_of(p.backend, run(p, want_grad=False)[0])


def linear_cross_entropy_with_grad(x: ArrayLike, W: ArrayLike, target: ArrayLike, *,
                                   bias: Optional[ArrayLike] = None, l2: float = 0.0,
                                   weight: Optional[ArrayLike] = None,
                                   ignore_index: int = checks.IGNORE_INDEX_DEFAULT,
                                   reduction: str = "mean", label_smoothing: float = 0.0,
                                   grad_output: Optional[ArrayLike] = None,
                                   chunk_size: Optional[int] = None):
    """:func:`linear_cross_entropy` and its gradients: ``(loss, (dx, dW, dbias))``.

    dx = G W, dW = Gᵀ x + l2·W, dbias = Σ_rows G, with G the gradient of the
    reduced loss with respect to the logits ((ŷ − δ), scaled by the
    reduction), all times ``grad_output`` (a scalar, or one value per row for
    ``reduction="none"``).  ``dbias`` is None without ``bias``.  One fused pass
    per chunk of rows; the extra memory is one chunk of logits and one (C, D)
    block.
    """
    if any(_is_dask_collection(a) for a in (x, W, target, bias)):  # lazy graphs (fastxent.dask)
        from fastxent import dask as dask_backend

        return dask_backend.linear_cross_entropy_with_grad(
            x, W, target, bias=bias, l2=l2, weight=weight, ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing, grad_output=grad_output,
            chunk_size=chunk_size)
    p = LinearProblem.from_arguments(x, W, target, bias=bias, l2=l2, weight=weight,
                                     ignore_index=ignore_index, reduction=reduction,
                                     label_smoothing=label_smoothing, chunk_size=chunk_size)
    loss, dx, dW, dbias = run(p, want_grad=True, grad_output=grad_output)
    backend = p.backend
    return _as_kind_of(backend, loss), tuple(_as_kind_of(backend, g) for g in (dx, dW, dbias))
