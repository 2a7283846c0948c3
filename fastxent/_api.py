"""The public functions, each written once for every kind of array.

Each function validates its arguments from metadata (``_checks``), maps the
problem to (rows, classes), resolves the reduction, ``grad_output`` and
``out=`` rules, and asks the backend of its arguments' array kind
(``_backend.backend_of``: NumPy, CUDA arrays, PyTorch tensors, ...) for work
arrays, buffers and one kernel launch, then shapes the result back through
the same backend.  Nothing here knows an array library or a kernel.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from fastxent import _checks as checks
from fastxent._backend import (Backend, BinaryInput, Divergence, GradScale, LabelScan, Reduction,
                               SoftmaxMode, backend_of, public)
from fastxent._checks import IGNORE_INDEX_DEFAULT, ROW_FUNCTIONS

Axis = Union[int, Tuple[int, ...], None]
ReductionName = Literal["none", "mean", "sum"]
Loss = Union[np.ndarray, np.floating]

__all__ = list(ROW_FUNCTIONS)

_F64 = np.dtype(np.float64)
_I64 = np.dtype(np.int64)


def grad_scale(backend: Backend, grad_output: Any, reduction: Reduction, loss_shape: tuple, *,
               broadcast: bool) -> GradScale:
    """``grad_output`` resolved for a launch: a host factor, or a native
    float64 array of one value per loss element (a device scalar broadcast)."""
    mean = reduction is Reduction.MEAN
    if grad_output is None:
        return GradScale(1.0, None, mean)
    if type(grad_output) is float or type(grad_output) is int:  # the usual call: no arrays
        return GradScale(float(grad_output), None, mean)
    g = backend.operand(grad_output, "grad_output")
    if type(g) is float:
        return GradScale(g, None, mean)
    checks.compute_dtype(g.dtype, "grad_output")
    checks.grad_output_shape(g.shape, reduction, loss_shape, broadcast=broadcast)
    rows = backend.flat(g, _F64, tuple(loss_shape))
    return GradScale(1.0, rows, mean)


def check_labels(backend: Backend, target: Any, labels: Any, n_classes: int, ignore_index: int,
                 weight: Optional[Any], batch_shape: tuple) -> LabelScan:
    """Scan the int64 class indices ``labels`` (of the native ``target``) on
    the backend; IndexError naming the first label outside [0, C) that is not
    ``ignore_index`` (as given in ``target``) and its row."""
    scan = backend.scan_labels(labels, n_classes, ignore_index, weight)
    bad = scan.bad_row()
    if bad is not None and bad >= 0:
        label = backend.read_element(backend.flat(target, target.dtype), bad)
        raise checks.bad_label_error(int(label), bad, batch_shape, n_classes, ignore_index)
    return scan


def class_weight(backend: Backend, weight: Any, n_classes: int) -> Optional[Any]:
    """A per-class ``weight`` as a native float64 (C,) array, or None."""
    if weight is None:
        return None
    w = backend.array(weight, "weight")
    checks.check_class_weight(w.dtype, w.shape, n_classes)
    return backend.flat(w, _F64)


# ------------------------------------------------------------------ softmax
def _softmax_family(x: Any, axis: Axis, mode: SoftmaxMode, *, keepdims: bool = False) -> Any:
    backend = backend_of(x)
    a = backend.array(x, "x")
    work, result_dtype = checks.compute_dtype(a.dtype, "x")
    layout = checks.rows_layout(a.shape, axis)
    n_rows, n_classes = layout.n_rows, layout.n_classes
    if mode is SoftmaxMode.LOGSUMEXP:
        if n_classes == 0 or n_rows == 0:  # the log of an empty sum, as NumPy/SciPy give
            out = backend.full((n_rows,), _F64, -np.inf)
        else:
            out = backend.softmax_rows(backend.rows(a, layout.perm, n_rows, n_classes, work), mode)
        return backend.result(out, result_dtype, layout.reduced_shape(keepdims))
    if n_rows and n_classes:
        out = backend.softmax_rows(backend.rows(a, layout.perm, n_rows, n_classes, work), mode)
    else:
        out = backend.empty((n_rows, n_classes), work)
    return backend.result(out, result_dtype, *layout.full_shape())


@public
def logsumexp(x: ArrayLike, axis: Axis = -1, keepdims: bool = False) -> Any:
    """log(sum(exp(x))) along ``axis`` (int, tuple of ints, or None for all),
    computed stably.

    A slice that is all ``-inf`` gives ``-inf``; one holding ``+inf`` gives
    ``+inf``; NaN gives NaN.  float32 input is accumulated in float64.  A 0-d
    result is a NumPy scalar for NumPy input (a 0-d array of the caller's
    library otherwise).

    >>> import fastxent as fx, numpy as np
    >>> float(fx.logsumexp(np.array([0.0, np.log(3.0)])))  # log(1 + 3)
    1.3862943611198906
    """
    return _softmax_family(x, axis, SoftmaxMode.LOGSUMEXP, keepdims=keepdims)


@public
def softmax(x: ArrayLike, axis: Axis = -1) -> Any:
    """exp(x - logsumexp(x)) along ``axis``: probabilities that sum to one.

    Rows holding ``+inf``, or only ``-inf``, are NaN (as in PyTorch).  A 0-d
    input gives a NumPy scalar (1.0), as SciPy does.

    >>> fx.softmax(np.array([1.0, 1.0]))
    array([0.5, 0.5])
    """
    return _softmax_family(x, axis, SoftmaxMode.SOFTMAX)


@public
def log_softmax(x: ArrayLike, axis: Axis = -1) -> Any:
    """x - max - log(sum(exp(x - max))) along ``axis``.

    Computed directly, not as log(softmax(x)), so log-probabilities far below
    the smallest float stay finite and exact.

    >>> fx.log_softmax(np.array([0.0, 1000.0]))
    array([-1000.,     0.])
    """
    return _softmax_family(x, axis, SoftmaxMode.LOG_SOFTMAX)


# ------------------------------------------------------------ cross-entropy
def _gradient_buffer(backend: Backend, out: Any, x: Any, x2: Any, other: Optional[Any],
                     work: np.dtype, result_dtype: np.dtype) -> Tuple[Any, Optional[Any]]:
    """Where the kernel writes the gradient: (native 2-D buffer, native user
    array to copy it into afterwards, or None).  ``out`` is written directly
    when it is a C-contiguous array of the compute dtype that is either
    exactly the work logits (an in-place gradient: each row is read before
    it is written) or shares no memory with the inputs the kernel reads."""
    if out is None:
        return backend.empty(x2.shape, work), None
    o = backend.user_output(out, "out")
    checks.check_output(o.shape, o.dtype, x.shape, result_dtype)
    if o.dtype == work and backend.is_c_contiguous(o):
        direct = o.reshape(x2.shape)
        in_place = backend.same_memory(direct, x2)
        touches_other = other is not None and backend.may_overlap(direct, other)
        if not touches_other and (in_place or not backend.may_overlap(direct, x2)):
            return direct, None
    return backend.empty(x2.shape, work), o


def _cross_entropy(logits: Any, target: Any, weight: Any, ignore_index: Any, reduction: Any,
                   label_smoothing: Any, *, want_grad: bool, grad_output: Any = None,
                   out: Any = None) -> Any:
    backend = backend_of(logits, target)
    x = backend.array(logits, "logits")
    t = backend.array(target, "target")
    work, result_dtype = checks.compute_dtype(x.dtype, "logits")
    layout = checks.last_axis_rows(x.shape, "logits")
    reduction = checks.check_reduction(reduction)
    smoothing = checks.check_label_smoothing(label_smoothing)
    hard = checks.is_class_index_target(t.dtype, t.shape, x.shape)
    ignore_index = checks.check_ignore_index(ignore_index, class_indices=hard)
    n_rows, n_classes = layout.n_rows, layout.n_classes
    w = None if weight is None else class_weight(backend, weight, n_classes)
    scale = (grad_scale(backend, grad_output, reduction, layout.batch_shape, broadcast=False)
             if want_grad else None)

    if hard:
        labels = backend.flat(t, _I64)
        scan = check_labels(backend, t, labels, n_classes, ignore_index, w, layout.batch_shape)
        target2 = None
    else:
        target2 = backend.rows(t, layout.perm, n_rows, n_classes, work)
    x2 = backend.rows(x, layout.perm, n_rows, n_classes, work)
    grad2 = copy_to = None
    if want_grad:
        grad2, copy_to = _gradient_buffer(backend, out, x, x2, labels if hard else target2, work,
                                          result_dtype)
    if hard:
        losses = backend.cross_entropy_hard(x2, labels, scan, w, ignore_index=ignore_index,
                                            smoothing=smoothing, reduction=reduction,
                                            grad_scale=scale, grad=grad2)
    else:
        losses = backend.cross_entropy_soft(x2, target2, w, smoothing=smoothing,
                                            reduction=reduction, grad_scale=scale, grad=grad2)
    loss = backend.result(losses, result_dtype,
                          layout.batch_shape if reduction is Reduction.NONE else ())
    if not want_grad:
        return loss
    if copy_to is not None:
        backend.copy_into(copy_to, grad2)
    if out is not None:
        return loss, out
    return loss, backend.result(grad2, result_dtype, x.shape)


@public
def cross_entropy(logits: ArrayLike, target: ArrayLike, *, weight: Optional[ArrayLike] = None,
                  ignore_index: int = IGNORE_INDEX_DEFAULT, reduction: ReductionName = "mean",
                  label_smoothing: float = 0.0) -> Loss:
    """Softmax cross-entropy of ``logits`` (class axis last) against ``target``.

    PyTorch ``F.cross_entropy`` semantics with the class axis last:

    * ``target`` of integer dtype and shape ``logits.shape[:-1]``: class
      indices; rows whose label equals ``ignore_index`` contribute nothing.
    * ``target`` of float dtype and ``logits``' shape: class probabilities
      (a bool target of that shape is promoted to float64, like every bool
      input).  ``ignore_index`` (default -100) applies to class indices only;
      given explicitly with probabilities it is a ValueError, as in PyTorch.
    * ``weight``: per-class weights (length C); ``label_smoothing`` in [0, 1]
      mixes the target with the uniform distribution.
    * ``reduction``: ``"mean"`` divides by the summed weight w[y] of the kept
      rows (the row count for probability targets), ``"sum"``, or ``"none"``
      for per-row losses.  The mean is NaN when that denominator is 0 (no
      rows kept, or every kept row of weight 0, with or without smoothing),
      as in PyTorch.

    Labels outside [0, C) raise IndexError naming the label and its row.

    >>> fx.cross_entropy(np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 1]))
    0.12692801104297263
    """
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                          want_grad=False)


@public
def cross_entropy_with_grad(logits: ArrayLike, target: ArrayLike, *,
                            weight: Optional[ArrayLike] = None,
                            ignore_index: int = IGNORE_INDEX_DEFAULT,
                            reduction: ReductionName = "mean", label_smoothing: float = 0.0,
                            grad_output: Optional[ArrayLike] = None,
                            out: Optional[np.ndarray] = None) -> Tuple[Loss, np.ndarray]:
    """:func:`cross_entropy` and its gradient with respect to the logits, in one
    fused pass: ``(loss, dlogits)`` with ``dlogits = grad_output * d loss / d logits``,
    i.e. (softmax - one_hot) scaled by the reduction, weights and smoothing.

    ``grad_output`` is a scalar (or, for ``reduction="none"``, one value per
    row).  ``out`` receives the gradient; ``out=logits`` overwrites the logits
    in place, so no array of the logits' size is allocated at all.  Ignored
    rows get a zero gradient, even where their logits are not finite (their
    loss does not depend on them; PyTorch gives NaN there).

    >>> logits = np.array([[2.0, 0.0]])
    >>> loss, grad = fx.cross_entropy_with_grad(logits, np.array([0]))
    >>> grad
    array([[-0.11920292,  0.11920292]])
    """
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                          want_grad=True, grad_output=grad_output, out=out)


# ---------------------------------------------------- binary cross-entropy
def _elementwise_operand(backend: Backend, value: Any, shape: tuple, name: str) -> Optional[Any]:
    """An optional operand broadcast to ``shape``, as a native flat float64 array."""
    if value is None:
        return None
    v = backend.operand(value, name)
    if type(v) is float:
        return backend.full((int(np.prod(shape, dtype=np.int64)),), _F64, v)
    checks.compute_dtype(v.dtype, name)
    checks.broadcastable(v.shape, shape, name)
    return backend.flat(v, _F64, shape)


def _binary_cross_entropy(values: Any, target: Any, weight: Any, pos_weight: Any, reduction: Any,
                          *, kind: BinaryInput, want_grad: bool, grad_output: Any = None) -> Any:
    name = kind.value
    backend = backend_of(values, target)
    v = backend.array(values, name)
    t = backend.array(target, "target")
    work, result_dtype = checks.compute_dtype(v.dtype, name)
    checks.compute_dtype(t.dtype, "target")
    checks.same_shape(v.shape, t.shape, (name, "target"))
    reduction = checks.check_reduction(reduction)
    shape = tuple(v.shape)
    v1 = backend.flat(v, work)
    t1 = backend.flat(t, work)
    w1 = _elementwise_operand(backend, weight, shape, "weight")
    pw1 = (_elementwise_operand(backend, pos_weight, shape, "pos_weight")
           if kind is BinaryInput.LOGITS else None)
    scale = grad1 = None
    if want_grad:
        scale = grad_scale(backend, grad_output, reduction, shape, broadcast=True)
        grad1 = backend.empty(v1.shape, work)
    losses, bad = backend.binary_cross_entropy(v1, t1, w1, pw1, kind=kind, reduction=reduction,
                                               grad_scale=scale, grad=grad1)
    if bad >= 0:
        raise checks.probability_range_error(backend.read_element(v1, bad), bad, shape)
    loss = backend.result(losses, result_dtype, shape if reduction is Reduction.NONE else ())
    if not want_grad:
        return loss
    return loss, backend.result(grad1, result_dtype, shape)


@public
def binary_cross_entropy(probs: ArrayLike, target: ArrayLike, *, weight: Optional[ArrayLike] = None,
                         reduction: ReductionName = "mean") -> Loss:
    """-w [t log p + (1 - t) log(1 - p)] elementwise, PyTorch semantics: each
    log is clamped at -100, ``weight`` broadcasts to ``probs``; probabilities
    outside [0, 1] raise ValueError.

    >>> round(float(fx.binary_cross_entropy(np.array([0.9]), np.array([1.0]))), 6)
    0.105361
    """
    return _binary_cross_entropy(probs, target, weight, None, reduction, kind=BinaryInput.PROBS,
                                 want_grad=False)


@public
def binary_cross_entropy_with_grad(probs: ArrayLike, target: ArrayLike, *,
                                   weight: Optional[ArrayLike] = None,
                                   reduction: ReductionName = "mean",
                                   grad_output: Optional[ArrayLike] = None) -> Tuple[Loss, np.ndarray]:
    """:func:`binary_cross_entropy` and its gradient with respect to ``probs``:
    w (p - t) / (p (1 - p)) (the denominator is clamped at 1e-12 as
    PyTorch does), scaled by the reduction and ``grad_output``."""
    return _binary_cross_entropy(probs, target, weight, None, reduction, kind=BinaryInput.PROBS,
                                 want_grad=True, grad_output=grad_output)


@public
def binary_cross_entropy_with_logits(logits: ArrayLike, target: ArrayLike, *,
                                     weight: Optional[ArrayLike] = None,
                                     pos_weight: Optional[ArrayLike] = None,
                                     reduction: ReductionName = "mean") -> Loss:
    """Binary cross-entropy of sigmoid(logits), in PyTorch's stable form
    (never overflows).  ``pos_weight`` weights the positive term and
    broadcasts along the last axis; ``weight`` broadcasts to ``logits``.

    >>> round(float(fx.binary_cross_entropy_with_logits(np.array([0.0]), np.array([1.0]))), 6)
    0.693147
    """
    return _binary_cross_entropy(logits, target, weight, pos_weight, reduction,
                                 kind=BinaryInput.LOGITS, want_grad=False)


@public
def binary_cross_entropy_with_logits_with_grad(logits: ArrayLike, target: ArrayLike, *,
                                               weight: Optional[ArrayLike] = None,
                                               pos_weight: Optional[ArrayLike] = None,
                                               reduction: ReductionName = "mean",
                                               grad_output: Optional[ArrayLike] = None
                                               ) -> Tuple[Loss, np.ndarray]:
    """:func:`binary_cross_entropy_with_logits` and its gradient with respect to
    the logits: w [sigmoid(x) (1 - t + pw t) - pw t], scaled by the reduction
    and ``grad_output``."""
    return _binary_cross_entropy(logits, target, weight, pos_weight, reduction,
                                 kind=BinaryInput.LOGITS, want_grad=True, grad_output=grad_output)


# -------------------------------------------------------------- divergences
def _divergence(p: Any, q: Any, axis: Axis, kind: Divergence, *, want_grad: bool) -> Any:
    backend = backend_of(p, q)
    a = backend.array(p, "p")
    if kind is Divergence.ENTROPY:
        work, result_dtype = checks.compute_dtype(a.dtype, "p")
    else:
        b = backend.array(q, "q")
        work, result_dtype = checks.common_compute_dtype((a.dtype, "p"), (b.dtype, "q"))
        checks.same_shape(a.shape, b.shape, ("p", "q"))
    layout = checks.rows_layout(a.shape, axis)
    n_rows, n_classes = layout.n_rows, layout.n_classes
    p2 = backend.rows(a, layout.perm, n_rows, n_classes, work)
    q2 = p2 if kind is Divergence.ENTROPY else backend.rows(b, layout.perm, n_rows, n_classes, work)
    values, grad2 = backend.divergence_rows(kind, p2, q2, want_grad=want_grad)
    value = backend.result(values, result_dtype, layout.reduced_shape())
    if not want_grad:
        return value
    return value, backend.result(grad2, result_dtype, *layout.full_shape())


@public
def entropy(p: ArrayLike, axis: Axis = -1) -> Loss:
    """Shannon entropy H(p) = -sum p log p along ``axis`` (natural log), with
    0 log 0 = 0 (scipy.special.entr terms: a negative p gives -inf).

    >>> round(float(fx.entropy(np.array([0.5, 0.5]))), 6)
    0.693147
    """
    return _divergence(p, None, axis, Divergence.ENTROPY, want_grad=False)


@public
def entropy_with_grad(p: ArrayLike, axis: Axis = -1) -> Tuple[Loss, np.ndarray]:
    """:func:`entropy` and dH/dp = -(log p + 1)."""
    return _divergence(p, None, axis, Divergence.ENTROPY, want_grad=True)


@public
def kl_divergence(p: ArrayLike, q: ArrayLike, axis: Axis = -1) -> Loss:
    """KL(p || q) = sum p log(p / q) along ``axis`` (scipy.special.rel_entr
    terms: 0 where p = 0, inf where q = 0 < p).

    >>> float(fx.kl_divergence(np.array([0.5, 0.5]), np.array([0.5, 0.5])))
    0.0
    """
    return _divergence(p, q, axis, Divergence.KL, want_grad=False)


@public
def kl_divergence_with_grad(p: ArrayLike, q: ArrayLike, axis: Axis = -1) -> Tuple[Loss, np.ndarray]:
    """:func:`kl_divergence` and its gradient with respect to q: -p / q (0 where p = 0)."""
    return _divergence(p, q, axis, Divergence.KL, want_grad=True)


@public
def cross_entropy_probs(p: ArrayLike, q: ArrayLike, axis: Axis = -1) -> Loss:
    """H(p, q) = -sum p log q of two probability arrays (not logits) along
    ``axis``; terms with p = 0 count 0, q = 0 < p gives inf.
    H(p, q) = H(p) + KL(p || q) holds to rounding.

    >>> round(float(fx.cross_entropy_probs(np.array([1.0, 0.0]), np.array([0.5, 0.5]))), 6)
    0.693147
    """
    return _divergence(p, q, axis, Divergence.XENT, want_grad=False)


@public
def cross_entropy_probs_with_grad(p: ArrayLike, q: ArrayLike, axis: Axis = -1
                                  ) -> Tuple[Loss, np.ndarray]:
    """:func:`cross_entropy_probs` and its gradient with respect to q: -p / q
    (0 where p = 0)."""
    return _divergence(p, q, axis, Divergence.XENT, want_grad=True)
