"""CPU kernels: softmax cross-entropy from logits, with the fused gradient.

Per block of rows, one flat pass computes the exponentials into a per-task
scratch block (cache-sized: about ``TASK_ELEMENTS`` elements, or one row for
large C) and their row sums; a second pass writes the gradient
scale * (A * softmax - B * w) with the target's correction.  No N x C
temporary exists beyond the output, which may be the logits themselves (an
in-place gradient).

Notation for one row: p = softmax(x), lse = log sum exp x,
class weights w (all ones without ``weight``), smoothing eps, C classes.

* Hard label y:  loss = (1-eps) w_y (lse - x_y) + eps/C * sum_c w_c (lse - x_c)
                 dloss/dx_c = A p_c - (eps/C) w_c - [c = y] (1-eps) w_y,
                 A = (1-eps) w_y + (eps/C) sum_c w_c.
* Soft target t: t' = (1-eps) t + eps/C,  loss = sum_c w_c t'_c (lse - x_c)
                 dloss/dx_c = p_c sum_k w_k t'_k - w_c t'_c.

``row_scale[i]`` (reduction and grad_output folded together) multiplies row
i's gradient; per-row losses go to ``loss_out`` (float64) unscaled.

Hard-label rows are shifted by their target logit (``_rows``), and redone
with the max shift where that shift loses accuracy, all cases of a target
far below the row max:

* a gradient row whose largest exponential exp(x_j - x_y) is >= e^16: the
  arguments x_j - x_y of the dominant terms then round at 4 ulps or more of
  the result (max-shifted, they are near 0), so softmax_j would carry that
  error (:func:`target_far_below_max`; a compare of the row's sum, and a
  scan of its stored exponentials only where the sum cannot tell);
* a gradient factor A * scale / sum below the smallest normal number (the
  gradient would be rounded in subnormals: grad_output 1e-8, gap 87);
* label smoothing's sum_c w_c (lse - x_c), computed as log_sum * sum_c w_c
  - sum_c w_c (x_c - x_y), cancelling (most weight on classes far above the
  target).

Shifted by the max, every term of the loss is >= 0, the gradient factor is
>= scale / C, and the arguments of the large exponentials are small.
"""

import math

import numpy as np
from numba import prange

from fastxent.cpu._jit import helper, kernel
from fastxent.cpu._fastmath import diff_minus, maxnum, scaled_diff
from fastxent.cpu._rows import U, block_exps, redo_row_with_max, task_rows


@helper
def class_weight(weight, c):
    """w_c, or 1 without class weights (the branch is pruned at compile time)."""
    if weight is None:
        return 1.0
    return weight[c]


@helper
def weighted_row_sums(x, i, shift, weight):
    """(sum_c w_c (x[i, c] - shift), sum_c |w_c (x[i, c] - shift)|) in
    float64: the label-smoothing term, and the size of what it cancels."""
    s = 0.0
    s_abs = 0.0
    for j in range(U(x.shape[1])):
        term = scaled_diff(class_weight(weight, j), np.float64(x[i, j]), np.float64(shift))
        s += term
        s_abs += abs(term)
    return s, s_abs


@helper
def hard_row_loss(x, i, y, shift, log_sum, keep_y, eps_c, weight, weight_total):
    """(loss, cancels) of hard-label row i from its shift and log_sum, with
    keep_y = (1 - eps) w_y.  ``cancels``: label smoothing's term lost more
    than two bits to cancellation, which only a target shift far below the
    max can cause (redo the row with the max shift, where no term is < 0)."""
    # lse - x_y as log_sum - (x_y - shift): exact even for |shift| ~ 1e30
    loss = keep_y * -diff_minus(np.float64(x[i, y]), np.float64(shift), log_sum)
    if eps_c == 0.0:
        return loss, False
    s, s_abs = weighted_row_sums(x, i, shift, weight)
    smooth = eps_c * (log_sum * weight_total - s)
    size = eps_c * (abs(log_sum * weight_total) + s_abs)
    loss += smooth
    return loss, size > 4.0 * abs(loss)


# e^16: exponentials of a target-shifted row below this have arguments
# x_j - x_y < 16, which round at < 4 ulps of the result, as max-shifted ones.
_TARGET_SHIFT_LIMIT = 8886110.520507872


@helper
def target_far_below_max(e, r, excess):
    """True when some e[r, j] = exp(x_j - x_y) is >= e^16 (see the module
    docstring); the row's excess bounds its largest term from above and,
    divided by C, from below, so the row is scanned only between the two."""
    if not excess >= _TARGET_SHIFT_LIMIT:
        return False
    if excess >= _TARGET_SHIFT_LIMIT * e.shape[1]:
        return True
    largest = e.dtype.type(0)
    for j in range(U(e.shape[1])):
        largest = maxnum(largest, e[r, j])
    return largest >= _TARGET_SHIFT_LIMIT


@helper
def gradient_factor_underflows(a, a_over_sum, grad):
    """True when a * softmax = (a / sum) * e loses precision because a / sum
    is subnormal (or 0) in the gradient's dtype while a is not 0."""
    return a != 0.0 and abs(a_over_sum) < np.finfo(grad.dtype).tiny


@helper
def write_softmax_grad(e, r, a_over_sum, b, weight, grad, i):
    """grad[i, c] = a * softmax_c - b * w_c, with a * softmax = e[r, c] *
    (a / sum).  (Rows are indexed, not viewed: see _rows.exp_rows.)"""
    a_inv = grad.dtype.type(a_over_sum)
    if weight is None:
        bt = grad.dtype.type(b)
        for j in range(U(e.shape[1])):
            grad[i, j] = e[r, j] * a_inv - bt
    else:
        for j in range(U(e.shape[1])):
            grad[i, j] = e[r, j] * a_inv - grad.dtype.type(b * weight[j])


@kernel
def _xent_hard_rows(logits, labels, weight, weight_total, ignore_index, smoothing,
                    row_scale, loss_out, grad, rows_per_task):
    n_rows, n_classes = logits.shape
    eps_c = smoothing / n_classes if n_classes > 0 else 0.0
    for task in prange((n_rows + rows_per_task - 1) // rows_per_task):
        start, stop = task_rows(task, rows_per_task, n_rows)
        e, shifts, sums, log_sums = block_exps(logits, start, stop, grad is not None, False,
                                               labels, ignore_index)
        for r in range(stop - start):
            i = start + r
            y = labels[i]
            if y == ignore_index:
                loss_out[i] = 0.0
                if grad is not None:
                    for j in range(U(n_classes)):
                        grad[i, j] = 0
                continue
            keep_y = (1.0 - smoothing) * class_weight(weight, y)
            scale = 0.0
            a = 0.0
            if grad is not None:
                scale = row_scale[i]
                a = scale * (keep_y + eps_c * weight_total)
                if (gradient_factor_underflows(a, a / (1.0 + sums[r]), grad)
                        or target_far_below_max(e, r, sums[r])):
                    redo_row_with_max(logits, i, e, r, shifts, sums, log_sums, False)
            loss, cancels = hard_row_loss(logits, i, y, shifts[r], log_sums[r], keep_y, eps_c,
                                          weight, weight_total)
            if cancels:
                redo_row_with_max(logits, i, e, r, shifts, sums, log_sums, False)
                loss, _ = hard_row_loss(logits, i, y, shifts[r], log_sums[r], keep_y, eps_c,
                                        weight, weight_total)
            loss_out[i] = loss
            if grad is not None:
                # x is read for the last time above: grad may be the logits (in place)
                write_softmax_grad(e, r, a / (1.0 + sums[r]), scale * eps_c, weight, grad, i)
                grad[i, y] -= grad.dtype.type(scale * keep_y)


@kernel
def _xent_soft_rows(logits, target, weight, smoothing, row_scale, loss_out, grad,
                    rows_per_task):
    n_rows, n_classes = logits.shape
    eps_c = smoothing / n_classes if n_classes > 0 else 0.0
    for task in prange((n_rows + rows_per_task - 1) // rows_per_task):
        start, stop = task_rows(task, rows_per_task, n_rows)
        e, shifts, sums, log_sums = block_exps(logits, start, stop, grad is not None, False)
        for r in range(stop - start):
            i = start + r
            shift = shifts[r]
            # loss = sum_c w_c t'_c (lse - x_c) = log_sum * sum wt - sum wt (x_c - shift)
            wt_sum = 0.0
            wtx_sum = 0.0
            for j in range(U(n_classes)):
                wt = class_weight(weight, j) * ((1.0 - smoothing) * np.float64(target[i, j]) + eps_c)
                wt_sum += wt
                # 0 * (-inf) would be NaN: a masked class with no target mass
                # adds 0 (a select, not a branch: the loop stays vectorised)
                term = scaled_diff(wt, np.float64(logits[i, j]), np.float64(shift))
                wtx_sum += term if wt != 0.0 else 0.0
            loss_out[i] = log_sums[r] * wt_sum - wtx_sum
            if grad is not None:
                scale = row_scale[i]
                a = grad.dtype.type(scale * wt_sum / (1.0 + sums[r]))
                for j in range(U(n_classes)):
                    wt = class_weight(weight, j) * ((1.0 - smoothing) * np.float64(target[i, j]) + eps_c)
                    grad[i, j] = e[r, j] * a - grad.dtype.type(scale * wt)


@helper
def _scan_labels(labels, n_classes, ignore_index, weight):
    bad = -1
    total = 0.0
    for i in range(labels.shape[0]):
        y = labels[i]
        if y == ignore_index:
            continue
        if y < 0 or y >= n_classes:
            bad = i
            break
        total += class_weight(weight, y)
    return bad, total


def scan_labels(labels: np.ndarray, n_classes: int, ignore_index: int, weight):
    """(first row whose label is outside [0, C) and not ignore_index, or -1;
    sum of w[y] over the non-ignored rows -- the mean's denominator)."""
    return _scan_labels(labels, n_classes, ignore_index, weight)


def cross_entropy_hard_rows(logits, labels, weight, weight_total, ignore_index, smoothing,
                            row_scale, loss_out, grad, rows_per_task):
    """Per-row hard-label losses into ``loss_out``; gradient into ``grad`` unless None.
    Labels must already be checked by :func:`scan_labels`."""
    _xent_hard_rows(logits.size, logits, labels, weight, weight_total, ignore_index,
                    smoothing, row_scale, loss_out, grad, rows_per_task)


def cross_entropy_soft_rows(logits, target, weight, smoothing, row_scale, loss_out, grad,
                            rows_per_task):
    """Per-row soft-target losses into ``loss_out``; gradient into ``grad`` unless None."""
    _xent_soft_rows(logits.size, logits, target, weight, smoothing, row_scale, loss_out,
                    grad, rows_per_task)
