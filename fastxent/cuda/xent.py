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
x_c is computed as log d - (x_c - m), exact for |m| ~ 1e30.  Both passes are
the shared row loops of ``_rows`` (four loads in flight per thread, 16-byte
accesses on aligned rows, loads before stores).  Pass 2 writes exp(x_c - m) A
- B w_c for every column; the thread that wrote column y then subtracts the
[c = y] term from its own store, so no loop compares indices.  Each thread
writes only gradient elements it has just read, so the gradient may be the
logits themselves (in place); the target logit x_y is read in pass 1, before
the group reduction, whose barrier (or ``syncwarp``) orders it before any
write.

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
from fastxent.cuda._numba_cuda import cast_like, cuda, div, exp_fast, kernel, load1, log1p, store1
from numba import float64, int32

from fastxent.cuda._rows import (BAD, SCRATCH, SLOT_ROW, TICKET_A, TICKET_B, block_total,
                                 column_lane, first_row, grid_start, group_softmax, group_sum,
                                 loop_rows, make_row_map, row_group, row_online, vector_layout)


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


# ------------------------------------------------ per-element functions of the row passes
# element(x, t, j, params) -> (value written at column j, float64 term summed)

@cuda.jit(device=True)
def _grad_element(x, t, j, params):
    """No smoothing: exp(x - m) A (the [c = y] term is subtracted afterwards)."""
    shift, a = params
    return exp_fast(x - shift) * a, 0.0


@cuda.jit(device=True)
def _grad_smooth_element(x, t, j, params):
    """Smoothing: exp(x - m) A - B w_j, and the term w_j (x_j - m) of the loss."""
    shift, a, b, weight, m = params
    w = class_weight(weight, j)
    return exp_fast(x - shift) * a - cast_like(b * w, x), w * (np.float64(x) - m)


@cuda.jit(device=True)
def _zero_element(x, t, j, params):
    return cast_like(0.0, x), 0.0


@cuda.jit(device=True)
def _value_element(x, t, j, params):
    """Sums the row itself (the class weights' sum)."""
    return x, np.float64(x)


@cuda.jit(device=True)
def _target_weight_element(x, t, j, params):
    """Reading the target row: the term w_j t'_j of sum_k w_k t'_k."""
    weight, keep_c, eps_c = params
    return x, class_weight(weight, j) * (keep_c * np.float64(x) + eps_c)


@cuda.jit(device=True)
def _soft_element(x, t, j, params):
    """exp(x - m) A - scale w_j t'_j, and the term w_j t'_j (x_j - m) of the loss."""
    shift, a, scale, weight, keep_c, eps_c, m = params
    wt = class_weight(weight, j) * (keep_c * np.float64(t) + eps_c)
    term = 0.0
    if wt != 0.0:  # a masked class (-inf) without target mass adds 0
        term = wt * (np.float64(x) - m)
    return exp_fast(x - shift) * a - cast_like(scale * wt, x), term


_grad_row = make_row_map(_grad_element)
_grad_smooth_row = make_row_map(_grad_smooth_element)
_zero_row = make_row_map(_zero_element)
_sum_row = make_row_map(_value_element)
_target_weight_row = make_row_map(_target_weight_element)
_soft_row = make_row_map(_soft_element)


@cuda.jit(device=True)
def _label_weight(y, i, n_classes, ignore_index, weight, status):
    """w_y of item i with label y (0 for ignore_index); records a label
    outside [0, C)."""
    y = np.int64(y)
    if y == ignore_index:
        return 0.0
    if y < 0 or y >= n_classes:
        cuda.atomic.min(status, BAD, i)
        return 0.0
    return class_weight(weight, y)


@kernel(MAX_REGISTERS)
def scan_labels(labels, n_classes, ignore_index, weight, status, partials, den, shuffle):
    """status[BAD] = min(status[BAD], first row whose label is outside [0, C)
    and not ignore_index); den[0] = sum of w_y over the other kept rows.
    Four labels in flight per thread."""
    scratch = cuda.shared.array(SCRATCH, float64)
    flag = cuda.shared.array(1, int32)
    start, step = grid_start()
    n = labels.shape[0]
    total = 0.0
    i = start
    while i + 3 * step < n:
        y0 = load1(labels, i)  # the four loads first, then the branches
        y1 = load1(labels, i + step)
        y2 = load1(labels, i + 2 * step)
        y3 = load1(labels, i + 3 * step)
        total += ((_label_weight(y0, i, n_classes, ignore_index, weight, status)
                   + _label_weight(y1, i + step, n_classes, ignore_index, weight, status))
                  + (_label_weight(y2, i + 2 * step, n_classes, ignore_index, weight, status)
                     + _label_weight(y3, i + 3 * step, n_classes, ignore_index, weight, status)))
        i += 4 * step
    while i < n:
        total += _label_weight(load1(labels, i), i, n_classes, ignore_index, weight, status)
        i += step
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
        zero = x.dtype.type(0.0)
        state = (x.dtype.type(-np.inf), zero, zero, zero)
        tw = 0.0
        xy = 0.0
        vector, head, chunks = False, np.int64(0), np.int64(0)
        if active:
            xr = x[row]
            if grad is not None:
                vector, head, chunks = vector_layout(xr, grad[row], None, tpr)
            else:
                vector, head, chunks = vector_layout(xr, None, None, tpr)
        if keep:
            xr = x[row]
            if lane == 0:
                xy = np.float64(xr[y])  # before the group reduction: pass 2 may overwrite it
            state = row_online(xr, lane, tpr, vector, head, chunks)
            if smoothing != 0.0 and weight is not None:
                w_vector, w_head, w_chunks = vector_layout(weight, None, None, tpr)
                tw = _sum_row(weight, None, None, lane, tpr, w_vector, w_head, w_chunks, 0.0, 0.0)
        m, excess, d, w_sum = group_softmax(state, tw, tpr, shuffle, scratch)
        if weight is None:
            w_sum = weight_total
        if m == math.inf:  # a row holding +inf: NaN, as on the CPU
            m = np.nan
        w_y = class_weight(weight, y) if keep else 0.0
        smooth_sum = 0.0
        if active and (grad is not None or smoothing != 0.0):
            xr = x[row]
            if keep:
                shift = x.dtype.type(m)
                scale = 0.0
                if grad is not None:
                    scale = row_grad_scale(grad_scale, grad_rows, grad_step, row, inv_den)
                a = x.dtype.type(div(scale * (keep_c * w_y + eps_c * w_sum), d))
                if grad is not None:
                    gr = grad[row]
                    if smoothing != 0.0:
                        smooth_sum = _grad_smooth_row(xr, None, gr, lane, tpr, vector, head, chunks,
                                                      (shift, a, scale * eps_c, weight, m), 0.0)
                    else:
                        _grad_row(xr, None, gr, lane, tpr, vector, head, chunks, (shift, a), 0.0)
                    if lane == column_lane(y, tpr, vector, head, chunks):
                        # this thread wrote column y: subtract the [c = y] term
                        store1(gr, y, load1(gr, y) - x.dtype.type(scale * keep_c * w_y))
                else:
                    smooth_sum = _grad_smooth_row(xr, None, None, lane, tpr, vector, head, chunks,
                                                  (shift, a, 0.0, weight, m), 0.0)
            elif grad is not None:  # an ignored row: zero gradient
                _zero_row(xr, None, grad[row], lane, tpr, vector, head, chunks, 0.0, 0.0)
        if smoothing != 0.0:
            smooth_sum, _ = group_sum(smooth_sum, 0.0, tpr, shuffle, scratch, SLOT_ROW)
        if active and lane == 0:
            loss = 0.0
            if keep:
                log_d = log1p(excess)  # relative precision near 0
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
        zero = x.dtype.type(0.0)
        state = (x.dtype.type(-np.inf), zero, zero, zero)
        tw = 0.0
        vector, head, chunks = False, np.int64(0), np.int64(0)
        if active:
            xr = x[row]
            tr = target[row]
            if grad is not None:
                vector, head, chunks = vector_layout(xr, tr, grad[row], tpr)
            else:
                vector, head, chunks = vector_layout(xr, tr, None, tpr)
            state = row_online(xr, lane, tpr, vector, head, chunks)
            tw = _target_weight_row(tr, None, None, lane, tpr, vector, head, chunks,
                                    (weight, keep_c, eps_c), 0.0)
        m, excess, d, wt_sum = group_softmax(state, tw, tpr, shuffle, scratch)
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
            a = x.dtype.type(div(scale * wt_sum, d))
            params = (shift, a, scale, weight, keep_c, eps_c, m)
            if grad is not None:
                s = _soft_row(xr, tr, grad[row], lane, tpr, vector, head, chunks, params, 0.0)
            else:
                s = _soft_row(xr, tr, None, lane, tpr, vector, head, chunks, params, 0.0)
        s, _ = group_sum(s, 0.0, tpr, shuffle, scratch, SLOT_ROW)
        if active and lane == 0:
            loss = log1p(excess) * wt_sum - s
            if losses is not None:
                losses[row] = loss
            else:
                acc += loss
    if result is not None:
        finish_total(acc, partials, status, result, mean, None, den_value, shuffle, scratch, flag)
