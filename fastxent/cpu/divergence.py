"""CPU kernels: entropy H(p), KL(p || q) and cross-entropy H(p, q) of
probability rows, each with its gradient (seed 002).

Terms follow scipy.special: entr(p) = -p log p (0 at p = 0, -inf for p < 0);
rel_entr(p, q) = p log(p/q) (0 at p = 0 <= q, inf where q = 0 < p or either
is negative); H(p, q) term = -xlogy(p, q) (0 at p = 0).
Gradients: dH/dp = -(log p + 1); dKL/dq = dH(p,q)/dq = -p/q (0 where p = 0).
"""

import numpy as np
from numba import prange

from fastxent.cpu._jit import helper, specialise
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


@helper
def entropy_element(p, q):
    """(-p log p, d/dp) -- q is p itself (one loop template serves all three)."""
    return entr(p), -(fast_log(p) + 1.0)


@helper
def kl_element(p, q):
    """(p log(p/q), d/dq)."""
    return rel_entr(p, q), 0.0 if p == 0.0 else -p / q


@helper
def xent_element(p, q):
    """(-p log q, d/dq)."""
    return neg_xlogy(p, q), 0.0 if p == 0.0 else -p / q


def _rows_template(element):
    def divergence_rows(p, q, out, grad, rows_per_task):
        n_rows, n_classes = p.shape
        for task in prange((n_rows + rows_per_task - 1) // rows_per_task):
            start, stop = task_rows(task, rows_per_task, n_rows)
            for i in range(start, stop):
                total = 0.0
                for j in range(n_classes):
                    term, d = element(np.float64(p[i, j]), np.float64(q[i, j]))
                    total += term
                    if grad is not None:
                        grad[i, j] = d
                out[i] = total

    return divergence_rows


ENTROPY, KL, XENT = 0, 1, 2  # the kinds of divergence_rows, as in fastxent.cuda.divergence

_KERNELS = {
    ENTROPY: specialise(_rows_template, "entropy_rows", element=entropy_element),
    KL: specialise(_rows_template, "kl_rows", element=kl_element),
    XENT: specialise(_rows_template, "xent_probs_rows", element=xent_element),
}


def divergence_rows(kind: int, p, q, out, grad, rows_per_task: int) -> None:
    """out[i] = H(p[i]) (kind ENTROPY, q is p), KL(p[i] || q[i]) (KL) or
    H(p[i], q[i]) (XENT), as float64; grad = d/dp (entropy) or d/dq unless None."""
    _KERNELS[kind](p.size, p, q, out, grad, rows_per_task)
