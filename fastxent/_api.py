"""The public functions: argument checks -> backend choice -> CPU kernels.

Every function here validates and normalises its inputs with ``_checks``
(nothing reaches a kernel unchecked), maps the problem to C-contiguous
(rows, classes) arrays, runs one kernel from ``fastxent.cpu``, and shapes the
result back.  CUDA arrays are routed to ``fastxent.cuda.api`` by
``_backend.dispatch`` before any of this runs.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from fastxent import _checks as checks
from fastxent._backend import dispatch
from fastxent.cpu._config import TASK_ELEMENTS, rows_per_task
from fastxent.cpu import binary as binary_kernels
from fastxent.cpu import divergence as divergence_kernels
from fastxent.cpu import softmax as softmax_kernels
from fastxent.cpu import xent as xent_kernels

Axis = Union[int, Tuple[int, ...], None]
Reduction = Literal["none", "mean", "sum"]
Loss = Union[np.ndarray, np.floating]

__all__ = [
    "logsumexp", "softmax", "log_softmax",
    "cross_entropy", "cross_entropy_with_grad",
    "binary_cross_entropy", "binary_cross_entropy_with_grad",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad",
    "entropy", "entropy_with_grad", "kl_divergence", "kl_divergence_with_grad",
    "cross_entropy_probs", "cross_entropy_probs_with_grad",
]


_NO_ROW_SCALE = np.empty(0)  # placeholder argument when no gradient is computed


def _scalar_or_array(values: np.ndarray, dtype: np.dtype) -> Any:
    """Cast to the result dtype; 0-d results become NumPy scalars."""
    values = values.astype(dtype, copy=False)
    return values[()] if values.ndim == 0 else values


# Below this many per-row losses, summing them in Python beats np.sum's call
# overhead (a (64, 10) cross-entropy takes ~15 us in all).
_SMALL_SUM = 512


def _reduce(losses: np.ndarray, reduction: str, denominator: float, batch_shape: tuple,
            dtype: np.dtype) -> Any:
    """Apply the reduction to float64 per-row (or per-element) losses."""
    if reduction == "none":
        return _scalar_or_array(losses.reshape(batch_shape), dtype)
    if losses.ndim == 0:
        total = float(losses)
    elif losses.size <= _SMALL_SUM:  # cheaper than a ufunc call, and exactly rounded
        total = math.fsum(losses.tolist())
    else:
        total = float(losses.sum())
    if reduction == "sum":
        return dtype.type(total)
    if denominator == 0:  # PyTorch: the mean over no (weighted) rows is NaN
        return dtype.type(math.nan if total == 0 or math.isnan(total) else math.copysign(math.inf, total))
    return dtype.type(total / denominator)


# ------------------------------------------------------------------ softmax
@dispatch
def logsumexp(x: ArrayLike, axis: Axis = -1, keepdims: bool = False) -> Any:
    """log(sum(exp(x))) along ``axis`` (int, tuple of ints, or None for all),
    computed stably.

    A slice that is all ``-inf`` gives ``-inf``; one holding ``+inf`` gives
    ``+inf``; NaN gives NaN.  float32 input is accumulated in float64.

    >>> import fastxent as fx, numpy as np
    >>> float(fx.logsumexp(np.array([0.0, np.log(3.0)])))  # log(1 + 3)
    1.3862943611198906
    """
    a, result_dtype = checks.float_array(x, "x")
    layout = checks.rows_layout(a.shape, axis)
    out = np.empty(layout.n_rows, dtype=np.float64)
    if layout.n_classes == 0:
        out.fill(-np.inf)  # log of an empty sum, as NumPy/SciPy give
    else:
        softmax_kernels.logsumexp_rows(checks.as_rows(a, layout), out, rows_per_task(layout.n_classes))
    return _scalar_or_array(layout.restore_rows(out, keepdims), result_dtype)


def _softmax(x: ArrayLike, axis: Axis, log: bool) -> np.ndarray:
    a, result_dtype = checks.float_array(x, "x")
    layout = checks.rows_layout(a.shape, axis)
    out = np.empty((layout.n_rows, layout.n_classes), dtype=a.dtype)
    softmax_kernels.softmax_rows(checks.as_rows(a, layout), out, log, rows_per_task(layout.n_classes))
    return layout.restore_full(out).astype(result_dtype, copy=False)


@dispatch
def softmax(x: ArrayLike, axis: Axis = -1) -> np.ndarray:
    """exp(x - logsumexp(x)) along ``axis``: probabilities that sum to one.

    Rows holding ``+inf``, or only ``-inf``, are NaN (as in PyTorch).

    >>> fx.softmax(np.array([1.0, 1.0]))
    array([0.5, 0.5])
    """
    return _softmax(x, axis, log=False)


@dispatch
def log_softmax(x: ArrayLike, axis: Axis = -1) -> np.ndarray:
    """x - max - log(sum(exp(x - max))) along ``axis``.

    Computed directly, not as log(softmax(x)), so log-probabilities far below
    the smallest float stay finite and exact.

    >>> fx.log_softmax(np.array([0.0, 1000.0]))
    array([-1000.,     0.])
    """
    return _softmax(x, axis, log=True)


# ------------------------------------------------------------ cross-entropy
def _gradient_buffer(out: Any, logits: np.ndarray, x2: np.ndarray, target2: Optional[np.ndarray],
                     result_dtype: np.dtype) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Where the kernel writes the gradient: (2-D buffer, user array to copy it
    into afterwards, or None).  ``out`` is written directly when it is a
    C-contiguous array of the compute dtype that is either exactly the logits
    (an in-place gradient: each row is read before it is written) or shares
    no memory with the inputs."""
    if out is None:
        return np.empty(x2.shape, dtype=x2.dtype), None
    out = checks.output_array(out, logits.shape, result_dtype)
    if out.dtype == x2.dtype and out.flags.c_contiguous:
        direct = out.reshape(x2.shape)
        in_place = (direct.__array_interface__["data"][0] == x2.__array_interface__["data"][0]
                    and direct.strides == x2.strides)
        touches_target = target2 is not None and np.may_share_memory(direct, target2)
        if not touches_target and (in_place or not np.may_share_memory(direct, x2)):
            return direct, None
    return np.empty(x2.shape, dtype=x2.dtype), out


def _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                   want_grad, grad_output=None, out=None):
    x, result_dtype = checks.float_array(logits, "logits")
    layout = checks.last_axis_rows(x.shape, "logits")
    reduction = checks.check_reduction(reduction)
    smoothing = checks.check_label_smoothing(label_smoothing)
    ignore_index = checks.check_ignore_index(ignore_index)
    n_rows, n_classes = layout.n_rows, layout.n_classes
    w = checks.class_weight(weight, n_classes)
    t = np.asarray(target)
    hard = checks.is_class_index_target(t, x.shape)
    x2 = checks.as_rows(x, layout)

    if hard:
        labels = np.ascontiguousarray(t.reshape(n_rows), dtype=np.int64)
        bad_row, denominator = xent_kernels.scan_labels(labels, n_classes, ignore_index, w)
        if bad_row >= 0:
            raise checks.bad_label_error(int(t.reshape(n_rows)[bad_row]), bad_row,
                                         layout.batch_shape, n_classes, ignore_index)
        target2 = None
    else:
        t_work, _ = checks.float_array(t, "target")
        target2 = checks.as_rows(t_work.astype(x2.dtype, copy=False), layout)
        denominator = float(n_rows)

    grad2, copy_to = None, None
    row_scale = _NO_ROW_SCALE
    if want_grad:
        row_scale = checks.grad_row_scale(grad_output, reduction, layout.batch_shape, denominator)
        grad2, copy_to = _gradient_buffer(out, x, x2, target2, result_dtype)

    losses = np.empty(n_rows, dtype=np.float64)
    tasks = rows_per_task(n_classes)
    if hard:
        weight_total = float(w.sum()) if w is not None else float(n_classes)
        xent_kernels.cross_entropy_hard_rows(x2, labels, w, weight_total, ignore_index, smoothing,
                                             row_scale, losses, grad2, tasks)
    else:
        xent_kernels.cross_entropy_soft_rows(x2, target2, w, smoothing, row_scale, losses,
                                             grad2, tasks)
    loss = _reduce(losses, reduction, denominator, layout.batch_shape, result_dtype)
    if not want_grad:
        return loss
    if copy_to is not None:
        copy_to[...] = grad2.reshape(x.shape)
        return loss, copy_to
    if out is not None:
        return loss, out
    return loss, layout.restore_full(grad2).astype(result_dtype, copy=False)


@dispatch
def cross_entropy(logits: ArrayLike, target: ArrayLike, *, weight: Optional[ArrayLike] = None,
                  ignore_index: int = -100, reduction: Reduction = "mean",
                  label_smoothing: float = 0.0) -> Loss:
    """Softmax cross-entropy of ``logits`` (class axis last) against ``target``.

    PyTorch ``F.cross_entropy`` semantics with the class axis last:

    * ``target`` of integer dtype and shape ``logits.shape[:-1]``: class
      indices; rows whose label equals ``ignore_index`` contribute nothing.
    * ``target`` of float dtype and ``logits``' shape: class probabilities.
    * ``weight``: per-class weights (length C); ``label_smoothing`` in [0, 1]
      mixes the target with the uniform distribution.
    * ``reduction``: ``"mean"`` divides by the summed weight of the kept rows
      (the row count for probability targets; NaN if there are none),
      ``"sum"``, or ``"none"`` for per-row losses.

    Labels outside [0, C) raise IndexError naming the label and its row.

    >>> fx.cross_entropy(np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 1]))
    0.12692801104297263
    """
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                          want_grad=False)


@dispatch
def cross_entropy_with_grad(logits: ArrayLike, target: ArrayLike, *,
                            weight: Optional[ArrayLike] = None, ignore_index: int = -100,
                            reduction: Reduction = "mean", label_smoothing: float = 0.0,
                            grad_output: Optional[ArrayLike] = None,
                            out: Optional[np.ndarray] = None) -> Tuple[Loss, np.ndarray]:
    """:func:`cross_entropy` and its gradient with respect to the logits, in one
    fused pass: ``(loss, dlogits)`` with ``dlogits = grad_output * d loss / d logits``,
    i.e. (softmax - one_hot) scaled by the reduction, weights and smoothing.

    ``grad_output`` is a scalar (or, for ``reduction="none"``, one value per
    row).  ``out`` receives the gradient; ``out=logits`` overwrites the logits
    in place, so no array of the logits' size is allocated at all.

    >>> logits = np.array([[2.0, 0.0]])
    >>> loss, grad = fx.cross_entropy_with_grad(logits, np.array([0]))
    >>> grad
    array([[-0.11920292,  0.11920292]])
    """
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                          want_grad=True, grad_output=grad_output, out=out)


# ---------------------------------------------------- binary cross-entropy
def _flat_operand(value: Any, shape: tuple, name: str) -> Optional[np.ndarray]:
    """An optional operand broadcast to ``shape``, as a flat float64 array."""
    if value is None:
        return None
    v = np.asarray(value)
    checks.compute_dtype(v.dtype, name)
    try:
        v = np.broadcast_to(v, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {v.shape} does not broadcast to the input's shape {shape}") from None
    return np.ascontiguousarray(v, dtype=np.float64).reshape(-1)


def _binary_cross_entropy(values, target, weight, pos_weight, reduction, from_logits,
                          want_grad, grad_output):
    name = "logits" if from_logits else "probs"
    v, result_dtype = checks.float_array(values, name)
    t, _ = checks.float_array(target, "target")
    checks.same_shape(v.shape, t.shape, (name, "target"))
    reduction = checks.check_reduction(reduction)
    shape, n = v.shape, v.size
    v1 = np.ascontiguousarray(v).reshape(-1)
    t1 = np.ascontiguousarray(t, dtype=v.dtype).reshape(-1)
    w1 = _flat_operand(weight, shape, "weight")
    pw1 = _flat_operand(pos_weight, shape, "pos_weight") if from_logits else None

    grad1, grad_scale, scale = None, None, 1.0
    if want_grad:
        if grad_output is not None:
            g = np.asarray(grad_output)
            checks.compute_dtype(g.dtype, "grad_output")
            if reduction == "none" and g.ndim:
                grad_scale = _flat_operand(g, shape, "grad_output")
            elif g.ndim:
                raise ValueError(f"grad_output for reduction={reduction!r} must be a scalar, got shape {g.shape}")
            else:
                scale = float(g)
        if reduction == "mean":
            scale = scale / n if n else math.nan
        grad1 = np.empty(n, dtype=v.dtype)
    loss_out = np.empty(n, dtype=np.float64) if reduction == "none" else None
    total, bad = binary_kernels.bce_flat(v1, t1, w1, pw1, from_logits, grad_scale, scale,
                                         loss_out, grad1, TASK_ELEMENTS)
    if bad >= 0:
        where = np.unravel_index(bad, shape) if len(shape) > 1 else bad
        raise ValueError(f"probs must be in [0, 1]; found {v1[bad]!r} at index {where}")
    if reduction == "none":
        loss = _scalar_or_array(loss_out.reshape(shape), result_dtype)
    else:
        loss = _reduce(np.float64(total), reduction, n, (), result_dtype)
    if not want_grad:
        return loss
    return loss, grad1.reshape(shape).astype(result_dtype, copy=False)


@dispatch
def binary_cross_entropy(probs: ArrayLike, target: ArrayLike, *, weight: Optional[ArrayLike] = None,
                         reduction: Reduction = "mean") -> Loss:
    """-w [t log p + (1 - t) log(1 - p)] elementwise, PyTorch semantics: each
    log is clamped at -100, ``weight`` broadcasts to ``probs``; probabilities
    outside [0, 1] raise ValueError.

    >>> round(float(fx.binary_cross_entropy(np.array([0.9]), np.array([1.0]))), 6)
    0.105361
    """
    return _binary_cross_entropy(probs, target, weight, None, reduction, False, False, None)


@dispatch
def binary_cross_entropy_with_grad(probs: ArrayLike, target: ArrayLike, *,
                                   weight: Optional[ArrayLike] = None,
                                   reduction: Reduction = "mean",
                                   grad_output: Optional[ArrayLike] = None) -> Tuple[Loss, np.ndarray]:
    """:func:`binary_cross_entropy` and its gradient with respect to ``probs``:
    w (p - t) / (p (1 - p)) (seed 002's (β − α)/(β(1 − β)); the denominator is
    clamped at 1e-12 as PyTorch does), scaled by the reduction and ``grad_output``."""
    return _binary_cross_entropy(probs, target, weight, None, reduction, False, True, grad_output)


@dispatch
def binary_cross_entropy_with_logits(logits: ArrayLike, target: ArrayLike, *,
                                     weight: Optional[ArrayLike] = None,
                                     pos_weight: Optional[ArrayLike] = None,
                                     reduction: Reduction = "mean") -> Loss:
    """Binary cross-entropy of sigmoid(logits), in PyTorch's stable form
    (never overflows).  ``pos_weight`` weights the positive term and
    broadcasts along the last axis; ``weight`` broadcasts to ``logits``.

    >>> round(float(fx.binary_cross_entropy_with_logits(np.array([0.0]), np.array([1.0]))), 6)
    0.693147
    """
    return _binary_cross_entropy(logits, target, weight, pos_weight, reduction, True, False, None)


@dispatch
def binary_cross_entropy_with_logits_with_grad(logits: ArrayLike, target: ArrayLike, *,
                                               weight: Optional[ArrayLike] = None,
                                               pos_weight: Optional[ArrayLike] = None,
                                               reduction: Reduction = "mean",
                                               grad_output: Optional[ArrayLike] = None
                                               ) -> Tuple[Loss, np.ndarray]:
    """:func:`binary_cross_entropy_with_logits` and its gradient with respect to
    the logits: w [sigmoid(x) (1 - t + pw t) - pw t], scaled by the reduction
    and ``grad_output``."""
    return _binary_cross_entropy(logits, target, weight, pos_weight, reduction, True, True,
                                 grad_output)


# -------------------------------------------------------------- divergences
def _divergence(p, q, axis, kind, want_grad):
    if kind == "entropy":
        a, result_dtype = checks.float_array(p, "p")
    else:
        a, b, result_dtype = checks.common_float_arrays(p, q, ("p", "q"))
        checks.same_shape(a.shape, b.shape, ("p", "q"))
    layout = checks.rows_layout(a.shape, axis)
    p2 = checks.as_rows(a, layout)
    values = np.empty(layout.n_rows, dtype=np.float64)
    grad2 = np.empty(p2.shape, dtype=p2.dtype) if want_grad else None
    q2 = p2 if kind == "entropy" else checks.as_rows(b, layout)
    divergence_kernels.divergence_rows(kind, p2, q2, values, grad2, rows_per_task(layout.n_classes))
    value = _scalar_or_array(layout.restore_rows(values), result_dtype)
    if not want_grad:
        return value
    return value, layout.restore_full(grad2).astype(result_dtype, copy=False)


@dispatch
def entropy(p: ArrayLike, axis: Axis = -1) -> Loss:
    """Shannon entropy H(p) = -sum p log p along ``axis`` (natural log), with
    0 log 0 = 0 (scipy.special.entr terms: a negative p gives -inf).

    >>> round(float(fx.entropy(np.array([0.5, 0.5]))), 6)
    0.693147
    """
    return _divergence(p, None, axis, "entropy", False)


@dispatch
def entropy_with_grad(p: ArrayLike, axis: Axis = -1) -> Tuple[Loss, np.ndarray]:
    """:func:`entropy` and dH/dp = -(log p + 1)."""
    return _divergence(p, None, axis, "entropy", True)


@dispatch
def kl_divergence(p: ArrayLike, q: ArrayLike, axis: Axis = -1) -> Loss:
    """KL(p || q) = sum p log(p / q) along ``axis`` (scipy.special.rel_entr
    terms: 0 where p = 0, inf where q = 0 < p).

    >>> float(fx.kl_divergence(np.array([0.5, 0.5]), np.array([0.5, 0.5])))
    0.0
    """
    return _divergence(p, q, axis, "kl", False)


@dispatch
def kl_divergence_with_grad(p: ArrayLike, q: ArrayLike, axis: Axis = -1) -> Tuple[Loss, np.ndarray]:
    """:func:`kl_divergence` and its gradient with respect to q: -p / q (0 where p = 0)."""
    return _divergence(p, q, axis, "kl", True)


@dispatch
def cross_entropy_probs(p: ArrayLike, q: ArrayLike, axis: Axis = -1) -> Loss:
    """H(p, q) = -sum p log q of two probability arrays (not logits) along
    ``axis``; terms with p = 0 count 0, q = 0 < p gives inf.
    H(p, q) = H(p) + KL(p || q) holds to rounding.

    >>> round(float(fx.cross_entropy_probs(np.array([1.0, 0.0]), np.array([0.5, 0.5]))), 6)
    0.693147
    """
    return _divergence(p, q, axis, "xent", False)


@dispatch
def cross_entropy_probs_with_grad(p: ArrayLike, q: ArrayLike, axis: Axis = -1
                                  ) -> Tuple[Loss, np.ndarray]:
    """:func:`cross_entropy_probs` and its gradient with respect to q: -p / q
    (seed 002; 0 where p = 0)."""
    return _divergence(p, q, axis, "xent", True)
