"""CPU kernels: binary cross-entropy, from probabilities and from logits.

Elementwise over flat contiguous arrays, in tasks of ``task_elements``
elements; each task writes its partial loss sum (for "mean"/"sum") or the
per-element losses (for "none"), so nothing of the input's size is allocated
beyond the outputs.  ``weight``, ``pos_weight`` and ``grad_scale`` are None or
arrays already broadcast to the input's size.

Probabilities outside [0, 1] are counted per task and reported by the caller
after the kernel: the kernel writes only into buffers that the caller owns.
"""

import numpy as np
from numba import prange

from fastxent._jit import helper, specialise
from fastxent.cpu._fastmath import fast_exp, fast_log, fast_log1p


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


@helper
def bce_probs_element(p, t, w, pw):
    """(loss, dloss/dp, 1 if p is outside [0, 1]) for one probability p,
    target t, weight w (``pw`` is unused: the signature is shared)."""
    loss = -w * (t * clamped_log(p) + (1.0 - t) * clamped_log(1.0 - p))
    denom = p * (1.0 - p)
    denom = _EPSILON if denom < _EPSILON else denom
    return loss, w * (p - t) / denom, 1 if (p < 0.0 or p > 1.0) else 0


@helper
def bce_logits_element(x, t, w, pw):
    """(loss, dloss/dx, 0) for one logit x, target t, weight w, positive
    weight pw (PyTorch's stable form: log1p(exp(-|x|)) never overflows)."""
    e = fast_exp(-abs(x))
    log_weight = 1.0 + (pw - 1.0) * t
    loss = w * ((1.0 - t) * x + log_weight * (fast_log1p(e) + max(-x, 0.0)))
    sigmoid = 1.0 / (1.0 + e) if x >= 0.0 else e / (1.0 + e)
    loss = x if x != x else loss
    sigmoid = x if x != x else sigmoid
    return loss, w * (sigmoid * log_weight - pw * t), 0


def _bce_template(element):
    def bce_flat(values, target, weight, pos_weight, grad_scale, scale, loss_out, partial, grad,
                 bad, task_elements):
        n = values.shape[0]
        for task in prange((n + task_elements - 1) // task_elements):
            start = task * task_elements
            stop = min(start + task_elements, n)
            total = 0.0
            n_bad = 0
            for k in range(start, stop):
                loss, d, out_of_range = element(
                    np.float64(values[k]), np.float64(target[k]), optional_at(weight, k, 1.0),
                    optional_at(pos_weight, k, 1.0))
                n_bad += out_of_range
                if loss_out is None:
                    total += loss
                else:
                    loss_out[k] = loss
                if grad is not None:
                    grad[k] = d * scale * optional_at(grad_scale, k, 1.0)
            partial[task] = total
            bad[task] = n_bad

    return bce_flat


_bce_probs = specialise(_bce_template, "bce_probs_flat", element=bce_probs_element)
_bce_logits = specialise(_bce_template, "bce_logits_flat", element=bce_logits_element)


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
