"""fastxent's kernels as PyTorch custom operators (namespace ``fastxent``).

Each operator is registered with :func:`torch.library.custom_op`, a fake
(meta) implementation for ``torch.compile`` / ``torch.export``, and an
autograd formula (:meth:`register_autograd`).  The operators work in
fastxent's layout -- the class axis LAST; :mod:`fastxent.torch.functional`
moves PyTorch's class dimension 1 there with a view before calling them.

The losses use the fused kernels: the forward computes the loss *and* its
gradient in one pass (``fastxent.*_with_grad``) and saves only that gradient;
the backward multiplies it by the incoming ``grad_output`` (a scalar, or one
value per loss element for ``reduction="none"``).  Nothing is traced through
NumPy.  Two ways to keep the gradient:

* ``cross_entropy`` (default): the gradient is a new tensor of the logits'
  size, kept for the backward (``retain_graph=True`` works; see
  ``_save_gradient``); peak memory 2x the logits.  When ``grad_output`` is
  the scalar 1 it is handed on without a multiplication.
* :class:`CrossEntropyInPlace` (``inplace_backward=True``, eager mode): the
  gradient is written into the logits' own storage and the backward scales it
  in place and hands it on; peak memory 1x the logits.  The buffer is
  consumed: a second backward raises RuntimeError.

softmax / log_softmax / logsumexp are not losses: their backward is a
vector-Jacobian product written out with torch operations on the saved
output (traceable, so it compiles and supports double backward).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from fastxent import _api as fx  # the public functions (the package front door re-exports them)
from fastxent import _linear
from fastxent.torch._convert import (empty_placeholder, kernel_array, optional_kernel_array,
                                     result_tensor)

__all__ = [
    "cross_entropy", "CrossEntropyInPlace", "binary_cross_entropy", "softmax", "logsumexp",
    "kl_div", "linear_cross_entropy", "linear_cross_entropy_backward",
]

_CONSUMED = (
    "fastxent.torch: the gradient buffer of this loss was consumed by an earlier backward "
    "(inplace_backward=True writes the gradient into the logits' storage and scales it in "
    "place). Backward through it only once, or use inplace_backward=False to allow "
    "retain_graph=True."
)


_NO_DOUBLE_BACKWARD = (
    "fastxent.torch: double backward (create_graph=True through a loss) is not supported: the "
    "gradient comes from a fused kernel and its own derivative is not implemented; use "
    "torch.nn.functional for higher-order gradients"
)


def _refuse_double_backward(grad_output: Tensor) -> None:
    """A backward that builds a graph (``create_graph=True``) would silently treat
    the saved gradient as a constant: refuse it."""
    if torch.is_grad_enabled() and not torch.compiler.is_compiling() and \
            not isinstance(grad_output, torch._subclasses.fake_tensor.FakeTensor):
        raise RuntimeError(_NO_DOUBLE_BACKWARD)


def _is_unit(grad_output: Tensor) -> bool:
    """True when ``grad_output`` is known here, without tracing or a device
    sync, to be the scalar 1 (the usual ``loss.backward()``): the saved
    gradient is then already the answer."""
    if torch.compiler.is_compiling() or grad_output.ndim != 0 or grad_output.device.type != "cpu":
        return False
    if isinstance(grad_output, torch._subclasses.fake_tensor.FakeTensor):
        return False
    try:
        return bool(grad_output == 1)
    except RuntimeError:  # functional / other tensor subclasses that cannot be read
        return False


def _broadcastable(grad_output: Tensor, ndim: int) -> Tensor:
    """Per-element ``grad_output`` with trailing unit axes up to ``ndim``."""
    return grad_output.reshape(tuple(grad_output.shape) + (1,) * (ndim - grad_output.ndim))


def _scaled(grad: Tensor, grad_output: Tensor, *, in_place: bool) -> Tensor:
    """``grad * grad_output`` (broadcast over the trailing axes)."""
    if _is_unit(grad_output):
        return grad
    factor = _broadcastable(grad_output, grad.ndim)
    return grad.mul_(factor) if in_place else grad * factor


def _loss_shape(logits: Tensor, reduction: str) -> Tuple[int, ...]:
    return tuple(logits.shape[:-1]) if reduction == "none" else ()


# ------------------------------------------------------------ cross-entropy
def _cross_entropy_kwargs(weight, ignore_index, reduction, label_smoothing, hard: bool) -> dict:
    kw = dict(weight=optional_kernel_array(weight), reduction=reduction,
              label_smoothing=label_smoothing)
    if hard:  # fastxent refuses an explicit ignore_index with probability targets
        kw["ignore_index"] = ignore_index
    return kw


@torch.library.custom_op("fastxent::cross_entropy", mutates_args=())
def cross_entropy(logits: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
                  reduction: str, label_smoothing: float, compute_grad: bool
                  ) -> Tuple[Tensor, Tensor]:
    """Softmax cross-entropy over the last axis: ``(loss, dloss/dlogits)``; the
    gradient is an empty tensor unless ``compute_grad``."""
    hard = not target.is_floating_point()
    kw = _cross_entropy_kwargs(weight, ignore_index, reduction, label_smoothing, hard)
    x, t = kernel_array(logits), kernel_array(target)
    if not compute_grad:
        loss = fx.cross_entropy(x, t, **kw)
        return result_tensor(loss, logits.dtype, logits.device), empty_placeholder(logits)
    loss, grad = fx.cross_entropy_with_grad(x, t, **kw)
    return (result_tensor(loss, logits.dtype, logits.device),
            result_tensor(grad, logits.dtype, logits.device))


@cross_entropy.register_fake
def _(logits, target, weight, ignore_index, reduction, label_smoothing, compute_grad):
    grad_shape = tuple(logits.shape) if compute_grad else (0,)
    return logits.new_empty(_loss_shape(logits, reduction)), logits.new_empty(grad_shape)


def _save_gradient(ctx, inputs, output):
    """Keep the forward's gradient (``output[1]``) for the backward.

    For a non-leaf prediction it is saved with ``save_for_backward`` (PyTorch
    frees it after a backward without ``retain_graph``) and handed on as is:
    the upstream op only reads it.  For a leaf (a tensor whose ``.grad`` is
    filled) it is held on ``ctx`` and handed on as that same object, so that
    AccumulateGrad copies it instead of adopting it as ``.grad``: an adopted
    buffer would be changed by the next accumulation and break a later
    ``retain_graph`` backward.
    """
    # the gradient output is never differentiated: no zeros of the logits' size for it
    ctx.set_materialize_grads(False)
    gradient = output[1]
    if inputs[0].is_leaf:
        ctx.leaf_gradient = gradient.detach()
    else:
        ctx.leaf_gradient = None
        ctx.save_for_backward(gradient)


def _saved_gradient(ctx) -> Tensor:
    return ctx.leaf_gradient if ctx.leaf_gradient is not None else ctx.saved_tensors[0]


def _cross_entropy_backward(ctx, grad_loss, _grad_of_grad):
    if grad_loss is None:  # the loss did not reach the outputs being differentiated
        return None, None, None, None, None, None, None
    _refuse_double_backward(grad_loss)
    return _scaled(_saved_gradient(ctx), grad_loss, in_place=False), None, None, None, None, None, None


cross_entropy.register_autograd(_cross_entropy_backward, setup_context=_save_gradient)


class CrossEntropyInPlace(torch.autograd.Function):
    """Softmax cross-entropy over the last axis whose forward overwrites the
    logits with the gradient of the returned loss (fastxent's ``out=logits``).

    Eager mode only (an autograd.Function, not a custom op: a compiler owns
    its buffers and may recompute a saved activation, so
    :func:`fastxent.torch.cross_entropy` uses the functional op under
    ``torch.compile``).  The logits' version counter is bumped, so an earlier
    op that saved them for its own backward raises PyTorch's usual
    "modified by an inplace operation" error instead of using the gradient.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
                reduction: str, label_smoothing: float) -> Tensor:
        hard = not target.is_floating_point()
        kw = _cross_entropy_kwargs(weight, ignore_index, reduction, label_smoothing, hard)
        t = kernel_array(target)
        if logits.dtype == torch.bfloat16:  # a float32 work copy, written back
            work = logits.detach().float()
            x = kernel_array(work)
            loss, _ = fx.cross_entropy_with_grad(x, t, out=x, **kw)
            logits.detach().copy_(work)
        else:
            x = kernel_array(logits)
            loss, _ = fx.cross_entropy_with_grad(x, t, out=x, **kw)
        increment_version(logits)
        # a plain attribute, not save_for_backward: the version check would refuse it
        ctx.gradient = logits.detach()
        return result_tensor(loss, logits.dtype, logits.device)

    @staticmethod
    def backward(ctx, grad_loss):
        grad = ctx.gradient
        if grad is None:
            raise RuntimeError(_CONSUMED)
        _refuse_double_backward(grad_loss)
        ctx.gradient = None  # consumed; also drops this reference to the storage
        return _scaled(grad, grad_loss, in_place=True), None, None, None, None, None


# ---------------------------------------------------- binary cross-entropy
@torch.library.custom_op("fastxent::binary_cross_entropy", mutates_args=())
def binary_cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor],
                         pos_weight: Optional[Tensor], reduction: str, from_logits: bool,
                         compute_grad: bool) -> Tuple[Tensor, Tensor]:
    """Elementwise binary cross-entropy of probabilities (or, ``from_logits``,
    of sigmoid(logits)): ``(loss, dloss/dinput)``."""
    x, t = kernel_array(input), kernel_array(target)
    kw = dict(weight=optional_kernel_array(weight), reduction=reduction)
    if from_logits:
        kw["pos_weight"] = optional_kernel_array(pos_weight)
        plain, with_grad = fx.binary_cross_entropy_with_logits, fx.binary_cross_entropy_with_logits_with_grad
    else:
        plain, with_grad = fx.binary_cross_entropy, fx.binary_cross_entropy_with_grad
    if not compute_grad:
        return result_tensor(plain(x, t, **kw), input.dtype, input.device), empty_placeholder(input)
    loss, grad = with_grad(x, t, **kw)
    return (result_tensor(loss, input.dtype, input.device),
            result_tensor(grad, input.dtype, input.device))


@binary_cross_entropy.register_fake
def _(input, target, weight, pos_weight, reduction, from_logits, compute_grad):
    loss_shape = tuple(input.shape) if reduction == "none" else ()
    return input.new_empty(loss_shape), input.new_empty(tuple(input.shape) if compute_grad else (0,))


binary_cross_entropy.register_autograd(_cross_entropy_backward, setup_context=_save_gradient)


# ------------------------------------------------------------------ softmax
@torch.library.custom_op("fastxent::softmax", mutates_args=())
def softmax(x: Tensor, log: bool) -> Tensor:
    """softmax (or, ``log``, log_softmax) over the last axis."""
    fn = fx.log_softmax if log else fx.softmax
    return result_tensor(fn(kernel_array(x)), x.dtype, x.device)


@softmax.register_fake
def _(x, log):
    return x.new_empty(tuple(x.shape))


def _softmax_setup(ctx, inputs, output):
    ctx.log = inputs[1]
    ctx.save_for_backward(output)


def _softmax_backward(ctx, grad_y):
    (y,) = ctx.saved_tensors
    if ctx.log:  # y = log softmax: dx = g - softmax * sum(g)
        return grad_y - torch.exp(y) * grad_y.sum(-1, keepdim=True), None
    return y * (grad_y - (grad_y * y).sum(-1, keepdim=True)), None


softmax.register_autograd(_softmax_backward, setup_context=_softmax_setup)


@torch.library.custom_op("fastxent::logsumexp", mutates_args=())
def logsumexp(x: Tensor, dim: List[int], keepdim: bool) -> Tensor:
    """log(sum(exp(x))) over the axes ``dim`` (non-negative, sorted, unique)."""
    value = fx.logsumexp(kernel_array(x), axis=tuple(dim), keepdims=keepdim)
    return result_tensor(value, x.dtype, x.device)


@logsumexp.register_fake
def _(x, dim, keepdim):
    shape = [1 if i in dim else n for i, n in enumerate(x.shape)] if keepdim else \
        [n for i, n in enumerate(x.shape) if i not in dim]
    return x.new_empty(shape)


def _logsumexp_setup(ctx, inputs, output):
    x, dim, keepdim = inputs
    ctx.dim, ctx.keepdim = dim, keepdim
    ctx.save_for_backward(x, output)


def _logsumexp_backward(ctx, grad_y):
    x, y = ctx.saved_tensors
    if not ctx.keepdim:
        for d in ctx.dim:  # sorted ascending: each unsqueeze restores one axis
            y, grad_y = y.unsqueeze(d), grad_y.unsqueeze(d)
    return grad_y * torch.exp(x - y), None, None


logsumexp.register_autograd(_logsumexp_backward, setup_context=_logsumexp_setup)


# -------------------------------------------------------------- divergence
@torch.library.custom_op("fastxent::kl_div", mutates_args=())
def kl_div(input: Tensor, target: Tensor, reduction: str, log_target: bool) -> Tensor:
    """PyTorch's pointwise KL term target * (log target - input) (``input`` and,
    with ``log_target``, ``target`` are log-probabilities), reduced."""
    if log_target:
        pointwise = torch.exp(target) * (target - input)
    else:
        pointwise = torch.xlogy(target, target) - target * input
    if reduction == "none":
        return pointwise
    total = pointwise.sum()
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / input.shape[0] if input.ndim else total
    return total / pointwise.numel()


@kl_div.register_fake
def _(input, target, reduction, log_target):
    shape = torch.broadcast_shapes(input.shape, target.shape)
    return input.new_empty(tuple(shape) if reduction == "none" else ())


def _kl_setup(ctx, inputs, output):
    input, target, reduction, log_target = inputs
    ctx.reduction, ctx.log_target = reduction, log_target
    ctx.save_for_backward(input, target)


def _kl_backward(ctx, grad_loss):
    input, target = ctx.saved_tensors
    shape = torch.broadcast_shapes(input.shape, target.shape)
    scale = grad_loss
    if ctx.reduction == "mean":
        scale = grad_loss / max(1, torch.Size(shape).numel())
    elif ctx.reduction == "batchmean" and input.ndim:
        scale = grad_loss / input.shape[0]
    p = torch.exp(target) if ctx.log_target else target
    grad_input = grad_target = None
    if ctx.needs_input_grad[0]:
        grad_input = _sum_to(-p * scale, input.shape)
    if ctx.needs_input_grad[1]:
        if ctx.log_target:  # d/dlt exp(lt)(lt - x) = exp(lt)(lt - x + 1)
            local = p * (target - input + 1)
        else:  # d/dt [t log t - t x] = log t + 1 - x
            local = torch.log(target) + 1 - input
        grad_target = _sum_to(local * scale, target.shape)
    return grad_input, grad_target, None, None


def _sum_to(grad: Tensor, shape) -> Tensor:
    """Undo broadcasting: sum ``grad`` down to ``shape``."""
    return grad if tuple(grad.shape) == tuple(shape) else grad.sum_to_size(shape)


kl_div.register_autograd(_kl_backward, setup_context=_kl_setup)


# ---------------------------------------------------- linear cross-entropy
def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class TorchOps(_linear.NumPyOps):
    """The array work of fastxent's chunk loop (``fastxent._linear.run``) in
    torch operations on ``device``: PyTorch's BLAS for the three products (on
    x86 CPUs MKL, several times faster than NumPy's OpenBLAS for the
    (rows x C) @ (C x D) input-gradient product), ``addmm_`` to accumulate
    dW without a (C, D) scratch block, and the caller's device and stream on
    CUDA.  Problem fields that are NumPy arrays become tensors (zero-copy on
    the CPU); the fused kernel is the public ``fastxent.cross_entropy_with_grad``,
    which takes the chunk tensors (CPU through the torch-cpu kind, CUDA through
    the numba.cuda backend) and writes the gradient into the chunk in place."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def asarray(self, a):
        if a is None or isinstance(a, torch.Tensor):
            return a
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def empty(self, shape, dtype):
        return torch.empty(shape, dtype=_torch_dtype(dtype), device=self.device)

    def zeros(self, shape, dtype):
        return torch.zeros(shape, dtype=_torch_dtype(dtype), device=self.device)

    def gemm_operand(self, a):
        return a if a.is_contiguous() or a.T.is_contiguous() else a.contiguous()

    def matmul(self, a, b, out) -> None:
        torch.matmul(a, b, out=out)

    def matmul_add(self, acc, a, b) -> None:
        acc.addmm_(a, b)

    def scale_into(self, out, a, factor) -> None:
        torch.mul(a, factor, out=out)

    def add_column_sums(self, acc, G) -> None:
        acc += G.sum(dim=0, dtype=torch.float64)

    def squared_norm(self, W) -> float:
        rows = max(1, (1 << 16) // max(W.shape[1], 1))
        return float(sum(float(block.double().square().sum()) for block in W.split(rows)))

    def result(self, a, dtype):
        return a.to(_torch_dtype(dtype))


# The chunk of logits is at most 1/16 of the full (rows x C) logits, and a
# cache-sized block at most (fastxent._linear.auto_chunk_rows), so the extra
# memory stays well under 1/8 of the logits for any N.
_CHUNK_FRACTION = 16


def _chunk_rows(n_rows: int, n_classes: int, itemsize: int, chunk_size: int) -> int:
    if chunk_size > 0:
        return chunk_size
    rows = _linear.auto_chunk_rows(n_rows, n_classes, itemsize)
    small = -(-n_rows // _CHUNK_FRACTION)
    small += -small % 8
    return max(_linear._MIN_CHUNK_ROWS, min(rows, small))


def _linear_run(input, linear_weight, target, linear_bias, weight, ignore_index, reduction,
                label_smoothing, l2, chunk_size, want_grad, grad_output=None):
    """fastxent's chunked linear cross-entropy (``_linear.run`` with
    :class:`TorchOps`): ``(loss, dx, dW, dbias)``, tensors on the input's device.

    The problem is validated by ``_linear.LinearProblem`` on host arrays: the
    NumPy views of CPU tensors; for CUDA tensors, host copies of the labels
    and class weights (the label check and the mean's denominator need them)
    and untouched zero stand-ins of the shapes and dtypes of x, W, the bias
    and probability targets, which are then replaced by the device tensors."""
    hard = not target.is_floating_point()
    kw = dict(weight=optional_kernel_array(weight), reduction=reduction,
              label_smoothing=label_smoothing, l2=l2)
    if hard:
        kw["ignore_index"] = ignore_index
    n_rows = math.prod(input.shape[:-1])
    cuda = _validate_on_stand_ins(input)
    if cuda:
        kw["weight"] = None if weight is None else weight.detach().double().cpu().numpy()
        host = lambda t: np.zeros(tuple(t.shape), dtype=_stand_in_dtype(t))  # noqa: E731 (lazy pages)
        x, W = host(input), host(linear_weight)
        t = target.detach().cpu().numpy() if hard else host(target)
        bias = None if linear_bias is None else host(linear_bias)
    else:
        x, W, t = kernel_array(input), kernel_array(linear_weight), kernel_array(target)
        bias = optional_kernel_array(linear_bias)
    itemsize = max(np.dtype(_stand_in_dtype(input)).itemsize, 4)
    problem = _linear.LinearProblem.from_arguments(
        x, W, t, bias=bias,
        chunk_size=_chunk_rows(n_rows, linear_weight.shape[0], itemsize, chunk_size), **kw)
    if cuda:
        work = _torch_dtype(problem.dtype)
        problem.x2 = input.detach().reshape(n_rows, input.shape[-1]).to(work)
        problem.W = linear_weight.detach().to(work).contiguous()
        problem.bias = None if linear_bias is None else linear_bias.detach().to(work).contiguous()
        if not hard:
            problem.soft = target.detach().reshape(n_rows, linear_weight.shape[0])
    return _linear.run(problem, want_grad=want_grad, grad_output=grad_output,
                       ops=TorchOps(input.device))


def _validate_on_stand_ins(input: Tensor) -> bool:
    """True for CUDA tensors (a function of its own so that the tests can run
    this path on CPU tensors)."""
    return input.is_cuda


def _stand_in_dtype(t: Tensor) -> np.dtype:
    """The NumPy dtype fastxent sees for ``t`` (bfloat16: its float32 work copy)."""
    return np.dtype(np.float32) if t.dtype == torch.bfloat16 else \
        torch.empty(0, dtype=t.dtype).numpy().dtype


def _linear_results(input, linear_weight, linear_bias, grads):
    dx, dW, db = grads
    dtype = torch.promote_types(input.dtype, linear_weight.dtype)
    return (result_tensor(dx, dtype, input.device), result_tensor(dW, dtype, input.device),
            result_tensor(db, dtype, input.device) if linear_bias is not None
            else empty_placeholder(input))


@torch.library.custom_op("fastxent::linear_cross_entropy", mutates_args=())
def linear_cross_entropy(input: Tensor, linear_weight: Tensor, target: Tensor,
                         linear_bias: Optional[Tensor], weight: Optional[Tensor],
                         ignore_index: int, reduction: str, label_smoothing: float, l2: float,
                         chunk_size: int, compute_grad: bool
                         ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cross-entropy of ``input @ linear_weight.T + linear_bias`` chunked over
    rows (fastxent.linear_cross_entropy): ``(loss, dinput, dweight, dbias)``
    for the scalar reductions when ``compute_grad``, else empty gradients (the
    backward of ``reduction="none"`` recomputes them with its grad_output)."""
    dtype = torch.promote_types(input.dtype, linear_weight.dtype)
    loss, *grads = _linear_run(input, linear_weight, target, linear_bias, weight, ignore_index,
                               reduction, label_smoothing, l2, chunk_size, compute_grad)
    loss = result_tensor(loss, dtype, input.device)
    if not compute_grad:
        empty = empty_placeholder(input)
        return loss, empty, empty.clone(), empty.clone()
    return (loss, *_linear_results(input, linear_weight, linear_bias, grads))


@linear_cross_entropy.register_fake
def _(input, linear_weight, target, linear_bias, weight, ignore_index, reduction,
      label_smoothing, l2, chunk_size, compute_grad):
    dtype = torch.promote_types(input.dtype, linear_weight.dtype)
    loss_shape = tuple(input.shape[:-1]) if reduction == "none" else ()
    loss = input.new_empty(loss_shape, dtype=dtype)
    if not compute_grad:
        return loss, input.new_empty((0,)), input.new_empty((0,)), input.new_empty((0,))
    db_shape = (linear_weight.shape[0],) if linear_bias is not None else (0,)
    return (loss, input.new_empty(tuple(input.shape), dtype=dtype),
            input.new_empty(tuple(linear_weight.shape), dtype=dtype),
            input.new_empty(db_shape, dtype=dtype))


@torch.library.custom_op("fastxent::linear_cross_entropy_backward", mutates_args=())
def linear_cross_entropy_backward(input: Tensor, linear_weight: Tensor, target: Tensor,
                                  linear_bias: Optional[Tensor], weight: Optional[Tensor],
                                  ignore_index: int, reduction: str, label_smoothing: float,
                                  l2: float, chunk_size: int, grad_output: Tensor
                                  ) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`linear_cross_entropy` for a given ``grad_output``
    (one fused chunked pass; used by ``reduction="none"``, whose dW needs the
    per-row factors inside the chunk loop)."""
    _, *grads = _linear_run(input, linear_weight, target, linear_bias, weight, ignore_index,
                            reduction, label_smoothing, l2, chunk_size, True,
                            grad_output=kernel_array(grad_output))
    return _linear_results(input, linear_weight, linear_bias, grads)


@linear_cross_entropy_backward.register_fake
def _(input, linear_weight, target, linear_bias, weight, ignore_index, reduction,
      label_smoothing, l2, chunk_size, grad_output):
    dtype = torch.promote_types(input.dtype, linear_weight.dtype)
    db_shape = (linear_weight.shape[0],) if linear_bias is not None else (0,)
    return (input.new_empty(tuple(input.shape), dtype=dtype),
            input.new_empty(tuple(linear_weight.shape), dtype=dtype),
            input.new_empty(db_shape, dtype=dtype))


def _linear_setup(ctx, inputs, output):
    (input, linear_weight, target, linear_bias, weight, ignore_index, reduction,
     label_smoothing, l2, chunk_size, compute_grad) = inputs
    ctx.set_materialize_grads(False)
    ctx.reduction = reduction
    ctx.has_bias = linear_bias is not None
    ctx.dtypes = (input.dtype, linear_weight.dtype,
                  None if linear_bias is None else linear_bias.dtype)
    if reduction == "none":  # recomputed in the backward with the per-row grad_output
        ctx.options = (ignore_index, reduction, label_smoothing, l2, chunk_size)
        ctx.save_for_backward(input, linear_weight, target, linear_bias, weight)
    else:
        ctx.save_for_backward(*output[1:])


def _linear_backward(ctx, grad_loss, *_grads_of_grads):
    if grad_loss is None:
        return (None,) * 11
    _refuse_double_backward(grad_loss)
    if ctx.reduction == "none":
        input, linear_weight, target, linear_bias, weight = ctx.saved_tensors
        dx, dW, db = linear_cross_entropy_backward(input, linear_weight, target, linear_bias,
                                                   weight, *ctx.options, grad_loss)
    else:
        dx, dW, db = (_scaled(g, grad_loss, in_place=False) for g in ctx.saved_tensors)
    x_dtype, w_dtype, b_dtype = ctx.dtypes
    dx, dW = dx.to(x_dtype), dW.to(w_dtype)
    db = db.to(b_dtype) if ctx.has_bias else None
    return dx, dW, None, db, None, None, None, None, None, None, None


linear_cross_entropy.register_autograd(_linear_backward, setup_context=_linear_setup)
