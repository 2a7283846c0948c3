"""The Dask backend: every public function on Dask arrays, as lazy graphs of
per-block calls of the ordinary fastxent functions.

Dask in, Dask out: each function here takes Dask arrays (anything with
``__dask_graph__``; NumPy operands are wrapped) and returns a lazy Dask array
-- a 0-d one for ``reduction="mean"``/``"sum"`` -- without computing
anything.  Metadata errors (shapes, dtypes, options) are raised at call time
by the same ``fastxent._checks`` rules as the NumPy path; errors that need the
data (a label out of range, a probability outside [0, 1]) are raised when the
graph is computed, with the NumPy path's exception type and message (row and
element indices are global, not block-local).

Two layouts:

* **Rows chunked** (the class axis in one chunk, the common case): each block
  is one call of the NumPy-path function (``fastxent.cross_entropy`` etc.) on
  a NumPy chunk (so CuPy chunks run the CUDA kernels).  ``"mean"``/``"sum"``
  are tree reductions of per-block ``(loss sum, denominator)`` pairs: the
  mean's denominator Σ w_y over the kept rows is reduced alongside the loss.
* **Classes chunked** (a vocabulary split over workers, as in Megatron's
  vocab-parallel cross-entropy): logsumexp, softmax, log_softmax,
  cross_entropy and cross_entropy_with_grad.  Every (row block, class block)
  computes per-row partials -- its max m and r = logsumexp(x - m) (one call of
  ``fastxent.logsumexp``), the target logit if the target falls in the block,
  the label-smoothing / soft-target sums -- that merge over the class blocks
  by a tree reduction with the log-sum-exp rule
  (m_a, r_a) ⊕ (m_b, r_b) = (M, log(e^{m_a - M + r_a} + e^{m_b - M + r_b})).
  Partials are kept relative to the row max, so a loss near zero keeps its
  relative precision.  The gradient pass broadcasts the merged per-row
  (M, log-sum-exp) back over the class blocks; full rows are never gathered.
  (These per-class-block partials are NumPy code: class-chunked graphs take
  NumPy chunks only.)

Dask and distributed are an optional extra: ``pip install 'fastxent[dask]'``.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Optional, Sequence, Tuple

import dask
import dask.array as da
import numpy as np

import fastxent._api as api
from fastxent import _checks as checks

__all__ = [*checks.ROW_FUNCTIONS, *checks.LINEAR_FUNCTIONS]


# ================================================================== helpers
def _as_dask(a: Any, name: str) -> da.Array:
    """``a`` as a Dask array (NumPy operands wrapped in one chunk); unknown
    chunk sizes are refused at call time (shapes are checked from metadata)."""
    arr = a if isinstance(a, da.Array) else da.asarray(a)
    if any(isinstance(n, float) and math.isnan(n) for n in arr.shape):
        raise ValueError(f"{name} has unknown chunk sizes {arr.chunks}: call "
                         f"{name}.compute_chunk_sizes() first")
    return arr


def _meta(dtype: Any, ndim: int) -> np.ndarray:
    return np.empty((0,) * ndim, dtype=dtype)


def _work_dtype(dtype: np.dtype, name: str) -> Tuple[np.dtype, np.dtype]:
    return checks.compute_dtype(dtype, name)


def _reduction(reduction: Any) -> str:
    """The validated reduction's name ("none", "mean" or "sum")."""
    return checks.check_reduction(reduction).value


def _class_weight(weight: Any, n_classes: int) -> Any:
    """A per-class weight as a float64 NumPy vector (a Dask one stays lazy)."""
    if weight is None:
        return None
    w = weight if isinstance(weight, da.Array) else np.asarray(weight)
    checks.check_class_weight(w.dtype, w.shape, n_classes)
    return w.astype(np.float64) if isinstance(w, da.Array) else np.ascontiguousarray(w, np.float64)


def _delayed_constant(value: Any) -> Any:
    """A small array or None as one graph key shared by every task (not copied
    into each task); a Dask array becomes one delayed NumPy array."""
    if value is None:
        return None
    if isinstance(value, da.Array):
        return value.rechunk(-1).to_delayed().reshape(-1)[0]
    return dask.delayed(value, pure=True)


def _global_row(block_info: dict, input_index: int, local_row: int, n_batch_dims: int) -> int:
    """Flat C-order row index, in the whole batch, of ``local_row`` of a block."""
    info = block_info[input_index]
    location = info["array-location"][:n_batch_dims]
    shape = info["shape"][:n_batch_dims]
    if n_batch_dims == 0:
        return 0
    local_shape = tuple(stop - start for start, stop in location)
    coords = np.unravel_index(local_row, local_shape)
    return int(np.ravel_multi_index(tuple(int(c) + start for c, (start, _) in zip(coords, location)),
                                    shape))


def _limit_kernel_threads_in_a_worker() -> None:
    """In a Dask worker's task thread, run the Numba kernels on at most
    OMP_NUM_THREADS threads, as distributed asks of OpenMP and BLAS in its
    workers (its ``pre-spawn-environ`` sets it to 1): each worker thread is
    one slot of the cluster's cores, and Numba's default of every core per
    worker oversubscribes them (on 2 cores, two workers' 2-thread kernels
    ran 5-30x slower under load).  Numba's thread count is per thread, so
    this sets only the calling task thread's; outside a worker it does
    nothing."""
    import os

    limit = os.environ.get("OMP_NUM_THREADS")
    if not limit or not limit.isdigit() or _current_worker() is None:
        return
    import numba

    wanted = max(1, min(int(limit), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)


def _current_worker() -> Any:
    """The distributed Worker whose task thread this is, else None."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        return get_worker()
    except ValueError:
        return None


def _api_block(x: np.ndarray, name: str, **kwargs: Any) -> Any:
    """One block through the public function ``name`` (threads capped in a worker)."""
    _limit_kernel_threads_in_a_worker()
    return getattr(api, name)(x, **kwargs)


def _pick(index: int):
    """A block function taking element ``index`` of a tuple-valued block."""
    return operator.itemgetter(index)


class _pick_keepdims:
    """Element ``index`` of a tuple-valued block, with size-1 ``axes`` put back
    (a tuple block cannot go through Dask's contraction of a dropped axis)."""

    def __init__(self, index: int, axes: tuple):
        self.index, self.axes = index, axes

    def __call__(self, block: tuple) -> np.ndarray:
        return np.expand_dims(np.asarray(block[self.index]), self.axes)


_mean = checks.mean_of  # total / denominator; NaN over no (weighted) rows, as PyTorch


def _reduced_value(pairs: np.ndarray, reduction: str) -> float:
    """The mean or sum (float64) from the reduced (loss sum, denominator) pair."""
    total, denominator = float(pairs[0]), float(pairs[1])
    return _mean(total, denominator) if reduction == "mean" else total


def _finish_reduction(pairs: np.ndarray, reduction: str, dtype: np.dtype) -> np.ndarray:
    """0-d result from the reduced (loss sum, denominator) pair."""
    return np.asarray(_reduced_value(pairs, reduction), dtype=dtype)


def _reduce_pairs(pairs: da.Array, reduction: str, dtype: np.dtype) -> da.Array:
    """Tree-sum per-block (..., 2) float64 (loss sum, denominator) pairs over
    every axis but the last, then the mean or sum as a 0-d array of ``dtype``."""
    summed = pairs.sum(axis=tuple(range(pairs.ndim - 1)), dtype=np.float64)
    return summed.map_blocks(_finish_reduction, reduction, dtype, drop_axis=0, dtype=dtype,
                             meta=_meta(dtype, 0))


def _mean_scale(grad_output: float, denominator_pair: np.ndarray, reduction: str) -> float:
    """The gradient factor grad_output / denominator (or grad_output), as
    ``checks.grad_row_scale`` computes it."""
    g = float(grad_output)
    if reduction != "mean":
        return g
    return checks.mean_of(g, float(denominator_pair[1]))


def _scalar_grad_output(grad_output: Any, reduction: str, batch_shape: tuple) -> Any:
    """Validate grad_output from metadata: a scalar (number, 0-d array or 0-d
    Dask array), or for reduction="none" one value per row.  Returns a float,
    a delayed scalar, or a Dask array of the batch shape."""
    if grad_output is None:
        return 1.0
    if type(grad_output) in (float, int):
        return float(grad_output)
    g = grad_output if isinstance(grad_output, da.Array) else np.asarray(grad_output)
    checks.compute_dtype(g.dtype, "grad_output")
    if g.ndim == 0:
        return float(g) if isinstance(g, np.ndarray) else g.to_delayed().reshape(-1)[0]
    if reduction != "none":
        raise ValueError(f"grad_output for reduction={reduction!r} must be a scalar, got shape {g.shape}")
    if tuple(g.shape) != tuple(batch_shape):
        raise ValueError(
            f"grad_output for reduction='none' must be a scalar or have the loss's shape "
            f"{tuple(batch_shape)}, got {tuple(g.shape)}")
    return _as_dask(g, "grad_output").astype(np.float64)


# ========================================================== log-sum-exp parts
# Per-row partials of a block of classes, kept relative to the block's max so
# that they merge exactly (see the module docstring).  ``m`` is the block max
# where finite (else 0), ``r`` = logsumexp(x - m); a linear sum ``v`` with
# coefficient ``c`` stands for v + c * m, and is rebased to a new max M as
# v + c (m - M).  Hard targets: t = target logit, f = 1 where the target falls
# in the block, s = Σ w_c x_c, k = Σ w_c, wy = w_target.  Soft targets:
# b = Σ w_c t'_c x_c, a = Σ w_c t'_c.
_LSE_FIELDS = ("m", "r")
_HARD_FIELDS = _LSE_FIELDS + ("t", "f", "s", "k", "wy")
_SOFT_FIELDS = _LSE_FIELDS + ("b", "a")
_LINEAR_PAIRS = {"t": "f", "s": "k", "b": "a"}


def _partials_dtype(fields: Sequence[str]) -> np.dtype:
    return np.dtype([(f, np.float64) for f in fields])


def _block_max_and_log_sum(x: np.ndarray, axis: tuple) -> Tuple[np.ndarray, np.ndarray]:
    """(m, r) with keepdims over ``axis``: m the max where finite, else 0, and
    r = logsumexp(x - m) by ``fastxent.logsumexp``, both float64."""
    _limit_kernel_threads_in_a_worker()
    if x.size == 0:
        shape = [1 if d in axis else n for d, n in enumerate(x.shape)]
        return np.zeros(shape), np.full(shape, -np.inf)
    with np.errstate(invalid="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0).astype(x.dtype)
    r = api.logsumexp(x - m, axis=axis, keepdims=True)
    return m.astype(np.float64), np.asarray(r, dtype=np.float64)


def _merge_partials(parts: np.ndarray, axis: Any, keepdims: bool = True) -> np.ndarray:
    """Merge structured partials along ``axis`` (the combine and aggregate step
    of the tree reduction): the log-sum-exp rule for (m, r), additive for the
    rest after rebasing to the new max."""
    _limit_kernel_threads_in_a_worker()
    axis = axis if isinstance(axis, tuple) else (axis,)
    names = parts.dtype.names
    m = parts["m"]
    M = np.max(m, axis=axis, keepdims=True)
    out = np.empty(M.shape, dtype=parts.dtype)
    out["m"] = M
    shifted = (m - M) + parts["r"]
    out["r"] = api.logsumexp(shifted, axis=axis, keepdims=True)
    for field in names:
        if field in _LSE_FIELDS:
            continue
        values = parts[field]
        coefficient = _LINEAR_PAIRS.get(field)
        if coefficient is not None:
            values = values + parts[coefficient] * (m - M)
        out[field] = np.sum(values, axis=axis, keepdims=True)
    return out if keepdims else out.reshape([n for d, n in enumerate(out.shape) if d not in axis])


def _identity_chunk(block: np.ndarray, axis: Any, keepdims: bool) -> np.ndarray:
    return block


def _merge_over_last(partials: da.Array, split_every: Optional[int] = None) -> da.Array:
    """Tree reduction of (..., n_class_blocks) partials to (..., 1)."""
    axis = partials.ndim - 1
    if partials.numblocks[axis] == 1 and partials.shape[axis] == 1:
        return partials
    return da.reduction(partials, _identity_chunk, _merge_partials, combine=_merge_partials,
                        axis=axis, keepdims=True, dtype=partials.dtype, split_every=split_every,
                        concatenate=True, meta=_meta(partials.dtype, partials.ndim))


# ================================================================== softmax
def _reduced_axes(ndim: int, axis: Any) -> tuple:
    layout = checks.rows_layout((1,) * ndim, axis)  # validates axis like the NumPy path
    return tuple(layout.axes)


def _lse_partial_chunk(x: np.ndarray, axis: tuple, keepdims: bool, work: np.dtype) -> np.ndarray:
    m, r = _block_max_and_log_sum(x.astype(work, copy=False), axis)
    out = np.empty(m.shape, dtype=_partials_dtype(_LSE_FIELDS))
    out["m"], out["r"] = m, r
    return out


def _lse_from_stats(stats: np.ndarray, dtype: np.dtype, axes: tuple, keepdims: bool) -> np.ndarray:
    """log-sum-exp M + L from merged (keepdims) row stats."""
    value = (stats["m"] + stats["r"]).astype(dtype)
    return value if keepdims else value.reshape([n for d, n in enumerate(value.shape)
                                                 if d not in axes])


def _row_stats(x: da.Array, axes: tuple, work: np.dtype) -> da.Array:
    """Merged (m, r) partials over ``axes``, keepdims: (M, log Σ exp(x - M))."""
    dtype = _partials_dtype(_LSE_FIELDS)
    return da.reduction(x, lambda b, axis, keepdims: _lse_partial_chunk(b, axis, keepdims, work),
                        _merge_partials, combine=_merge_partials, axis=axes, keepdims=True,
                        dtype=dtype, concatenate=True, meta=_meta(dtype, x.ndim))


def _single_chunk_along(x: da.Array, axes: tuple) -> bool:
    return all(x.numblocks[d] == 1 for d in axes)


def logsumexp(x: Any, axis: Any = -1, keepdims: bool = False) -> da.Array:
    """:func:`fastxent.logsumexp` of a Dask array.  Along axes held in one
    chunk: one ``fastxent.logsumexp`` per block; along chunked axes: per-block
    (max, log-sum-exp) partials merged by a tree reduction."""
    x = _as_dask(x, "x")
    work, result = _work_dtype(x.dtype, "x")
    axes = _reduced_axes(x.ndim, axis)
    if _single_chunk_along(x, axes):
        if keepdims:
            chunks = tuple((1,) if d in axes else c for d, c in enumerate(x.chunks))
            return x.map_blocks(_api_block, "logsumexp", axis=axes, keepdims=True, chunks=chunks,
                                dtype=result, meta=_meta(result, x.ndim))
        return x.map_blocks(_api_block, "logsumexp", axis=axes, drop_axis=axes, dtype=result,
                            meta=_meta(result, x.ndim - len(axes)))
    stats = _row_stats(x, axes, work)
    return stats.map_blocks(_lse_from_stats, result, axes, keepdims,
                            drop_axis=[] if keepdims else axes, dtype=result,
                            meta=_meta(result, x.ndim - (0 if keepdims else len(axes))))


def _softmax_from_stats(x: np.ndarray, stats: np.ndarray, log: bool,
                        result: np.dtype) -> np.ndarray:
    """softmax / log_softmax of a block of classes given the merged row stats:
    (x - M) - L (NaN where the row's log-sum-exp is not finite, as the kernels)."""
    M, L = stats["m"], stats["r"]
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = (x.astype(np.float64) - M) - L
        value = shifted if log else np.exp(shifted)
        value = np.where(np.isfinite(L), value, np.nan)
    return value.astype(result)


def _softmax(x: Any, axis: Any, log: bool) -> da.Array:
    x = _as_dask(x, "x")
    work, result = _work_dtype(x.dtype, "x")
    axes = _reduced_axes(x.ndim, axis)
    if _single_chunk_along(x, axes):
        fn = "log_softmax" if log else "softmax"
        return x.map_blocks(_api_block, fn, axis=axes, dtype=result, meta=_meta(result, x.ndim))
    stats = _row_stats(x, axes, work)
    return da.map_blocks(_softmax_from_stats, x, stats, log, result, dtype=result,
                         meta=_meta(result, x.ndim))


def softmax(x: Any, axis: Any = -1) -> da.Array:
    """:func:`fastxent.softmax` of a Dask array (the class axes may be chunked)."""
    return _softmax(x, axis, log=False)


def log_softmax(x: Any, axis: Any = -1) -> da.Array:
    """:func:`fastxent.log_softmax` of a Dask array (the class axes may be chunked)."""
    return _softmax(x, axis, log=True)


# ============================================================ cross-entropy
class _CE:
    """The validated cross-entropy problem (from metadata only)."""

    def __init__(self, logits, target, weight, ignore_index, reduction, label_smoothing):
        x = _as_dask(logits, "logits")
        self.work, self.result = _work_dtype(x.dtype, "logits")
        layout = checks.last_axis_rows(x.shape, "logits")
        self.reduction = _reduction(reduction)
        self.smoothing = checks.check_label_smoothing(label_smoothing)
        self.n_classes = layout.n_classes
        self.batch_shape = layout.batch_shape
        t = _as_dask(target, "target")
        self.hard = checks.is_class_index_target(t.dtype, t.shape, x.shape)
        self.ignore_index = checks.check_ignore_index(ignore_index, class_indices=self.hard)
        self.weight = _class_weight(weight, self.n_classes)
        if self.hard:
            t = t[..., None].rechunk(x.chunks[:-1] + ((1,),))  # broadcasts over the classes
        else:
            t = t.rechunk(x.chunks)
        self.x, self.t = x, t
        self.ndim = x.ndim
        self.class_chunked = x.numblocks[-1] > 1

    def weight_key(self):
        return _delayed_constant(self.weight)


def _check_labels_block(labels: np.ndarray, n_classes: int, ignore_index: int,
                        batch_shape: tuple, block_info: dict, input_index: int) -> None:
    """IndexError (the NumPy path's message, global row) for a bad label."""
    flat = labels.reshape(-1)
    bad = (flat != ignore_index) & ((flat < 0) | (flat >= n_classes))
    if bad.any():
        row = int(np.argmax(bad))
        global_row = _global_row(block_info, input_index, row, len(batch_shape))
        raise checks.bad_label_error(int(flat[row]), global_row, batch_shape, n_classes,
                                     ignore_index)


def _kept_weight(labels: np.ndarray, weight: Optional[np.ndarray], ignore_index: int) -> float:
    """Σ w_y over the kept rows of a block (the mean's denominator)."""
    kept = labels[labels != ignore_index]
    return float(kept.size) if weight is None else float(weight[kept].sum())


def _ce_rows_block(x, t, weight, hard, n_classes, ignore_index, smoothing, batch_shape,
                   reduction, row_scale=None, want_grad=False, block_info=None):
    """One block of whole rows: validate its labels (global row numbers), then
    one fastxent.cross_entropy(_with_grad) call.  Returns the (loss sum,
    denominator) pair (or per-row losses for "none"), and the gradient."""
    _limit_kernel_threads_in_a_worker()
    kw = dict(weight=weight, label_smoothing=smoothing)
    if hard:
        kw["ignore_index"] = ignore_index
    labels, denominator = _block_labels(t, x.shape, hard, weight, n_classes, ignore_index,
                                        batch_shape, block_info)
    none = reduction == "none"
    block_reduction = "none" if none else "sum"
    if want_grad:
        loss, grad = api.cross_entropy_with_grad(x, labels, reduction=block_reduction,
                                                 grad_output=_row_scale_block(row_scale), **kw)
    else:
        loss, grad = api.cross_entropy(x, labels, reduction=block_reduction, **kw), None
    value = np.asarray(loss) if none else _pair_block(loss, denominator, x.ndim - 1)
    return (value, grad) if want_grad else value


def _block_labels(t: np.ndarray, x_shape: tuple, hard: bool, weight: Optional[np.ndarray],
                  n_classes: int, ignore_index: int, batch_shape: tuple,
                  block_info: dict) -> Tuple[np.ndarray, float]:
    """A block's targets as the kernels take them (hard labels checked, with
    global row numbers in the message) and its share of the mean's
    denominator (Σ w_y over kept rows; the row count for soft targets)."""
    if not hard:
        return t, float(math.prod(x_shape[:-1]))
    labels = t[..., 0]
    _check_labels_block(labels, n_classes, ignore_index, batch_shape, block_info, 0)
    return labels, _kept_weight(labels, weight, ignore_index)


def _row_scale_block(row_scale: Any) -> Any:
    """A block's grad_output: a scalar, or its (..., 1) per-row factors as (...)."""
    return row_scale[..., 0] if isinstance(row_scale, np.ndarray) else row_scale


def _pair_block(loss: Any, denominator: float, n_batch_dims: int) -> np.ndarray:
    """A block's (loss sum, denominator) pair, shaped (1, ..., 1, 2) to stand
    in the grid of per-block pairs."""
    return np.array([float(loss), denominator]).reshape((1,) * n_batch_dims + (2,))


def _denominator_block(t, weight, n_classes, ignore_index, batch_shape, block_info=None):
    """(0, Σ w_y kept) of a block of labels, after checking them."""
    labels = t[..., 0]
    _check_labels_block(labels, n_classes, ignore_index, batch_shape, block_info, 0)
    value = np.array([0.0, _kept_weight(labels, weight, ignore_index)])
    return value.reshape((1,) * labels.ndim + (2,))


def _pair_chunks(arr: da.Array) -> tuple:
    """Chunks of a per-block (..., 2) pairs array built from ``arr``'s batch blocks."""
    return tuple((1,) * n for n in arr.numblocks[:-1]) + ((2,),)


def _denominator(p: _CE) -> da.Array:
    """The reduced (0, Σ w_y) pair (checks every label on the way)."""
    if p.hard:
        pairs = da.map_blocks(_denominator_block, p.t, p.weight_key(), p.n_classes,
                              p.ignore_index, p.batch_shape, chunks=_pair_chunks(p.t),
                              dtype=np.float64, meta=_meta(np.float64, p.ndim))
        return pairs.sum(axis=tuple(range(p.ndim - 1)), dtype=np.float64)
    n = float(math.prod(p.batch_shape))
    return da.from_array(np.array([0.0, n]), chunks=-1)


def _row_scale(p: _CE, grad_output: Any, denominator: Optional[da.Array]) -> Any:
    """grad_output folded with the mean's 1/denominator: a float, a delayed
    float, or a (batch..., 1) Dask array for per-row grad_output."""
    g = _scalar_grad_output(grad_output, p.reduction, p.batch_shape)
    if isinstance(g, da.Array):
        return g[..., None].rechunk(p.x.chunks[:-1] + ((1,),))
    if p.reduction != "mean":
        return g
    return dask.delayed(_mean_scale, pure=True)(g, denominator.to_delayed().reshape(-1)[0],
                                                p.reduction)


def _ce_rows(p: _CE, want_grad: bool, grad_output: Any = None):
    """Rows chunked: one fastxent call per block."""
    none = p.reduction == "none"
    scale = None
    if want_grad:
        scale = _row_scale(p, grad_output, _denominator(p) if p.reduction == "mean" else None)
    w = p.weight_key()
    fixed = (w, p.hard, p.n_classes, p.ignore_index, p.smoothing, p.batch_shape, p.reduction)
    value_chunks = p.x.chunks[:-1] if none else _pair_chunks(p.x)
    value_dtype = p.result if none else np.float64
    if not want_grad:
        value = da.map_blocks(_ce_rows_block, p.x, p.t, *fixed, drop_axis=p.ndim - 1 if none else [],
                              chunks=value_chunks, dtype=value_dtype,
                              meta=_meta(value_dtype, p.ndim - (1 if none else 0)))
        return value if none else _reduce_pairs(value, p.reduction, p.result)
    args = (p.x, p.t) + fixed
    if isinstance(scale, da.Array):
        both = da.map_blocks(_ce_rows_block_scaled, p.x, p.t, scale, *fixed, True,
                             dtype=object, meta=_meta(object, p.ndim))
    else:
        both = da.map_blocks(_ce_rows_block, *args, row_scale=scale, want_grad=True,
                             dtype=object, meta=_meta(object, p.ndim))
    grad = both.map_blocks(_pick(1), dtype=p.result, meta=_meta(p.result, p.ndim))
    if none:  # per-row losses, kept with a size-1 class axis (no contraction of tuple blocks)
        value = both.map_blocks(_pick_keepdims(0, (p.ndim - 1,)),
                                chunks=p.x.chunks[:-1] + ((1,),), dtype=value_dtype,
                                meta=_meta(value_dtype, p.ndim))[..., 0]
        return value, grad
    value = both.map_blocks(_pick(0), chunks=value_chunks, dtype=value_dtype,
                            meta=_meta(value_dtype, p.ndim))
    return _reduce_pairs(value, p.reduction, p.result), grad


def _ce_rows_block_scaled(x, t, row_scale, weight, hard, n_classes, ignore_index, smoothing,
                          batch_shape, reduction, want_grad, block_info=None):
    return _ce_rows_block(x, t, weight, hard, n_classes, ignore_index, smoothing, batch_shape,
                          reduction, row_scale=row_scale, want_grad=want_grad,
                          block_info=block_info)


# --------------------------------------------------- classes chunked
def _ce_partials_block(x, t, weight, hard, n_classes, ignore_index, smoothing, batch_shape,
                       block_info=None):
    """Per-row partials of one (row block, class block): (..., 1) structured."""
    _limit_kernel_threads_in_a_worker()
    work = np.float32 if x.dtype == np.float16 else x.dtype
    x = x.astype(work, copy=False)
    c0, c1 = block_info[0]["array-location"][-1]
    w = None if weight is None else weight[c0:c1]
    m, r = _block_max_and_log_sum(x, (x.ndim - 1,))
    x64 = x.astype(np.float64)
    d = x64 - m  # relative to the block max
    fields = _HARD_FIELDS if hard else _SOFT_FIELDS
    out = np.zeros(m.shape, dtype=_partials_dtype(fields))
    out["m"], out["r"] = m, r
    eps_c = smoothing / n_classes
    with np.errstate(invalid="ignore"):
        if hard:
            labels = t[..., 0]
            if c0 == 0:  # labels are checked once per row block, on its first class block
                _check_labels_block(labels, n_classes, ignore_index, batch_shape, block_info, 0)
            local = labels.astype(np.int64) - c0
            inside = (local >= 0) & (local < c1 - c0) & (labels != ignore_index)
            safe = np.where(inside, local, 0)
            target_logit = np.take_along_axis(d, safe[..., None], axis=-1)
            out["t"] = np.where(inside[..., None], target_logit, 0.0)
            out["f"] = inside[..., None]
            wy = np.ones(safe.shape) if w is None else w[safe]
            out["wy"] = np.where(inside, wy, 0.0)[..., None]
            if smoothing:
                out["s"] = (d.sum(axis=-1, keepdims=True) if w is None
                            else (w * d).sum(axis=-1, keepdims=True))
                out["k"] = float(c1 - c0) if w is None else float(w.sum())
        else:
            wt = (1.0 - smoothing) * t.astype(np.float64) + eps_c
            if w is not None:
                wt = wt * w
            out["a"] = wt.sum(axis=-1, keepdims=True)
            out["b"] = np.where(wt != 0.0, wt * d, 0.0).sum(axis=-1, keepdims=True)
    return out


def _ce_row_values(stats, hard, smoothing, n_classes, weight_total, reduction, result):
    """Per-row losses (or (loss sum, denominator) pairs) from merged partials."""
    L = stats["r"][..., 0]
    with np.errstate(invalid="ignore"):
        if hard:
            kept = stats["f"][..., 0] > 0
            wy = stats["wy"][..., 0]
            loss = (1.0 - smoothing) * wy * (L - stats["t"][..., 0])
            if smoothing:
                loss = loss + smoothing / n_classes * (weight_total * L - stats["s"][..., 0])
            loss = np.where(kept, np.where(np.isfinite(L), loss, np.nan), 0.0)
            denominator = float(wy.sum())
        else:
            loss = L * stats["a"][..., 0] - stats["b"][..., 0]
            loss = np.where(np.isfinite(L), loss, np.nan)
            denominator = float(loss.size)
    if reduction == "none":
        return loss.astype(result)
    return np.array([float(loss.sum()), denominator]).reshape((1,) * loss.ndim + (2,))


def _ce_grad_block(x, t, stats, weight, row_scale, hard, smoothing, n_classes, weight_total,
                   result, block_info=None):
    """Gradient of one (row block, class block) from the merged row stats:
    scale * (A p_c - B_c), p_c = exp((x_c - M) - L)."""
    _limit_kernel_threads_in_a_worker()
    c0, c1 = block_info[0]["array-location"][-1]
    w = None if weight is None else weight[c0:c1]
    M, L = stats["m"], stats["r"]
    eps_c = smoothing / n_classes
    scale = row_scale
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp((x.astype(np.float64) - M) - L)
        if hard:
            labels = t[..., 0]
            kept = stats["f"] > 0
            wy = stats["wy"]
            a = (1.0 - smoothing) * wy + eps_c * weight_total
            b = eps_c * (np.ones(c1 - c0) if w is None else w)
            grad = a * p - b
            local = labels.astype(np.int64) - c0
            inside = (local >= 0) & (local < c1 - c0) & kept[..., 0]
            rows = np.nonzero(inside)
            grad[rows + (local[rows],)] -= (1.0 - smoothing) * wy[..., 0][rows]
            grad = np.where(np.isfinite(L), grad * scale, np.nan)
            grad = np.where(kept, grad, 0.0)  # ignored rows: 0, whatever their logits
        else:
            wt = (1.0 - smoothing) * t.astype(np.float64) + eps_c
            if w is not None:
                wt = wt * w
            grad = np.where(np.isfinite(L), (stats["a"] * p - wt) * scale, np.nan)
    return grad.astype(result)


def _ce_classes(p: _CE, want_grad: bool, grad_output: Any = None):
    """Classes chunked: partials per block, merged over class blocks."""
    w = p.weight_key()
    if p.weight is None:
        weight_total = float(p.n_classes)
    elif isinstance(p.weight, da.Array):
        weight_total = p.weight.sum().to_delayed().reshape(-1)[0]
    else:
        weight_total = float(p.weight.sum())
    dtype = _partials_dtype(_HARD_FIELDS if p.hard else _SOFT_FIELDS)
    partial_chunks = p.x.chunks[:-1] + ((1,) * p.x.numblocks[-1],)
    partials = da.map_blocks(_ce_partials_block, p.x, p.t, w, p.hard, p.n_classes,
                             p.ignore_index, p.smoothing, p.batch_shape, chunks=partial_chunks,
                             dtype=dtype, meta=_meta(dtype, p.ndim))
    stats = _merge_over_last(partials)  # (batch..., 1)
    none = p.reduction == "none"
    value_dtype = p.result if none else np.float64
    value_chunks = stats.chunks[:-1] if none else _pair_chunks(stats)
    value = da.map_blocks(_ce_row_values, stats, p.hard, p.smoothing, p.n_classes, weight_total,
                          p.reduction, p.result, drop_axis=p.ndim - 1 if none else [],
                          chunks=value_chunks, dtype=value_dtype,
                          meta=_meta(value_dtype, p.ndim - (1 if none else 0)))
    loss = value if none else _reduce_pairs(value, p.reduction, p.result)
    if not want_grad:
        return loss
    denominator = None
    if p.reduction == "mean":
        denominator = value.sum(axis=tuple(range(p.ndim - 1)), dtype=np.float64)
    scale = _row_scale(p, grad_output, denominator)
    grad = da.map_blocks(_ce_grad_block, p.x, p.t, stats, w, scale, p.hard, p.smoothing,
                         p.n_classes, weight_total, p.result, dtype=p.result,
                         meta=_meta(p.result, p.ndim))
    return loss, grad


def cross_entropy(logits: Any, target: Any, *, weight: Any = None,
                  ignore_index: int = checks.IGNORE_INDEX_DEFAULT,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> da.Array:
    """:func:`fastxent.cross_entropy` of Dask arrays: a lazy per-row loss
    (``"none"``) or 0-d loss.  Rows and classes may both be chunked."""
    p = _CE(logits, target, weight, ignore_index, reduction, label_smoothing)
    if p.class_chunked:
        return _ce_classes(p, want_grad=False)
    return _ce_rows(p, want_grad=False)


def cross_entropy_with_grad(logits: Any, target: Any, *, weight: Any = None,
                            ignore_index: int = checks.IGNORE_INDEX_DEFAULT,
                            reduction: str = "mean", label_smoothing: float = 0.0,
                            grad_output: Any = None, out: Any = None) -> Tuple[da.Array, da.Array]:
    """:func:`fastxent.cross_entropy_with_grad` of Dask arrays: (loss,
    dlogits), both lazy, dlogits chunked like the logits.  ``out`` is not
    supported (Dask arrays are immutable): pass None."""
    if out is not None:
        raise ValueError("out is not supported for Dask arrays (they are immutable); pass out=None")
    p = _CE(logits, target, weight, ignore_index, reduction, label_smoothing)
    if p.class_chunked:
        return _ce_classes(p, want_grad=True, grad_output=grad_output)
    return _ce_rows(p, want_grad=True, grad_output=grad_output)


# ===================================================== binary cross-entropy
def _bce_block(v, t, w, pw, from_logits, reduction, grad_scale, want_grad, block_info=None):
    """One block: fastxent's BCE with reduction "sum" (or "none"); a bad
    probability is reported at its global index, as the NumPy path does."""
    _limit_kernel_threads_in_a_worker()
    fn = api.binary_cross_entropy_with_logits if from_logits else api.binary_cross_entropy
    fn_grad = (api.binary_cross_entropy_with_logits_with_grad if from_logits
               else api.binary_cross_entropy_with_grad)
    kw = dict(weight=w)
    if from_logits:
        kw["pos_weight"] = pw
    block_reduction = "none" if reduction == "none" else "sum"
    try:
        if want_grad:
            loss, grad = fn_grad(v, t, reduction=block_reduction, grad_output=grad_scale, **kw)
        else:
            loss, grad = fn(v, t, reduction=block_reduction, **kw), None
    except ValueError:
        values = np.asarray(v)
        bad = np.flatnonzero((values < 0) | (values > 1)) if not from_logits else np.empty(0)
        if bad.size == 0:
            raise
        local = np.unravel_index(int(bad[0]), values.shape)
        info = block_info[0]
        position = tuple(int(i) + start for i, (start, _) in zip(local, info["array-location"]))
        flat = int(np.ravel_multi_index(position, info["shape"])) if position else 0
        raise checks.probability_range_error(values[local], flat, tuple(info["shape"])) from None
    if reduction == "none":
        value = np.asarray(loss)
    else:
        value = np.array([float(loss), float(v.size)]).reshape((1,) * v.ndim + (2,))
    return (value, grad) if want_grad else value


def _bce(values, target, weight, pos_weight, reduction, from_logits, want_grad, grad_output):
    name = "logits" if from_logits else "probs"
    v = _as_dask(values, name)
    t = _as_dask(target, "target")
    _, result = _work_dtype(v.dtype, name)
    checks.compute_dtype(t.dtype, "target")
    checks.same_shape(v.shape, t.shape, (name, "target"))
    reduction = _reduction(reduction)
    shape = v.shape

    def operand(value, opname):
        if value is None:
            return None
        a = _as_dask(value, opname)
        checks.compute_dtype(a.dtype, opname)
        checks.broadcastable(tuple(a.shape), tuple(shape), opname)
        return da.broadcast_to(a, shape).rechunk(v.chunks)

    w = operand(weight, "weight")
    pw = operand(pos_weight, "pos_weight") if from_logits else None
    n = math.prod(shape)
    none = reduction == "none"
    ndim = v.ndim
    pair_chunks = tuple((1,) * k for k in v.numblocks) + ((2,),)
    value_chunks = v.chunks if none else pair_chunks
    value_dtype = result if none else np.float64
    value_ndim = ndim if none else ndim + 1
    new_axis = [] if none else [ndim]
    arrays = [v, t.rechunk(v.chunks), w, pw]

    if not want_grad:
        pairs = da.map_blocks(_bce_block, *arrays, from_logits, reduction, None, False,
                              chunks=value_chunks, new_axis=new_axis, dtype=value_dtype,
                              meta=_meta(value_dtype, value_ndim))
        return pairs if none else _reduce_pairs(pairs, reduction, result)

    g = _scalar_grad_output(grad_output, reduction, shape)
    if isinstance(g, da.Array):
        g = g.rechunk(v.chunks)
        both = da.map_blocks(_bce_block_scaled, *arrays, g, from_logits, reduction,
                             dtype=object, meta=_meta(object, ndim))
    else:
        scale = g
        if reduction == "mean":
            scale = (dask.delayed(operator.truediv)(g, n) if not isinstance(g, float)
                     else (g / n if n else math.nan))
        both = da.map_blocks(_bce_block, *arrays, from_logits, reduction, scale, True,
                             dtype=object, meta=_meta(object, ndim))
    grad = both.map_blocks(_pick(1), dtype=result, meta=_meta(result, ndim))
    value = both.map_blocks(_pick(0), chunks=value_chunks, new_axis=new_axis, dtype=value_dtype,
                            meta=_meta(value_dtype, value_ndim))
    return (value if none else _reduce_pairs(value, reduction, result)), grad


def _bce_block_scaled(v, t, w, pw, g, from_logits, reduction, block_info=None):
    return _bce_block(v, t, w, pw, from_logits, reduction, g, True, block_info=block_info)


def binary_cross_entropy(probs: Any, target: Any, *, weight: Any = None,
                         reduction: str = "mean") -> da.Array:
    """:func:`fastxent.binary_cross_entropy` of Dask arrays (any chunking)."""
    return _bce(probs, target, weight, None, reduction, False, False, None)


def binary_cross_entropy_with_grad(probs: Any, target: Any, *, weight: Any = None,
                                   reduction: str = "mean", grad_output: Any = None):
    """:func:`fastxent.binary_cross_entropy_with_grad` of Dask arrays."""
    return _bce(probs, target, weight, None, reduction, False, True, grad_output)


def binary_cross_entropy_with_logits(logits: Any, target: Any, *, weight: Any = None,
                                     pos_weight: Any = None, reduction: str = "mean") -> da.Array:
    """:func:`fastxent.binary_cross_entropy_with_logits` of Dask arrays."""
    return _bce(logits, target, weight, pos_weight, reduction, True, False, None)


def binary_cross_entropy_with_logits_with_grad(logits: Any, target: Any, *, weight: Any = None,
                                               pos_weight: Any = None, reduction: str = "mean",
                                               grad_output: Any = None):
    """:func:`fastxent.binary_cross_entropy_with_logits_with_grad` of Dask arrays."""
    return _bce(logits, target, weight, pos_weight, reduction, True, True, grad_output)


# ============================================================== divergences
_DIVERGENCE = {"entropy": (api.entropy, api.entropy_with_grad),
               "kl": (api.kl_divergence, api.kl_divergence_with_grad),
               "xent": (api.cross_entropy_probs, api.cross_entropy_probs_with_grad)}


def _divergence_partial(p, q, kind, axes):
    """Per-block partial sums over the block's share of ``axes`` (keepdims)."""
    _limit_kernel_threads_in_a_worker()
    fn = _DIVERGENCE[kind][0]
    value = fn(p, axis=axes) if kind == "entropy" else fn(p, q, axis=axes)
    return np.expand_dims(np.asarray(value, dtype=np.float64), axes)


def _divergence_grad_block(p, q, kind, axes):
    _limit_kernel_threads_in_a_worker()
    fn = _DIVERGENCE[kind][1]
    return (fn(p, axis=axes) if kind == "entropy" else fn(p, q, axis=axes))[1]


def _divergence(p, q, axis, kind, want_grad):
    pa = _as_dask(p, "p")
    if kind == "entropy":
        _, result = _work_dtype(pa.dtype, "p")
        qa = None
    else:
        qa = _as_dask(q, "q")
        _, res_p = _work_dtype(pa.dtype, "p")
        _, res_q = _work_dtype(qa.dtype, "q")
        result = np.promote_types(res_p, res_q)
        checks.same_shape(pa.shape, qa.shape, ("p", "q"))
    axes = _reduced_axes(pa.ndim, axis)
    if qa is not None:
        qa = qa.rechunk(pa.chunks)
    operands = (pa,) if qa is None else (pa, qa)
    out_ndim = pa.ndim - len(axes)
    if _single_chunk_along(pa, axes) and (qa is None or _single_chunk_along(qa, axes)):
        fns = _DIVERGENCE[kind]

        def block(pb, qb=None):
            _limit_kernel_threads_in_a_worker()
            args = (pb,) if qb is None else (pb, qb)
            return (fns[1] if want_grad else fns[0])(*args, axis=axes)

        if not want_grad:
            return da.map_blocks(block, *operands, drop_axis=axes, dtype=result,
                                 meta=_meta(result, out_ndim))
        both = da.map_blocks(block, *operands, dtype=object, meta=_meta(object, pa.ndim))
        keep_chunks = tuple((1,) if d in axes else c for d, c in enumerate(pa.chunks))
        value = both.map_blocks(_pick_keepdims(0, axes), chunks=keep_chunks, dtype=result,
                                meta=_meta(result, pa.ndim))
        value = value[tuple(0 if d in axes else slice(None) for d in range(pa.ndim))]
        grad = both.map_blocks(_pick(1), dtype=result, meta=_meta(result, pa.ndim))
        return value, grad
    # Chunked along a reduced axis: partial sums per block, tree-summed.
    qb = qa if qa is not None else None
    partial_chunks = tuple((1,) * pa.numblocks[d] if d in axes else pa.chunks[d]
                           for d in range(pa.ndim))
    partials = da.map_blocks(_divergence_partial, pa, qb, kind, axes, chunks=partial_chunks,
                             dtype=np.float64, meta=_meta(np.float64, pa.ndim))
    value = partials.sum(axis=axes, dtype=np.float64).astype(result)
    if not want_grad:
        return value
    grad = da.map_blocks(_divergence_grad_block, pa, qb, kind, axes, dtype=result,
                         meta=_meta(result, pa.ndim))
    return value, grad


def entropy(p: Any, axis: Any = -1) -> da.Array:
    """:func:`fastxent.entropy` of a Dask array (the reduced axes may be chunked)."""
    return _divergence(p, None, axis, "entropy", False)


def entropy_with_grad(p: Any, axis: Any = -1):
    """:func:`fastxent.entropy_with_grad` of a Dask array."""
    return _divergence(p, None, axis, "entropy", True)


def kl_divergence(p: Any, q: Any, axis: Any = -1) -> da.Array:
    """:func:`fastxent.kl_divergence` of Dask arrays."""
    return _divergence(p, q, axis, "kl", False)


def kl_divergence_with_grad(p: Any, q: Any, axis: Any = -1):
    """:func:`fastxent.kl_divergence_with_grad` of Dask arrays."""
    return _divergence(p, q, axis, "kl", True)


def cross_entropy_probs(p: Any, q: Any, axis: Any = -1) -> da.Array:
    """:func:`fastxent.cross_entropy_probs` of Dask arrays."""
    return _divergence(p, q, axis, "xent", False)


def cross_entropy_probs_with_grad(p: Any, q: Any, axis: Any = -1):
    """:func:`fastxent.cross_entropy_probs_with_grad` of Dask arrays."""
    return _divergence(p, q, axis, "xent", True)


# ====================================================== linear cross-entropy
def _linear_block(xb, tb, W, bias, n_classes, weight, ignore_index, smoothing, hard, batch_shape,
                  reduction, chunk_size, row_scale, want_grad, block_info=None):
    """One block of rows: its labels checked (global rows), then one
    fastxent.linear_cross_entropy(_with_grad) call with l2 = 0 (the penalty
    is added once, after the reduction).  Returns (value, dx, dW, dbias)."""
    _limit_kernel_threads_in_a_worker()
    from fastxent import _linear

    labels, denominator = _block_labels(tb, xb.shape, hard, weight, n_classes, ignore_index,
                                        batch_shape, block_info)
    none = reduction == "none"
    kw = dict(bias=bias, weight=weight, label_smoothing=smoothing,
              reduction="none" if none else "sum", chunk_size=chunk_size)
    if hard:
        kw["ignore_index"] = ignore_index
    if not want_grad:
        loss = _linear.linear_cross_entropy(xb, W, labels, **kw)
        dx = dW = db = None
    else:
        loss, (dx, dW, db) = _linear.linear_cross_entropy_with_grad(
            xb, W, labels, grad_output=_row_scale_block(row_scale), **kw)
    lead = (1,) * (xb.ndim - 1)
    value = np.asarray(loss)[..., None] if none else _pair_block(loss, denominator, xb.ndim - 1)
    if not want_grad:
        return value
    dW = np.asarray(dW, dtype=np.float64).reshape(lead + dW.shape)
    db = None if db is None else np.asarray(db, dtype=np.float64).reshape(lead + db.shape)
    return value, dx, dW, db


def _linear_finish(pairs, W, l2, reduction, dtype):
    """Reduced loss plus (l2/2)‖W‖²."""
    value = _reduced_value(pairs, reduction)
    if l2:
        W64 = np.asarray(W, dtype=np.float64)
        value += 0.5 * l2 * float(np.sum(W64 * W64))
    return np.asarray(value, dtype=dtype)


def _add_penalty_grad(dW, W, l2, g, dtype):
    out = dW if not l2 else dW + (float(g) * l2) * np.asarray(W, dtype=np.float64)
    return out.astype(dtype)


def _linear(x, W, target, bias, l2, weight, ignore_index, reduction, label_smoothing,
            chunk_size, want_grad, grad_output=None):
    from fastxent import _linear as linear

    xa = _as_dask(x, "x")
    if xa.ndim == 0:
        raise ValueError("x must have at least one dimension (the feature axis), got a scalar")
    Wm = W if isinstance(W, da.Array) else np.asarray(W)
    if Wm.ndim != 2:
        raise ValueError(f"W must be a 2-D array of shape (classes, features), got shape {Wm.shape}")
    work_x, res_x = checks.compute_dtype(xa.dtype, "x")
    work_w, res_w = checks.compute_dtype(Wm.dtype, "W")
    result = np.promote_types(res_x, res_w)
    n_classes, n_features = Wm.shape
    if xa.shape[-1] != n_features:
        raise ValueError(
            f"x has {xa.shape[-1]} features (last axis) but W has {n_features} "
            f"(W must have shape (classes, features) = (C, {xa.shape[-1]})), got x {xa.shape} "
            f"and W {Wm.shape}")
    bm = None
    if bias is not None:
        bm = bias if isinstance(bias, da.Array) else np.asarray(bias)
        _, res_b = checks.compute_dtype(bm.dtype, "bias")
        result = np.promote_types(result, res_b)
        if tuple(bm.shape) != (n_classes,):
            raise ValueError(f"bias must have shape (classes,) = ({n_classes},), got {tuple(bm.shape)}")
    reduction = _reduction(reduction)
    smoothing = checks.check_label_smoothing(label_smoothing)
    w = _class_weight(weight, n_classes)
    l2 = linear._check_l2(l2)
    if l2 != 0.0 and reduction == "none":
        raise ValueError(
            "l2 != 0 needs reduction='mean' or 'sum': the penalty (l2/2)*||W||^2 belongs to no "
            "single row (add it to the summed per-row losses yourself)")
    chunk_size = linear._check_chunk_size(chunk_size)
    batch_shape = tuple(xa.shape[:-1])
    t = _as_dask(target, "target")
    hard = checks.is_class_index_target(t.dtype, t.shape, batch_shape + (n_classes,))
    ignore_index = checks.check_ignore_index(ignore_index, class_indices=hard)
    xa = xa.rechunk(xa.chunks[:-1] + ((n_features,),))  # whole rows per block
    nb = xa.ndim - 1
    t = (t[..., None].rechunk(xa.chunks[:-1] + ((1,),)) if hard
         else t.rechunk(xa.chunks[:-1] + ((n_classes,),)))
    W_key, b_key, w_key = _delayed_constant(Wm), _delayed_constant(bm), _delayed_constant(w)
    none = reduction == "none"
    fixed = (n_classes, w_key, ignore_index, smoothing, hard, batch_shape, reduction, chunk_size)
    pair_chunks = tuple((1,) * n for n in xa.numblocks[:-1]) + ((2,),)
    value_chunks = xa.chunks[:-1] + ((1,),) if none else pair_chunks

    def finish(value):
        if none:
            return value[..., 0].astype(result)
        summed = value.sum(axis=tuple(range(nb)), dtype=np.float64)
        return da.map_blocks(_linear_finish, summed, W_key, l2, reduction, result, drop_axis=0,
                             dtype=result, meta=_meta(result, 0))

    if not want_grad:
        value = da.map_blocks(_linear_block, xa, t, W_key, b_key, *fixed, None, False,
                              chunks=value_chunks, dtype=np.float64,
                              meta=_meta(np.float64, xa.ndim))
        return finish(value)

    g = _scalar_grad_output(grad_output, reduction, batch_shape)
    if isinstance(g, da.Array):
        scale = g[..., None].rechunk(xa.chunks[:-1] + ((1,),))
        penalty_g = 1.0
    else:
        penalty_g = g
        scale = g
        if reduction == "mean":
            pairs = da.map_blocks(_denominator_block, t, w_key, n_classes, ignore_index,
                                  batch_shape, chunks=pair_chunks, dtype=np.float64,
                                  meta=_meta(np.float64, xa.ndim)) if hard else None
            denominator = (pairs.sum(axis=tuple(range(nb)), dtype=np.float64) if hard
                           else da.from_array(np.array([0.0, float(math.prod(batch_shape))]),
                                              chunks=-1))
            scale = dask.delayed(_mean_scale, pure=True)(g, denominator.to_delayed().reshape(-1)[0],
                                                         reduction)
    if isinstance(scale, da.Array):
        both = da.map_blocks(_linear_block_scaled, xa, t, scale, W_key, b_key, *fixed,
                             dtype=object, meta=_meta(object, xa.ndim))
    else:
        both = da.map_blocks(_linear_block, xa, t, W_key, b_key, *fixed, scale, True,
                             dtype=object, meta=_meta(object, xa.ndim))
    value = both.map_blocks(_pick(0), chunks=value_chunks, dtype=np.float64,
                            meta=_meta(np.float64, xa.ndim))
    dx = both.map_blocks(_pick(1), dtype=result, meta=_meta(result, xa.ndim))
    lead_chunks = tuple((1,) * n for n in xa.numblocks[:-1])
    dW_parts = both.map_blocks(_pick(2), chunks=lead_chunks + ((n_classes,), (n_features,)),
                               new_axis=[xa.ndim], dtype=np.float64,
                               meta=_meta(np.float64, xa.ndim + 1))
    dW = dW_parts.sum(axis=tuple(range(nb)), dtype=np.float64)
    dW = da.map_blocks(_add_penalty_grad, dW, W_key, l2, penalty_g, result, dtype=result,
                       meta=_meta(result, 2))
    db = None
    if bm is not None:
        db_parts = both.map_blocks(_pick(3), chunks=lead_chunks + ((n_classes,),),
                                   dtype=np.float64, meta=_meta(np.float64, xa.ndim))
        db = db_parts.sum(axis=tuple(range(nb)), dtype=np.float64).astype(result)
    return finish(value), (dx, dW, db)


def _linear_block_scaled(xb, tb, row_scale, W, bias, n_classes, weight, ignore_index, smoothing,
                         hard, batch_shape, reduction, chunk_size, block_info=None):
    return _linear_block(xb, tb, W, bias, n_classes, weight, ignore_index, smoothing, hard,
                         batch_shape, reduction, chunk_size, row_scale, True,
                         block_info=block_info)


def linear_cross_entropy(x: Any, W: Any, target: Any, *, bias: Any = None, l2: float = 0.0,
                         weight: Any = None, ignore_index: int = checks.IGNORE_INDEX_DEFAULT,
                         reduction: str = "mean",
                         label_smoothing: float = 0.0, chunk_size: Optional[int] = None):
    """:func:`fastxent.linear_cross_entropy` with ``x`` (and the targets)
    a Dask array chunked along the rows; ``W`` and ``bias`` are small (NumPy,
    or Dask arrays used whole) and shared by every block as one graph key."""
    return _linear(x, W, target, bias, l2, weight, ignore_index, reduction, label_smoothing,
                   chunk_size, want_grad=False)


def linear_cross_entropy_with_grad(x: Any, W: Any, target: Any, *, bias: Any = None,
                                   l2: float = 0.0, weight: Any = None,
                                   ignore_index: int = checks.IGNORE_INDEX_DEFAULT,
                                   reduction: str = "mean", label_smoothing: float = 0.0,
                                   grad_output: Any = None, chunk_size: Optional[int] = None):
    """:func:`fastxent.linear_cross_entropy_with_grad` on Dask arrays: (loss,
    (dx, dW, dbias)); dx is chunked like x, dW and dbias are tree-reduced sums
    of per-block (C, D) and (C,) partials."""
    return _linear(x, W, target, bias, l2, weight, ignore_index, reduction, label_smoothing,
                   chunk_size, want_grad=True, grad_output=grad_output)


# ================================================= distributed SoftmaxRegression
def _fit_block(xb: np.ndarray, yb: np.ndarray, sb: Optional[np.ndarray], parameters: tuple,
               scale: float) -> np.ndarray:
    """(loss sum, dW, db) of one block of rows as one flat float64 vector of
    1 + C*D (+ C): the fused linear cross-entropy without the dx GEMM.  With
    per-row weights ``sb``: Σ sₙ Lₙ and its gradient.  ``parameters`` is (W, b)."""
    from fastxent import _linear

    _limit_kernel_threads_in_a_worker()
    W, b = parameters
    weighted = sb is not None
    problem = _linear.LinearProblem.from_arguments(xb, W, yb.reshape(-1), bias=b,
                                                   reduction="none" if weighted else "sum")
    if weighted:
        s = np.asarray(sb, dtype=np.float64).reshape(-1)
        losses, _, dW, db = _linear.run(problem, want_grad=True, grad_output=s * scale,
                                        want_dx=False)
        loss = float(s @ losses)
    else:
        loss, _, dW, db = _linear.run(problem, want_grad=True, grad_output=scale, want_dx=False)
    parts = [np.array([float(loss)]), np.asarray(dW, dtype=np.float64).ravel()]
    if db is not None:
        parts.append(np.asarray(db, dtype=np.float64))
    return np.concatenate(parts)


def _fit_block_as_row(xb, yb, sb, parameters, scale):
    """``_fit_block`` as a (1, k) block of a Dask array of per-block partials."""
    return _fit_block(xb, yb, sb, parameters, scale)[None, :]


def _sum_vectors(*vectors: np.ndarray) -> np.ndarray:
    """The sum of equal-length vectors, in argument order (deterministic, so a
    recomputed block gives bit-identical totals)."""
    total = np.array(vectors[0], dtype=np.float64)
    for v in vectors[1:]:
        total += v
    return total


def _class_index_block(yb: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return np.searchsorted(classes, yb).astype(np.int64)


def _active_client() -> Any:
    """The distributed Client that Dask computes with now, else None (a local
    scheduler, or distributed not installed)."""
    try:
        from distributed import Client
    except ImportError:
        return None
    owner = getattr(dask.base.get_scheduler(), "__self__", None)
    return owner if isinstance(owner, Client) else None


def _block_futures(collection: Any) -> list:
    """The futures of a persisted Dask array's blocks, in block order."""
    from distributed import futures_of

    by_key = {f.key: f for f in futures_of(collection)}
    return [by_key[key] for key in dask.core.flatten(collection.__dask_keys__())]


# W and b go inside each block's task up to this many bytes over all tasks;
# above it they are scattered to every worker once per evaluation.
_EMBED_PARAMETERS_BYTES = 1 << 22


class DistributedObjective:
    """The objective of ``fastxent.sklearn._Objective`` (J / Σs in whitened
    coordinates) over Dask X and y (and optional per-row weights): X persisted
    once on the workers; L-BFGS and the whitening stay on the client.

    On a distributed cluster one evaluation is one task per block of rows,
    submitted straight against the persisted blocks' futures (no Dask-array
    graph is built, optimised or tokenised per evaluation), with W and b inside
    each task (scattered to every worker instead when large); each task
    returns its 1 + C(D+1) numbers (loss sum, dW, db), summed on the workers
    ``split_every`` at a time while more than ``split_every`` remain, then on
    the client.  A lost worker's blocks are recomputed by the scheduler from
    the persisted graph.  On a local scheduler (threads, processes,
    synchronous) an evaluation is the same per-block work as a Dask-array
    graph with a tree reduction."""

    def __init__(self, X: da.Array, y_index: da.Array, n_classes: int, l2: float,
                 fit_intercept: bool, split_every: int = 8, *,
                 sample_weight: Optional[da.Array] = None):
        from fastxent import sklearn as fsk

        n, d = X.shape
        self.n_classes, self.n_features = n_classes, d
        self.fit_intercept = fit_intercept
        self.l2 = l2
        self.split_every = split_every
        weighted = sample_weight is not None
        if weighted:
            sample_weight = sample_weight.astype(np.float64).rechunk((X.chunks[0],))
            self.X, self.y_index, self.sample_weight = dask.persist(X, y_index, sample_weight)
            s = self.sample_weight
            total, counts = dask.compute(s.sum(), da.bincount(self.y_index, weights=s,
                                                               minlength=n_classes))
            self.weight_total = float(total)
        else:  # once: on the workers from now on (a no-op where they are already)
            self.X, self.y_index = dask.persist(X, y_index)
            self.sample_weight = None
            self.weight_total = float(n)
            counts = da.bincount(self.y_index, minlength=n_classes).compute()
        self.class_counts = np.asarray(counts, dtype=np.float64)  # summed weight per class
        column = self.sample_weight[:, None] if weighted else None
        if fit_intercept:
            total = (self.X * column).sum(axis=0) if weighted else self.X.sum(axis=0)
            self.mu = np.asarray(total.compute(), dtype=np.float64) / self.weight_total
        else:
            self.mu = np.zeros(d)
        Z = self.X - self.mu
        Zs = Z * column if weighted else Z
        moment = (Z * Zs).sum(axis=0) if d > fsk._WHITEN_MAX_FEATURES else Z.T @ Zs
        self.M, self.M_inverse_T = fsk._whitening_factors(
            np.asarray(moment.compute()) / self.weight_total, l2 * n_classes / self.weight_total)
        self.n_evaluations = 0
        self.last = (None, math.nan, None)
        self._client = _active_client()
        if self._client is not None:
            self._blocks = (_block_futures(self.X), _block_futures(self.y_index),
                            _block_futures(self.sample_weight) if weighted
                            else [None] * self.X.numblocks[0])
        self.bytes_per_evaluation = self._bytes_per_evaluation()

    size = property(lambda self: self.n_classes * (self.n_features + int(self.fit_intercept)))

    def to_model(self, theta):
        from fastxent.sklearn import _Objective

        return _Objective.to_model(self, theta)

    def from_model(self, W, b):
        from fastxent.sklearn import _Objective

        return _Objective.from_model(self, W, b)

    def __call__(self, theta):
        from fastxent.sklearn import _Objective

        return _Objective.__call__(self, theta)

    def _parameters_embedded(self) -> bool:
        n_blocks = self.X.numblocks[0]
        return 8 * self.size * n_blocks <= _EMBED_PARAMETERS_BYTES

    def _bytes_per_evaluation(self) -> int:
        """Bytes one evaluation moves, whatever N is: W and b out (in each
        block's task, or once to each worker when scattered) and
        1 + C·D (+ C) float64 back per block."""
        n_blocks = self.X.numblocks[0]
        copies = n_blocks if self._client is None or self._parameters_embedded() else \
            len(self._client.scheduler_info()["workers"])
        return 8 * self.size * copies + 8 * (1 + self.size) * n_blocks

    def partials(self, W: np.ndarray, b: Optional[np.ndarray], scale: float) -> np.ndarray:
        """The summed (1 + C*D (+ C),) vector of (loss sum, dW, db) over the
        blocks, with the per-row gradient factor ``scale`` (computed)."""
        parameters = (np.ascontiguousarray(W, dtype=np.float64),
                      None if b is None else np.ascontiguousarray(b, dtype=np.float64))
        client = self._client
        if client is None:
            return np.asarray(self._partials_graph(parameters, scale).compute())
        if not self._parameters_embedded():
            parameters = client.scatter([parameters], broadcast=True, hash=False)[0]
        level = client.map(_fit_block, *self._blocks, parameters=parameters, scale=scale,
                           pure=False)
        step = self.split_every
        while len(level) > step:
            level = [client.submit(_sum_vectors, *level[i:i + step], pure=False)
                     for i in range(0, len(level), step)]
        return _sum_vectors(*client.gather(level))

    def _partials_graph(self, parameters: tuple, scale: float) -> da.Array:
        """``partials`` as a Dask-array graph (local schedulers), lazy."""
        k = 1 + self.size
        s = self.sample_weight[:, None] if self.sample_weight is not None else None
        per_block = da.map_blocks(_fit_block_as_row, self.X, self.y_index[:, None], s,
                                  dask.delayed(parameters, pure=True), scale,
                                  chunks=((1,) * self.X.numblocks[0], (k,)), dtype=np.float64,
                                  meta=_meta(np.float64, 2))
        return per_block.sum(axis=0, split_every=self.split_every)

    def data_terms(self, W, b):
        """(J / Σs, ∂(J / Σs)/∂W, ∂(J / Σs)/∂b): one distributed pass."""
        C, D = self.n_classes, self.n_features
        total = self.partials(W, b, 1.0 / self.weight_total)
        value = float(total[0]) / self.weight_total
        value += 0.5 * self.l2 * float(np.sum(W * W)) / self.weight_total
        dW = total[1:1 + C * D].reshape(C, D) + (self.l2 / self.weight_total) * W
        db = total[1 + C * D:] if b is not None else None
        return value, dW, db

    def objective(self, W, b):
        """J(W, b) itself."""
        return self.data_terms(W, b)[0] * self.weight_total


def distributed_objective(estimator: Any, X: Any, y: Any, sample_weight: Any = None):
    """Validate Dask (X, y) (and sample_weight: a Dask or NumPy vector of
    non-negative weights, one per row) for ``SoftmaxRegression.fit``, set
    ``classes_`` and ``n_features_in_``, and return (DistributedObjective, θ₀)."""
    from fastxent.sklearn import _initial_intercept

    X = _as_dask(X, "X")
    y = _as_dask(y, "y")
    if X.ndim != 2:
        raise ValueError(f"Expected a 2-D array X of shape (n_samples, n_features), got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must have shape (n_samples,) = ({X.shape[0]},), got {y.shape}")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"X must be numeric, got dtype {X.dtype}")
    s = None
    if sample_weight is not None:
        s = _as_dask(sample_weight, "sample_weight")
        if s.ndim != 1 or s.shape[0] != X.shape[0]:
            raise ValueError(f"sample_weight.shape == {tuple(s.shape)}, expected "
                             f"({X.shape[0]},)!")
        if s.dtype.kind not in "biuf":
            raise ValueError(f"sample_weight must be numeric, got dtype {s.dtype}")
    X = X.astype(np.float64).rechunk({1: -1})
    y = y.rechunk((X.chunks[0],))
    if s is None:
        X, y = dask.persist(X, y)  # once: on the workers from now on
        classes = da.unique(y).compute()
    else:
        s = s.astype(np.float64).rechunk((X.chunks[0],))
        X, y, s = dask.persist(X, y, s)
        classes, s_min, s_max = dask.compute(da.unique(y), s.min(), s.max())
    classes = np.asarray(classes)
    if len(classes) < 2:
        raise ValueError(
            "SoftmaxRegression needs samples of at least 2 classes in the data, but the "
            f"data contains only {'no class' if len(classes) == 0 else f'one class: {classes[0]!r}'}")
    y_index = y.map_blocks(_class_index_block, classes, dtype=np.int64)
    if s is not None:
        if not (np.isfinite(s_min) and np.isfinite(s_max)):
            raise ValueError("Input sample_weight contains NaN or infinity.")
        if s_min < 0:
            raise ValueError("Negative values in data passed to `sample_weight`")
        present = np.asarray(da.bincount(y_index, weights=s, minlength=len(classes)).compute()) > 0
        if present.sum() < 2:
            raise ValueError(
                "SoftmaxRegression needs samples of at least 2 classes with a positive "
                f"sample_weight, but only class {classes[present][0]!r} has any")
        if s_min == s_max == 1:
            s = None  # as the in-memory fit: unit weights are no weights
    estimator.classes_ = classes
    estimator.n_features_in_ = X.shape[1]
    fun = DistributedObjective(X, y_index, len(classes), float(estimator.l2),
                               bool(estimator.fit_intercept), sample_weight=s)
    theta0 = np.zeros(fun.size)
    if estimator.fit_intercept:
        theta0[-len(classes):] = _initial_intercept(fun.class_counts)
    return fun, theta0


def linear_scores(X: Any, coef: np.ndarray, intercept: np.ndarray, n_features: int) -> da.Array:
    """Lazy scores X Wᵀ + b of a fitted model, chunked along the rows of X."""
    X = _as_dask(X, "X")
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[-1] if X.ndim else 0} features, but the model is "
                         f"fitted with {n_features} features")
    X = X.astype(np.float64).rechunk({1: -1})
    return X.map_blocks(_scores_block, dask.delayed(coef, pure=True),
                        dask.delayed(intercept, pure=True),
                        chunks=(X.chunks[0], (coef.shape[0],)), dtype=np.float64,
                        meta=_meta(np.float64, 2))


def _scores_block(xb: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    return xb @ coef.T + intercept


def accuracy(predicted: da.Array, y: Any, sample_weight: Any = None) -> da.Array:
    """Lazy (weighted) mean of predicted == y, a 0-d Dask array."""
    y = _as_dask(y, "y").rechunk(predicted.chunks)
    hits = (predicted == y).astype(np.float64)
    if sample_weight is None:
        return hits.mean()
    s = _as_dask(sample_weight, "sample_weight").astype(np.float64).rechunk(predicted.chunks)
    return (hits * s).sum() / s.sum()
