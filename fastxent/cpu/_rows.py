"""Inner loops over one row, shared by every kernel family.

A "row" is a contiguous 1-D float32 or float64 array (the class axis).  Sums
of exponentials accumulate in float64 whatever the input dtype, so float32
results stay within 1e-5 of the float64 reference for any class count.
"""

import math

import numpy as np

from fastxent._jit import helper
from fastxent.cpu._fastmath import fast_exp


@helper
def task_rows(task, rows_per_task, n_rows):
    """The [start, stop) row range of parallel task number ``task``."""
    start = task * rows_per_task
    return start, min(start + rows_per_task, n_rows)


@helper
def row_max(x):
    """Largest element, NaN ignored (-inf for an empty or all -inf row).

    A NaN in the row still poisons the result, through the sum of
    exponentials that always follows."""
    m = -np.inf
    for j in range(x.shape[0]):
        v = x[j]
        m = v if v > m else m
    return x.dtype.type(m)


@helper
def row_sum_exp(x, shift):
    """sum_j exp(x_j - shift), accumulated in float64."""
    s = 0.0
    for j in range(x.shape[0]):
        s += np.float64(fast_exp(x[j] - shift))
    return s


@helper
def row_sum(x):
    """sum_j x_j, accumulated in float64."""
    s = 0.0
    for j in range(x.shape[0]):
        s += np.float64(x[j])
    return s


@helper
def row_max_and_sum_exp(x):
    """(m, sum_j exp(x_j - m)) with m the row maximum: the softmax normaliser.

    An all -inf row gives m = -inf and a NaN sum (x - m = NaN), so that
    softmax, log-softmax and cross-entropy of such a row are NaN, as in
    PyTorch; logsumexp handles that row itself."""
    m = row_max(x)
    return m, row_sum_exp(x, m)


@helper
def row_logsumexp(x):
    """log sum_j exp(x_j), stable; -inf for an all -inf row, +inf if any x_j = +inf."""
    m = row_max(x)
    # Shift by the max only where it is finite (as scipy and PyTorch do):
    # then all -inf gives log(0) = -inf and +inf gives log(inf) = inf.
    shift = m if math.isfinite(m) else x.dtype.type(0.0)
    return np.float64(shift) + math.log(row_sum_exp(x, shift))


@helper
def scale_exp_row(x, shift, scale, out):
    """out_j = exp(x_j - shift) * scale: softmax once shift = max, scale = 1/sum."""
    for j in range(x.shape[0]):
        out[j] = fast_exp(x[j] - shift) * scale
