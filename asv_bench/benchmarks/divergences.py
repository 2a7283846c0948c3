"""Entropy, KL divergence and cross-entropy between probability vectors, per
row, and their gradients (w.r.t. p for entropy, w.r.t. q for the others)."""

from ._suites import FunctionTimeSuite


class Entropy(FunctionTimeSuite):
    function = "entropy"

    def time_entropy(self, impl, shape, dtype):
        self.call()


class EntropyWithGrad(FunctionTimeSuite):
    function = "entropy_with_grad"

    def time_entropy_with_grad(self, impl, shape, dtype):
        self.call()


class KLDivergence(FunctionTimeSuite):
    function = "kl_divergence"

    def time_kl_divergence(self, impl, shape, dtype):
        self.call()


class KLDivergenceWithGrad(FunctionTimeSuite):
    function = "kl_divergence_with_grad"

    def time_kl_divergence_with_grad(self, impl, shape, dtype):
        self.call()


class CrossEntropyProbs(FunctionTimeSuite):
    function = "cross_entropy_probs"

    def time_cross_entropy_probs(self, impl, shape, dtype):
        self.call()


class CrossEntropyProbsWithGrad(FunctionTimeSuite):
    function = "cross_entropy_probs_with_grad"

    def time_cross_entropy_probs_with_grad(self, impl, shape, dtype):
        self.call()
