"""Drop-ins for ``torch.nn`` loss modules.

Each class subclasses its ``torch.nn`` namesake (same constructor, attributes,
buffers and ``state_dict`` keys, ``isinstance`` still true) and replaces only
``forward`` with :mod:`fastxent.torch.functional`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.loss import _WeightedLoss

from fastxent.torch import functional as F

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss", "BCELoss", "BCEWithLogitsLoss",
           "KLDivLoss"]


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """:class:`torch.nn.CrossEntropyLoss` by fastxent's fused kernel; extra
    keyword ``inplace_backward`` (see :func:`fastxent.torch.cross_entropy`)."""

    def __init__(self, weight: Optional[Tensor] = None, size_average=None,
                 ignore_index: int = -100, reduce=None, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, inplace_backward: bool = False) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.inplace_backward = inplace_backward

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing,
                               inplace_backward=self.inplace_backward)


class BCELoss(nn.BCELoss):
    """:class:`torch.nn.BCELoss` by fastxent's fused kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """:class:`torch.nn.BCEWithLogitsLoss` by fastxent's fused kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight,
                                                  pos_weight=self.pos_weight,
                                                  reduction=self.reduction)


class KLDivLoss(nn.KLDivLoss):
    """:class:`torch.nn.KLDivLoss` (``log_target`` included)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class LinearCrossEntropyLoss(_WeightedLoss):
    """:class:`torch.nn.LinearCrossEntropyLoss` (PyTorch 2.13) by fastxent's
    chunked fused kernel: a ``Linear(in_features, num_classes)`` layer and the
    cross-entropy of its output, never holding the full logits.

    Same constructor and ``state_dict`` keys (``linear.weight``,
    ``linear.bias``, ``weight``) as PyTorch's; extra keywords ``l2`` and
    ``chunk_size`` (see :func:`fastxent.torch.linear_cross_entropy`).
    ``out_features`` must be ``()`` (K-dimensional heads are not supported);
    ``options`` is accepted for compatibility (chunking is always on).
    """

    def __init__(self, in_features: int, num_classes: int, *, out_features: tuple = (),
                 bias: bool = False, device=None, dtype=None, reduction: str = "mean",
                 weight: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                 label_smoothing: float = 0.0, options=None, l2: float = 0.0,
                 chunk_size: Optional[int] = None) -> None:
        if weight is not None and weight.shape != (num_classes,):
            raise RuntimeError(
                f"expected weight shape to be {(num_classes,)}, got {tuple(weight.shape)}")
        if label_smoothing < 0 or label_smoothing > 1.0:
            raise RuntimeError(
                f"expected label_smoothing to be in range [0, 1], got {label_smoothing}")
        if tuple(out_features) != ():
            raise NotImplementedError(
                "fastxent.torch.LinearCrossEntropyLoss: out_features != () (a K-dimensional "
                "loss) is not supported; use torch.nn.LinearCrossEntropyLoss")
        super().__init__(weight=weight, size_average=None, reduce=None, reduction=reduction)
        self.num_classes = num_classes
        self.out_features = tuple(out_features)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.linear = nn.Linear(in_features, math.prod(out_features, start=num_classes),
                                bias=bias, device=device, dtype=dtype)
        self.options = options
        self.l2 = l2
        self.chunk_size = chunk_size

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.linear_cross_entropy(
            input, self.linear.weight, target, linear_bias=self.linear.bias, weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, options=self.options, l2=self.l2,
            chunk_size=self.chunk_size)

    def extra_repr(self) -> str:
        return (f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
                f"bias={self.linear.bias is not None}, reduction={self.reduction}, "
                f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
                f"l2={self.l2}, chunk_size={self.chunk_size}")
