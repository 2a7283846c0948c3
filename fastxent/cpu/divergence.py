"""CPU kernels: entropy H(p), KL(p || q) and cross-entropy H(p, q) of
probability rows, each with its gradient (seed 002).

Terms follow scipy.special: entr(p) = -p log p (0 at p = 0, -inf for p < 0);
rel_entr(p, q) = p log(p/q) (0 at p = 0 <= q, inf where q = 0 < p or either
is negative); H(p, q) term = -xlogy(p, q) (0 at p = 0).
Gradients: dH/dp = -(log p + 1); dKL/dq = dH(p,q)/dq = -p/q (0 where p = 0).
"""

import numpy as np
from numba import prange

from fastxent._jit import helper, kernel
from fastxent.cpu._fastmath import fast_log
from fastxent.cpu._rows import task_rows


@helper
def entr(p):
    """-p log p (selects, not branches: the row loop vectorises)."""
    t = -p * fast_log(p)
    t = 0.0 if p == 0.0 else t
    return -np.inf if p < 0.0 else t  # NaN stays NaN


@helper
def rel_entr(p, q):
    """p log(p / q); inf where q = 0 < p (log(inf)) or either is negative."""
    t = p * fast_log(p / q)
    t = 0.0 if (p == 0.0 and q >= 0.0) else t
    return np.inf if (p < 0.0 or q < 0.0) else t  # NaN stays NaN


@helper
def neg_xlogy(p, q):
    """-p log q, 0 where p = 0 (unless q is NaN)."""
    t = -p * fast_log(q)
    return 0.0 if (p == 0.0 and q == q) else t


@kernel
def _entropy_rows(p, out, grad, rows_per_task):
    n_rows, n_classes = p.shape
    for task in prange((n_rows + rows_per_task - 1) // rows_per_task):
        start, stop = task_rows(task, rows_per_task, n_rows)
        for i in range(start, stop):
            h = 0.0
            for j in range(n_classes):
                v = np.float64(p[i, j])
                h += entr(v)
                if grad is not None:
                    grad[i, j] = -(fast_log(v) + 1.0)
            out[i] = h


@kernel
def _divergence_rows(p, q, kl, out, grad, rows_per_task):
    n_rows, n_classes = p.shape
    for task in prange((n_rows + rows_per_task - 1) // rows_per_task):
        start, stop = task_rows(task, rows_per_task, n_rows)
        for i in range(start, stop):
            total = 0.0
            for j in range(n_classes):
                pv = np.float64(p[i, j])
                qv = np.float64(q[i, j])
                total += rel_entr(pv, qv) if kl else neg_xlogy(pv, qv)
                if grad is not None:
                    grad[i, j] = 0.0 if pv == 0.0 else -pv / qv
            out[i] = total


def entropy_rows(p, out, grad, rows_per_task: int) -> None:
    """out[i] = H(p[i]) (float64); grad = dH/dp unless None."""
    _entropy_rows(p.size, p, out, grad, rows_per_task)


def divergence_rows(p, q, kl: bool, out, grad, rows_per_task: int) -> None:
    """out[i] = KL(p[i] || q[i]) if kl else H(p[i], q[i]); grad = d/dq unless None."""
    _divergence_rows(p.size, p, q, kl, out, grad, rows_per_task)
