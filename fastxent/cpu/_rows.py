"""Inner loops shared by every kernel family.

A "row" is the class axis of a C-contiguous (rows, classes) float32/float64
array; parallel tasks own a block of consecutive rows.

Exponentials: ``exp_rows`` computes e = exp(x - max) for a block of rows.
Short rows (10 classes) are shifted row by row into the scratch block and
exponentiated in one flat loop over the whole block, so that the exp is fully
vectorised; long rows take a max pass (at memory speed) and a fused
subtract-exp pass over the cached row.  The max shift is what makes the
invariants exact: exp(0) = 1 for the max, so every sum is >= 1, log_softmax
= (x - max) - log(sum) <= 0, and a one-class row gives exactly 0.

Cross-entropy rows with a hard label y are shifted by their target logit
x_y instead (``labels`` given): the loss is then log sum_j exp(x_j - x_y),
>= 0 exactly and free of cancellation, and the max pass is skipped -- a
third of the work at 10 classes.  When x_y is so far below the row's max
that the sum overflows (or the row holds inf / NaN), the row is redone with
the max shift (``redo_with_max``), so the result is the max-shift one.
The exponentials are ``fast_exp_shifted``: exact for x - shift <= 0 (the
max shift) and up to 44 (float32), +inf beyond, so a target-shifted row
more than 44 below its max is redone too.

Sums accumulate in the input dtype over blocks of ``SUM_BLOCK`` elements and
the block sums in float64: float32 results stay within 1e-5 of the float64
reference for any class count, at float32 vector speed.  The block is short
enough that this holds without vectorisation too (NUMBA_BOUNDSCHECK=1 builds
sum each block serially); vectorised, each partial sum holds about 8 terms.
"""

import math

import numpy as np

from fastxent.cpu._jit import helper
from fastxent.cpu._fastmath import fast_exp_shifted, fast_log, maxnum

SUM_BLOCK = 256
# Rows at least this long are summed without storing the exponentials when
# only the sums are needed (the flat block pass pays off for short rows).
LONG_ROW = 256


@helper
def task_rows(task, rows_per_task, n_rows):
    """The [start, stop) row range of parallel task number ``task``."""
    start = task * rows_per_task
    return start, min(start + rows_per_task, n_rows)


@helper
def row_max(x, i):
    """Largest element of row i, NaN ignored (-inf for an empty or all -inf row)."""
    m = x.dtype.type(-np.inf)
    for j in range(x.shape[1]):
        m = maxnum(m, x[i, j])
    return m


@helper
def row_sum(x, i):
    """sum_j x[i, j], as a float64 (see the module docstring)."""
    n = x.shape[1]
    s = 0.0
    for start in range(0, n, SUM_BLOCK):
        block = x.dtype.type(0.0)
        for j in range(start, min(start + SUM_BLOCK, n)):
            block += x[i, j]
        s += np.float64(block)
    return s


@helper
def short_row_sum(x, i):
    """:func:`row_sum` for rows shorter than ``SUM_BLOCK``: one block, and a
    loop small enough for LLVM to inline into the caller's row loop (a call
    per row of 10 classes costs as much as the row's exponentials)."""
    block = x.dtype.type(0.0)
    for j in range(x.shape[1]):
        block += x[i, j]
    return np.float64(block)


@helper
def row_sum_exp(x, i, shift):
    """sum_j exp(x[i, j] - shift), as a float64, nothing stored."""
    n = x.shape[1]
    s = 0.0
    for start in range(0, n, SUM_BLOCK):
        block = x.dtype.type(0.0)
        for j in range(start, min(start + SUM_BLOCK, n)):
            block += fast_exp_shifted(x[i, j] - shift)
        s += np.float64(block)
    return s


@helper
def row_shift(x, i, finite_shift):
    """Row i's max, the shift of its exponentials.  With ``finite_shift``
    (logsumexp) an infinite max becomes 0, so that an all -inf row sums to 0
    (lse = -inf) and a row holding +inf to inf (lse = +inf); without it such
    rows give x - max = NaN, and NaN softmax / cross-entropy, as in PyTorch."""
    shift = row_max(x, i)
    if finite_shift and not math.isfinite(shift):
        shift = x.dtype.type(0.0)
    return shift


@helper
def first_shift(x, i, labels, ignore_index, finite_shift):
    """The shift tried first for row i: its target logit x[i, labels[i]] for a
    cross-entropy row (``labels`` not None, label not ignored), else the max
    (:func:`row_shift`).  See the module docstring."""
    if labels is not None:
        y = labels[i]
        if y != ignore_index:
            return x[i, y]
    return row_shift(x, i, finite_shift)


@helper
def logs_of(sums, log_sums):
    """log_sums[r] = log(sums[r]): one vectorised loop over a block's rows."""
    for r in range(sums.shape[0]):
        log_sums[r] = fast_log(sums[r])


@helper
def sum_exp_rows(x, start, stop, shifts, sums, log_sums, finite_shift, labels, ignore_index):
    """shifts, sums and log_sums as :func:`exp_rows` gives them, without
    storing the exponentials: for long rows when only the normaliser is needed."""
    for r in range(stop - start):
        i = start + r
        shift = first_shift(x, i, labels, ignore_index, finite_shift)
        total = row_sum_exp(x, i, shift)
        if labels is not None and not math.isfinite(total):  # see redo_with_max
            shift = row_shift(x, i, finite_shift)
            total = row_sum_exp(x, i, shift)
        shifts[r] = shift
        sums[r] = total
    logs_of(sums, log_sums)


@helper
def redo_with_max(x, start, e, shifts, sums, finite_shift):
    """Rows of a block whose target-logit shift overflowed the sum (the
    target far below the max) or met inf / NaN: exponentials and sum again
    with the max shift.  Rare; a row that is fine is only tested."""
    for r in range(sums.shape[0]):
        if not math.isfinite(sums[r]):
            shift = row_shift(x, start + r, finite_shift)
            shifts[r] = shift
            exp_into(x, start + r, shift, e, r)
            sums[r] = row_sum(e, r)


@helper
def exp_into(x, i, shift, e, r):
    """e[r, j] = exp(x[i, j] - shift): one long row, fused subtract-exp
    (its own function: LLVM vectorises it better than the same loop inlined
    beside the row sum, about 5% at C = 1000)."""
    for j in range(x.shape[1]):
        e[r, j] = fast_exp_shifted(x[i, j] - shift)


@helper
def exp_rows(x, start, stop, e, shifts, sums, log_sums, finite_shift, labels, ignore_index):
    """For rows start..stop of x: shifts[r] = the row max (see row_shift),
    e[r, :] = exp(x[start + r] - shifts[r]), sums[r] = the sum of that row of
    e (float64, >= 1 for finite rows) and log_sums[r] = log(sums[r]).
    The row's logsumexp is shifts[r] + log_sums[r]; quantities relative to it
    are computed as (x - shift) - log_sum, exact also when |shift| is huge
    (1e30).  ``e`` is a (stop - start, C) C-contiguous scratch array.
    With ``labels`` (hard-label cross-entropy) the shift is the target logit
    where that works (see the module docstring).

    Rows are addressed as x[i, j], never as row views x[i]: building a view
    per row (and a call per row into a non-inlined helper) cost more than
    the arithmetic of a 10-class row -- the C = 10 kernels ran 2x slower."""
    n_classes = x.shape[1]
    n_rows = stop - start
    if n_classes >= LONG_ROW:
        for r in range(n_rows):
            shift = first_shift(x, start + r, labels, ignore_index, finite_shift)
            shifts[r] = shift
            exp_into(x, start + r, shift, e, r)
        for r in range(n_rows):
            sums[r] = row_sum(e, r)
    else:
        for r in range(n_rows):
            shift = first_shift(x, start + r, labels, ignore_index, finite_shift)
            shifts[r] = shift
            for j in range(n_classes):
                e[r, j] = x[start + r, j] - shift
        flat_e = e.reshape(n_rows * n_classes)
        for k in range(n_rows * n_classes):
            flat_e[k] = fast_exp_shifted(flat_e[k])
        for r in range(n_rows):
            sums[r] = short_row_sum(e, r)
    if labels is not None:
        redo_with_max(x, start, e, shifts, sums, finite_shift)
    logs_of(sums, log_sums)


@helper
def task_scratch(x, rows):
    """Per-task buffers for :func:`exp_rows`: (e, shifts, sums, log_sums)."""
    return (np.empty((rows, x.shape[1]), dtype=x.dtype), np.empty(rows, dtype=x.dtype),
            np.empty(rows), np.empty(rows))


@helper
def block_exps(x, start, stop, keep_exps, finite_shift, labels=None, ignore_index=0):
    """(e, shifts, sums, log_sums) of :func:`exp_rows` for rows start..stop,
    in fresh per-task buffers.  Unless ``keep_exps``, long rows are summed
    without storing their exponentials (e then has no rows).  ``labels``:
    hard-label cross-entropy rows, shifted by their target logit."""
    if x.shape[1] >= LONG_ROW and not keep_exps:
        e, shifts, sums, log_sums = task_scratch(x, 0)
        shifts = np.empty(stop - start, dtype=x.dtype)
        sums = np.empty(stop - start)
        log_sums = np.empty(stop - start)
        sum_exp_rows(x, start, stop, shifts, sums, log_sums, finite_shift, labels, ignore_index)
        return e, shifts, sums, log_sums
    e, shifts, sums, log_sums = task_scratch(x, stop - start)
    exp_rows(x, start, stop, e, shifts, sums, log_sums, finite_shift, labels, ignore_index)
    return e, shifts, sums, log_sums
