"""CPU kernels: row-wise logsumexp, softmax and log-softmax.

Inputs are validated 2-D C-contiguous (rows, classes) float32/float64 arrays.
"""

import numpy as np
from numba import prange

from fastxent.cpu._jit import kernel
from fastxent.cpu._fastmath import diff_minus, fast_exp_shifted
from fastxent.cpu._rows import ONE_READ_MIN_CLASSES, U, block_exps, exp_rows, task_rows

# softmax rows of at least ONE_READ_MIN_CLASSES (_rows: rows too long for
# L1, whose max and sum are taken in one read) are written in one pass that
# recomputes exp(x - max); shorter rows store the exponentials in the output
# and rescale them in place, which measured 8% faster at 4096 x 1000
# (znver5) than computing the exps twice.


@kernel
def _logsumexp_rows(x, out, rows_per_task):
    n_rows = x.shape[0]
    for task in prange((n_rows + rows_per_task - 1) // rows_per_task):
        start, stop = task_rows(task, rows_per_task, n_rows)
        _, shifts, _, log_sums = block_exps(x, start, stop, False, True)
        for r in range(stop - start):
            out[start + r] = np.float64(shifts[r]) + log_sums[r]


@kernel
def _softmax_rows(x, out, log, rows_per_task):
    n_rows, n_classes = x.shape
    for task in prange((n_rows + rows_per_task - 1) // rows_per_task):
        start, stop = task_rows(task, rows_per_task, n_rows)
        if log or n_classes >= ONE_READ_MIN_CLASSES:
            # long rows: (max, sum) in one read of x (online, see _rows);
            # the loop below is the only other pass: it reads x and writes out
            _, shifts, sums, log_sums = block_exps(x, start, stop, False, False)
        else:
            # short softmax rows: the exponentials go straight into the output block
            shifts = np.empty(stop - start, dtype=x.dtype)
            sums = np.empty(stop - start)
            log_sums = np.empty(stop - start)
            # no log_sums: where one term dominates, the sum need not be summed again
            exp_rows(x, start, stop, out[start:stop], shifts, sums, None, False, None, 0)
        for r in range(stop - start):
            i = start + r
            if log:
                # (x - shift) - log(sum), not log(softmax): exact for tiny
                # probabilities, and for huge shifts (1e30)
                shift = shifts[r]
                log_sum = x.dtype.type(log_sums[r])
                for j in range(U(n_classes)):
                    out[i, j] = diff_minus(x[i, j], shift, log_sum)
            elif n_classes >= ONE_READ_MIN_CLASSES:
                # the exponentials again, rather than a store and a re-read
                # of out: a second exp costs less than a pass over memory
                shift = shifts[r]
                inv = x.dtype.type(1.0 / (1.0 + sums[r]))  # sums: the excess (see _rows)
                for j in range(U(n_classes)):
                    out[i, j] = fast_exp_shifted(x[i, j] - shift) * inv
            else:
                inv = x.dtype.type(1.0 / (1.0 + sums[r]))
                for j in range(U(n_classes)):
                    out[i, j] *= inv


LOGSUMEXP, SOFTMAX, LOG_SOFTMAX = 0, 1, 2  # the modes of softmax_rows, as in fastxent.cuda.softmax


def softmax_rows(x: np.ndarray, out: np.ndarray, mode: int, rows_per_task: int) -> None:
    """Along the rows of x: out[i] = log sum_j exp(x[i, j]) (mode LOGSUMEXP;
    out float64 of shape (rows,)), softmax (SOFTMAX) or log-softmax
    (LOG_SOFTMAX; out of x's shape and dtype)."""
    if mode == LOGSUMEXP:
        _logsumexp_rows(x.size, x, out, rows_per_task)
    else:
        log = mode == LOG_SOFTMAX
        _softmax_rows(x.size, x, out, log, rows_per_task)
