"""Argument validation and normalisation to 2-D (rows, classes) problems.

Everything a kernel relies on is checked here, before any kernel runs: Numba
does not bounds-check, so a wrong shape or label would read or write out of
bounds.  Every check takes metadata only (shapes, dtypes, option values), so
one check serves every backend; the rules that several functions share
(dtype promotion, the mean over a zero denominator, the shape of
``grad_output``, the errors for bad labels and probabilities) are written
here once.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from fastxent._backend import Reduction

try:  # numpy >= 2
    from numpy.lib.array_utils import normalize_axis_tuple
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.numeric import normalize_axis_tuple

Axis = Union[int, Sequence[int], None]
REDUCTIONS = ("none", "mean", "sum")
_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
_REDUCTIONS = {r.value: r for r in Reduction}

# The array functions by name.  One name on every backend: fastxent,
# fastxent.reference and fastxent.dask each define all of them.
ROW_FUNCTIONS = (
    "logsumexp", "softmax", "log_softmax",
    "cross_entropy", "cross_entropy_with_grad",
    "binary_cross_entropy", "binary_cross_entropy_with_grad",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad",
    "entropy", "entropy_with_grad", "kl_divergence", "kl_divergence_with_grad",
    "cross_entropy_probs", "cross_entropy_probs_with_grad",
)
LINEAR_FUNCTIONS = ("linear_cross_entropy", "linear_cross_entropy_with_grad")


# ----------------------------------------------------------------- dtypes
def compute_dtype(dtype: np.dtype, name: str) -> tuple[np.dtype, np.dtype]:
    """(dtype the kernels compute in, dtype of the result) for an input dtype.

    float32/float64 natively; float16 computed in float32, returned as float16;
    bool and integers promoted to float64 as NumPy would; anything else is a
    TypeError naming the dtype."""
    if dtype is _FLOAT32 or dtype is _FLOAT64:  # the usual call, fast
        return dtype, dtype
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


def common_compute_dtype(*named: Tuple[np.dtype, str]) -> tuple[np.dtype, np.dtype]:
    """(compute dtype, result dtype) of several float inputs, given as
    (dtype, name) pairs: each mapped by :func:`compute_dtype`, then promoted
    together as NumPy would."""
    work, result = compute_dtype(*named[0])
    for dtype, name in named[1:]:
        w, r = compute_dtype(dtype, name)
        work, result = np.promote_types(work, w), np.promote_types(result, r)
    return work, result


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

    def reduced_shape(self, keepdims: bool = False) -> tuple:
        """The shape of one result per row: the batch shape (with size-1
        class axes if keepdims)."""
        if keepdims:
            return tuple(1 if d in self.axes else n for d, n in enumerate(self.shape))
        return self.batch_shape

    def full_shape(self) -> tuple[tuple, Optional[tuple]]:
        """(shape, axes) that bring (rows, classes) results back to the
        input's shape and axis order: reshape to ``shape``, then transpose by
        ``axes`` (None: no transpose)."""
        if self.is_identity:
            return self.shape, None
        moved = tuple(self.shape[d] for d in self.perm)
        return moved, tuple(int(d) for d in np.argsort(self.perm))


_LAYOUTS: dict = {}  # (shape, axis) -> Rows, for int axes: most calls repeat a few shapes
_MAX_LAYOUTS = 256


def rows_layout(shape: tuple, axis: Axis) -> Rows:
    """The :class:`Rows` mapping of an array of ``shape`` reduced over
    ``axis`` (shared: never modify the result)."""
    if type(shape) is not tuple:
        shape = tuple(shape)
    if type(axis) is int:
        key = (shape, axis)
        layout = _LAYOUTS.get(key)
        if layout is None:
            layout = _rows_layout(shape, axis)
            if len(_LAYOUTS) >= _MAX_LAYOUTS:
                _LAYOUTS.clear()
            _LAYOUTS[key] = layout
        return layout
    return _rows_layout(shape, axis)


def _rows_layout(shape: tuple, axis: Axis) -> Rows:
    ndim = len(shape)
    if ndim == 0 and (axis is None or (type(axis) is int and axis in (-1, 0))):
        # a 0-d input is one row of one class (as SciPy takes it, for any such axis)
        return Rows((), (), (), (), 1, 1)
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


def broadcastable(shape: tuple, to: tuple, name: str) -> None:
    """ValueError unless an operand of ``shape`` broadcasts to ``to``."""
    try:
        ok = np.broadcast_shapes(tuple(shape), tuple(to)) == tuple(to)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name} of shape {tuple(shape)} does not broadcast to the input's shape "
                         f"{tuple(to)}")


# ------------------------------------------------------------ loss options
class _Default:
    """The default of ``ignore_index``: -100, but told apart from an explicit
    -100 (which probability targets refuse)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "-100"

    def __index__(self) -> int:
        return -100


#: ``ignore_index``'s default value (shows as -100).
IGNORE_INDEX_DEFAULT: Any = _Default()


def check_reduction(reduction: str) -> Reduction:
    """The :class:`Reduction` named by ``reduction``."""
    found = _REDUCTIONS.get(reduction) if type(reduction) is str else None
    if found is None:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return found


def check_label_smoothing(label_smoothing: float) -> float:
    if type(label_smoothing) is float and 0.0 <= label_smoothing <= 1.0:  # the usual call, fast
        return label_smoothing
    try:
        eps = float(label_smoothing)
    except (TypeError, ValueError):
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}") from None
    if not 0.0 <= eps <= 1.0:  # also rejects NaN
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return eps


def check_ignore_index(ignore_index: Any, *, class_indices: bool) -> int:
    """``ignore_index`` as an int.  With probability targets
    (``class_indices`` False) only the default is accepted: an explicit value
    is a ValueError, as in PyTorch."""
    if ignore_index is IGNORE_INDEX_DEFAULT:
        return -100
    if not class_indices:
        raise ValueError(
            f"ignore_index={ignore_index!r} is not supported with probability targets (float "
            "targets of the logits' shape): leave it at its default"
        )
    if type(ignore_index) is int:  # the usual call, fast
        return ignore_index
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    return int(ignore_index)


def check_class_weight(dtype: np.dtype, shape: tuple, n_classes: int) -> None:
    """A per-class ``weight`` has a float/int dtype and shape (C,)."""
    compute_dtype(dtype, "weight")
    if tuple(shape) != (n_classes,):
        raise ValueError(
            f"weight must be a 1-D array with one entry per class ({n_classes}), got shape {tuple(shape)}"
        )


def is_class_index_target(dtype: np.dtype, shape: tuple, logits_shape: tuple,
                          name: str = "target") -> bool:
    """True for integer class indices (shape logits.shape[:-1]), False for
    probabilities (float or bool, shape logits.shape; bool is promoted to
    float like every bool input); anything else is an error."""
    kind = np.dtype(dtype).kind
    if type(shape) is not tuple:
        shape = tuple(shape)
    if kind in "iu":
        if type(logits_shape) is tuple and shape == logits_shape[:-1]:  # the usual call, fast
            return True
        if shape != tuple(logits_shape[:-1]):
            raise ValueError(
                f"class-index {name} must have shape logits.shape[:-1] = {tuple(logits_shape[:-1])}, "
                f"got {shape}"
            )
        return True
    if kind == "b" and shape != tuple(logits_shape):
        raise TypeError(
            f"{name}: a bool target is a probability target (promoted to float64) and must have "
            f"the shape of logits {tuple(logits_shape)}, got {shape}; class indices need an "
            "integer dtype"
        )
    if kind in "fb":
        if shape != tuple(logits_shape):
            hint = (" (class indices must have an integer dtype)"
                    if shape == tuple(logits_shape[:-1]) else "")
            raise ValueError(
                f"probability {name} must have the shape of logits {tuple(logits_shape)}, "
                f"got {shape}{hint}"
            )
        return False
    raise TypeError(
        f"{name}: unsupported dtype {dtype}; use integer class indices or float probabilities"
    )


def _where(index: int, shape: tuple) -> Any:
    """A flat index as the multi-index of ``shape`` (plain ints), or itself in 1-D."""
    if len(shape) <= 1:
        return int(index)
    return tuple(int(i) for i in np.unravel_index(index, shape))


def bad_label_error(label: int, row: int, batch_shape: tuple, n_classes: int,
                    ignore_index: int) -> IndexError:
    """The error for a label outside [0, C) that is not ``ignore_index``."""
    return IndexError(
        f"target {label} at row {_where(row, batch_shape)} is out of range for {n_classes} classes "
        f"(valid labels are 0..{n_classes - 1}, or ignore_index={ignore_index})"
    )


def probability_range_error(value: Any, index: int, shape: tuple) -> ValueError:
    """The error for a BCE probability outside [0, 1]."""
    return ValueError(f"probs must be in [0, 1]; found {value!r} at index {_where(index, shape)}")


def mean_of(total: float, denominator: float) -> float:
    """total / denominator, the mean of a reduction (and the factor of its
    gradient).  A zero denominator -- no rows kept, or all kept rows of
    weight 0 -- gives NaN, whatever the total, as PyTorch does (its mean is
    0/0 there, and label smoothing only adds to a NaN)."""
    if denominator == 0:
        return math.nan
    return total / denominator


def grad_output_shape(shape: tuple, reduction: Reduction, loss_shape: tuple, *,
                      broadcast: bool, name: str = "grad_output") -> None:
    """``grad_output`` must be a scalar unless reduction is "none"; then it
    has the loss's shape (or, with ``broadcast``, broadcasts to it)."""
    shape = tuple(shape)
    if not shape:
        return
    if reduction is not Reduction.NONE:
        raise ValueError(f"{name} for reduction={reduction.value!r} must be a scalar, got shape {shape}")
    if broadcast:
        broadcastable(shape, loss_shape, name)
    elif shape != tuple(loss_shape):
        raise ValueError(
            f"{name} for reduction='none' must be a scalar or have the loss's shape "
            f"{tuple(loss_shape)}, got {shape}"
        )


def output_kind_error(name: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"{name} must be {expected}, got {type(got).__name__}")


def read_only_error(name: str) -> ValueError:
    return ValueError(f"{name} is read-only")


def check_output(shape: tuple, dtype: np.dtype, expected_shape: tuple, expected_dtype: np.dtype,
                 name: str = "out") -> None:
    """A user-supplied output array has the result's shape and dtype."""
    if tuple(shape) != tuple(expected_shape):
        raise ValueError(f"{name} must have shape {tuple(expected_shape)}, got {tuple(shape)}")
    if dtype != expected_dtype:
        raise ValueError(f"{name} must have dtype {expected_dtype}, got {dtype}")
