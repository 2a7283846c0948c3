"""CPU kernels: row-wise logsumexp, softmax and log-softmax.

Inputs are validated 2-D C-contiguous (rows, classes) float32/float64 arrays.
"""

import math

import numpy as np
from numba import prange

from fastxent._jit import kernel
from fastxent.cpu._rows import row_logsumexp, row_max_and_sum_exp, scale_exp_row, task_rows


@kernel
def _logsumexp_rows(x, out, rows_per_task):
    n_rows = x.shape[0]
    for task in prange((n_rows + rows_per_task - 1) // rows_per_task):
        start, stop = task_rows(task, rows_per_task, n_rows)
        for i in range(start, stop):
            out[i] = row_logsumexp(x[i])


@kernel
def _softmax_rows(x, out, log, rows_per_task):
    n_rows = x.shape[0]
    one = x.dtype.type(1.0)
    for task in prange((n_rows + rows_per_task - 1) // rows_per_task):
        start, stop = task_rows(task, rows_per_task, n_rows)
        for i in range(start, stop):
            row = x[i]
            m, s = row_max_and_sum_exp(row)
            if log:
                # x - max - log(sum), not log(softmax): exact for tiny probabilities
                shift = m + x.dtype.type(math.log(s))
                out_row = out[i]
                for j in range(row.shape[0]):
                    out_row[j] = row[j] - shift
            else:
                scale_exp_row(row, m, one / x.dtype.type(s), out[i])


def logsumexp_rows(x: np.ndarray, out: np.ndarray, rows_per_task: int) -> None:
    """out[i] = log sum_j exp(x[i, j])   (out: float64, shape (rows,))."""
    _logsumexp_rows(x.size, x, out, rows_per_task)


def softmax_rows(x: np.ndarray, out: np.ndarray, log: bool, rows_per_task: int) -> None:
    """out = softmax(x) (or log_softmax) along the rows; out has x's shape and dtype."""
    _softmax_rows(x.size, x, out, log, rows_per_task)
