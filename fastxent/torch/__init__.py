"""PyTorch drop-ins built on fastxent's fused kernels.

``import fastxent.torch as xt`` gives autograd versions of the
``torch.nn.functional`` and ``torch.nn`` losses -- same signatures, defaults
and class dimension (dim 1 for inputs of more than 2 dims) -- whose gradients
come from the fused loss-and-gradient kernels instead of autograd tracing:

>>> import torch, fastxent.torch as xt                     # doctest: +SKIP
>>> loss_fn = xt.CrossEntropyLoss(label_smoothing=0.1)     # was torch.nn.CrossEntropyLoss
>>> loss = loss_fn(model(x), y); loss.backward()           # doctest: +SKIP

The kernels are PyTorch custom operators (``torch.ops.fastxent.*``, see
``_ops``) with fake implementations and autograd formulas, so
``torch.compile(model, fullgraph=True)`` works, and so does
``torch.autograd.gradcheck``.  CPU tensors are computed through zero-copy
NumPy views, CUDA tensors by the numba.cuda kernels on the current stream.
float16 is computed in float32; bfloat16 in a float32 work copy (on the CPU
and on CUDA), results cast back to bfloat16.

``torch.func`` transforms (grad, vmap, jvp, ...) are refused with a clear
NotImplementedError (the kernels read plain tensors); use ``loss.backward()``
or ``torch.autograd.grad``.  Higher-order gradients of the losses are not
supported and raise RuntimeError (create_graph=True); softmax, log_softmax and
logsumexp have torch-op backwards and do support them.
"""

import torch  # noqa: F401  (fails early, with the usual message, without PyTorch)

from fastxent.torch.functional import (binary_cross_entropy, binary_cross_entropy_with_logits,
                                       cross_entropy, kl_div, linear_cross_entropy, log_softmax,
                                       logsumexp, softmax)
from fastxent.torch.modules import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, KLDivLoss,
                                    LinearCrossEntropyLoss)

__all__ = [
    "cross_entropy", "linear_cross_entropy", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "log_softmax", "softmax", "logsumexp", "kl_div",
    "CrossEntropyLoss", "LinearCrossEntropyLoss", "BCELoss", "BCEWithLogitsLoss", "KLDivLoss",
]
