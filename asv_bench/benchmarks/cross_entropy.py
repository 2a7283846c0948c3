"""Softmax cross-entropy with hard labels, loss and fused loss + gradient
(PyTorch: forward + autograd backward; JAX: jit(value_and_grad))."""

from ._suites import FunctionTimeSuite


class CrossEntropy(FunctionTimeSuite):
    function = "cross_entropy"

    def time_cross_entropy(self, impl, shape, dtype):
        self.call()


class CrossEntropyWithGrad(FunctionTimeSuite):
    function = "cross_entropy_with_grad"

    def time_cross_entropy_with_grad(self, impl, shape, dtype):
        self.call()
