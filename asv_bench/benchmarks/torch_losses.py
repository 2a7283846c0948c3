"""fastxent.torch against PyTorch, CPU float32 (issue 14).

* ``CrossEntropyLoss`` forward + backward (loss, then ``torch.autograd.grad``
  of it with respect to the logits): fastxent.torch, torch eager,
  ``torch.compile`` of ``torch.nn.CrossEntropyLoss``.
* ``LinearCrossEntropyLoss`` forward + backward (dx, dW) at N x D x C =
  2048 x 256 x 32000: fastxent.torch, PyTorch 2.13's ``F.linear_cross_entropy``
  without and with ``LinearCrossEntropyOptions()``, and the unfused
  ``F.cross_entropy(x @ W.T)``; time and the memory each call adds above its
  inputs and outputs, in units of the full logits.

Self-contained: at commits without ``fastxent.torch`` (or without PyTorch, or
with a PyTorch older than 2.13 for its linear variants) ``setup`` raises
NotImplementedError and asv records the cell as skipped.
"""

from . import cases

_CE_SHAPES = ["4096x1000", "1024x32000", "256x128000"]
_CE_IMPLS = ["fastxent", "torch", "torch.compile"]
_LINEAR_SHAPE = (2048, 256, 32000)
_LINEAR_IMPLS = ["fastxent", "torch LCE", "torch LCE chunked", "torch unfused"]


def _torch():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        raise NotImplementedError("PyTorch is not installed") from None
    return torch, F


def _fastxent_torch():
    try:
        import fastxent.torch as xt
    except ImportError:
        raise NotImplementedError("fastxent.torch does not exist at this commit") from None
    return xt


class CrossEntropyLossForwardBackward:
    params = [_CE_IMPLS, _CE_SHAPES]
    param_names = ["impl", "shape"]
    rounds = 1
    repeat = (1, 5, 2.0)
    number = 1
    warmup_time = 0.0
    timeout = 300  # torch.compile's first call, a cold Numba cache

    def setup(self, impl, shape):
        torch, _ = _torch()
        n, c = (int(v) for v in shape.split("x"))
        gen = torch.Generator().manual_seed(0)
        self.logits = torch.randn(n, c, generator=gen).requires_grad_()
        self.target = torch.randint(0, c, (n,), generator=gen)
        if impl == "fastxent":
            self.loss = _fastxent_torch().CrossEntropyLoss()
        elif impl == "torch":
            self.loss = torch.nn.CrossEntropyLoss()
        else:
            self.loss = torch.compile(torch.nn.CrossEntropyLoss())
        self.torch = torch
        for _ in range(2):  # JIT / compile outside the timing
            self.time_forward_backward(impl, shape)

    def time_forward_backward(self, impl, shape):
        loss = self.loss(self.logits, self.target)
        self.torch.autograd.grad(loss, self.logits)


class LinearCrossEntropyLossForwardBackward:
    params = [_LINEAR_IMPLS]
    param_names = ["impl"]
    rounds = 1
    repeat = (1, 3, 10.0)
    number = 1
    warmup_time = 0.0
    timeout = 600  # the chunked PyTorch variant takes ~10-30 s a call on 2 cores
    unit = "x logits"

    def setup(self, impl):
        torch, F = _torch()
        n, d, c = _LINEAR_SHAPE
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, d, generator=gen).requires_grad_()
        self.W = (torch.randn(c, d, generator=gen) / d ** 0.5).requires_grad_()
        target = torch.randint(0, c, (n,), generator=gen)
        if impl == "fastxent":
            xt = _fastxent_torch()
            self.loss = lambda x, W: xt.linear_cross_entropy(x, W, target)
        elif impl == "torch unfused":
            self.loss = lambda x, W: F.cross_entropy(x @ W.T, target)
        else:
            if not hasattr(F, "linear_cross_entropy"):
                raise NotImplementedError("F.linear_cross_entropy needs PyTorch >= 2.13")
            options = torch.nn.LinearCrossEntropyOptions() if impl == "torch LCE chunked" else None
            self.loss = lambda x, W: F.linear_cross_entropy(x, W, target, options=options)
        self.torch = torch
        self.logits_nbytes = n * c * 4
        self.run()

    def run(self):
        loss = self.loss(self.x, self.W)
        return (loss, *self.torch.autograd.grad(loss, (self.x, self.W)))

    def time_forward_backward(self, impl):
        self.run()

    def track_extra_memory(self, impl):
        if not cases.PeakRSS.available():
            raise NotImplementedError("needs Linux's /proc/self/clear_refs")
        meter = cases.PeakRSS()
        meter.reset()
        result = self.run()
        returned = sum(t.numel() * t.element_size() for t in result)
        extra = meter.above_start() - returned
        return max(extra, 0) / self.logits_nbytes
