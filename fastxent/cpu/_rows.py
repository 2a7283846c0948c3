"""Inner loops over one row, shared by every kernel family.

A "row" is a contiguous 1-D float32 or float64 array (the class axis).  Sums
accumulate in the input dtype over blocks of ``SUM_BLOCK`` elements (LLVM
keeps 32 partial sums per vector loop, so each float32 partial sum holds at
most 64 terms) and the block sums in float64: float32 results stay within
1e-5 of the float64 reference for any class count, at float32 vector speed.
"""

import math

import numpy as np

from fastxent._jit import helper
from fastxent.cpu._fastmath import fast_exp, maxnum

SUM_BLOCK = 2048


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
    m = x.dtype.type(-np.inf)
    for j in range(x.shape[0]):
        m = maxnum(m, x[j])
    return m


@helper
def row_sum_exp(x, shift):
    """sum_j exp(x_j - shift), as a float64 (see the module docstring)."""
    n = x.shape[0]
    s = 0.0
    for start in range(0, n, SUM_BLOCK):
        block = x.dtype.type(0.0)
        for j in range(start, min(start + SUM_BLOCK, n)):
            block += fast_exp(x[j] - shift)
        s += np.float64(block)
    return s


@helper
def row_sum(x):
    """sum_j x_j, as a float64 (see the module docstring)."""
    n = x.shape[0]
    s = 0.0
    for start in range(0, n, SUM_BLOCK):
        block = x.dtype.type(0.0)
        for j in range(start, min(start + SUM_BLOCK, n)):
            block += x[j]
        s += np.float64(block)
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
