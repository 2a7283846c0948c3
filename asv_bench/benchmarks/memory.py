"""Memory of the fused gradients: no N x C temporary beyond the outputs.

* ``peakmem_*``: asv's peak resident memory of the whole benchmark process
  (inputs, outputs, imported libraries and all); compare implementations with
  each other, not with zero.
* ``track_temporaries``: the peak memory the call itself adds above what was
  resident before it, minus the arrays it returns, in units of the N x C
  logits (0 = no N x C temporary; the NumPy reference makes several).  Read
  from Linux's high-water mark (reset through /proc/self/clear_refs), so it
  counts every allocator: NumPy, Numba's runtime, BLAS, PyTorch, XLA.
"""

from . import cases

_IMPLS = ["fastxent", "numpy", "torch", "jax"]


class _MemorySuite:
    function = ""
    shape = (0, 0)
    timeout = 300

    def setup(self, impl, dtype):
        self.call = cases.prepare(impl, self.function, self.shape, dtype)
        self.logits_nbytes = cases.logits_nbytes(self.function, self.shape, dtype)

    def teardown(self, impl, dtype):
        self.call = None

    def _temporaries(self):
        if not cases.PeakRSS.available():
            raise NotImplementedError("needs Linux's /proc/self/clear_refs")
        meter = cases.PeakRSS()
        meter.reset()
        result = self.call()
        extra = meter.above_start() - cases.result_nbytes(result)
        return max(extra, 0) / self.logits_nbytes


class CrossEntropyWithGradMemory(_MemorySuite):
    """(loss, dlogits) at 1024 x 32000: the outputs are one N x C gradient."""

    function = "cross_entropy_with_grad"
    shape = (1024, 32000)
    params = [_IMPLS, cases.DTYPES]
    param_names = ["impl", "dtype"]

    def peakmem_cross_entropy_with_grad(self, impl, dtype):
        self.call()

    def track_temporaries(self, impl, dtype):
        return self._temporaries()

    track_temporaries.unit = "x logits"


class LinearCrossEntropyWithGradMemory(_MemorySuite):
    """(loss, (dx, dW, dbias)) at N=2048, D=256, C=32000, float32: the full
    logits would be 262 MB; issue 6 asks for <= 1/8 of that above inputs and
    outputs."""

    function = "linear_cross_entropy_with_grad"
    shape = (2048, 32000)
    params = [_IMPLS, ["float32"]]
    param_names = ["impl", "dtype"]

    def peakmem_linear_cross_entropy_with_grad(self, impl, dtype):
        self.call()

    def track_temporaries(self, impl, dtype):
        return self._temporaries()

    track_temporaries.unit = "x logits"
