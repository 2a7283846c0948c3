"""Drop-ins for ``torch.nn.functional``: same signatures, defaults, class
dimension (1 for inputs of more than 2 dims) and results, computed by
fastxent's kernels (see :mod:`fastxent.torch._ops`).

Extra keywords: ``inplace_backward`` (:func:`cross_entropy`), ``l2`` and
``chunk_size`` (:func:`linear_cross_entropy`).
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torch.nn import _reduction as reduction_rules

from fastxent.torch import _ops

__all__ = [
    "cross_entropy", "linear_cross_entropy", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "log_softmax", "softmax", "logsumexp", "kl_div",
]


def _reduction(size_average, reduce, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return reduction_rules.legacy_get_string(size_average, reduce)
    return reduction


def _refuse_function_transforms(fn: str) -> None:
    """torch.func transforms (grad, vmap, jvp, jacrev, ...) wrap tensors in
    ways the kernels cannot read: say so instead of failing deep inside."""
    if torch.compiler.is_compiling():
        return
    if torch._C._functorch.peek_interpreter_stack() is not None:
        raise NotImplementedError(
            f"fastxent.torch.{fn} does not support torch.func transforms (grad, vmap, jvp, "
            "jacrev, functional_call under them): its gradient comes from a fused kernel. Use "
            "loss.backward() / torch.autograd.grad, or torch.nn.functional inside the transform")


def _wants_grad(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _no_grad_for(name: str, fn: str, *tensors: Optional[Tensor]) -> None:
    """fastxent differentiates the losses with respect to the prediction only."""
    if _wants_grad(*tensors):
        raise NotImplementedError(
            f"fastxent.torch.{fn}: the gradient with respect to {name} is not implemented "
            f"(only the prediction's); detach {name} or use torch.nn.functional.{fn}")


def _class_last(x: Tensor) -> Tensor:
    """PyTorch's (N, C, d1, ..., dK) as fastxent's (N, d1, ..., dK, C), a view."""
    return x.movedim(1, -1) if x.ndim > 2 else x


def _target_kind(input: Tensor, target: Tensor, ignore_index: int, fn: str) -> bool:
    """True for class-index targets; checks the dtype rules PyTorch applies."""
    if target.is_floating_point():
        if ignore_index != -100:
            raise RuntimeError("ignore_index is not supported for floating point target")
        return False
    if target.dtype not in (torch.int64, torch.uint8):
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got {str(target.dtype).split('.')[-1].capitalize()}")
    return True


# ------------------------------------------------------------ cross-entropy
def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                  size_average: Optional[bool] = None, ignore_index: int = -100,
                  reduce: Optional[bool] = None, reduction: str = "mean",
                  label_smoothing: float = 0.0, *, inplace_backward: bool = False) -> Tensor:
    """:func:`torch.nn.functional.cross_entropy` by fastxent's fused kernel.

    ``input`` has the classes on dim 1 (or is 1-D); ``target`` holds class
    indices (int64 or uint8) or probabilities (``input``'s shape).  The forward
    computes the loss and its gradient in one pass; the backward only scales
    the saved gradient.

    ``inplace_backward=True`` writes that gradient into ``input``'s storage
    (``input`` is overwritten: do not use it after the call), so no second
    logits-sized tensor is ever allocated; it needs a non-leaf ``input`` (e.g.
    the output of a linear layer) and allows one backward only.  Under
    ``torch.compile`` it is ignored (the compiled graph owns its buffers and
    gets the gradient as a separate tensor).
    """
    _refuse_function_transforms("cross_entropy")
    reduction = _reduction(size_average, reduce, reduction)
    hard = _target_kind(input, target, ignore_index, "cross_entropy")
    _no_grad_for("target", "cross_entropy", target)
    _no_grad_for("weight", "cross_entropy", weight)
    if not hard and target.dtype != input.dtype:  # PyTorch's type promotion
        common = torch.promote_types(input.dtype, target.dtype)
        input, target = input.to(common), target.to(common)
    logits = _class_last(input)
    if not hard:
        target = _class_last(target)
    needs_grad = _wants_grad(input)
    if inplace_backward and needs_grad and not torch.compiler.is_compiling():
        if input.is_leaf:
            raise ValueError(
                "inplace_backward=True overwrites the logits with their gradient, so they cannot "
                "be a leaf tensor that requires grad; pass the output of the layer that makes them")
        return _ops.CrossEntropyInPlace.apply(logits, target, weight, ignore_index, reduction,
                                              float(label_smoothing))
    loss, _ = _ops.cross_entropy(logits, target, weight, ignore_index, reduction,
                                 float(label_smoothing), needs_grad)
    return loss


def linear_cross_entropy(input: Tensor, linear_weight: Tensor, target: Tensor, *,
                         linear_bias: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                         reduction: str = "mean", ignore_index: Optional[int] = None,
                         label_smoothing: float = 0.0, options=None, l2: float = 0.0,
                         chunk_size: Optional[int] = None) -> Tensor:
    """:func:`torch.nn.functional.linear_cross_entropy` (PyTorch 2.13) by
    fastxent's chunked fused kernel: the cross-entropy of
    ``input @ linear_weight.T + linear_bias``, never holding more than
    ``chunk_size`` rows of logits.

    ``input`` is (in_features,) or (N, in_features), ``linear_weight``
    (C, in_features).  Extra keywords: ``l2`` adds (l2/2)*||linear_weight||^2
    to the reduced loss; ``chunk_size`` rows per chunk (default: chosen from C
    and the cache; ``options.batch_chunk_size`` is used when given).  The
    chunked path is always on, so ``options`` is otherwise ignored.
    K-dimensional weights (``out_features != ()``) are not supported.
    """
    _refuse_function_transforms("linear_cross_entropy")
    if input.dim() < 1 or input.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise RuntimeError(
            f"expected linear_weight with dimensionality at least 2, got {linear_weight.dim()}")
    if linear_weight.dim() > 2:
        raise NotImplementedError(
            "fastxent.torch.linear_cross_entropy: K-dimensional linear_weight "
            f"{tuple(linear_weight.shape)} (out_features != ()) is not supported; use "
            "torch.nn.functional.linear_cross_entropy")
    if input.shape[-1] != linear_weight.shape[-1]:
        raise RuntimeError(
            "expected equal input and linear_weight last dimensions (in_features), "
            f"got {input.shape[-1]} and {linear_weight.shape[-1]}, respectively")
    n_classes = linear_weight.shape[0]
    if linear_bias is not None and tuple(linear_bias.shape) != (n_classes,):
        raise RuntimeError(f"expected linear_bias shape {(n_classes,)}, got {tuple(linear_bias.shape)}")
    probabilities = tuple(target.shape) == (*input.shape[:-1], n_classes)
    if probabilities and ignore_index is not None:
        raise RuntimeError("ignore_index cannot be specified when target contains probabilities")
    ignore_index = -100 if ignore_index is None else ignore_index
    _target_kind(input, target, -100, "linear_cross_entropy")
    _no_grad_for("target", "linear_cross_entropy", target)
    _no_grad_for("weight", "linear_cross_entropy", weight)
    if chunk_size is None and options is not None:
        chunk_size = getattr(options, "batch_chunk_size", None)
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    needs_grad = _wants_grad(input, linear_weight, linear_bias)
    loss, _, _, _ = _ops.linear_cross_entropy(
        input, linear_weight, target, linear_bias, weight, ignore_index, reduction,
        float(label_smoothing), float(l2), int(chunk_size or 0),
        needs_grad and reduction != "none")
    return loss


# ---------------------------------------------------- binary cross-entropy
def binary_cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                         size_average: Optional[bool] = None, reduce: Optional[bool] = None,
                         reduction: str = "mean") -> Tensor:
    """:func:`torch.nn.functional.binary_cross_entropy` (logs clamped at -100)
    by fastxent's fused kernel."""
    _refuse_function_transforms("binary_cross_entropy")
    reduction = _reduction(size_average, reduce, reduction)
    if target.shape != input.shape:
        raise ValueError(
            f"Using a target size ({target.shape}) that is different to the input size "
            f"({input.shape}) is deprecated. Please ensure they have the same size.")
    _no_grad_for("target", "binary_cross_entropy", target)
    _no_grad_for("weight", "binary_cross_entropy", weight)
    if weight is not None:
        torch.broadcast_shapes(weight.shape, input.shape)  # PyTorch's error for a bad weight
    loss, _ = _ops.binary_cross_entropy(input, target, weight, None, reduction, False,
                                        _wants_grad(input))
    return loss


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Optional[Tensor] = None,
                                     size_average: Optional[bool] = None,
                                     reduce: Optional[bool] = None, reduction: str = "mean",
                                     pos_weight: Optional[Tensor] = None) -> Tensor:
    """:func:`torch.nn.functional.binary_cross_entropy_with_logits` (the stable
    form) by fastxent's fused kernel."""
    _refuse_function_transforms("binary_cross_entropy_with_logits")
    reduction = _reduction(size_average, reduce, reduction)
    if target.shape != input.shape:
        raise ValueError(
            f"Target size ({target.shape}) must be the same as input size ({input.shape})")
    for name, t in (("target", target), ("weight", weight), ("pos_weight", pos_weight)):
        _no_grad_for(name, "binary_cross_entropy_with_logits", t)
    loss, _ = _ops.binary_cross_entropy(input, target, weight, pos_weight, reduction, True,
                                        _wants_grad(input))
    return loss


# ------------------------------------------------------------------ softmax
def _softmax_dim(ndim: int) -> int:
    warnings.warn("Implicit dimension choice for softmax has been deprecated. "
                  "Change the call to include dim=X as an argument.", stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


def _softmax(input: Tensor, dim: Optional[int], dtype: Optional[torch.dtype], log: bool) -> Tensor:
    _refuse_function_transforms("log_softmax" if log else "softmax")
    if dim is None:
        dim = _softmax_dim(input.ndim)
    if dtype is not None:
        input = input.to(dtype)
    if input.ndim == 0:
        return _ops.softmax(input.reshape(1), log).reshape(())
    moved = input.movedim(dim, -1)
    return _ops.softmax(moved, log).movedim(-1, dim)


def softmax(input: Tensor, dim: Optional[int] = None, _stacklevel: int = 3,
            dtype: Optional[torch.dtype] = None) -> Tensor:
    """:func:`torch.nn.functional.softmax` by fastxent's kernel."""
    return _softmax(input, dim, dtype, log=False)


def log_softmax(input: Tensor, dim: Optional[int] = None, _stacklevel: int = 3,
                dtype: Optional[torch.dtype] = None) -> Tensor:
    """:func:`torch.nn.functional.log_softmax` (x - max - log sum exp, not
    log(softmax)) by fastxent's kernel."""
    return _softmax(input, dim, dtype, log=True)


def logsumexp(input: Tensor, dim: Union[int, Sequence[int]], keepdim: bool = False) -> Tensor:
    """:func:`torch.logsumexp` by fastxent's kernel (integer inputs are
    promoted to the default float dtype, as PyTorch does)."""
    _refuse_function_transforms("logsumexp")
    if not input.is_floating_point():
        input = input.to(torch.get_default_dtype())
    dims = [dim] if isinstance(dim, int) else list(dim)
    ndim = max(input.ndim, 1)
    for d in dims:
        if not -ndim <= d < ndim:
            raise IndexError(
                f"Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], but got {d})")
    dims = sorted({d % ndim for d in dims})
    if input.ndim == 0:
        return _ops.logsumexp(input.reshape(1), dims, False).reshape(())
    if not dims:  # PyTorch reduces over every axis for an empty dim list
        dims = list(range(input.ndim))
    return _ops.logsumexp(input, dims, keepdim)


# -------------------------------------------------------------- divergence
def kl_div(input: Tensor, target: Tensor, size_average: Optional[bool] = None,
           reduce: Optional[bool] = None, reduction: str = "mean",
           log_target: bool = False) -> Tensor:
    """:func:`torch.nn.functional.kl_div`: ``input`` holds log-probabilities,
    ``target`` probabilities (log-probabilities with ``log_target``);
    reductions ``"none" | "batchmean" | "sum" | "mean"`` (the mean over all
    elements, with PyTorch's warning)."""
    _refuse_function_transforms("kl_div")
    if size_average is not None or reduce is not None:
        reduction = reduction_rules.legacy_get_string(size_average, reduce)
    elif reduction == "mean":
        warnings.warn(
            "reduction: 'mean' divides the total loss by both the batch size and the support size."
            "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
            "'mean' will be changed to behave the same as 'batchmean' in the next major release.",
            stacklevel=2)
    if reduction not in ("none", "batchmean", "sum", "mean"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    return _ops.kl_div(input, target, reduction, bool(log_target))
