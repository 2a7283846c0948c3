"""CPU kernels: entropy H(p), KL(p || q) and cross-entropy H(p, q) of
probability rows, each with its gradient.

Terms follow scipy.special: entr(p) = -p log p (0 at p = 0, -inf for p < 0);
rel_entr(p, q) = p log(p/q) (0 at p = 0 <= q, inf where q = 0 < p or either
is negative); H(p, q) term = -xlogy(p, q) (0 at p = 0).
Gradients: dH/dp = -(log p + 1); dKL/dq = dH(p,q)/dq = -p/q (0 where p = 0).
q = -0.0 counts as 0; NaN in p or q gives NaN.

p log(p/q) is computed from the ratio (one log, and exact 0 for p = q), but
p/q overflows or underflows where the answer is finite (p = 0.5, q = 1e-310:
356.55; p = 5e-324, q = 2: -3.7e-321).  Such elements are flagged in the
row loop, and a flagged row is summed again with p (log p - log q) for
those elements (:func:`rel_entr_wide`): rare, so the row loop keeps one log.
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
def rel_entr_special(p, q, t):
    """rel_entr's special values around a computed p log(p/q) = t: 0 at
    p = 0 <= q, inf where q = 0 < p (either zero) or either is negative, NaN
    where either is NaN.  (Selects on the result: under ``nsz`` a select
    that turns q = -0.0 into 0.0 could be folded away.)"""
    t = np.inf if (q == 0.0 and p > 0.0) else t
    t = 0.0 if (p == 0.0 and q >= 0.0) else t
    t = np.inf if (p < 0.0 or q < 0.0) else t
    return p + q if (p != p or q != q) else t


@helper
def ratio_out_of_range(p, q):
    """True where p/q overflowed or fell below the normal range although
    p and q are finite and positive (see the module docstring)."""
    r = p / q
    return p > 0.0 and q > 0.0 and p < np.inf and q < np.inf and (r == np.inf or r < 2.2250738585072014e-308)


@helper
def rel_entr(p, q):
    """p log(p / q), one log (see :func:`rel_entr_special`)."""
    return rel_entr_special(p, q, p * fast_log(p / q))


@helper
def rel_entr_wide(p, q):
    """p log(p / q) as p (log p - log q), for a p/q out of range."""
    t = p * (fast_log(p) - fast_log(q)) if ratio_out_of_range(p, q) else p * fast_log(p / q)
    return rel_entr_special(p, q, t)


@helper
def neg_xlogy(p, q):
    """-p log q, 0 where p = 0 (unless q is NaN)."""
    t = -p * fast_log(q)
    return 0.0 if (p == 0.0 and q == q) else t


@helper
def minus_p_over_q(p, q):
    """d/dq of p log(p/q) and of -p log q: -p/q, 0 where p = 0, and
    -p/(+0) where q is either zero."""
    d = -p / q
    d = (-np.inf if p > 0.0 else np.inf) if (q == 0.0 and p != 0.0 and p == p) else d
    return 0.0 if p == 0.0 else d


@helper
def entropy_element(p, q):
    """(-p log p, d/dp, 0) -- q is p itself (one loop template serves all
    three; the last value is the 'redo this row' flag, never set here)."""
    return entr(p), -(fast_log(p) + 1.0), 0


@helper
def entropy_again(p, q):
    return entr(p)


@helper
def kl_element(p, q):
    """(p log(p/q), d/dq, 1 where p/q is out of range)."""
    return rel_entr(p, q), minus_p_over_q(p, q), 1 if ratio_out_of_range(p, q) else 0


@helper
def xent_element(p, q):
    """(-p log q, d/dq, 0)."""
    return neg_xlogy(p, q), minus_p_over_q(p, q), 0


def _rows_template(element, term_again):
    def divergence_rows(p, q, out, grad, rows_per_task):
        n_rows, n_classes = p.shape
        for task in prange((n_rows + rows_per_task - 1) // rows_per_task):
            start, stop = task_rows(task, rows_per_task, n_rows)
            for i in range(start, stop):
                total = 0.0
                n_redo = 0
                for j in range(n_classes):
                    term, d, redo = element(np.float64(p[i, j]), np.float64(q[i, j]))
                    total += term
                    n_redo += redo
                    if grad is not None:
                        grad[i, j] = d
                if n_redo != 0:  # rare: the row's sum again, the flagged terms the slow way
                    total = 0.0
                    for j in range(n_classes):
                        total += term_again(np.float64(p[i, j]), np.float64(q[i, j]))
                out[i] = total

    return divergence_rows


ENTROPY, KL, XENT = 0, 1, 2  # the kinds of divergence_rows, as in fastxent.cuda.divergence

_KERNELS = {
    ENTROPY: specialise(_rows_template, "entropy_rows", element=entropy_element,
                        term_again=entropy_again),
    KL: specialise(_rows_template, "kl_rows", element=kl_element, term_again=rel_entr_wide),
    XENT: specialise(_rows_template, "xent_probs_rows", element=xent_element,
                     term_again=neg_xlogy),
}


def divergence_rows(kind: int, p, q, out, grad, rows_per_task: int) -> None:
    """out[i] = H(p[i]) (kind ENTROPY, q is p), KL(p[i] || q[i]) (KL) or
    H(p[i], q[i]) (XENT), as float64; grad = d/dp (entropy) or d/dq unless None."""
    _KERNELS[kind](p.size, p, q, out, grad, rows_per_task)
