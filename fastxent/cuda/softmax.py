"""CUDA kernels: row-wise logsumexp, softmax and log-softmax.

One kernel, three modes: each group of threads (see ``_rows``) computes its
row's online (max, sum) in one read, merges it over the group, then either
writes the logsumexp (one value per row) or makes a second pass over the row
writing exp(x - m) / d or (x - m) - log d (loads of a batch before its
stores, 16-byte accesses where the rows are aligned).  log d is log1p of the
excess d - 1 (see ``_rows``), so a log-sum-exp near 0 keeps its relative
precision.  Rows holding +inf, or
only -inf, give NaN softmax / log-softmax rows (as on the CPU and in
PyTorch); logsumexp gives +inf and -inf for them.
"""

import math

import numpy as np

from fastxent.cuda._config import MAX_REGISTERS
from fastxent.cuda._numba_cuda import cuda, div, exp_fast, kernel, log1p
from numba import float64

from fastxent.cuda._rows import (SCRATCH, first_row, group_softmax, loop_rows, make_row_map,
                                 row_group, row_online, vector_layout)

LOGSUMEXP, SOFTMAX, LOG_SOFTMAX = 0, 1, 2


@cuda.jit(device=True)
def _softmax_element(x, t, j, params):
    shift, inv = params
    return exp_fast(x - shift) * inv, 0.0


@cuda.jit(device=True)
def _log_softmax_element(x, t, j, params):
    shift, log_d = params
    return (x - shift) - log_d, 0.0


_softmax_row = make_row_map(_softmax_element)
_log_softmax_row = make_row_map(_log_softmax_element)


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
        zero = x.dtype.type(0.0)
        state = (x.dtype.type(-np.inf), zero, zero, zero)
        vector, head, chunks = False, np.int64(0), np.int64(0)
        if active:
            xr = x[row]
            if mode == LOGSUMEXP:
                vector, head, chunks = vector_layout(xr, None, None, tpr)
            else:
                vector, head, chunks = vector_layout(xr, out[row], None, tpr)
            state = row_online(xr, lane, tpr, vector, head, chunks)
        m, excess, d, _ = group_softmax(state, 0.0, tpr, shuffle, scratch)
        if not active:
            continue
        if mode == LOGSUMEXP:
            if lane == 0:
                out[row, 0] = m + log1p(excess)  # relative precision near 0
            continue
        if math.isinf(m):  # +inf or only -inf in the row: NaN, as on the CPU
            m = np.nan
        shift = x.dtype.type(m)
        if mode == SOFTMAX:
            _softmax_row(x[row], None, out[row], lane, tpr, vector, head, chunks,
                         (shift, x.dtype.type(div(1.0, d))), 0.0)
        else:
            _log_softmax_row(x[row], None, out[row], lane, tpr, vector, head, chunks,
                             (shift, x.dtype.type(log1p(excess))), 0.0)
