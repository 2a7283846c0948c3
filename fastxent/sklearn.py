"""``SoftmaxRegression``: a scikit-learn classifier over the fused linear
cross-entropy.

It minimises exactly the objective

    J(W, b) = Σₙ sₙ Lₙ + (l2/2) ‖W‖²,   Lₙ = log Σ_c exp f_cn − f_yn,  f = W x + b

(sample weights sₙ, default 1; the intercept b is not penalised), so its
optimum is that of ``LogisticRegression(C=1/l2)`` (multinomial, lbfgs).  The
minimiser is L-BFGS (``scipy.optimize.minimize(..., jac=True)``); every
function evaluation is one chunked pass of
:func:`fastxent.linear_cross_entropy_with_grad`'s loop (BLAS GEMMs, the fused
multi-threaded cross-entropy kernel, no N x C gradient array), without the dx
GEMM that a classifier does not need.

L-BFGS runs in a diagonally preconditioned parametrisation -- features
centred and scaled to unit variance, W = V / σ and b = c − W μ -- which is
only a change of coordinates: J and its minimiser are unchanged, and the
gradient is mapped by the chain rule.  It needs no copy of X and takes far
fewer iterations on features of different scales.  The optimised function is
J / Σₙ sₙ, so ``tol`` is a bound on the largest gradient component of the mean
loss (as for LogisticRegression's lbfgs).

scikit-learn is an optional dependency (``pip install 'fastxent[sklearn]'``).
"""

from __future__ import annotations

import math
import time
import warnings
from numbers import Integral, Real

import numpy as np
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted
from threadpoolctl import threadpool_limits

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

try:
    from sklearn.utils._param_validation import Interval
except ImportError:  # pragma: no cover
    Interval = None

from fastxent import _linear
from fastxent._api import log_softmax, softmax
from fastxent._backend import _is_dask_collection as _is_dask

__all__ = ["SoftmaxRegression"]


_SMALL_PROBLEM = 1 << 23  # rows x features x classes below which BLAS runs single-threaded
_WHITEN_MAX_FEATURES = 2048  # above this, only a diagonal scaling (an eigh of D x D is D^3)


def _whitening(X, s, mu, weight_total, l2, n_classes):
    """(M, M^-T) with M Mᵀ = (Σ + εI)⁻¹: Σ the weighted covariance of the
    features about ``mu`` (their second moment when ``mu`` is 0), ε = l2·C/Σs
    (the penalty's curvature relative to the data's, whose softmax factor is
    about 1/C).  L-BFGS in V = W M⁻ᵀ sees whitened features: collinear and
    badly scaled features no longer slow it down."""
    n, d = X.shape
    eps = l2 * n_classes / weight_total
    if d > _WHITEN_MAX_FEATURES:
        var = np.zeros(d)
        for start in range(0, n, 8192):
            Z = X[start:start + 8192] - mu
            var += s[start:start + 8192] @ (Z * Z)
        return _whitening_factors(var / weight_total, eps)
    cov = np.zeros((d, d))
    for start in range(0, n, 8192):
        Z = (X[start:start + 8192] - mu) * np.sqrt(s[start:start + 8192])[:, None]
        cov += Z.T @ Z
    return _whitening_factors(cov / weight_total, eps)


def _whitening_factors(moment, eps):
    """(M, M^-T) from the covariance (2-D) or the variances (1-D: a diagonal
    scaling) of the features, regularised by ``eps`` (see ``_whitening``)."""
    if moment.ndim == 1:
        var = moment
        scale = 1.0 / np.sqrt(var + max(eps, 1e-12 * max(var.max(initial=0.0), 1e-300)))
        return scale, 1.0 / scale  # diagonal: W = V * scale
    cov = moment
    lam, U = np.linalg.eigh(cov)
    lam = np.maximum(lam, 0.0) + max(eps, 1e-12 * max(lam.max(initial=0.0), 1e-300))
    return U / np.sqrt(lam), U * np.sqrt(lam)


def _initial_intercept(class_weights):
    """The best intercept for W = 0 (log class frequencies, centred) from the
    summed sample weight of each class; absent classes get -30."""
    freq = class_weights / class_weights.sum()
    with np.errstate(divide="ignore"):
        log_freq = np.log(freq)
    finite = np.isfinite(log_freq)
    return np.where(finite, log_freq - log_freq[finite].mean(), -30.0)


def _right_multiply(A, M, transpose=False):
    """A @ M (or A @ Mᵀ); a 1-D M is a diagonal matrix."""
    if M.ndim == 1:
        return A * M
    return A @ (M.T if transpose else M)


class _Objective:
    """J / Σs and its gradient with respect to the preconditioned parameters
    θ = [V.ravel(), c] (c only with an intercept)."""

    def __init__(self, X, y_index, sample_weight, n_classes, l2, fit_intercept):
        n, d = X.shape
        self.n_classes, self.n_features = n_classes, d
        self.fit_intercept = fit_intercept
        self.l2 = l2
        weighted = sample_weight is not None
        s = np.ones(n) if not weighted else sample_weight
        self.weight_total = float(s.sum())
        # centre (with an intercept) and whiten the features: W = V Mᵀ, M Mᵀ = (Σ + εI)⁻¹
        self.mu = (s @ X) / self.weight_total if fit_intercept else np.zeros(d)
        self.M, self.M_inverse_T = _whitening(X, s, self.mu, self.weight_total, l2, n_classes)
        # the linear cross-entropy problem: validated once, W and b swapped in per call
        bias = np.zeros(n_classes) if fit_intercept else None
        self.problem = _linear.LinearProblem.from_arguments(
            X, np.zeros((n_classes, d)), y_index, bias=bias, l2=0.0 if weighted else l2,
            reduction="none" if weighted else "sum")
        self.row_scale = s / self.weight_total if weighted else None
        self.sample_weight = s if weighted else None
        self.n_evaluations = 0
        self.last = (None, math.nan, None)

    @property
    def size(self) -> int:
        return self.n_classes * (self.n_features + int(self.fit_intercept))

    def to_model(self, theta):
        """(W, b) from θ."""
        C, D = self.n_classes, self.n_features
        W = _right_multiply(theta[: C * D].reshape(C, D), self.M, transpose=True)
        if not self.fit_intercept:
            return W, None
        return W, theta[C * D:] - W @ self.mu

    def from_model(self, W, b):
        theta = np.zeros(self.size)
        C, D = self.n_classes, self.n_features
        theta[: C * D] = _right_multiply(W, self.M_inverse_T).ravel()
        if self.fit_intercept:
            theta[C * D:] = b + W @ self.mu
        return theta

    def objective(self, W, b):
        """J(W, b) itself (not divided by Σs)."""
        p = self.problem
        p.set_parameters(W, b)
        value = _linear.run(p, want_grad=False)[0]
        if self.sample_weight is not None:
            value = float(self.sample_weight @ value) + 0.5 * self.l2 * float(np.sum(W * W))
        return float(value)

    def __call__(self, theta):
        self.n_evaluations += 1
        W, b = self.to_model(theta)
        value, dW, db = self.data_terms(W, b)
        # chain rule to θ: ∂J/∂V = (dW − db μᵀ) M, ∂J/∂c = db
        grad = np.empty(self.size)
        C, D = self.n_classes, self.n_features
        gV = dW
        if self.fit_intercept:
            gV = dW - np.outer(db, self.mu)
            grad[C * D:] = db
        grad[: C * D] = _right_multiply(gV, self.M).ravel()
        self.last = (theta.copy(), value, grad)
        return value, grad

    def data_terms(self, W, b):
        """(J / Σs, ∂(J / Σs)/∂W, ∂(J / Σs)/∂b) at (W, b): one pass over the data."""
        p = self.problem
        p.set_parameters(W, b)
        if self.sample_weight is None:
            # reduction="sum" with the penalty: J; gradient scaled by 1/Σs
            loss, _, dW, db = _linear.run(p, want_grad=True, grad_output=1.0 / self.weight_total,
                                          want_dx=False)
            value = float(loss) / self.weight_total
        else:
            # per-row losses, gradient of Σ (sₙ/Σs) Lₙ; the penalty added here
            losses, _, dW, db = _linear.run(p, want_grad=True, grad_output=self.row_scale,
                                            want_dx=False)
            value = float(self.row_scale @ losses)
            value += 0.5 * self.l2 * float(np.sum(W * W)) / self.weight_total
            dW += (self.l2 / self.weight_total) * W
        return value, dW, db


class SoftmaxRegression(ClassifierMixin, BaseEstimator):
    """Multinomial logistic (softmax) regression with an L2 penalty, fitted by
    L-BFGS over fastxent's fused linear cross-entropy.

    Minimises Σₙ sₙ Lₙ + (l2/2)‖W‖² (the intercept is
    not penalised), the objective of ``LogisticRegression(C=1/l2)``.  Binary
    problems are fitted as two-class softmax (``coef_`` has two rows).

    Parameters
    ----------
    l2 : float, default 1.0
        Penalty strength λ (= 1/C of LogisticRegression); 0 for none.
    fit_intercept : bool, default True
        Fit an (unpenalised) intercept per class.
    max_iter : int, default 1000
        Most L-BFGS iterations.
    tol : float, default 1e-8
        Stop when the largest gradient component of J / Σₙ sₙ is below ``tol``
        (or the relative decrease of J stalls at rounding level).
    verbose : int, default 0
        1: one line per iteration (objective, gradient, time); 2: also the fit
        summary.

    Attributes
    ----------
    coef_ : ndarray (n_classes, n_features)
    intercept_ : ndarray (n_classes,)
    classes_ : ndarray (n_classes,)
    n_iter_ : int
        L-BFGS iterations run.
    objective_ : float
        J at the solution.
    n_features_in_ : int
    """

    _parameter_constraints = {
        "l2": [Interval(Real, 0, None, closed="left")] if Interval else [Real],
        "fit_intercept": ["boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")] if Interval else [Integral],
        "tol": [Interval(Real, 0, None, closed="left")] if Interval else [Real],
        "verbose": ["verbose"],
    }

    def __init__(self, l2=1.0, fit_intercept=True, max_iter=1000, tol=1e-8, verbose=0):
        self.l2 = l2
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, sample_weight=None):
        """Fit the model to ``X`` (n_samples, n_features) and labels ``y`` (any
        label type), optionally weighting each sample."""
        if hasattr(self, "_validate_params"):
            self._validate_params()
        if _is_dask(X) or _is_dask(y):  # trained across the cluster (fastxent.dask)
            from fastxent.dask import distributed_objective

            fun, theta0 = distributed_objective(self, X, y, sample_weight)
            return self._minimize(fun, theta0, small=False)
        X, y = _validate_data(self, X, y, dtype=np.float64, order="C",
                              accept_sparse=False, y_numeric=False)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        y_index = y_index.reshape(-1).astype(np.int64)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(
                "SoftmaxRegression needs samples of at least 2 classes in the data, but the "
                f"data contains only one class: {self.classes_[0]!r}")
        weights = None
        if sample_weight is not None:
            weights = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                           ensure_non_negative=True)
            present = np.bincount(y_index, weights=weights, minlength=n_classes) > 0
            if present.sum() < 2:
                raise ValueError(
                    "SoftmaxRegression needs samples of at least 2 classes with a positive "
                    f"sample_weight, but only class {self.classes_[present][0]!r} has any")
            if np.all(weights == weights[0]) and weights[0] > 0:
                weights = None if weights[0] == 1 else weights

        fun = _Objective(X, y_index, weights, n_classes, float(self.l2), bool(self.fit_intercept))
        theta0 = np.zeros(fun.size)
        if self.fit_intercept:
            s = np.ones(len(y_index)) if weights is None else weights
            theta0[-n_classes:] = _initial_intercept(np.bincount(y_index, weights=s,
                                                                 minlength=n_classes))
        # Small problems run BLAS on one thread: waking a thread pool for a
        # (2000 x 64) GEMM costs more than the GEMM (and far more on a busy machine).
        return self._minimize(fun, theta0,
                              small=X.shape[0] * X.shape[1] * n_classes < _SMALL_PROBLEM)

    def _minimize(self, fun, theta0, small):
        """L-BFGS on ``fun`` (an _Objective) from ``theta0``; sets the fitted attributes."""
        n_classes = fun.n_classes
        start = time.perf_counter()
        state = {"iteration": 0}
        verbose = int(self.verbose)

        def callback(intermediate_result):
            state["iteration"] += 1
            if verbose:
                value = getattr(intermediate_result, "fun", math.nan)
                x, _, grad = fun.last  # the gradient at the accepted point, if it was the last one
                same = x is not None and np.array_equal(x, intermediate_result.x)
                gmax = float(np.abs(grad).max()) if same and grad.size else math.nan
                print(f"[SoftmaxRegression] iter {state['iteration']:4d}  "
                      f"objective {value * fun.weight_total:.12g}  max|grad| {gmax:.2e}  "
                      f"time {time.perf_counter() - start:.3f}s", flush=True)

        with threadpool_limits(1 if small else None, user_api="blas"):
            result = minimize(fun, theta0, method="L-BFGS-B", jac=True, callback=callback,
                              options={"maxiter": int(self.max_iter), "gtol": float(self.tol),
                                       "ftol": 64 * np.finfo(float).eps, "maxls": 50,
                                       "maxcor": 20})
        W, b = fun.to_model(result.x)
        self.coef_ = W
        self.intercept_ = b if b is not None else np.zeros(n_classes)
        self.n_iter_ = int(result.nit)
        self.objective_ = float(result.fun) * fun.weight_total
        if verbose:
            print(f"[SoftmaxRegression] {result.message} after {self.n_iter_} iterations, "
                  f"{fun.n_evaluations} evaluations, {time.perf_counter() - start:.3f}s; "
                  f"objective {self.objective_:.10g}", flush=True)
        if not result.success and result.nit >= self.max_iter:
            warnings.warn(f"SoftmaxRegression: L-BFGS did not converge in {self.max_iter} "
                          "iterations; increase max_iter", ConvergenceWarning, stacklevel=3)
        return self

    # -------------------------------------------------------------- predict
    def _scores(self, X):
        check_is_fitted(self)
        if _is_dask(X):  # lazy: a Dask array of scores, chunked along the rows
            from fastxent.dask import linear_scores

            return linear_scores(X, self.coef_, self.intercept_, self.n_features_in_)
        X = _validate_data(self, X, dtype=np.float64, accept_sparse=False, reset=False)
        return X @ self.coef_.T + self.intercept_

    def decision_function(self, X):
        """Scores x W^T + b, shape (n_samples, n_classes); for two classes the
        log-odds of the second class, shape (n_samples,) (as scikit-learn's
        binary classifiers)."""
        scores = self._scores(X)
        if scores.shape[1] == 2:
            return scores[:, 1] - scores[:, 0]
        return scores

    def predict_proba(self, X):
        """Class probabilities softmax(x W^T + b), columns in ``classes_`` order."""
        return softmax(self._scores(X))

    def predict_log_proba(self, X):
        """log_softmax(x W^T + b): exact for probabilities far below 1e-308."""
        return log_softmax(self._scores(X))

    def predict(self, X):
        """The most probable class of each sample."""
        scores = self._scores(X)
        if _is_dask(scores):
            return scores.argmax(axis=1).map_blocks(self.classes_.take, dtype=self.classes_.dtype)
        return self.classes_[np.argmax(scores, axis=1)]

    def score(self, X, y, sample_weight=None):
        """Mean accuracy on (X, y); a lazy 0-d Dask array when X or y is one."""
        if _is_dask(X) or _is_dask(y):
            from fastxent.dask import accuracy

            return accuracy(self.predict(X), y, sample_weight)
        return super().score(X, y, sample_weight=sample_weight)

    def objective(self, X, y, sample_weight=None):
        """J(coef_, intercept_) = Σ sₙ Lₙ + (l2/2)‖coef_‖² on (X, y) (labels in
        ``classes_``)."""
        check_is_fitted(self)
        X = _validate_data(self, X, dtype=np.float64, reset=False)
        y_index = np.searchsorted(self.classes_, y)
        scores = X @ self.coef_.T + self.intercept_
        losses = -log_softmax(scores)[np.arange(len(y_index)), y_index]
        s = np.ones(len(losses)) if sample_weight is None else np.asarray(sample_weight, float)
        return float(s @ losses) + 0.5 * float(self.l2) * float(np.sum(self.coef_ ** 2))
