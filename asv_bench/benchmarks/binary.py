"""Binary cross-entropy on probabilities and on logits, loss and loss + gradient."""

from ._suites import FunctionTimeSuite


class BinaryCrossEntropy(FunctionTimeSuite):
    function = "binary_cross_entropy"

    def time_binary_cross_entropy(self, impl, shape, dtype):
        self.call()


class BinaryCrossEntropyWithGrad(FunctionTimeSuite):
    function = "binary_cross_entropy_with_grad"

    def time_binary_cross_entropy_with_grad(self, impl, shape, dtype):
        self.call()


class BinaryCrossEntropyWithLogits(FunctionTimeSuite):
    function = "binary_cross_entropy_with_logits"

    def time_binary_cross_entropy_with_logits(self, impl, shape, dtype):
        self.call()


class BinaryCrossEntropyWithLogitsWithGrad(FunctionTimeSuite):
    function = "binary_cross_entropy_with_logits_with_grad"

    def time_binary_cross_entropy_with_logits_with_grad(self, impl, shape, dtype):
        self.call()
