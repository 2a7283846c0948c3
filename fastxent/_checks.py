"""Argument validation and normalisation to 2-D (rows, classes) problems.

Everything a kernel relies on is checked here, before any kernel runs: Numba
does not bounds-check, so a wrong shape or label would read or write out of
bounds.  Checks that only need shapes and dtypes take plain tuples, so the
CUDA path shares them.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np

try:  # numpy >= 2
    from numpy.lib.array_utils import normalize_axis_tuple
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.numeric import normalize_axis_tuple

Axis = Union[int, Sequence[int], None]
REDUCTIONS = ("none", "mean", "sum")


# ----------------------------------------------------------------- dtypes
def compute_dtype(dtype: np.dtype, name: str) -> tuple[np.dtype, np.dtype]:
    """(dtype the kernels compute in, dtype of the result) for an input dtype.

    float32/float64 natively; float16 computed in float32, returned as float16;
    bool and integers promoted to float64 as NumPy would; anything else is a
    TypeError naming the dtype."""
    dtype = np.dtype(dtype)
    if dtype == np.float32 or dtype == np.float64:
        return dtype, dtype
    if dtype == np.float16:
        return np.dtype(np.float32), dtype
    if dtype.kind in "biu":
        return np.dtype(np.float64), np.dtype(np.float64)
    raise TypeError(
        f"{name}: unsupported dtype {dtype}; fastxent takes float16/32/64, integer or bool arrays"
    )


def float_array(x: Any, name: str) -> tuple[np.ndarray, np.dtype]:
    """``x`` as a NumPy array in its compute dtype, and the result dtype."""
    a = np.asarray(x)
    work, result = compute_dtype(a.dtype, name)
    return (a if a.dtype == work else a.astype(work)), result


def common_float_arrays(x: Any, y: Any, names: tuple[str, str]):
    """Two float inputs computed in one dtype (NumPy's promotion of the two)."""
    a, b = np.asarray(x), np.asarray(y)
    work_a, res_a = compute_dtype(a.dtype, names[0])
    work_b, res_b = compute_dtype(b.dtype, names[1])
    work = np.promote_types(work_a, work_b)
    result = np.promote_types(res_a, res_b)
    return a.astype(work, copy=False), b.astype(work, copy=False), result


# ----------------------------------------------------------------- shapes
class Rows:
    """How an N-d array maps to a C-contiguous (rows, classes) problem.

    ``axes`` are the reduced (class) axes, moved last in their order; the
    remaining ``batch_shape`` axes become the rows.  (A plain class with
    __slots__: it is built on every call, and a (64, 10) call must take
    microseconds.)"""

    __slots__ = ("shape", "axes", "perm", "batch_shape", "n_rows", "n_classes", "is_identity")

    def __init__(self, shape: tuple, axes: tuple, perm: tuple, batch_shape: tuple,
                 n_rows: int, n_classes: int):
        self.shape, self.axes, self.perm = shape, axes, perm
        self.batch_shape, self.n_rows, self.n_classes = batch_shape, n_rows, n_classes
        self.is_identity = perm == tuple(range(len(shape)))  # no transpose needed

    def restore_rows(self, values: np.ndarray, keepdims: bool = False) -> np.ndarray:
        """(rows,) results back to the batch shape (with size-1 axes if keepdims)."""
        out = values.reshape(self.batch_shape)
        if keepdims:
            out = out.reshape([1 if d in self.axes else n for d, n in enumerate(self.shape)])
        return out

    def restore_full(self, values: np.ndarray) -> np.ndarray:
        """(rows, classes) results back to the input's shape and axis order."""
        if self.is_identity:
            return values.reshape(self.shape)
        moved = values.reshape([self.shape[d] for d in self.perm])
        return moved.transpose(np.argsort(self.perm))


def rows_layout(shape: tuple, axis: Axis) -> Rows:
    """The :class:`Rows` mapping of an array of ``shape`` reduced over ``axis``."""
    ndim = len(shape)
    if (axis == -1 or axis == ndim - 1) and ndim and type(axis) is int:
        # fast path: the class axis is already last
        batch_shape = tuple(shape[:-1])
        return Rows(tuple(shape), (ndim - 1,), tuple(range(ndim)), batch_shape,
                    math.prod(batch_shape), shape[-1])
    if axis is None:
        axes = tuple(range(ndim))
    else:
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer, tuple, list)):
            raise TypeError(f"axis must be an int, a tuple of ints or None, not {axis!r}")
        axes = tuple(normalize_axis_tuple(axis, ndim, "axis"))
    batch_axes = tuple(d for d in range(ndim) if d not in axes)
    batch_shape = tuple(shape[d] for d in batch_axes)
    return Rows(tuple(shape), axes, batch_axes + axes, batch_shape, math.prod(batch_shape),
                math.prod(shape[d] for d in axes))


def as_rows(a: np.ndarray, layout: Rows) -> np.ndarray:
    """``a`` as a C-contiguous (rows, classes) array (a view when it already is one)."""
    if not layout.is_identity:
        a = a.transpose(layout.perm)
    return np.ascontiguousarray(a.reshape(layout.n_rows, layout.n_classes))


def last_axis_rows(shape: tuple[int, ...], name: str) -> Rows:
    """Layout for functions whose class axis is the last one (cross-entropy)."""
    if len(shape) == 0:
        raise ValueError(f"{name} must have at least one dimension (the class axis), got a scalar")
    return rows_layout(shape, -1)


def same_shape(a_shape: tuple, b_shape: tuple, names: tuple[str, str]) -> None:
    if tuple(a_shape) != tuple(b_shape):
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a_shape)} and {tuple(b_shape)}"
        )


# ------------------------------------------------------------ loss options
def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_label_smoothing(label_smoothing: float) -> float:
    try:
        eps = float(label_smoothing)
    except (TypeError, ValueError):
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}") from None
    if not 0.0 <= eps <= 1.0:  # also rejects NaN
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return eps


def check_ignore_index(ignore_index: Any) -> int:
    if type(ignore_index) is int:  # the usual call, fast
        return ignore_index
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    return int(ignore_index)


def class_weight(weight: Any, n_classes: int) -> Optional[np.ndarray]:
    """``weight`` as a contiguous float64 vector of length C (or None)."""
    if weight is None:
        return None
    w = np.asarray(weight)
    compute_dtype(w.dtype, "weight")
    if w.shape != (n_classes,):
        raise ValueError(
            f"weight must be a 1-D array with one entry per class ({n_classes}), got shape {w.shape}"
        )
    return np.ascontiguousarray(w, dtype=np.float64)


def is_class_index_target(target: np.ndarray, logits_shape: tuple, name: str = "target") -> bool:
    """True for integer class indices (shape logits.shape[:-1]), False for
    probabilities (shape logits.shape); anything else is an error."""
    kind = target.dtype.kind
    if kind in "iu":
        if target.shape != tuple(logits_shape[:-1]):
            raise ValueError(
                f"class-index {name} must have shape logits.shape[:-1] = {tuple(logits_shape[:-1])}, "
                f"got {target.shape}"
            )
        return True
    if kind == "f":
        if target.shape != tuple(logits_shape):
            hint = (" (class indices must have an integer dtype)"
                    if target.shape == tuple(logits_shape[:-1]) else "")
            raise ValueError(
                f"probability {name} must have the shape of logits {tuple(logits_shape)}, "
                f"got {target.shape}{hint}"
            )
        return False
    raise TypeError(
        f"{name}: unsupported dtype {target.dtype}; use integer class indices or float probabilities"
    )


def bad_label_error(label: int, row: int, batch_shape: tuple, n_classes: int,
                    ignore_index: int) -> IndexError:
    where = np.unravel_index(row, batch_shape) if len(batch_shape) > 1 else row
    if isinstance(where, tuple):
        where = tuple(int(i) for i in where)
    return IndexError(
        f"target {label} at row {where} is out of range for {n_classes} classes "
        f"(valid labels are 0..{n_classes - 1}, or ignore_index={ignore_index})"
    )


def grad_row_scale(grad_output: Any, reduction: str, batch_shape: tuple, denominator: float,
                   name: str = "grad_output") -> np.ndarray:
    """The per-row factor of the gradient: grad_output, divided by the mean's
    denominator; a float64 vector with one entry per row."""
    n_rows = math.prod(batch_shape)
    scale = np.empty(n_rows)
    if grad_output is None or type(grad_output) in (float, int):
        g = float(1.0 if grad_output is None else grad_output)  # the usual call: no 0-d arrays
    else:
        a = np.asarray(grad_output)
        compute_dtype(a.dtype, name)
        if reduction == "none" and a.ndim != 0:
            if a.shape != tuple(batch_shape):
                raise ValueError(
                    f"{name} for reduction='none' must be a scalar or have the loss's shape "
                    f"{tuple(batch_shape)}, got {a.shape}"
                )
            scale[...] = a.reshape(-1)
            return scale
        if a.ndim != 0:
            raise ValueError(f"{name} for reduction={reduction!r} must be a scalar, got shape {a.shape}")
        g = float(a)
    if reduction == "mean":  # NumPy's x / 0 = +-inf and 0 / 0 = NaN (no rows kept)
        g = g / denominator if denominator else (math.nan if g == 0 or math.isnan(g)
                                                 else math.copysign(math.inf, g))
    scale.fill(g)  # (np.full costs a microsecond more on a (64, 10) call)
    return scale


def output_array(out: Any, shape: tuple, dtype: np.dtype, name: str = "out") -> np.ndarray:
    """Check a user-supplied output array."""
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out
