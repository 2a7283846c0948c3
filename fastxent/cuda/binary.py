"""CUDA kernels: binary cross-entropy, from probabilities and from logits.

Elementwise over flat C-contiguous arrays (grid-stride), in float64 per
element exactly as ``fastxent.cpu.binary``: one kernel template specialised
per element function.  ``weight``, ``pos_weight`` and ``grad_rows`` are None
or flat arrays already broadcast to the input's size.  "mean"/"sum" are
finished inside the kernel by the last block (deterministic); probabilities
outside [0, 1] are reported through ``status[BAD]`` (the first such index, by
an atomic min) and raised by the caller.
"""

import numpy as np

from fastxent.cuda._config import MAX_REGISTERS
from fastxent.cuda._numba_cuda import cuda, kernel, div, exp, log, log1p
from numba import float64, int32

from fastxent.cuda._rows import BAD, SCRATCH, TICKET_B, block_total, grid_start
from fastxent.cuda.xent import optional_at

# PyTorch clamps p (1 - p) at a float32 1e-12 in the BCE gradient (as the CPU kernels).
_EPSILON = 9.999999960041972e-13  # float(np.float32(1e-12))


@cuda.jit(device=True)
def clamped_log(v):
    """log(v) clamped at -100 like PyTorch's BCE; NaN stays NaN."""
    lv = log(v)
    return -100.0 if lv < -100.0 else lv


@cuda.jit(device=True)
def bce_probs_element(p, t, w, pw):
    """(loss, dloss/dp, 1 if p is outside [0, 1]); ``pw`` is unused."""
    # log1p(-p): relative precision for p near 0 (as on the CPU)
    log_one_minus_p = log1p(-p)
    log_one_minus_p = -100.0 if log_one_minus_p < -100.0 else log_one_minus_p
    loss = -w * (t * clamped_log(p) + (1.0 - t) * log_one_minus_p)
    denom = p * (1.0 - p)
    denom = _EPSILON if denom < _EPSILON else denom
    return loss, w * (p - t) / denom, 1 if (p < 0.0 or p > 1.0) else 0


@cuda.jit(device=True)
def bce_logits_element(x, t, w, pw):
    """(loss, dloss/dx, 0) as on the CPU: (1 - t) softplus(x) + pw t
    softplus(-x) and (1 - t) sigmoid(x) - pw t sigmoid(-x), terms >= 0 that
    do not cancel (PyTorch's form (1 - t) x + ... loses tiny losses)."""
    e = exp(-abs(x))
    l1p = log1p(e)
    loss = w * ((1.0 - t) * (l1p + max(x, 0.0)) + pw * t * (l1p + max(-x, 0.0)))
    one_over = div(1.0, 1.0 + e)
    e_over = div(e, 1.0 + e)
    sigmoid = one_over if x >= 0.0 else e_over
    sigmoid_neg = e_over if x >= 0.0 else one_over
    d = w * ((1.0 - t) * sigmoid - pw * t * sigmoid_neg)
    if x != x:
        loss = x
        d = x
    return loss, d, 0


def _bce_template(element):
    @kernel(MAX_REGISTERS)
    def bce_flat(values, target, weight, pos_weight, grad_rows, grad_scale, losses, grad,
                 partials, status, result, mean_den, shuffle):
        scratch = cuda.shared.array(SCRATCH, float64)
        flag = cuda.shared.array(1, int32)
        start, step = grid_start()
        acc = 0.0
        for k in range(start, values.shape[0], step):
            loss, d, bad = element(np.float64(values[k]), np.float64(target[k]),
                                   optional_at(weight, k, 1.0), optional_at(pos_weight, k, 1.0))
            if bad:
                cuda.atomic.min(status, BAD, k)
            if losses is not None:
                losses[k] = loss
            else:
                acc += loss
            if grad is not None:
                grad[k] = d * grad_scale * optional_at(grad_rows, k, 1.0)
        if result is not None:
            last, total, _ = block_total(acc, 0.0, partials, status, TICKET_B, shuffle, scratch, flag)
            if last and cuda.threadIdx.x == 0:
                result[0] = div(total, mean_den)

    return bce_flat


bce_probs_flat = _bce_template(bce_probs_element)
bce_logits_flat = _bce_template(bce_logits_element)
