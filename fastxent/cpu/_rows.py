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
the max shift (:func:`max_shift_row`), so the result is the max-shift one.
The cross-entropy kernel also redoes a row with the max shift where its
gradient factor scale / sum would fall below the smallest normal number
(a target far below the max and a small ``grad_output``), so the gradient
is exact to rounding for any gap.

Short rows whose exponentials are not kept and which are shifted by their
max (logsumexp, log_softmax) take a column-major block instead
(:func:`short_sum_exp_rows`): a row-major loop over 10 classes runs in
scalar code, a loop along a block's rows in full vectors.

Relative accuracy near 0: the rows keep the *excess* s = sum_{j != k}
exp(x_j - x_k), the sum of exponentials less the shift's own term
exp(x_k - x_k) = 1 (k: the label, or the first max), and the log of the sum
as log1p(s).  So logsumexp([0, -40]) is 4.2e-18, not 0, and a confident
cross-entropy loss log(1 + sum_{j != y} e^(x_j - x_y)) keeps its digits.  A
label row's excess costs nothing: its target's exponential is set to 0 for
the row sum (its index is known).  A max-shifted row's excess is d - 1 from
the full sum d where that is exact enough (d >= 2: log d >= log 2 keeps its
relative precision), and is summed again without the max's term only where
d < 2 (one term dominating: :func:`excess_from_sum`).

The exponentials are ``fast_exp_shifted``: exact for x - shift <= 0 (the
max shift) and up to 44 (float32), +inf beyond, so a target-shifted row
more than 44 below its max overflows its sum and is redone too.

Sums accumulate in the input dtype over blocks of ``SUM_BLOCK`` elements and
the block sums in float64: float32 results stay within 1e-5 of the float64
reference for any class count, at float32 vector speed.  The block is short
enough that this holds without vectorisation too (NUMBA_BOUNDSCHECK=1 builds
sum each block serially); vectorised, each partial sum holds about 8 terms.
"""

import math

import numpy as np

from fastxent.cpu._jit import helper
from fastxent.cpu._fastmath import fast_exp_shifted, fast_log1p, maxnum

SUM_BLOCK = 256
# Rows at least this long are summed without storing the exponentials when
# only the sums are needed (the flat block pass pays off for short rows).
LONG_ROW = 256
# Column indices are unsigned in the inner loops (``range(U(start), U(stop))``):
# Numba wraps negative signed indices around (x[i, -1] is the last column),
# and where LLVM cannot prove a signed j >= 0 -- which it often cannot for
# j = start + k, Numba's adds carry no no-wrap flags -- it keeps that select
# per lane and vectorises the loop as a gather of computed addresses.  With
# AVX-512 (znver5) the target-shifted row sum of the hard-label
# cross-entropy compiled that way and ran 7x slower (51 vs 6.9 ms for
# 1024 x 32000 float32, one thread).  Never do arithmetic on such a j:
# int64 with uint64 is float64 in Numba.
U = np.uint64


@helper
def task_rows(task, rows_per_task, n_rows):
    """The [start, stop) row range of parallel task number ``task``."""
    start = task * rows_per_task
    return start, min(start + rows_per_task, n_rows)


# Rows shorter than this take their max by compare-and-select: LLVM 22
# vectorises the ``maxnum`` loop 64 float32 at a time with a NaN test per
# element, and a shorter row runs all of it in scalar code, where its
# compare-blend chain is twice the cost (a 10-class row: 22 ns).
SHORT_MAX_ROW = 64


@helper
def row_max(x, i):
    """Largest element of row i, NaN ignored (-inf for an empty or all -inf row)."""
    m = x.dtype.type(-np.inf)
    if x.shape[1] < SHORT_MAX_ROW:
        for j in range(U(x.shape[1])):
            v = x[i, j]
            m = v if v > m else m  # one max instruction; False for a NaN v: ignored
        return m
    for j in range(U(x.shape[1])):
        m = maxnum(m, x[i, j])
    return m


@helper
def row_sum(x, i):
    """sum_j x[i, j], as a float64 (see the module docstring)."""
    n = x.shape[1]
    s = 0.0
    for start in range(0, n, SUM_BLOCK):
        block = x.dtype.type(0.0)
        for j in range(U(start), U(min(start + SUM_BLOCK, n))):
            block += x[i, j]
        s += np.float64(block)
    return s


@helper
def short_row_sum(x, i):
    """:func:`row_sum` for rows shorter than ``SUM_BLOCK``: one block, and a
    loop small enough for LLVM to inline into the caller's row loop (a call
    per row of 10 classes costs as much as the row's exponentials)."""
    block = x.dtype.type(0.0)
    for j in range(U(x.shape[1])):
        block += x[i, j]
    return np.float64(block)


@helper
def range_sum_exp(x, i, shift, lo, hi):
    """sum_{lo <= j < hi} exp(x[i, j] - shift), as a float64, nothing stored."""
    s = 0.0
    for start in range(lo, hi, SUM_BLOCK):
        block = x.dtype.type(0.0)
        for j in range(U(start), U(min(start + SUM_BLOCK, hi))):
            block += fast_exp_shifted(x[i, j] - shift)
        s += np.float64(block)
    return s


@helper
def row_max_sum_exp(x, i):
    """(m, sum_j exp(x[i, j] - m)) with m the row's max (NaN ignored), in one
    read of the row: online softmax (Milakov & Gimelshein) per block of
    ``SUM_BLOCK`` elements -- the block's max, a rescale of the running sum
    when it is a new max, then the block's exponentials, re-read from L1.
    The element equal to the max adds exactly exp(0) = 1, as with the
    two-pass shift.  Only meaningful when m is finite (callers redo other
    rows with :func:`row_shift`); a NaN in the row makes the sum NaN."""
    n = x.shape[1]
    m = x.dtype.type(-np.inf)
    s = 0.0
    for start in range(0, n, SUM_BLOCK):
        stop = min(start + SUM_BLOCK, n)
        block_max = x.dtype.type(-np.inf)
        for j in range(U(start), U(stop)):
            block_max = maxnum(block_max, x[i, j])
        if block_max > m:
            s *= fast_exp_shifted(np.float64(m) - np.float64(block_max))
            m = block_max
        # while m is -inf the block holds only -inf and NaN: shift by 0 so
        # that those give 0 and NaN (x - m would be NaN for -inf too)
        block_shift = m if m != -np.inf else x.dtype.type(0.0)
        block = x.dtype.type(0.0)
        for j in range(U(start), U(stop)):
            block += fast_exp_shifted(x[i, j] - block_shift)
        s += np.float64(block)
    return m, s


# Rows at least this long (32 KiB of float32: more than L1) take their max
# and sum in one read (online); shorter ones in two plain passes, the second
# re-reading the row from L1, which ran faster than the blocked online loop.
# softmax.py's one-pass write uses the same bound.
ONE_READ_MIN_CLASSES = 8192


@helper
def max_shift_sum_exp(x, i, finite_shift):
    """(shift, sum_j exp(x[i, j] - shift)) for the max shift of
    :func:`row_shift`: one read of a row of ``ONE_READ_MIN_CLASSES`` or more
    (:func:`row_max_sum_exp`) unless its max is infinite (or the row all
    NaN); two passes otherwise."""
    if x.shape[1] < ONE_READ_MIN_CLASSES:
        shift = row_shift(x, i, finite_shift)
        return shift, row_sum_exp(x, i, shift)
    shift, total = row_max_sum_exp(x, i)
    if not math.isfinite(shift):
        shift = row_shift(x, i, finite_shift)
        total = row_sum_exp(x, i, shift)
    return shift, total


@helper
def row_sum_exp(x, i, shift):
    """sum_j exp(x[i, j] - shift), as a float64, nothing stored."""
    return range_sum_exp(x, i, shift, 0, x.shape[1])


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
def shift_index(labels, ignore_index, i):
    """The column k whose own term is the shift's exp(0) = 1 when it is
    known before the sum: row i's label (cross-entropy), else -1."""
    if labels is not None:
        y = labels[i]
        if y != ignore_index:
            return y
    return -1


@helper
def first_index_of(x, i, value):
    """The first j with x[i, j] == value, or -1."""
    for j in range(x.shape[1]):
        if x[i, j] == value:
            return j
    return -1


@helper
def row_excess(x, i, shift, k, e, r):
    """sum_{j != k} exp(x[i, j] - shift), as a float64: from the stored
    exponentials e[r] when the block keeps them (e has rows), else
    recomputed around column k."""
    if e.shape[0] == 0:
        return row_sum_exp_without(x, i, shift, k)
    return row_sum_without(e, r, k)


@helper
def row_sum_exp_without(x, i, shift, k):
    """sum_{j != k} exp(x[i, j] - shift) for k >= 0, as a float64, nothing
    stored: one pass with the k-th term selected away.  (Two sums split at k
    gave each half a scalar loop tail of up to 63 elements with AVX-512.)"""
    n = x.shape[1]
    skip = U(k)
    s = 0.0
    for start in range(0, n, SUM_BLOCK):
        block = x.dtype.type(0.0)
        for j in range(U(start), U(min(start + SUM_BLOCK, n))):
            term = fast_exp_shifted(x[i, j] - shift)
            block += term if j != skip else x.dtype.type(0.0)
        s += np.float64(block)
    return s


@helper
def excess_from_sum(x, i, shift, k, total, e, r):
    """The excess of row i (see the module docstring) from its full sum of
    exponentials ``total``: total - 1 where that is exact enough (total >= 2,
    also inf and NaN), else summed again without column k (the label), or
    without the row's first max for k < 0."""
    if not total < 2.0:
        return total - 1.0
    if k < 0:
        k = first_index_of(x, i, shift)
        if k < 0:  # no term is exp(0): an all -inf row under a finite shift (total 0)
            return total - 1.0
    return row_excess(x, i, shift, k, e, r)


@helper
def max_shift_row(x, i, e, r, finite_shift):
    """(shift, excess) of row i with the max shift; e[r] receives its
    exponentials when the block stores them (e has rows)."""
    shift = row_shift(x, i, finite_shift)
    if e.shape[0] == 0:
        total = row_sum_exp(x, i, shift)
    else:
        exp_into(x, i, shift, e, r)
        total = row_sum(e, r)
    return shift, excess_from_sum(x, i, shift, -1, total, e, r)


@helper
def redo_row_with_max(x, i, e, r, shifts, sums, log_sums, finite_shift):
    """Row r (= x's row i) of a block again with the max shift: shifts[r],
    sums[r] (its excess), log_sums[r] and, when stored, e[r]."""
    shift, excess = max_shift_row(x, i, e, r, finite_shift)
    shifts[r] = shift
    sums[r] = excess
    log_sums[r] = fast_log1p(excess)


@helper
def short_rows_excess_again(x, start, e, shifts, sums, labels, ignore_index):
    """The short rows of a block whose sum was < 2 (one term dominating;
    sums[r] = sum - 1 < 1 on entry): their excess summed again without the
    shift's own term.  A label row leaves out its label's column.  A
    max-shifted row has e = exp(0) = 1 exactly wherever x[i, j] equals the
    max, so its excess is the sum of the other terms plus one less than the
    count of those: one pass, no search for the first max (which cost as
    much as the rest of a 10-class row).  A row with no term at the shift
    (all -inf under a finite shift) keeps sum - 1.  One call per block,
    plain loops inside (for confident data, these are most rows)."""
    n_classes = x.shape[1]
    for r in range(sums.shape[0]):
        if not sums[r] < 1.0:
            continue
        i = start + r
        s = 0.0
        if labels is not None and labels[i] != ignore_index:
            k = U(labels[i])
            for j in range(U(n_classes)):
                s += 0.0 if j == k else np.float64(e[r, j])
            sums[r] = s
            continue
        n_at_shift = 0
        for j in range(U(n_classes)):
            at_shift = x[i, j] == shifts[r]
            s += 0.0 if at_shift else np.float64(e[r, j])
            n_at_shift += 1 if at_shift else 0
        if n_at_shift > 0:
            sums[r] = s + (n_at_shift - 1)


@helper
def finish_rows(x, start, e, shifts, sums, log_sums, finite_shift, labels, ignore_index):
    """After the row excesses: label rows whose sum overflowed (the target
    far below the max) or met inf / NaN, or whose target logit is infinite,
    are redone with the max shift (rare; a row that is fine is only tested);
    log_sums[r] = log1p(sums[r])."""
    if labels is not None:
        for r in range(sums.shape[0]):  # no call in the common path (see short_rows_excess_again)
            if labels[start + r] != ignore_index and not (math.isfinite(sums[r])
                                                          and math.isfinite(shifts[r])):
                shifts[r], sums[r] = max_shift_row(x, start + r, e, r, finite_shift)
    if log_sums is not None:
        for r in range(U(sums.shape[0])):
            log_sums[r] = fast_log1p(sums[r])


@helper
def sum_exp_rows(x, start, stop, e, shifts, sums, log_sums, finite_shift, labels, ignore_index):
    """shifts, sums and log_sums as :func:`exp_rows` gives them, without
    storing the exponentials (``e`` has no rows): for long rows when only
    the normaliser is needed."""
    for r in range(stop - start):
        i = start + r
        k = shift_index(labels, ignore_index, i)
        if k >= 0:  # one pass; the excess summed again only where the target dominates
            shifts[r] = first_shift(x, i, labels, ignore_index, finite_shift)
            sums[r] = excess_from_sum(x, i, shifts[r], k, row_sum_exp(x, i, shifts[r]), e, r)
        else:
            shifts[r], total = max_shift_sum_exp(x, i, finite_shift)
            sums[r] = excess_from_sum(x, i, shifts[r], k, total, e, r)
    finish_rows(x, start, e, shifts, sums, log_sums, finite_shift, labels, ignore_index)


# Rows shorter than this, when only their sums are needed, are summed a
# block of rows at a time in column-major order (:func:`short_sum_exp_rows`).
TRANSPOSED_MAX_CLASSES = 64
# Rows per column-major block: enough for each loop along the block's rows
# to run in full vectors (64 float32 per unrolled iteration with AVX-512).
TRANSPOSED_BLOCK_ROWS = 256


@helper
def short_sum_exp_rows(x, start, stop, e, shifts, sums, log_sums, finite_shift):
    """:func:`sum_exp_rows` with the max shift (no labels) for rows shorter
    than ``TRANSPOSED_MAX_CLASSES`` (``e`` has no rows: nothing is stored).

    A row-major loop over 10 classes never reaches its vector body (16 or 64
    elements at a time), so the max, subtract, exp and sum of a short row
    ran in scalar code, one row after another.  Here a block of rows is
    copied transposed, t[j, r] = x[start + r, j], and every pass runs along
    the block's rows instead: vectorised whatever the class count.

    The excess (see the module docstring) is summed in the same pass as the
    exponentials, exactly: every term equal to the shift is exp(0) = 1, so
    sum_{x_j != shift} e_j + (count(x_j == shift) - 1) is the sum less the
    shift's own term, also for a row with no term at the shift (all -inf
    under a finite shift: sum - 1).  So no row is summed twice, dominated
    or not.

    Only where no exponential is kept and no row is shifted by its label:
    transposing the exponentials back (softmax, gradients) cost more than
    it saved, and target-shifted rows (which skip the max) ran up to 1.8x
    faster row by row from 16 classes on (Intel Xeon, one thread)."""
    n_classes = x.shape[1]
    n_rows = stop - start
    block_rows = max(1, min(n_rows, TRANSPOSED_BLOCK_ROWS))
    t = np.empty((n_classes, block_rows), dtype=x.dtype)
    partial = np.empty(block_rows, dtype=x.dtype)
    at_shift = np.empty(block_rows, dtype=np.int32)
    zero = x.dtype.type(0.0)
    for first in range(0, n_rows, block_rows):
        # views of this block, indexed by an unsigned r: an index such as
        # first + r would be signed, and gathered (see U)
        last = min(first + block_rows, n_rows)
        count = U(last - first)
        xb = x[start + first:start + last]
        block_shifts = shifts[first:last]
        block_sums = sums[first:last]
        for j in range(U(n_classes)):
            for r in range(count):
                t[j, r] = xb[r, j]
        for r in range(count):
            block_shifts[r] = x.dtype.type(-np.inf)
        for j in range(U(n_classes)):
            for r in range(count):
                v = t[j, r]
                m = block_shifts[r]
                block_shifts[r] = v if v > m else m  # NaN ignored, as row_max
        if finite_shift:
            for r in range(count):
                m = block_shifts[r]
                block_shifts[r] = m if math.isfinite(m) else zero
        for r in range(count):
            partial[r] = zero
            at_shift[r] = 0
        for j in range(U(n_classes)):
            for r in range(count):
                d = t[j, r] - block_shifts[r]
                term = fast_exp_shifted(d)
                at = d == 0  # x_j == shift, but False for inf - inf (NaN must reach the sum)
                partial[r] += zero if at else term
                at_shift[r] += 1 if at else 0
        for r in range(count):
            block_sums[r] = np.float64(partial[r]) + np.float64(at_shift[r] - 1)
    finish_rows(x, start, e, shifts, sums, log_sums, finite_shift, None, 0)


@helper
def row_sum_without(e, r, k):
    """:func:`row_sum` of e's row r less its column k (nothing left out for
    k < 0): a label row's excess."""
    if k < 0:
        return row_sum(e, r)
    kept = e[r, k]
    e[r, k] = 0
    s = row_sum(e, r)
    e[r, k] = kept
    return s


@helper
def exp_into(x, i, shift, e, r):
    """e[r, j] = exp(x[i, j] - shift): one long row, fused subtract-exp
    (its own function: LLVM vectorises it better than the same loop inlined
    beside the row sum, about 5% at C = 1000)."""
    for j in range(U(x.shape[1])):
        e[r, j] = fast_exp_shifted(x[i, j] - shift)


@helper
def exp_rows(x, start, stop, e, shifts, sums, log_sums, finite_shift, labels, ignore_index):
    """For rows start..stop of x: shifts[r] = the row max (see row_shift),
    e[r, :] = exp(x[start + r] - shifts[r]), sums[r] = the excess of that
    row of e (float64: the row sum less the shift's own term 1, see the
    module docstring; the row sum itself is 1 + sums[r]) and log_sums[r] =
    log1p(sums[r]).  ``log_sums`` None (softmax, which needs only 1 +
    sums[r]): short rows dominated by one term are not summed again.
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
            k = shift_index(labels, ignore_index, start + r)
            if k >= 0:
                sums[r] = row_sum_without(e, r, k)
            else:
                sums[r] = excess_from_sum(x, start + r, shifts[r], k, row_sum(e, r), e, r)
    else:
        for r in range(n_rows):
            shift = first_shift(x, start + r, labels, ignore_index, finite_shift)
            shifts[r] = shift
            i = start + r
            for j in range(U(n_classes)):
                e[r, j] = x[i, j] - shift
        flat_e = e.reshape(n_rows * n_classes)
        for k in range(U(n_rows * n_classes)):
            flat_e[k] = fast_exp_shifted(flat_e[k])
        n_dominated = 0
        for r in range(n_rows):  # no calls here: a call per row costs as much as the row
            total = short_row_sum(e, r)
            sums[r] = total - 1.0
            n_dominated += 1 if total < 2.0 else 0
        if n_dominated != 0 and log_sums is not None:  # softmax needs only the sum
            short_rows_excess_again(x, start, e, shifts, sums, labels, ignore_index)
    finish_rows(x, start, e, shifts, sums, log_sums, finite_shift, labels, ignore_index)


@helper
def task_scratch(x, rows):
    """Per-task buffers for :func:`exp_rows`: (e, shifts, sums, log_sums)."""
    return (np.empty((rows, x.shape[1]), dtype=x.dtype), np.empty(rows, dtype=x.dtype),
            np.empty(rows), np.empty(rows))


@helper
def block_exps(x, start, stop, keep_exps, finite_shift, labels=None, ignore_index=0):
    """(e, shifts, sums, log_sums) of :func:`exp_rows` for rows start..stop,
    in fresh per-task buffers.  Unless ``keep_exps``, long rows, and short
    max-shifted ones, are summed without storing their exponentials (e then
    has no rows).  ``labels``: hard-label cross-entropy rows, shifted by
    their target logit."""
    transposed = labels is None and x.shape[1] < TRANSPOSED_MAX_CLASSES
    if not keep_exps and (x.shape[1] >= LONG_ROW or transposed):
        e, shifts, sums, log_sums = task_scratch(x, 0)
        shifts = np.empty(stop - start, dtype=x.dtype)
        sums = np.empty(stop - start)
        log_sums = np.empty(stop - start)
        if x.shape[1] >= LONG_ROW:
            sum_exp_rows(x, start, stop, e, shifts, sums, log_sums, finite_shift, labels,
                         ignore_index)
        else:
            short_sum_exp_rows(x, start, stop, e, shifts, sums, log_sums, finite_shift)
        return e, shifts, sums, log_sums
    e, shifts, sums, log_sums = task_scratch(x, stop - start)
    exp_rows(x, start, stop, e, shifts, sums, log_sums, finite_shift, labels, ignore_index)
    return e, shifts, sums, log_sums
