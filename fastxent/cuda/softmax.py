"""CUDA kernels: row-wise logsumexp, softmax and log-softmax.

One kernel, three modes: each group of threads (see ``_rows``) computes its
row's online (max, sum), merges it over the group, then either writes the
logsumexp (one value per row) or makes a second pass over the row writing
exp(x - m) / d or (x - m) - log d.  Rows holding +inf, or only -inf, give NaN
softmax / log-softmax rows (as on the CPU and in PyTorch); logsumexp gives +inf
and -inf for them.
"""

import math

import numpy as np

from fastxent.cuda._config import MAX_REGISTERS
from fastxent.cuda._numba_cuda import cuda, kernel, exp, log1p
from numba import float64

from fastxent.cuda._rows import SCRATCH, first_row, group_reduce, loop_rows, row_group, row_max_sum

LOGSUMEXP, SOFTMAX, LOG_SOFTMAX = 0, 1, 2


@kernel(MAX_REGISTERS)
def softmax_rows(x, out, mode, tpr, shuffle):
    """x: (rows, classes); out: (rows, 1) for LOGSUMEXP, x's shape otherwise."""
    scratch = cuda.shared.array(SCRATCH, float64)
    n_rows, n_classes = x.shape
    lane, group, groups = row_group(tpr)
    first, step = first_row(group, groups)
    for it in range(loop_rows(n_rows, groups)):
        row = first + it * step
        active = row < n_rows
        tm = -np.inf
        td = 0.0
        if active:
            tm, td = row_max_sum(x[row], lane, tpr)
        m, s, _ = group_reduce(tm, td, 0.0, tpr, shuffle, scratch)  # s: the excess (_rows)
        if not active:
            continue
        if mode == LOGSUMEXP:
            if lane == 0:
                out[row, 0] = m + log1p(s)
            continue
        if math.isinf(m):  # +inf or only -inf in the row: NaN, as on the CPU
            m = np.nan
        shift = x.dtype.type(m)
        xr = x[row]
        orow = out[row]
        if mode == SOFTMAX:
            inv = x.dtype.type(1.0 / (1.0 + s))
            for j in range(lane, n_classes, tpr):
                orow[j] = exp(xr[j] - shift) * inv
        else:
            log_d = x.dtype.type(log1p(s))
            for j in range(lane, n_classes, tpr):
                orow[j] = (xr[j] - shift) - log_d
