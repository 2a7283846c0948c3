"""Fused linear cross-entropy: loss and gradients of a linear softmax classifier
without ever holding the full (rows x classes) logits.

Seed 000's model: scores f = x Wᵀ + b with W of shape (C, D), per-row loss
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

The ``l2`` penalty (the seed's (λ/2)‖W‖²) is *added to the reduced loss*, and
its gradient l2·W is added to dW, both times ``grad_output``:

    loss = reduce(Lₙ) + (l2/2)‖W‖²,   dW = ∂reduce(Lₙ)/∂W + l2·W.

With ``reduction="sum"`` this is exactly the seed's objective Σₙ Lₙ +
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
from fastxent._api import cross_entropy, cross_entropy_with_grad
from fastxent._backend import is_cuda_array, is_dask_array

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad", "auto_chunk_rows"]

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


def auto_chunk_rows(n_rows: int, n_classes: int, itemsize: int) -> int:
    """Rows per chunk: a logits block of about the cache size (see
    ``_block_bytes``), at least 32 rows, at most all of them; a multiple of 8."""
    rows = _block_bytes() // max(n_classes * itemsize, 1)
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


class _Problem:
    """Validated, normalised inputs: 2-D x (rows, D), W (C, D), bias, targets,
    the mean's denominator and the gradient scale."""

    __slots__ = ("x2", "W", "bias", "labels", "soft", "batch_shape", "x_shape", "dtype",
                 "result_dtype", "n_classes", "weight", "ignore_index", "reduction",
                 "smoothing", "l2", "denominator", "chunk_rows", "hard")


def _prepare(x, W, target, bias, l2, weight, ignore_index, reduction, label_smoothing,
             chunk_size) -> _Problem:
    p = _Problem()
    xa = np.asarray(x)
    Wa = np.asarray(W)
    work_x, res_x = checks.compute_dtype(xa.dtype, "x")
    work_w, res_w = checks.compute_dtype(Wa.dtype, "W")
    work, result = np.promote_types(work_x, work_w), np.promote_types(res_x, res_w)
    ba = None
    if bias is not None:
        ba = np.asarray(bias)
        work_b, res_b = checks.compute_dtype(ba.dtype, "bias")
        work, result = np.promote_types(work, work_b), np.promote_types(result, res_b)

    if xa.ndim == 0:
        raise ValueError("x must have at least one dimension (the feature axis), got a scalar")
    if Wa.ndim != 2:
        raise ValueError(f"W must be a 2-D array of shape (classes, features), got shape {Wa.shape}")
    n_classes, n_features = Wa.shape
    if xa.shape[-1] != n_features:
        raise ValueError(
            f"x has {xa.shape[-1]} features (last axis) but W has {n_features} "
            f"(W must have shape (classes, features) = (C, {xa.shape[-1]})), got x {xa.shape} "
            f"and W {Wa.shape}"
        )
    if ba is not None and ba.shape != (n_classes,):
        raise ValueError(f"bias must have shape (classes,) = ({n_classes},), got {ba.shape}")

    p.reduction = checks.check_reduction(reduction)
    p.smoothing = checks.check_label_smoothing(label_smoothing)
    p.ignore_index = checks.check_ignore_index(ignore_index)
    p.weight = checks.class_weight(weight, n_classes)
    p.l2 = _check_l2(l2)
    if p.l2 != 0.0 and p.reduction == "none":
        raise ValueError(
            "l2 != 0 needs reduction='mean' or 'sum': the penalty (l2/2)*||W||^2 belongs to no "
            "single row (add it to the summed per-row losses yourself)"
        )
    chunk_size = _check_chunk_size(chunk_size)

    batch_shape = tuple(xa.shape[:-1])
    n_rows = math.prod(batch_shape)
    t = np.asarray(target)
    p.hard = checks.is_class_index_target(t, batch_shape + (n_classes,))
    if p.hard:
        labels = t.reshape(n_rows)
        keep = labels != p.ignore_index
        bad = keep & ((labels < 0) | (labels >= n_classes))
        if bad.any():
            row = int(np.argmax(bad))
            raise checks.bad_label_error(int(labels[row]), row, batch_shape, n_classes,
                                         p.ignore_index)
        kept = labels[keep]
        p.denominator = float(kept.size) if p.weight is None else float(p.weight[kept].sum())
        p.labels = labels
        p.soft = None
    else:
        checks.compute_dtype(t.dtype, "target")
        p.soft = t.reshape(n_rows, n_classes)
        p.labels = None
        p.denominator = float(n_rows)

    # Everything checked: now the (possibly copying) conversions.
    x2 = xa.reshape(n_rows, n_features)
    if x2.dtype != work:
        x2 = x2.astype(work)
    Wc = Wa if Wa.dtype == work else Wa.astype(work)
    if not (Wc.flags.c_contiguous or Wc.flags.f_contiguous):
        Wc = np.ascontiguousarray(Wc)  # else every chunk's matmul would copy it
    p.x2, p.W = x2, Wc
    p.bias = None if ba is None else np.ascontiguousarray(ba, dtype=work)
    p.batch_shape, p.x_shape = batch_shape, xa.shape
    p.dtype, p.result_dtype = np.dtype(work), np.dtype(result)
    p.n_classes = n_classes
    p.chunk_rows = chunk_size or auto_chunk_rows(n_rows, n_classes, p.dtype.itemsize)
    return p


def _grad_scale(grad_output: Any, p: _Problem) -> Tuple[float, Optional[np.ndarray]]:
    """(scalar factor of the data gradient for "mean"/"sum", per-row factors for "none")."""
    if p.reduction == "none":
        rows = checks.grad_row_scale(grad_output, "none", p.batch_shape, 1.0)
        return 1.0, rows
    if grad_output is None:
        g = 1.0
    else:
        ga = np.asarray(grad_output)
        checks.compute_dtype(ga.dtype, "grad_output")
        if ga.ndim != 0:
            raise ValueError(
                f"grad_output for reduction={p.reduction!r} must be a scalar, got shape {ga.shape}")
        g = float(ga)
    return g, None


# ---------------------------------------------------------------- the loop
def _mean(total: float, denominator: float) -> float:
    """total / denominator with PyTorch's answer for an empty denominator."""
    if denominator == 0:
        return math.nan if total == 0 or math.isnan(total) else math.copysign(math.inf, total)
    return total / denominator


def _squared_norm(W: np.ndarray) -> float:
    """‖W‖² accumulated in float64, a block of rows at a time (no W-sized copy)."""
    rows = max(1, (1 << 16) // max(W.shape[1], 1))
    total = 0.0
    for start in range(0, W.shape[0], rows):
        block = W[start:start + rows].astype(np.float64).ravel()
        total += float(np.dot(block, block))
    return total


def _run(p: _Problem, want_grad: bool, grad_output: Any = None, want_dx: bool = True):
    """The chunked loop.  Returns (loss in the result dtype, dx, dW, dbias)."""
    n_rows = p.x2.shape[0]
    C, D = p.W.shape
    chunk = p.chunk_rows
    none = p.reduction == "none"
    ce_kw = dict(weight=p.weight, ignore_index=p.ignore_index, label_smoothing=p.smoothing)

    g, row_scale = (1.0, None)
    if want_grad:
        g, row_scale = _grad_scale(grad_output, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        # the data term's gradient factor; 1/0 = inf makes kept rows NaN, as in PyTorch
        scale = float(np.float64(g) / np.float64(p.denominator)) if p.reduction == "mean" else g

    losses = np.empty(n_rows, dtype=p.dtype) if none else None
    total = 0.0
    dx2 = dW = dbias = tmp = None
    if want_grad:
        dx2 = np.empty((n_rows, D), dtype=p.dtype) if want_dx else None
        dW = np.zeros((C, D), dtype=p.dtype)
        if p.l2 != 0.0:
            np.multiply(p.W, p.dtype.type(g * p.l2), out=dW)
        dbias = np.zeros(C, dtype=np.float64) if p.bias is not None else None

    buf = np.empty((min(chunk, n_rows), C), dtype=p.dtype) if n_rows else None
    WT = p.W.T
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        xc = p.x2[start:stop]
        if not (xc.flags.c_contiguous or xc.flags.f_contiguous):
            xc = np.ascontiguousarray(xc)
        logits = buf[: stop - start]
        np.matmul(xc, WT, out=logits)
        if p.bias is not None:
            logits += p.bias
        tc = p.labels[start:stop] if p.hard else p.soft[start:stop]

        if not want_grad:
            value = cross_entropy(logits, tc, reduction="none" if none else "sum", **ce_kw)
            if none:
                losses[start:stop] = value
            else:
                total += float(value)
            continue

        if none:
            value, G = cross_entropy_with_grad(logits, tc, reduction="none",
                                               grad_output=row_scale[start:stop], out=logits, **ce_kw)
            losses[start:stop] = value
        else:
            value, G = cross_entropy_with_grad(logits, tc, reduction="sum", grad_output=scale,
                                               out=logits, **ce_kw)
            total += float(value)
        # G is the logits buffer, now holding the scaled gradient
        if dx2 is not None:
            np.matmul(G, p.W, out=dx2[start:stop])
        if start == 0 and p.l2 == 0.0:
            np.matmul(G.T, xc, out=dW)
        else:
            if tmp is None:
                tmp = np.empty((C, D), dtype=p.dtype)
            np.matmul(G.T, xc, out=tmp)
            dW += tmp
        if dbias is not None:
            dbias += np.add.reduce(G, axis=0, dtype=np.float64)

    rdt = p.result_dtype
    if none:
        loss = losses.reshape(p.batch_shape).astype(rdt, copy=False)
        loss = loss[()] if loss.ndim == 0 else loss
    else:
        value = _mean(total, p.denominator) if p.reduction == "mean" else total
        if p.l2 != 0.0:
            value += 0.5 * p.l2 * _squared_norm(p.W)
        loss = rdt.type(value)
    if not want_grad:
        return loss, None, None, None
    dx = None
    if dx2 is not None:
        dx = dx2.reshape(p.x_shape).astype(rdt, copy=False)
    dW = dW.astype(rdt, copy=False)
    if dbias is not None:
        dbias = dbias.astype(rdt)
    return loss, dx, dW, dbias


# ------------------------------------------------------------------ public
def _refuse_cuda(*arrays) -> None:
    if any(is_cuda_array(a) for a in arrays):
        raise NotImplementedError(
            "linear_cross_entropy does not take CUDA arrays yet: copy them to the host "
            "(NumPy) or use the CUDA cross_entropy_with_grad on logits you computed")


def linear_cross_entropy(x: ArrayLike, W: ArrayLike, target: ArrayLike, *,
                         bias: Optional[ArrayLike] = None, l2: float = 0.0,
                         weight: Optional[ArrayLike] = None, ignore_index: int = -100,
                         reduction: str = "mean", label_smoothing: float = 0.0,
                         chunk_size: Optional[int] = None) -> Any:
    """Cross-entropy of the linear scores ``x @ W.T + bias`` against ``target``,
    plus ``(l2/2) * ||W||**2``, without materialising the full logits.

    ``x`` has shape (..., D) (leading axes are batch axes), ``W`` (C, D) as in
    seed 000, ``bias`` (C,).  ``target`` and every other keyword have the
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
    if any(is_dask_array(a) for a in (x, W, target, bias)):
        from fastxent import dask as dask_backend

        return dask_backend.linear_cross_entropy(
            x, W, target, bias=bias, l2=l2, weight=weight, ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing, chunk_size=chunk_size)
    _refuse_cuda(x, W, target, bias)
    p = _prepare(x, W, target, bias, l2, weight, ignore_index, reduction, label_smoothing,
                 chunk_size)
    return _run(p, want_grad=False)[0]


def linear_cross_entropy_with_grad(x: ArrayLike, W: ArrayLike, target: ArrayLike, *,
                                   bias: Optional[ArrayLike] = None, l2: float = 0.0,
                                   weight: Optional[ArrayLike] = None, ignore_index: int = -100,
                                   reduction: str = "mean", label_smoothing: float = 0.0,
                                   grad_output: Optional[ArrayLike] = None,
                                   chunk_size: Optional[int] = None):
    """:func:`linear_cross_entropy` and its gradients: ``(loss, (dx, dW, dbias))``.

    dx = G W, dW = Gᵀ x + l2·W, dbias = Σ_rows G, with G the gradient of the
    reduced loss with respect to the logits (seed 000: (ŷ − δ), scaled by the
    reduction), all times ``grad_output`` (a scalar, or one value per row for
    ``reduction="none"``).  ``dbias`` is None without ``bias``.  One fused pass
    per chunk of rows; the extra memory is one chunk of logits and one (C, D)
    block.
    """
    if any(is_dask_array(a) for a in (x, W, target, bias)):
        from fastxent import dask as dask_backend

        return dask_backend.linear_cross_entropy_with_grad(
            x, W, target, bias=bias, l2=l2, weight=weight, ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing, grad_output=grad_output,
            chunk_size=chunk_size)
    _refuse_cuda(x, W, target, bias)
    p = _prepare(x, W, target, bias, l2, weight, ignore_index, reduction, label_smoothing,
                 chunk_size)
    loss, dx, dW, dbias = _run(p, want_grad=True, grad_output=grad_output)
    return loss, (dx, dW, dbias)
