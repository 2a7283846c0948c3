"""CUDA kernels: softmax cross-entropy from logits, with the fused gradient.

The math is that of ``fastxent.cpu.xent`` (see its docstring): for one row,
p = softmax(x), lse = log sum exp x, class weights w, smoothing eps, C classes,

* hard label y:  loss = (1-eps) w_y (lse - x_y) + eps/C sum_c w_c (lse - x_c),
                 dloss/dx_c = A p_c - (eps/C) w_c - [c = y] (1-eps) w_y,
                 A = (1-eps) w_y + (eps/C) sum_c w_c;
* soft target t: t' = (1-eps) t + eps/C, loss = sum_c w_c t'_c (lse - x_c),
                 dloss/dx_c = p_c sum_k w_k t'_k - w_c t'_c.

Per row: pass 1 reads the row once for its online (max m, sum d) (and, where
needed, sum_c w_c or sum_c w_c t'_c); after the group merge, pass 2 (only
when there is a gradient, smoothing or a soft target) reads it again and
writes the gradient, scaled by grad_output and the mean's denominator.  lse -
x_c is computed as log d - (x_c - m), exact for |m| ~ 1e30.  Each thread
writes only gradient elements it has just read, so the gradient may be the
logits themselves (in place); the target logit x_y is read in pass 1, before
the group's barrier.

Hard labels are checked first by :func:`scan_labels` (the first bad row, by
an atomic min, and the mean's denominator sum of w_y over the kept rows,
deterministic); the loss kernel also treats any label outside [0, C) as
ignored, so that it never reads out of bounds.

Reductions "mean"/"sum" are finished inside the loss kernel by the last
block (``_rows.block_total``); "none" writes one loss per row.
"""

import math

import numpy as np

from fastxent.cuda._config import MAX_REGISTERS
from fastxent.cuda._numba_cuda import cuda, kernel, div, exp, log
from numba import float64, int32

from fastxent.cuda._rows import (BAD, SCRATCH, TICKET_A, TICKET_B, block_total, first_row, grid_start,
                                 group_reduce, group_sum, loop_rows, row_group, row_max_sum)


@cuda.jit(device=True)
def class_weight(weight, c):
    """w_c as a float64, or 1 without class weights (pruned at compile time)."""
    if weight is None:
        return 1.0
    return np.float64(weight[c])


@cuda.jit(device=True)
def optional_at(values, k, default):
    """values[k] as a float64, or ``default`` when ``values`` is None."""
    if values is None:
        return default
    return np.float64(values[k])


@cuda.jit(device=True)
def denominator(den, den_value):
    """The mean's denominator: den[0] (computed on the device) or den_value."""
    if den is None:
        return den_value
    return den[0]


@cuda.jit(device=True)
def row_grad_scale(grad_scale, grad_rows, grad_step, row, inv_den):
    """grad_output for this row (a host scalar times an optional device
    value, ``grad_step`` 0 for a device scalar) times 1/denominator."""
    return grad_scale * optional_at(grad_rows, row * grad_step, 1.0) * inv_den


@cuda.jit(device=True)
def finish_total(acc, partials, status, result, mean, den, den_value, shuffle, scratch, flag):
    """Sum the threads' losses over the launch; the last block writes the
    reduced loss (divided by the denominator for "mean") to result[0]."""
    last, total, _ = block_total(acc, 0.0, partials, status, TICKET_B, shuffle, scratch, flag)
    if last and cuda.threadIdx.x == 0:
        if mean:  # a zero denominator gives NaN, as fastxent._checks.mean_of
            d = denominator(den, den_value)
            result[0] = div(total, d) if d != 0.0 else np.nan
        else:
            result[0] = total


@kernel(MAX_REGISTERS)
def scan_labels(labels, n_classes, ignore_index, weight, status, partials, den, shuffle):
    """status[BAD] = min(status[BAD], first row whose label is outside [0, C)
    and not ignore_index); den[0] = sum of w_y over the other kept rows."""
    scratch = cuda.shared.array(SCRATCH, float64)
    flag = cuda.shared.array(1, int32)
    start, step = grid_start()
    total = 0.0
    for i in range(start, labels.shape[0], step):
        y = np.int64(labels[i])
        if y == ignore_index:
            continue
        if y < 0 or y >= n_classes:
            cuda.atomic.min(status, BAD, i)
        else:
            total += class_weight(weight, y)
    last, t, _ = block_total(total, 0.0, partials, status, TICKET_A, shuffle, scratch, flag)
    if last and cuda.threadIdx.x == 0:
        den[0] = t


@kernel(MAX_REGISTERS)
def xent_hard_rows(x, labels, weight, weight_total, ignore_index, smoothing, grad_scale,
                   grad_rows, grad_step, mean, den, losses, result, partials, status, grad,
                   tpr, shuffle):
    """Hard-label losses (``losses[row]``, or reduced into ``result[0]``) and,
    unless ``grad`` is None, the gradient.  ``weight_total`` is sum_c w_c when
    there are no class weights (C); with weights it is summed per row."""
    scratch = cuda.shared.array(SCRATCH, float64)
    flag = cuda.shared.array(1, int32)
    n_rows, n_classes = x.shape
    eps_c = smoothing / n_classes if n_classes > 0 else 0.0
    keep_c = 1.0 - smoothing
    lane, group, groups = row_group(tpr)
    first, step = first_row(group, groups)
    inv_den = 1.0
    if mean and grad is not None:
        inv_den = div(1.0, denominator(den, 0.0))
    acc = 0.0
    for it in range(loop_rows(n_rows, groups)):
        row = first + it * step
        active = row < n_rows
        y = np.int64(labels[row]) if active else ignore_index
        keep = active and y != ignore_index and y >= 0 and y < n_classes
        tm = -np.inf
        td = 0.0
        tw = 0.0
        xy = 0.0
        if keep:
            xr = x[row]
            if lane == 0:
                xy = np.float64(xr[y])  # before the barrier: pass 2 may overwrite it
            tm, td = row_max_sum(xr, lane, tpr)
            if smoothing != 0.0 and weight is not None:
                for j in range(lane, n_classes, tpr):
                    tw += class_weight(weight, j)
        m, d, w_sum = group_reduce(tm, td, tw, tpr, shuffle, scratch)
        if weight is None:
            w_sum = weight_total
        if m == math.inf:  # a row holding +inf: NaN, as on the CPU
            m = np.nan
        w_y = class_weight(weight, y) if keep else 0.0
        smooth_sum = 0.0
        if active and (grad is not None or smoothing != 0.0):
            if keep:
                xr = x[row]
                shift = x.dtype.type(m)
                scale = 0.0
                if grad is not None:
                    scale = row_grad_scale(grad_scale, grad_rows, grad_step, row, inv_den)
                a = x.dtype.type(scale * (keep_c * w_y + eps_c * w_sum) / d)
                b = scale * eps_c
                b_t = x.dtype.type(b)
                c_y = x.dtype.type(scale * keep_c * w_y)
                for j in range(lane, n_classes, tpr):
                    xv = xr[j]
                    if smoothing != 0.0:
                        smooth_sum += class_weight(weight, j) * (np.float64(xv) - m)
                    if grad is not None:
                        if weight is None:
                            g = exp(xv - shift) * a - b_t
                        else:
                            g = exp(xv - shift) * a - x.dtype.type(b * weight[j])
                        if j == y:
                            g -= c_y
                        grad[row, j] = g
            elif grad is not None:  # an ignored row: zero gradient
                for j in range(lane, n_classes, tpr):
                    grad[row, j] = 0
        if smoothing != 0.0:
            smooth_sum, _ = group_sum(smooth_sum, 0.0, tpr, shuffle, scratch)
        if active and lane == 0:
            loss = 0.0
            if keep:
                log_d = log(d)
                loss = keep_c * w_y * (log_d - (xy - m))
                if smoothing != 0.0:
                    loss += eps_c * (log_d * w_sum - smooth_sum)
            if losses is not None:
                losses[row] = loss
            else:
                acc += loss
    if result is not None:
        finish_total(acc, partials, status, result, mean, den, 0.0, shuffle, scratch, flag)


@kernel(MAX_REGISTERS)
def xent_soft_rows(x, target, weight, smoothing, grad_scale, grad_rows, grad_step, mean,
                   den_value, losses, result, partials, status, grad, tpr, shuffle):
    """Soft-target (probability) losses and, unless ``grad`` is None, the gradient."""
    scratch = cuda.shared.array(SCRATCH, float64)
    flag = cuda.shared.array(1, int32)
    n_rows, n_classes = x.shape
    eps_c = smoothing / n_classes if n_classes > 0 else 0.0
    keep_c = 1.0 - smoothing
    lane, group, groups = row_group(tpr)
    first, step = first_row(group, groups)
    inv_den = div(1.0, den_value) if mean else 1.0
    acc = 0.0
    for it in range(loop_rows(n_rows, groups)):
        row = first + it * step
        active = row < n_rows
        tm = -np.inf
        td = 0.0
        tw = 0.0
        if active:
            xr = x[row]
            tr = target[row]
            tm, td = row_max_sum(xr, lane, tpr)
            for j in range(lane, n_classes, tpr):
                tw += class_weight(weight, j) * (keep_c * np.float64(tr[j]) + eps_c)
        m, d, wt_sum = group_reduce(tm, td, tw, tpr, shuffle, scratch)
        if m == math.inf:
            m = np.nan
        s = 0.0
        if active:
            xr = x[row]
            tr = target[row]
            shift = x.dtype.type(m)
            scale = 0.0
            if grad is not None:
                scale = row_grad_scale(grad_scale, grad_rows, grad_step, row, inv_den)
            a = x.dtype.type(scale * wt_sum / d)
            for j in range(lane, n_classes, tpr):
                xv = xr[j]
                wt = class_weight(weight, j) * (keep_c * np.float64(tr[j]) + eps_c)
                if wt != 0.0:  # a masked class (-inf) without target mass adds 0
                    s += wt * (np.float64(xv) - m)
                if grad is not None:
                    grad[row, j] = exp(xv - shift) * a - x.dtype.type(scale * wt)
        s, _ = group_sum(s, 0.0, tpr, shuffle, scratch)
        if active and lane == 0:
            loss = log(d) * wt_sum - s
            if losses is not None:
                losses[row] = loss
            else:
                acc += loss
    if result is not None:
        finish_total(acc, partials, status, result, mean, None, den_value, shuffle, scratch, flag)
