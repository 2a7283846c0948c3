"""Idiomatic, vectorised NumPy versions of every fastxent function.

Same signatures and semantics as the kernels, computed in the input's dtype
(float16 in float32, integers and bool in float64), written the way a good
NumPy programmer would: max-shift, exp, sum, log, with full N x C
temporaries.  They are the baseline the benchmarks compare against and, fed
float64 copies of the inputs, the oracle of the test suite.  They never call
the kernels (only the argument checks are shared, so that both raise the
same errors).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from fastxent import _checks as checks

Axis = Union[int, Sequence[int], None]

__all__ = [*checks.ROW_FUNCTIONS, *checks.LINEAR_FUNCTIONS]


def _work(x: ArrayLike, name: str) -> Tuple[np.ndarray, np.dtype]:
    a = np.asarray(x)
    work, result = checks.compute_dtype(a.dtype, name)
    return a.astype(work, copy=False), result


def _result(values: Any, dtype: np.dtype) -> Any:
    values = np.asarray(values).astype(dtype, copy=False)
    return values[()] if values.ndim == 0 else values


def _axes(x: np.ndarray, axis) -> Tuple[int, ...]:
    return checks.rows_layout(x.shape, axis).axes


# ----------------------------------------------------------------- softmax
def _log_sum_exp_shifted(shifted: np.ndarray, axes: Tuple[int, ...]) -> np.ndarray:
    """log sum exp(shifted) over ``axes`` (keepdims) for shifted = x - max, as
    log1p of the sum less one max's term exp(0) = 1: a dominating term keeps
    the result's relative precision (log(1 + 4e-18) is not 0)."""
    at_max = shifted == 0
    others = np.sum(np.where(at_max, 0.0, np.exp(shifted)), axis=axes, keepdims=True)
    return np.log1p(others + (np.sum(at_max, axis=axes, keepdims=True) - 1)).astype(shifted.dtype)


def _lse(x: np.ndarray, axes: Tuple[int, ...], finite_shift: bool) -> np.ndarray:
    """log sum exp over ``axes`` with keepdims."""
    m = np.max(x, axis=axes, keepdims=True) if x.size else np.zeros([1] * x.ndim, x.dtype)
    if finite_shift:  # logsumexp: all -inf -> -inf, +inf -> +inf (as scipy)
        m = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return m + _log_sum_exp_shifted(x - m, axes)


def logsumexp(x: ArrayLike, axis: Axis = -1, keepdims: bool = False) -> Any:
    a, result = _work(x, "x")
    axes = _axes(a, axis)
    if a.size == 0 or 0 in [a.shape[d] for d in axes]:
        out = np.full([1 if d in axes else n for d, n in enumerate(a.shape)], -np.inf, a.dtype)
    else:
        out = _lse(a, axes, finite_shift=True)
    if not keepdims:
        out = np.squeeze(out, axis=axes)
    return _result(out, result)


def log_softmax(x: ArrayLike, axis: Axis = -1) -> np.ndarray:
    a, result = _work(x, "x")
    axes = _axes(a, axis)
    if a.size == 0:
        return a.astype(result)
    m = np.max(a, axis=axes, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shifted = a - m  # x - max - log sum exp(x - max): exact for huge max
        return (shifted - _log_sum_exp_shifted(shifted, axes)).astype(result, copy=False)


def softmax(x: ArrayLike, axis: Axis = -1) -> np.ndarray:
    a, result = _work(x, "x")
    axes = _axes(a, axis)
    if a.size == 0:
        return a.astype(result)
    m = np.max(a, axis=axes, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(a - m)
        return (e / np.sum(e, axis=axes, keepdims=True)).astype(result, copy=False)


# ----------------------------------------------------------- cross-entropy
def _reduce(losses: np.ndarray, reduction: str, denominator: float, dtype: np.dtype):
    if reduction == "none":
        return _result(losses, dtype)
    total = np.sum(losses, dtype=np.float64)
    if reduction == "sum":
        return dtype.type(total)
    return dtype.type(checks.mean_of(float(total), float(denominator)))


def _grad_rows(grad_output, reduction: str, batch_shape: tuple, denominator: float) -> np.ndarray:
    """grad_output as one factor per row, divided by the mean's denominator."""
    g = np.asarray(1.0 if grad_output is None else grad_output)
    checks.compute_dtype(g.dtype, "grad_output")
    checks.grad_output_shape(g.shape, checks.check_reduction(reduction), batch_shape,
                             broadcast=False)
    g = np.broadcast_to(g.astype(np.float64), batch_shape)
    return g * checks.mean_of(1.0, denominator) if reduction == "mean" else g


def _hard_label_terms(logp, t, keep, w, eps, smooth_c):
    """Per-row losses, the mean's denominator and the unscaled gradient for
    class-index targets (``keep`` marks the rows that are not ignored)."""
    safe_t = np.where(keep, t, 0)
    t_dist = np.zeros(logp.shape, dtype=logp.dtype)  # one-hot targets
    np.put_along_axis(t_dist, safe_t[..., None], 1, axis=-1)
    w_y = np.where(keep, w[safe_t], logp.dtype.type(0))
    # (1 - eps) w_y (-log p_y) + eps/C sum_c w_c (-log p_c), zero on ignored rows
    with np.errstate(invalid="ignore"):
        nll = -np.take_along_axis(logp, safe_t[..., None], axis=-1)[..., 0]
        smooth = -np.sum(w * logp, axis=-1) if eps else 0.0
        losses = np.where(keep, (1 - eps) * w_y * nll + smooth_c * smooth, 0.0)
    denominator = np.sum(w_y)
    # d/dx = A p - (eps/C) w - (1 - eps) w_y onehot,  A = (1 - eps) w_y + (eps/C) sum w
    a = (1 - eps) * w_y + smooth_c * np.sum(w)
    with np.errstate(invalid="ignore"):
        grad = (a[..., None] * np.exp(logp) - smooth_c * w
                - ((1 - eps) * w_y)[..., None] * t_dist)
    grad = np.where(keep[..., None], grad, 0.0)
    return losses, denominator, grad


def _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                   want_grad, grad_output=None, out=None):
    x, result = _work(logits, "logits")
    checks.last_axis_rows(x.shape, "logits")
    reduction = checks.check_reduction(reduction).value
    eps = checks.check_label_smoothing(label_smoothing)
    t = np.asarray(target)
    hard = checks.is_class_index_target(t.dtype, t.shape, x.shape)
    ignore_index = checks.check_ignore_index(ignore_index, class_indices=hard)
    n_classes = x.shape[-1]
    smooth_c = eps / max(n_classes, 1)  # eps/C (no classes: no smoothing terms)
    if weight is None:
        w = np.ones(n_classes, x.dtype)
    else:
        w = np.asarray(weight)
        checks.check_class_weight(w.dtype, w.shape, n_classes)
        w = w.astype(x.dtype)  # compute in x's dtype

    logp = log_softmax(x)
    if hard:
        keep = t != ignore_index
        bad = keep & ((t < 0) | (t >= n_classes))
        if bad.any():
            row = int(np.flatnonzero(bad.reshape(-1))[0])
            raise checks.bad_label_error(int(t.reshape(-1)[row]), row, t.shape, n_classes, ignore_index)
        if n_classes == 0:  # then every row is ignored (any other label raised above)
            losses, denominator, grad = np.zeros(t.shape, x.dtype), 0.0, np.zeros(x.shape, x.dtype)
        else:
            losses, denominator, grad = _hard_label_terms(logp, t, keep, w, eps, smooth_c)
    else:
        tp = (1 - eps) * t.astype(x.dtype) + smooth_c
        wt = w * tp
        with np.errstate(invalid="ignore"):
            # 0 * log p = 0 where a masked class (-inf) has no target mass
            losses = -np.sum(np.where(wt != 0, wt * logp, 0.0), axis=-1)
            grad = np.sum(wt, axis=-1, keepdims=True) * np.exp(logp) - wt
        denominator = losses.size
    loss = _reduce(losses, reduction, denominator, result)
    if not want_grad:
        return loss
    scale = _grad_rows(grad_output, reduction, x.shape[:-1], denominator)
    grad = (grad * scale.astype(x.dtype).reshape(x.shape[:-1] + (1,))).astype(result, copy=False)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise checks.output_kind_error("out", "a NumPy array", out)
        checks.check_output(out.shape, out.dtype, x.shape, result)
        if not out.flags.writeable:
            raise checks.read_only_error("out")
        out[...] = grad
        return loss, out
    return loss, grad


def cross_entropy(logits: ArrayLike, target: ArrayLike, *, weight: Optional[ArrayLike] = None,
                  ignore_index: int = checks.IGNORE_INDEX_DEFAULT, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Any:
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, False)


def cross_entropy_with_grad(logits: ArrayLike, target: ArrayLike, *,
                            weight: Optional[ArrayLike] = None,
                            ignore_index: int = checks.IGNORE_INDEX_DEFAULT,
                            reduction: str = "mean", label_smoothing: float = 0.0,
                            grad_output: Optional[ArrayLike] = None,
                            out: Optional[np.ndarray] = None) -> Tuple[Any, np.ndarray]:
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, True,
                          grad_output, out)


# ---------------------------------------------------- binary cross-entropy
def _binary(values, target, weight, pos_weight, reduction, from_logits, want_grad, grad_output):
    name = "logits" if from_logits else "probs"
    v, result = _work(values, name)
    t, _ = _work(target, "target")
    checks.same_shape(v.shape, t.shape, (name, "target"))
    reduction = checks.check_reduction(reduction).value
    t = t.astype(v.dtype, copy=False)
    w = 1.0 if weight is None else np.broadcast_to(_work(weight, "weight")[0].astype(v.dtype), v.shape)
    if from_logits:
        pw = 1.0 if pos_weight is None else np.broadcast_to(_work(pos_weight, "pos_weight")[0].astype(v.dtype), v.shape)
        with np.errstate(over="ignore", invalid="ignore"):
            # (1 - t) softplus(x) + pw t softplus(-x): terms >= 0, no cancellation
            log1p_e = np.log1p(np.exp(-np.abs(v)))
            losses = w * ((1 - t) * (log1p_e + np.maximum(v, 0)) + pw * t * (log1p_e + np.maximum(-v, 0)))
            losses = np.where(v == -np.inf, np.nan, losses)  # as PyTorch's (1 - t) x + ...
            sig = np.where(v >= 0, 1 / (1 + np.exp(-np.abs(v))), np.exp(-np.abs(v)) / (1 + np.exp(-np.abs(v))))
            sig_neg = np.where(v < 0, 1 / (1 + np.exp(-np.abs(v))), np.exp(-np.abs(v)) / (1 + np.exp(-np.abs(v))))
            grad = w * ((1 - t) * sig - pw * t * sig_neg)
    else:
        bad = (v < 0) | (v > 1)
        if bad.any():
            where = np.unravel_index(int(np.flatnonzero(bad.reshape(-1))[0]), v.shape)
            raise ValueError(f"probs must be in [0, 1]; found {v[where]!r} at index {where}")
        with np.errstate(divide="ignore", invalid="ignore"):
            losses = -w * (t * np.maximum(np.log(v), -100) + (1 - t) * np.maximum(np.log1p(-v), -100))
            grad = w * (v - t) / np.maximum(v * (1 - v), float(np.float32(1e-12)))  # PyTorch's float32 epsilon
    losses = np.broadcast_to(losses, v.shape)
    loss = _reduce(losses, reduction, v.size, result)
    if not want_grad:
        return loss
    g = 1.0 if grad_output is None else _work(grad_output, "grad_output")[0].astype(v.dtype)
    if np.ndim(g) and reduction != "none":
        raise ValueError(f"grad_output for reduction={reduction!r} must be a scalar, got shape {np.shape(g)}")
    g = np.broadcast_to(g, v.shape)  # "none": anything that broadcasts, like weight (else ValueError)
    if reduction == "mean":
        g = g * checks.mean_of(1.0, v.size)
    return loss, np.broadcast_to(grad * g, v.shape).astype(result)


def binary_cross_entropy(probs: ArrayLike, target: ArrayLike, *, weight: Optional[ArrayLike] = None,
                         reduction: str = "mean") -> Any:
    return _binary(probs, target, weight, None, reduction, False, False, None)


def binary_cross_entropy_with_grad(probs: ArrayLike, target: ArrayLike, *, weight: Optional[ArrayLike] = None,
                                   reduction: str = "mean",
                                   grad_output: Optional[ArrayLike] = None) -> Tuple[Any, np.ndarray]:
    return _binary(probs, target, weight, None, reduction, False, True, grad_output)


def binary_cross_entropy_with_logits(logits: ArrayLike, target: ArrayLike, *,
                                     weight: Optional[ArrayLike] = None,
                                     pos_weight: Optional[ArrayLike] = None, reduction: str = "mean") -> Any:
    return _binary(logits, target, weight, pos_weight, reduction, True, False, None)


def binary_cross_entropy_with_logits_with_grad(logits: ArrayLike, target: ArrayLike, *,
                                               weight: Optional[ArrayLike] = None,
                                               pos_weight: Optional[ArrayLike] = None,
                                               reduction: str = "mean",
                                               grad_output: Optional[ArrayLike] = None
                                               ) -> Tuple[Any, np.ndarray]:
    return _binary(logits, target, weight, pos_weight, reduction, True, True, grad_output)


# -------------------------------------------------------------- divergences
def _pair(p, q):
    a, ra = _work(p, "p")
    b, rb = _work(q, "q")
    checks.same_shape(a.shape, b.shape, ("p", "q"))
    work = np.promote_types(a.dtype, b.dtype)
    return a.astype(work, copy=False), b.astype(work, copy=False), np.promote_types(ra, rb)


def entropy_with_grad(p: ArrayLike, axis: Axis = -1) -> Tuple[Any, np.ndarray]:
    a, result = _work(p, "p")
    axes = _axes(a, axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(a > 0, -a * np.log(np.where(a > 0, a, 1)), np.where(a == 0, 0.0, -np.inf))
        terms = np.where(np.isnan(a), np.nan, terms)
        grad = -(np.log(a) + 1)
    return _result(np.sum(terms, axis=axes), result), grad.astype(result)


def entropy(p: ArrayLike, axis: Axis = -1) -> Any:
    return entropy_with_grad(p, axis)[0]


def _divergence(p, q, axis, kl):
    a, b, result = _pair(p, q)
    axes = _axes(a, axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        if kl:  # scipy.special.rel_entr; log p - log q where p/q over- or underflows
            ratio = a / b
            in_range = (ratio < np.inf) & (ratio >= np.finfo(ratio.dtype).tiny)
            log_ratio = np.where(in_range, np.log(ratio), np.log(a) - np.log(b))
            terms = np.where((a > 0) & (b > 0), a * log_ratio,
                             np.where((a == 0) & (b >= 0), 0.0, np.inf))
        else:  # -scipy.special.xlogy(p, q)
            terms = np.where(a == 0, 0.0, -a * np.log(b))
        terms = np.where(np.isnan(a) | np.isnan(b), np.nan, terms)
        grad = np.where(a == 0, 0.0, -a / np.where(b == 0, 0.0, b))  # q = -0.0 counts as 0
    return _result(np.sum(terms, axis=axes), result), grad.astype(result)


def kl_divergence(p: ArrayLike, q: ArrayLike, axis: Axis = -1) -> Any:
    return _divergence(p, q, axis, True)[0]


def kl_divergence_with_grad(p: ArrayLike, q: ArrayLike, axis: Axis = -1) -> Tuple[Any, np.ndarray]:
    return _divergence(p, q, axis, True)


def cross_entropy_probs(p: ArrayLike, q: ArrayLike, axis: Axis = -1) -> Any:
    return _divergence(p, q, axis, False)[0]


def cross_entropy_probs_with_grad(p: ArrayLike, q: ArrayLike, axis: Axis = -1) -> Tuple[Any, np.ndarray]:
    return _divergence(p, q, axis, False)


# ------------------------------------------------------ linear cross-entropy


def _linear_operands(x, W, bias):
    xa, rx = _work(x, "x")
    Wa, rw = _work(W, "W")
    work, result = np.promote_types(xa.dtype, Wa.dtype), np.promote_types(rx, rw)
    if bias is not None:
        ba, rb = _work(bias, "bias")
        work, result = np.promote_types(work, ba.dtype), np.promote_types(result, rb)
    if xa.ndim == 0 or Wa.ndim != 2 or xa.shape[-1] != Wa.shape[1]:
        raise ValueError(f"x (..., D) and W (C, D) do not match: x {xa.shape}, W {Wa.shape}")
    if bias is not None and ba.shape != (Wa.shape[0],):
        raise ValueError(f"bias must have shape ({Wa.shape[0]},), got {ba.shape}")
    b = None if bias is None else ba.astype(work)
    return xa.astype(work, copy=False), Wa.astype(work, copy=False), b, result


def linear_cross_entropy_with_grad(x: ArrayLike, W: ArrayLike, target: ArrayLike, *,
                                   bias: Optional[ArrayLike] = None, l2: float = 0.0,
                                   weight: Optional[ArrayLike] = None, ignore_index: int = checks.IGNORE_INDEX_DEFAULT,
                                   reduction: str = "mean", label_smoothing: float = 0.0,
                                   grad_output=None, chunk_size: Optional[int] = None):
    """Full logits f = x Wᵀ + b, then cross-entropy; (loss, (dx, dW, dbias)).
    loss = reduce(L_n) + (l2/2)||W||², dW = Gᵀx + l2·W (times grad_output);
    ``chunk_size`` is accepted and ignored."""
    xa, Wa, b, result = _linear_operands(x, W, bias)
    if l2 and reduction == "none":
        raise ValueError("l2 != 0 needs reduction='mean' or 'sum'")
    logits = xa @ Wa.T if b is None else xa @ Wa.T + b
    loss, G = cross_entropy_with_grad(logits, target, weight=weight, ignore_index=ignore_index,
                                      reduction=reduction, label_smoothing=label_smoothing,
                                      grad_output=grad_output)
    g = 1.0 if grad_output is None or reduction == "none" else float(grad_output)
    G2, x2 = G.reshape(-1, Wa.shape[0]), xa.reshape(-1, Wa.shape[1])
    if l2:
        loss = loss + np.asarray(l2 / 2 * np.sum(Wa.astype(np.float64) ** 2), dtype=loss.dtype)
    dW = G2.T @ x2 + g * l2 * Wa
    dbias = None if b is None else G2.sum(axis=0)
    return _result(loss, result), (_result(G @ Wa, result), _result(dW, result),
                                   None if dbias is None else _result(dbias, result))


def linear_cross_entropy(x: ArrayLike, W: ArrayLike, target: ArrayLike, *,
                         bias: Optional[ArrayLike] = None, l2: float = 0.0,
                         weight: Optional[ArrayLike] = None, ignore_index: int = checks.IGNORE_INDEX_DEFAULT,
                         reduction: str = "mean", label_smoothing: float = 0.0,
                         chunk_size: Optional[int] = None):
    return linear_cross_entropy_with_grad(x, W, target, bias=bias, l2=l2, weight=weight,
                                          ignore_index=ignore_index, reduction=reduction,
                                          label_smoothing=label_smoothing)[0]
