"""logsumexp, softmax, log_softmax: fastxent vs NumPy, SciPy, PyTorch, JAX."""

from ._suites import FunctionTimeSuite


class LogSumExp(FunctionTimeSuite):
    function = "logsumexp"

    def time_logsumexp(self, impl, shape, dtype):
        self.call()


class Softmax(FunctionTimeSuite):
    function = "softmax"

    def time_softmax(self, impl, shape, dtype):
        self.call()


class LogSoftmax(FunctionTimeSuite):
    function = "log_softmax"

    def time_log_softmax(self, impl, shape, dtype):
        self.call()
