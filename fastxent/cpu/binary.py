"""CPU kernels: binary cross-entropy, from probabilities and from logits.

Elementwise over flat contiguous arrays, in tasks of ``task_elements``
elements; each task writes its partial loss sum (for "mean"/"sum") or the
per-element losses (for "none"), so nothing of the input's size is allocated
beyond the outputs (each task has two scratch rows of BLOCK float64).
``weight``, ``pos_weight`` and ``grad_scale`` are None or arrays already
broadcast to the input's size.

Probabilities outside [0, 1] are counted per task and reported by the caller
after the kernel: the kernel writes only into buffers that the caller owns.
"""

import numpy as np
from numba import prange

from fastxent.cpu._jit import helper, specialise
from fastxent.cpu._fastmath import fast_exp_shifted, fast_log, fast_log1p, sum_of_products


# PyTorch clamps p (1 - p) at a *float32* 1e-12 in the BCE gradient; the same
# constant makes the gradients agree at p = 0 or 1 to the last bit.
_EPSILON = float(np.float32(1e-12))


@helper
def optional_at(a, k, default):
    """a[k], or ``default`` when ``a`` is None (pruned at compile time)."""
    if a is None:
        return default
    return a[k]


@helper
def clamped_log(v):
    """log(v) clamped at -100 like PyTorch's BCE; NaN stays NaN."""
    lv = fast_log(v)
    return -100.0 if lv < -100.0 else lv


# Each element needs two transcendentals (log p and log(1 - p); or exp and
# log1p).  LLVM does not vectorise a loop holding two inlined log/exp bodies,
# so a task goes through its elements in blocks of BLOCK: one loop per
# transcendental into a scratch row that stays in L1, then one loop that
# combines them.  Measured on 4M float32 elements, one thread: 28 ms against
# 93 ms for the single scalar loop (``first(x)`` and ``second(x, first)``
# below are those two transcendentals, ``combine`` the rest; ``first`` gets x
# in the input's dtype, so that it may compute in float32, the others float64).
BLOCK = 512


@helper
def log_p(p):
    """Clamped log p, in float64 for float32 p too (a float32 log was tried
    and was no faster inside this kernel: docs/performance.md)."""
    return clamped_log(np.float64(p))


@helper
def log_one_minus_p(p, unused_log_p):
    """Clamped log(1 - p) as log1p(-p), p already float64: relative
    precision for p near 0 (log(1 - 1e-17) is -1e-17, not 0)."""
    lv = fast_log1p(-p)
    return -100.0 if lv < -100.0 else lv


@helper
def bce_probs_element(p, t, w, pw, log_prob, log_one_minus_prob):
    """(loss, dloss/dp, 1 if p is outside [0, 1]) for one probability p,
    target t, weight w, from log p and log(1 - p) (``pw`` is unused: the
    signature is shared)."""
    loss = -w * sum_of_products(t, log_prob, 1.0 - t, log_one_minus_prob)
    denom = p * (1.0 - p)
    denom = _EPSILON if denom < _EPSILON else denom
    return loss, w * (p - t) / denom, 1 if (p < 0.0 or p > 1.0) else 0


@helper
def exp_minus_abs(x):
    """exp(-|x|) in x's own precision (8 float32 lanes per AVX2 instruction
    instead of 4), returned as float64: for float32 x its 2-ulp error is
    far below the rounding of the float32 result.  -|x| <= 0 is below the
    shifted exp's cut (44), so its one-step scaling is exact here (-inf -> 0,
    NaN -> NaN as with fast_exp)."""
    return np.float64(fast_exp_shifted(-abs(x)))


@helper
def log1p_of_exp(unused_x, e):
    return fast_log1p(e)


@helper
def bce_logits_element(x, t, w, pw, e, log1p_e):
    """(loss, dloss/dx, 0) for one logit x, target t, weight w, positive
    weight pw, from e = exp(-|x|) and log1p(e).

    PyTorch's (1 - t) x + (1 + (pw - 1) t) softplus(-x) written as
    (1 - t) softplus(x) + pw t softplus(-x), softplus(+-x) = log1p(e) +
    max(+-x, 0) (never overflows): two terms >= 0, so a tiny loss (x = -40,
    t = 0: 4.2e-18) keeps its digits instead of cancelling x against -x.
    Likewise the gradient (1 - t) sigmoid(x) - pw t sigmoid(-x)."""
    loss = w * sum_of_products(1.0 - t, log1p_e + max(x, 0.0), pw * t, log1p_e + max(-x, 0.0))
    one_over = 1.0 / (1.0 + e)
    e_over = e / (1.0 + e)
    sigmoid = one_over if x >= 0.0 else e_over
    sigmoid_neg = e_over if x >= 0.0 else one_over
    d = w * sum_of_products(1.0 - t, sigmoid, -(pw * t), sigmoid_neg)
    loss = x if x != x else loss
    loss = np.nan if x == -np.inf else loss  # PyTorch's (1 - t) x + ... is NaN there
    d = x if x != x else d
    return loss, d, 0


def _bce_template(first, second, combine):
    def bce_flat(values, target, weight, pos_weight, grad_scale, scale, loss_out, partial, grad,
                 bad, task_elements):
        n = values.shape[0]
        for task in prange((n + task_elements - 1) // task_elements):
            start = task * task_elements
            stop = min(start + task_elements, n)
            a = np.empty(BLOCK)
            b = np.empty(BLOCK)
            total = 0.0
            n_bad = 0
            for block_start in range(start, stop, BLOCK):
                m = min(BLOCK, stop - block_start)
                for i in range(m):
                    a[i] = first(values[block_start + i])
                for i in range(m):
                    b[i] = second(np.float64(values[block_start + i]), a[i])
                for i in range(m):
                    k = block_start + i
                    loss, d, out_of_range = combine(
                        np.float64(values[k]), np.float64(target[k]), optional_at(weight, k, 1.0),
                        optional_at(pos_weight, k, 1.0), a[i], b[i])
                    n_bad += out_of_range
                    a[i] = loss  # a[i] and b[i] are used up: they now hold the results
                    b[i] = d * scale * optional_at(grad_scale, k, 1.0)
                # The results leave scratch in loops of their own: a loop that
                # writes an output is vectorised behind a run-time check that
                # the output does not overlap the inputs, and falls back to
                # scalar code (another order of the sum, other roundings of
                # fast-math arithmetic) when the heap happens to place them
                # close.  These loops only sum or copy, so the bits never change.
                if loss_out is None:
                    for i in range(m):
                        total += a[i]
                else:
                    for i in range(m):
                        loss_out[block_start + i] = a[i]
                if grad is not None:
                    for i in range(m):
                        grad[block_start + i] = b[i]
            partial[task] = total
            bad[task] = n_bad

    return bce_flat


_bce_probs = specialise(_bce_template, "bce_probs_flat", first=log_p, second=log_one_minus_p,
                        combine=bce_probs_element)
_bce_logits = specialise(_bce_template, "bce_logits_flat", first=exp_minus_abs,
                         second=log1p_of_exp, combine=bce_logits_element)


def bce_flat(values, target, weight, pos_weight, logits: bool, grad_scale, scale: float,
             loss_out, grad, task_elements: int):
    """Run the BCE kernel; returns (sum of the losses, first index of a
    probability outside [0, 1] or -1).  ``loss_out`` None = reduce."""
    n_tasks = max(1, (values.shape[0] + task_elements - 1) // task_elements)
    partial = np.zeros(n_tasks)
    bad = np.zeros(n_tasks, dtype=np.int64)
    kernel = _bce_logits if logits else _bce_probs
    kernel(values.size, values, target, weight, pos_weight, grad_scale, scale, loss_out, partial,
           grad, bad, task_elements)
    if bad.any():  # only on the error path: find the first offending element
        return float(partial.sum()), int(np.flatnonzero((values < 0) | (values > 1))[0])
    return float(partial.sum()), -1
