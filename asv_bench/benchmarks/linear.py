"""Fused linear cross-entropy: scores x W^T (x: N x D, W: C x D, D = cases.LINEAR_D)
then softmax cross-entropy, without the N x C logits held at once.  Peers run
the unfused matmul -> cross-entropy (-> autograd backward)."""

from ._suites import FunctionTimeSuite


class LinearCrossEntropy(FunctionTimeSuite):
    function = "linear_cross_entropy"

    def time_linear_cross_entropy(self, impl, shape, dtype):
        self.call()


class LinearCrossEntropyWithGrad(FunctionTimeSuite):
    function = "linear_cross_entropy_with_grad"

    def time_linear_cross_entropy_with_grad(self, impl, shape, dtype):
        self.call()
