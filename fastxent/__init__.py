"""fastxent: fast, exact softmax cross-entropy kernels.

Numba kernels (``@njit(parallel=True)`` on the CPU, ``numba.cuda`` on NVIDIA
GPUs) for log-sum-exp, softmax, cross-entropy and its relatives, called from
plain NumPy code (and from PyTorch tensors and CUDA arrays).  The class axis
is the last axis; ``README.md`` lists the semantics.
"""

from fastxent._api import (
    binary_cross_entropy,
    binary_cross_entropy_with_grad,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_with_grad,
    cross_entropy,
    cross_entropy_probs,
    cross_entropy_probs_with_grad,
    cross_entropy_with_grad,
    entropy,
    entropy_with_grad,
    kl_divergence,
    kl_divergence_with_grad,
    log_softmax,
    logsumexp,
    softmax,
)
from fastxent import reference

__version__ = "0.1.0"

__all__ = [
    "logsumexp",
    "softmax",
    "log_softmax",
    "cross_entropy",
    "cross_entropy_with_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "binary_cross_entropy",
    "binary_cross_entropy_with_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
    "entropy",
    "entropy_with_grad",
    "kl_divergence",
    "kl_divergence_with_grad",
    "cross_entropy_probs",
    "cross_entropy_probs_with_grad",
    "SoftmaxRegression",
    "reference",
]


def __getattr__(name: str):
    # Imported on first use: the linear family pulls in more code, and
    # scikit-learn (for the estimator) is an optional extra.
    if name in ("linear_cross_entropy", "linear_cross_entropy_with_grad"):
        from fastxent import _linear

        return getattr(_linear, name)
    if name == "SoftmaxRegression":
        from fastxent.sklearn import SoftmaxRegression

        return SoftmaxRegression
    raise AttributeError(f"module 'fastxent' has no attribute {name!r}")
