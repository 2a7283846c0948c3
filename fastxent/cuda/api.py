"""The public functions on CUDA arrays (``fastxent._backend.dispatch`` routes
calls here when an argument has ``__cuda_array_interface__``).

Same names, signatures, semantics and errors as ``fastxent._api``; the
argument checks are the shared metadata checks of ``fastxent._checks``.
Inputs stay on the device: a C-contiguous input of the compute dtype is used
in place, anything else (strided, transposed, float16, integer) is first
copied into a C-contiguous (rows, classes) work array by a gather kernel.
Results come back as arrays of the caller's library (see ``_arrays``), on
the device: reductions "mean"/"sum" give 0-d arrays, without a host sync.

Host and device arrays cannot be mixed (TypeError); scalars (``grad_output``,
a BCE ``weight``) may be host numbers.  The only host waits are the label
check of cross-entropy with class-index targets and the range check of
:func:`binary_cross_entropy` probabilities (one small copy per call).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Tuple

import numpy as np

from fastxent import _checks as checks
from fastxent.cuda import _arrays as arrays
from fastxent.cuda import _config
from fastxent.cuda import binary as binary_kernels
from fastxent.cuda import divergence as divergence_kernels
from fastxent.cuda import softmax as softmax_kernels
from fastxent.cuda import xent as xent_kernels
from fastxent.cuda._arrays import Buffer, Call, shape_only

__all__ = [
    "logsumexp", "softmax", "log_softmax",
    "cross_entropy", "cross_entropy_with_grad",
    "binary_cross_entropy", "binary_cross_entropy_with_grad",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad",
    "entropy", "entropy_with_grad", "kl_divergence", "kl_divergence_with_grad",
    "cross_entropy_probs", "cross_entropy_probs_with_grad",
]


def _primary(*values: Any) -> Call:
    for v in values:
        if arrays.is_device(v):
            return Call(v)
    raise TypeError("fastxent.cuda functions take CUDA arrays (objects with __cuda_array_interface__)")


def _shuffle() -> bool:
    return bool(_config.USE_SHUFFLE)


def _as_result(call: Call, buf: Buffer, dtype: np.dtype) -> Buffer:
    """``buf`` in the result dtype (a cast copy for float16 results)."""
    if buf.dev.dtype == dtype:
        return buf
    return arrays.gather(call, buf.dev, tuple(range(len(buf.dev.shape))), dtype)


def _scalar_result(call: Call, buf: Buffer, dtype: np.dtype) -> Any:
    """A one-element buffer as a 0-d array of the result dtype."""
    return call.result(_as_result(call, buf, dtype), ())


def _empty_reduction(call: Call, reduction: str, dtype: np.dtype) -> Any:
    """The reduced loss of an empty batch: NaN for the mean (as in PyTorch), 0 for the sum."""
    return call.result(call.full((1,), dtype, math.nan if reduction == "mean" else 0.0), ())


def _host_scalar(value: Any, name: str) -> Optional[float]:
    """A host number (Python, NumPy scalar or 0-d array) as a float, or None for
    a device array; host arrays are an error."""
    if arrays.is_device(value):
        return None
    if isinstance(value, numbers.Number) or np.ndim(value) == 0:
        checks.compute_dtype(np.asarray(value).dtype, name)
        return float(np.asarray(value))
    raise TypeError(f"{name} is a host array ({type(value).__name__}) while the other arguments "
                    "are CUDA arrays: pass it on the same GPU, or as a scalar")


# ------------------------------------------------------------------ softmax
def _row_launch(call: Call, kernel: Any, n_rows: int, n_classes: int) -> Tuple[Any, int]:
    blocks, threads, tpr = _config.row_launch(n_rows, n_classes)
    return call.launch(kernel, blocks, threads), tpr


def logsumexp(x: Any, axis: Any = -1, keepdims: bool = False) -> Any:
    call = _primary(x)
    dev = call.device(x, "x")
    work, result_dtype = checks.compute_dtype(dev.dtype, "x")
    layout = checks.rows_layout(tuple(dev.shape), axis)
    out = call.empty((layout.n_rows, 1), work)
    if layout.n_rows:
        x2 = arrays.rows(call, dev, layout, work)
        launch, tpr = _row_launch(call, softmax_kernels.softmax_rows, layout.n_rows, layout.n_classes)
        launch(x2, out.dev, softmax_kernels.LOGSUMEXP, tpr, _shuffle())
    shape = layout.batch_shape
    if keepdims:
        shape = tuple(1 if d in layout.axes else n for d, n in enumerate(layout.shape))
    return call.result(_as_result(call, out, result_dtype), shape)


def _softmax(x: Any, axis: Any, mode: int) -> Any:
    call = _primary(x)
    dev = call.device(x, "x")
    work, result_dtype = checks.compute_dtype(dev.dtype, "x")
    layout = checks.rows_layout(tuple(dev.shape), axis)
    out = call.empty((layout.n_rows, layout.n_classes), work)
    if layout.n_rows and layout.n_classes:
        x2 = arrays.rows(call, dev, layout, work)
        launch, tpr = _row_launch(call, softmax_kernels.softmax_rows, layout.n_rows, layout.n_classes)
        launch(x2, out.dev, mode, tpr, _shuffle())
    moved = tuple(layout.shape[d] for d in layout.perm)
    return call.result(_as_result(call, out, result_dtype), moved, tuple(np.argsort(layout.perm)))


def softmax(x: Any, axis: Any = -1) -> Any:
    return _softmax(x, axis, softmax_kernels.SOFTMAX)


def log_softmax(x: Any, axis: Any = -1) -> Any:
    return _softmax(x, axis, softmax_kernels.LOG_SOFTMAX)


# ------------------------------------------------------------ cross-entropy
class _GradOutput:
    """grad_output as the kernels take it: a host factor, an optional device
    array and its step per row (0 for a device scalar)."""

    def __init__(self, call: Call, grad_output: Any, reduction: str, shape: tuple):
        self.scale, self.rows, self.step = 1.0, None, 0
        if grad_output is None:
            return
        value = _host_scalar(grad_output, "grad_output")
        if value is not None:
            self.scale = value
            return
        g = call.device(grad_output, "grad_output")
        checks.grad_row_scale(shape_only(g), reduction, shape, 1.0)  # shape and dtype checks
        if len(g.shape) == 0:
            self.rows = arrays.flat(call, g, np.float64)
        else:
            self.rows = arrays.broadcast(call, g, shape, np.float64, "grad_output")
            self.step = 1


def _gradient_target(call: Call, out: Any, logits_dev: Any, x2: Any, target2: Any,
                     work: np.dtype, result_dtype: np.dtype) -> Tuple[Any, Any]:
    """(device buffer the kernel writes the gradient to, user array to copy
    it into afterwards or None).  ``out`` is written directly when it is
    C-contiguous, of the compute dtype, and either exactly the work logits
    (in place) or disjoint from every input the kernel reads."""
    if out is None:
        return call.empty(x2.shape, work), None
    if not arrays.is_device(out):
        raise ValueError(f"out must be a CUDA array like the logits, got {type(out).__name__}")
    od = call.device(out, "out")
    checks.output_array(shape_only(od), tuple(logits_dev.shape), result_dtype)
    if od.__cuda_array_interface__["data"][1]:
        raise ValueError("out is read-only")
    if od.dtype == work and arrays.is_c_contiguous(od):
        direct = od.reshape(x2.shape)
        in_place = arrays.same_memory(direct, x2)
        touches = target2 is not None and arrays.overlaps(direct, target2)
        if not touches and (in_place or not arrays.overlaps(direct, x2)):
            return Buffer(out, direct), None
    return call.empty(x2.shape, work), od


def _check_labels(call: Call, labels: Any, n_classes: int, ignore_index: int, weight: Any,
                  batch_shape: tuple, status: Buffer, partials: Buffer) -> Any:
    """Run the label scan; raise IndexError for the first bad label.
    Returns the device array holding the mean's denominator.  ``status``
    (BAD slot at the row count) and ``partials`` are shared with the loss
    kernel, which runs after the scan on the same stream."""
    n_rows = labels.shape[0]
    blocks, threads = _config.elementwise_launch(n_rows)
    den = call.empty((1,), np.float64)
    call.launch(xent_kernels.scan_labels, blocks, threads)(
        labels, np.int64(n_classes), np.int64(ignore_index), weight, status.dev, partials.dev,
        den.dev, _shuffle())
    bad = int(call.read(status)[0])
    if bad < n_rows:
        label = int(call.read(Buffer(None, labels[bad:bad + 1]))[0])
        raise checks.bad_label_error(label, bad, batch_shape, n_classes, ignore_index)
    return den.dev


def _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, want_grad,
                   grad_output=None, out=None):
    call = _primary(logits, target)
    x = call.device(logits, "logits")
    t = call.device(target, "target")
    work, result_dtype = checks.compute_dtype(x.dtype, "logits")
    layout = checks.last_axis_rows(tuple(x.shape), "logits")
    reduction = checks.check_reduction(reduction)
    smoothing = checks.check_label_smoothing(label_smoothing)
    ignore_index = checks.check_ignore_index(ignore_index)
    n_rows, n_classes = layout.n_rows, layout.n_classes
    w = None
    if weight is not None:
        wd = call.device(weight, "weight")
        checks.class_weight(shape_only(wd), n_classes)
        w = arrays.flat(call, wd, work)
    hard = checks.is_class_index_target(shape_only(t), tuple(x.shape))
    grad_rows = _GradOutput(call, grad_output, reduction, layout.batch_shape) if want_grad else None

    x2 = arrays.rows(call, x, layout, work)
    status = partials = None
    if n_rows:
        blocks, threads, tpr = _config.row_launch(n_rows, n_classes)
        scan_blocks = _config.elementwise_launch(n_rows)[0] if hard else 0
        partials = call.empty((2 * max(blocks, scan_blocks),), np.float64)
        status = call.status(n_rows)
    if hard:
        labels = arrays.flat(call, t, t.dtype)
        den = None
        if n_rows:
            den = _check_labels(call, labels, n_classes, ignore_index, w, layout.batch_shape,
                                status, partials)
        target2 = None
    else:
        labels = None
        target2 = arrays.rows(call, t, layout, work)

    grad_buf, copy_to = (None, None)
    if want_grad:
        grad_buf, copy_to = _gradient_target(call, out, x, x2, target2 if not hard else labels,
                                             work, result_dtype)

    if reduction == "none":
        losses = call.empty((n_rows,), work)
        result = None
    else:
        losses = None
        result = call.empty((1,), work)

    if n_rows:
        g = grad_rows or _GradOutput(call, None, reduction, layout.batch_shape)
        common = dict(losses=None if losses is None else losses.dev,
                      result=None if result is None else result.dev)
        grad_dev = None if grad_buf is None else grad_buf.dev
        if hard:
            call.launch(xent_kernels.xent_hard_rows, blocks, threads)(
                x2, labels, w, float(n_classes), np.int64(ignore_index), smoothing, g.scale, g.rows,
                np.int64(g.step), reduction == "mean", den, common["losses"], common["result"],
                partials.dev, status.dev, grad_dev, tpr, _shuffle())
        else:
            call.launch(xent_kernels.xent_soft_rows, blocks, threads)(
                x2, target2, w, smoothing, g.scale, g.rows, np.int64(g.step), reduction == "mean",
                float(n_rows), common["losses"], common["result"], partials.dev, status.dev,
                grad_dev, tpr, _shuffle())

    if reduction == "none":
        loss = call.result(_as_result(call, losses, result_dtype), layout.batch_shape)
    elif n_rows:
        loss = _scalar_result(call, result, result_dtype)
    else:
        loss = _empty_reduction(call, reduction, result_dtype)
    if not want_grad:
        return loss
    if copy_to is not None:
        arrays.scatter(call, grad_buf.dev, copy_to)
        return loss, out
    if out is not None:
        return loss, out
    return loss, call.result(_as_result(call, grad_buf, result_dtype), tuple(x.shape))


def cross_entropy(logits: Any, target: Any, *, weight: Any = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Any:
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, False)


def cross_entropy_with_grad(logits: Any, target: Any, *, weight: Any = None,
                            ignore_index: int = -100, reduction: str = "mean",
                            label_smoothing: float = 0.0, grad_output: Any = None,
                            out: Any = None) -> Tuple[Any, Any]:
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, True,
                          grad_output, out)


# ---------------------------------------------------- binary cross-entropy
def _operand(call: Call, value: Any, shape: tuple, dtype: Any, name: str) -> Any:
    """An optional operand broadcast to ``shape`` as a flat device array
    (host scalars become a small device array)."""
    if value is None:
        return None
    scalar = _host_scalar(value, name)
    if scalar is not None:
        value = call.full((1,), np.float64, scalar).native
    dev = call.device(value, name)
    checks.compute_dtype(dev.dtype, name)
    return arrays.broadcast(call, dev, shape, dtype, name)


def _binary_cross_entropy(values, target, weight, pos_weight, reduction, from_logits, want_grad,
                          grad_output):
    name = "logits" if from_logits else "probs"
    call = _primary(values, target)
    v = call.device(values, name)
    t = call.device(target, "target")
    work, result_dtype = checks.compute_dtype(v.dtype, name)
    checks.compute_dtype(t.dtype, "target")
    checks.same_shape(tuple(v.shape), tuple(t.shape), (name, "target"))
    reduction = checks.check_reduction(reduction)
    shape, n = tuple(v.shape), math.prod(v.shape)
    v1 = arrays.flat(call, v, work)
    t1 = arrays.flat(call, t, work)
    w1 = _operand(call, weight, shape, np.float64, "weight")
    pw1 = _operand(call, pos_weight, shape, np.float64, "pos_weight") if from_logits else None

    grad, grad_rows, scale = None, None, 1.0
    if want_grad:
        if grad_output is not None:
            value = _host_scalar(grad_output, "grad_output")
            if value is not None:
                scale = value
            else:
                g = call.device(grad_output, "grad_output")
                checks.compute_dtype(g.dtype, "grad_output")
                if reduction != "none" and len(g.shape):
                    raise ValueError(f"grad_output for reduction={reduction!r} must be a scalar, "
                                     f"got shape {tuple(g.shape)}")
                grad_rows = arrays.broadcast(call, g, shape, np.float64, "grad_output")
        if reduction == "mean":
            scale = scale / n if n else math.nan
        grad = call.empty((n,), work)
    losses = call.empty((n,), work) if reduction == "none" else None
    result = None if reduction == "none" else call.empty((1,), work)
    if n:
        blocks, threads = _config.elementwise_launch(n)
        partials = call.empty((2 * blocks,), np.float64)
        status = call.status(n)
        kernel = binary_kernels.bce_logits_flat if from_logits else binary_kernels.bce_probs_flat
        call.launch(kernel, blocks, threads)(
            v1, t1, w1, pw1, grad_rows, scale, None if losses is None else losses.dev,
            None if grad is None else grad.dev, partials.dev, status.dev,
            None if result is None else result.dev, float(n) if reduction == "mean" else 1.0,
            _shuffle())
        if not from_logits:
            bad = int(call.read(status)[0])
            if bad < n:
                value = call.read(Buffer(None, v1[bad:bad + 1]))[0]
                where = np.unravel_index(bad, shape) if len(shape) > 1 else bad
                raise ValueError(f"probs must be in [0, 1]; found {value!r} at index {where}")
    if reduction == "none":
        loss = call.result(_as_result(call, losses, result_dtype), shape)
    elif n:
        loss = _scalar_result(call, result, result_dtype)
    else:
        loss = _empty_reduction(call, reduction, result_dtype)
    if not want_grad:
        return loss
    return loss, call.result(_as_result(call, grad, result_dtype), shape)


def binary_cross_entropy(probs: Any, target: Any, *, weight: Any = None,
                         reduction: str = "mean") -> Any:
    return _binary_cross_entropy(probs, target, weight, None, reduction, False, False, None)


def binary_cross_entropy_with_grad(probs: Any, target: Any, *, weight: Any = None,
                                   reduction: str = "mean", grad_output: Any = None) -> Any:
    return _binary_cross_entropy(probs, target, weight, None, reduction, False, True, grad_output)


def binary_cross_entropy_with_logits(logits: Any, target: Any, *, weight: Any = None,
                                     pos_weight: Any = None, reduction: str = "mean") -> Any:
    return _binary_cross_entropy(logits, target, weight, pos_weight, reduction, True, False, None)


def binary_cross_entropy_with_logits_with_grad(logits: Any, target: Any, *, weight: Any = None,
                                               pos_weight: Any = None, reduction: str = "mean",
                                               grad_output: Any = None) -> Any:
    return _binary_cross_entropy(logits, target, weight, pos_weight, reduction, True, True,
                                 grad_output)


# -------------------------------------------------------------- divergences
def _divergence(p, q, axis, kind, want_grad):
    call = _primary(p, q)
    a = call.device(p, "p")
    if kind == divergence_kernels.ENTROPY:
        work, result_dtype = checks.compute_dtype(a.dtype, "p")
    else:
        b = call.device(q, "q")
        work_a, res_a = checks.compute_dtype(a.dtype, "p")
        work_b, res_b = checks.compute_dtype(b.dtype, "q")
        work, result_dtype = np.promote_types(work_a, work_b), np.promote_types(res_a, res_b)
        checks.same_shape(tuple(a.shape), tuple(b.shape), ("p", "q"))
    layout = checks.rows_layout(tuple(a.shape), axis)
    values = call.empty((layout.n_rows, 1), work)
    grad = call.empty((layout.n_rows, layout.n_classes), work) if want_grad else None
    if layout.n_rows:
        p2 = arrays.rows(call, a, layout, work)
        q2 = p2 if kind == divergence_kernels.ENTROPY else arrays.rows(call, b, layout, work)
        launch, tpr = _row_launch(call, divergence_kernels.divergence_rows, layout.n_rows,
                                  layout.n_classes)
        launch(p2, q2, kind, values.dev, None if grad is None else grad.dev, tpr, _shuffle())
    value = call.result(_as_result(call, values, result_dtype), layout.batch_shape)
    if not want_grad:
        return value
    moved = tuple(layout.shape[d] for d in layout.perm)
    return value, call.result(_as_result(call, grad, result_dtype), moved,
                              tuple(np.argsort(layout.perm)))


def entropy(p: Any, axis: Any = -1) -> Any:
    return _divergence(p, None, axis, divergence_kernels.ENTROPY, False)


def entropy_with_grad(p: Any, axis: Any = -1) -> Any:
    return _divergence(p, None, axis, divergence_kernels.ENTROPY, True)


def kl_divergence(p: Any, q: Any, axis: Any = -1) -> Any:
    return _divergence(p, q, axis, divergence_kernels.KL, False)


def kl_divergence_with_grad(p: Any, q: Any, axis: Any = -1) -> Any:
    return _divergence(p, q, axis, divergence_kernels.KL, True)


def cross_entropy_probs(p: Any, q: Any, axis: Any = -1) -> Any:
    return _divergence(p, q, axis, divergence_kernels.XENT, False)


def cross_entropy_probs_with_grad(p: Any, q: Any, axis: Any = -1) -> Any:
    return _divergence(p, q, axis, divergence_kernels.XENT, True)
