"""Memory of the fused gradients: no N x C temporary beyond the outputs.

* ``peakmem_*``: asv's peak resident memory of the whole benchmark process
  (inputs, outputs, imported libraries and all); compare implementations with
  each other, not with zero.
* ``track_temporaries`` / ``track_extra_megabytes``: the peak memory the call
  itself adds above what was resident before it, minus the arrays it returns
  (so: its temporaries), in units of the N x C logits (0 = no N x C
  temporary; the NumPy reference makes several) or in MB.  Read from Linux's
  high-water mark (reset through /proc/self/clear_refs), so it counts every
  allocator: NumPy, Numba's runtime, BLAS, PyTorch.  JAX is left out of these:
  XLA's allocator keeps freed buffers and reuses them, so the resident set
  does not show its temporaries (its peakmem_ figure is still the process's
  true peak).
"""

from . import cases

_IMPLS = ["fastxent", "numpy", "torch", "jax"]
_RSS_IMPLS = ["fastxent", "numpy", "torch"]  # see the module docstring

# (loss, dlogits) at 1024 x 32000: the output is one N x C gradient.
_CE = "cross_entropy_with_grad"
_CE_SHAPE = (1024, 32000)
# (loss, (dx, dW, dbias)) at N=2048, D=256, C=32000: the full logits would be
# 262 MB (PyTorch holds them, and their gradient).  The fused version holds one
# chunk of logits and one C x D block, whatever N: issue 6 asks for <= 1/8 of
# the full logits at N=8192 (128 MB), too slow a shape to run on every commit.
_LINEAR = "linear_cross_entropy_with_grad"
_LINEAR_SHAPE = (2048, 32000)


class _MemorySuite:
    function = ""
    shape = (0, 0)
    timeout = 300

    def setup(self, impl, dtype):
        self.call = cases.prepare(impl, self.function, self.shape, dtype)
        self.logits_nbytes = cases.logits_nbytes(self.function, self.shape, dtype)

    def teardown(self, impl, dtype):
        self.call = None


class _TemporariesSuite(_MemorySuite):
    def setup(self, impl, dtype):
        if not cases.PeakRSS.available():
            raise NotImplementedError("needs Linux's /proc/self/clear_refs")
        super().setup(impl, dtype)

    def _extra_bytes(self):
        meter = cases.PeakRSS()
        meter.reset()
        result = self.call()
        return max(meter.above_start() - cases.result_nbytes(result), 0)


class CrossEntropyWithGradPeakMemory(_MemorySuite):
    function, shape = _CE, _CE_SHAPE
    params = [_IMPLS, cases.DTYPES]
    param_names = ["impl", "dtype"]

    def peakmem_cross_entropy_with_grad(self, impl, dtype):
        self.call()


class CrossEntropyWithGradTemporaries(_TemporariesSuite):
    function, shape = _CE, _CE_SHAPE
    params = [_RSS_IMPLS, cases.DTYPES]
    param_names = ["impl", "dtype"]
    unit = "x logits"

    def track_temporaries(self, impl, dtype):
        return self._extra_bytes() / self.logits_nbytes


class LinearCrossEntropyWithGradPeakMemory(_MemorySuite):
    function, shape = _LINEAR, _LINEAR_SHAPE
    params = [_IMPLS, ["float32"]]
    param_names = ["impl", "dtype"]

    def peakmem_linear_cross_entropy_with_grad(self, impl, dtype):
        self.call()


class LinearCrossEntropyWithGradTemporaries(_TemporariesSuite):
    function, shape = _LINEAR, _LINEAR_SHAPE
    params = [_RSS_IMPLS, ["float32"]]
    param_names = ["impl", "dtype"]
    unit = "MB"

    def track_extra_megabytes(self, impl, dtype):
        return self._extra_bytes() / 1e6
