"""CUDA kernels: entropy H(p), KL(p || q) and cross-entropy H(p, q) of
probability rows, each with its gradient.

Terms as in ``fastxent.cpu.divergence`` (scipy.special): entr(p) = -p log p
(0 at p = 0, -inf for p < 0); rel_entr(p, q) = p log(p/q) (0 at p = 0 <= q,
inf where q = 0 < p or either is negative); H(p, q) term = -p log q (0 at
p = 0).  Gradients: dH/dp = -(log p + 1); dKL/dq = dH(p,q)/dq = -p/q (0 where
p = 0).  q = -0.0 counts as 0; NaN in gives NaN out.  One kernel for the three: each group of threads sums its row's
terms in float64 and writes the gradient elementwise.
"""

import numpy as np

from fastxent.cuda._config import MAX_REGISTERS
from fastxent.cuda._numba_cuda import cuda, kernel, div, log
from numba import float64

from fastxent.cuda._rows import SCRATCH, SLOT_ROW, SLOT_SUM, first_row, group_sum, loop_rows, row_group

ENTROPY, KL, XENT = 0, 1, 2


@cuda.jit(device=True)
def entr(p):
    if p != p:
        return p
    if p < 0.0:
        return -np.inf
    if p == 0.0:
        return 0.0
    return -p * log(p)


@cuda.jit(device=True)
def rel_entr(p, q):
    """p log(p/q); q = -0.0 counts as 0; log p - log q where p/q over- or
    underflows although the answer is finite (as on the CPU)."""
    if p != p or q != q:
        return p + q
    if p < 0.0 or q < 0.0:
        return np.inf
    if p == 0.0:
        return 0.0
    if q == 0.0:
        return np.inf
    r = div(p, q)
    if r == np.inf or r < 2.2250738585072014e-308:
        return p * (log(p) - log(q))
    return p * log(r)


@cuda.jit(device=True)
def minus_p_over_q(p, q):
    """-p/q, 0 where p = 0, and -p/(+0) where q is either zero."""
    if p == 0.0:
        return 0.0
    if q == 0.0 and p == p:
        return -np.inf if p > 0.0 else np.inf
    return -div(p, q)


@cuda.jit(device=True)
def neg_xlogy(p, q):
    if p == 0.0 and q == q:
        return 0.0
    return -p * log(q)


@kernel(MAX_REGISTERS)
def divergence_rows(p, q, kind, out, grad, tpr, shuffle):
    """out[row, 0] = H(p) (kind ENTROPY, q ignored), KL(p || q) or H(p, q);
    grad (unless None) = dH/dp or d/dq."""
    scratch = cuda.shared.array(SCRATCH, float64)
    n_rows, n_classes = p.shape
    lane, group, groups = row_group(tpr)
    first, step = first_row(group, groups)
    for it in range(loop_rows(n_rows, groups)):
        row = first + it * step
        active = row < n_rows
        total = 0.0
        if active:
            for j in range(lane, n_classes, tpr):
                pv = np.float64(p[row, j])
                if kind == ENTROPY:
                    total += entr(pv)
                    if grad is not None:
                        grad[row, j] = -(log(pv) + 1.0)
                else:
                    qv = np.float64(q[row, j])
                    total += rel_entr(pv, qv) if kind == KL else neg_xlogy(pv, qv)
                    if grad is not None:
                        grad[row, j] = minus_p_over_q(pv, qv)
        # alternate slots: successive reductions must not share one
        total, _ = group_sum(total, 0.0, tpr, shuffle, scratch, SLOT_ROW if it % 2 == 0 else SLOT_SUM)
        if active and lane == 0:
            out[row, 0] = total
