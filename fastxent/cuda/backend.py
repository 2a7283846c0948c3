"""The CUDA backend: arrays with ``__cuda_array_interface__`` (Numba device
arrays, CuPy arrays, PyTorch CUDA tensors) on the numba.cuda kernels of this
package, behind the interface of ``fastxent._backend.Backend``.

One :class:`CudaBackend` serves one call: it holds the library, device and
stream of the call's first CUDA argument (``_arrays.Call``).  Native arrays
are Numba device views; every buffer is allocated by the caller's library
(``torch.empty``, ``cupy.empty``, else Numba) and handed back as that
library's array, zero-copy.  Inputs stay on the device: a C-contiguous input
of the compute dtype is used in place, anything else (strided, transposed,
float16, integer) is first gathered into a C-contiguous work array.
Reductions "mean"/"sum" are finished on the device and come back as 0-d
arrays, without a host wait.

Host and device arrays cannot be mixed (TypeError); scalars (``grad_output``,
a BCE ``weight``) may be host numbers.  The host waits only for the label
check of class-index targets and the range check of BCE probabilities (one
small copy each).
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Tuple, Union

import numpy as np

from fastxent import _checks as checks
from fastxent._backend import (BinaryInput, Divergence, GradScale, Reduction, SoftmaxMode,
                               is_cuda_array)
from fastxent.cuda import _arrays as arrays
from fastxent.cuda import _config
from fastxent.cuda import binary as binary_kernels
from fastxent.cuda import divergence as divergence_kernels
from fastxent.cuda import softmax as softmax_kernels
from fastxent.cuda import xent as xent_kernels
from fastxent.cuda._arrays import Buffer, Call

_F64 = np.dtype(np.float64)


def _shuffle() -> bool:
    return bool(_config.USE_SHUFFLE)


class CudaLabelScan:
    """The label scan of one call: the status array (first bad row, atomic
    min) and the device denominator, plus the launch scratch that the loss
    kernel reuses on the same stream."""

    __slots__ = ("call", "n_rows", "status", "partials", "den")

    def __init__(self, call: Call, n_rows: int, status: Optional[Buffer],
                 partials: Optional[Buffer], den: Optional[Buffer]):
        self.call, self.n_rows = call, n_rows
        self.status, self.partials, self.den = status, partials, den

    def bad_row(self) -> int:
        if not self.n_rows:
            return -1
        bad = int(self.call.read(self.status)[0])  # waits for the stream
        return bad if bad < self.n_rows else -1

    def denominator(self) -> float:
        return float(self.call.read(self.den)[0]) if self.n_rows else 0.0


class CudaBackend:
    """The CUDA arrays of one call on the numba.cuda kernels."""

    name = "cuda"

    def __init__(self, primary: Any):
        self.call = Call(primary)
        self._owners: dict = {}  # id(native view) -> its Buffer (the library's array)

    def _own(self, buf: Buffer) -> Any:
        self._owners[id(buf.dev)] = buf
        return buf.dev

    def _empty(self, shape: Tuple[int, ...], dtype: Any) -> Any:
        return self._own(self.call.empty(shape, dtype))

    # ------------------------------------------------------ conversion in
    def array(self, obj: Any, name: str) -> Any:
        return self.call.device(obj, name)

    def operand(self, obj: Any, name: str) -> Union[float, Any]:
        if is_cuda_array(obj):
            return self.call.device(obj, name)
        if isinstance(obj, numbers.Number) or np.ndim(obj) == 0:
            value = np.asarray(obj)
            checks.compute_dtype(value.dtype, name)
            return float(value)
        raise TypeError(f"{name} is a host array ({type(obj).__name__}) while the other arguments "
                        "are CUDA arrays: pass it on the same GPU, or as a scalar")

    # --------------------------------------------------------- buffers
    def rows(self, a: Any, perm: Tuple[int, ...], n_rows: int, n_classes: int,
             dtype: np.dtype) -> Any:
        dtype = np.dtype(dtype)
        if a.dtype == dtype and perm == tuple(range(len(a.shape))) and arrays.is_c_contiguous(a):
            return a.reshape(n_rows, n_classes)
        return self._own(arrays.gather(self.call, a, perm, dtype)).reshape(n_rows, n_classes)

    def flat(self, a: Any, dtype: np.dtype, shape: Optional[Tuple[int, ...]] = None) -> Any:
        if shape is None or tuple(a.shape) == tuple(shape):
            return arrays.flat(self.call, a, dtype)
        return arrays.broadcast(self.call, a, shape, dtype, "operand")

    def empty(self, shape: Tuple[int, ...], dtype: np.dtype) -> Any:
        return self._empty(shape, dtype)

    def full(self, shape: Tuple[int, ...], dtype: np.dtype, value: float) -> Any:
        return self._own(self.call.full(shape, dtype, value))

    def read_element(self, a: Any, index: int) -> Any:
        return self.call.read(Buffer(None, a[index:index + 1]))[0]

    def is_c_contiguous(self, a: Any) -> bool:
        return arrays.is_c_contiguous(a)

    def same_memory(self, a: Any, b: Any) -> bool:
        return arrays.same_memory(a, b)

    def may_overlap(self, a: Any, b: Any) -> bool:
        return arrays.overlaps(a, b)

    # ----------------------------------------------------- conversion out
    def user_output(self, out: Any, name: str) -> Any:
        if not is_cuda_array(out):
            raise checks.output_kind_error(name, "a CUDA array like the logits", out)
        od = self.call.device(out, name)
        if od.__cuda_array_interface__["data"][1]:
            raise checks.read_only_error(name)
        return od

    def result(self, a: Any, dtype: np.dtype, shape: Tuple[int, ...],
               axes: Optional[Tuple[int, ...]] = None) -> Any:
        buf = self._owners[id(a)]
        if buf.dev.dtype != dtype:  # a cast copy (float16 results)
            buf = arrays.gather(self.call, buf.dev, tuple(range(len(buf.dev.shape))), dtype)
        return self.call.result(buf, shape, axes)

    def copy_into(self, dst: Any, src: Any) -> None:
        arrays.scatter(self.call, src, dst)

    # ---------------------------------------------------------- launches
    def _row_launch(self, kernel: Any, n_rows: int, n_classes: int) -> Tuple[Any, int]:
        blocks, threads, tpr = _config.row_launch(n_rows, n_classes)
        return self.call.launch(kernel, blocks, threads), tpr

    def softmax_rows(self, x2: Any, mode: SoftmaxMode) -> Any:
        n_rows, n_classes = x2.shape
        logsumexp = mode is SoftmaxMode.LOGSUMEXP
        out = self._empty((n_rows, 1) if logsumexp else (n_rows, n_classes), x2.dtype)
        if n_rows:
            launch, tpr = self._row_launch(softmax_kernels.softmax_rows, n_rows, n_classes)
            launch(x2, out, int(mode), tpr, _shuffle())
        return out

    def scan_labels(self, labels: Any, n_classes: int, ignore_index: int,
                    weight: Optional[Any]) -> CudaLabelScan:
        call = self.call
        n_rows = labels.shape[0]
        if not n_rows:
            return CudaLabelScan(call, 0, None, None, None)
        row_blocks = _config.row_launch(n_rows, n_classes)[0]
        blocks, threads = _config.elementwise_launch(n_rows)
        partials = call.empty((2 * max(blocks, row_blocks),), np.float64)
        status = call.status(n_rows)
        den = call.empty((1,), np.float64)
        call.launch(xent_kernels.scan_labels, blocks, threads)(
            labels, np.int64(n_classes), np.int64(ignore_index), weight, status.dev, partials.dev,
            den.dev, _shuffle())
        return CudaLabelScan(call, n_rows, status, partials, den)

    def _loss_buffers(self, reduction: Reduction, n: int, dtype: np.dtype) -> Tuple[Any, Any]:
        """(per-row losses or None, reduced result or None)."""
        if reduction is Reduction.NONE:
            return self._empty((n,), dtype), None
        return None, self._empty((1,), dtype)

    def _empty_reduction(self, reduction: Reduction, dtype: np.dtype) -> Any:
        """The reduced loss of an empty batch: NaN for the mean (as in PyTorch), 0 for the sum."""
        return self.full((1,), dtype, checks.mean_of(0.0, 0.0) if reduction is Reduction.MEAN
                         else 0.0)

    @staticmethod
    def _grad_args(grad_scale: Optional[GradScale]) -> Tuple[float, Any, np.int64]:
        """(host factor, device per-row factors or None, their step) for the kernels."""
        if grad_scale is None or grad_scale.rows is None:
            return (1.0 if grad_scale is None else grad_scale.factor), None, np.int64(0)
        return grad_scale.factor, grad_scale.rows, np.int64(1)

    def cross_entropy_hard(self, x2: Any, labels: Any, scan: CudaLabelScan, weight: Optional[Any],
                           *, ignore_index: int, smoothing: float, reduction: Reduction,
                           grad_scale: Optional[GradScale], grad: Optional[Any]) -> Any:
        n_rows, n_classes = x2.shape
        losses, result = self._loss_buffers(reduction, n_rows, x2.dtype)
        if not n_rows:
            return losses if result is None else self._empty_reduction(reduction, x2.dtype)
        blocks, threads, tpr = _config.row_launch(n_rows, n_classes)
        factor, rows, step = self._grad_args(grad_scale)
        self.call.launch(xent_kernels.xent_hard_rows, blocks, threads)(
            x2, labels, weight, float(n_classes), np.int64(ignore_index), smoothing, factor, rows,
            step, reduction is Reduction.MEAN, scan.den.dev, losses, result, scan.partials.dev,
            scan.status.dev, grad, tpr, _shuffle())
        return losses if result is None else result

    def cross_entropy_soft(self, x2: Any, target2: Any, weight: Optional[Any], *,
                           smoothing: float, reduction: Reduction,
                           grad_scale: Optional[GradScale], grad: Optional[Any]) -> Any:
        n_rows, n_classes = x2.shape
        losses, result = self._loss_buffers(reduction, n_rows, x2.dtype)
        if not n_rows:
            return losses if result is None else self._empty_reduction(reduction, x2.dtype)
        call = self.call
        blocks, threads, tpr = _config.row_launch(n_rows, n_classes)
        partials = call.empty((2 * blocks,), np.float64)
        status = call.status(n_rows)
        factor, rows, step = self._grad_args(grad_scale)
        call.launch(xent_kernels.xent_soft_rows, blocks, threads)(
            x2, target2, weight, smoothing, factor, rows, step, reduction is Reduction.MEAN,
            float(n_rows), losses, result, partials.dev, status.dev, grad, tpr, _shuffle())
        return losses if result is None else result

    def binary_cross_entropy(self, values: Any, target: Any, weight: Optional[Any],
                             pos_weight: Optional[Any], *, kind: BinaryInput,
                             reduction: Reduction, grad_scale: Optional[GradScale],
                             grad: Optional[Any]) -> Tuple[Any, int]:
        n = values.shape[0]
        losses, result = self._loss_buffers(reduction, n, values.dtype)
        if not n:
            return (losses if result is None else self._empty_reduction(reduction, values.dtype)), -1
        call = self.call
        factor, rows, _ = self._grad_args(grad_scale)
        if grad_scale is not None and grad_scale.mean:
            factor = checks.mean_of(factor, float(n))
        blocks, threads = _config.elementwise_launch(n)
        partials = call.empty((2 * blocks,), np.float64)
        status = call.status(n)
        kernel = (binary_kernels.bce_logits_flat if kind is BinaryInput.LOGITS
                  else binary_kernels.bce_probs_flat)
        call.launch(kernel, blocks, threads)(
            values, target, weight, pos_weight, rows, factor, losses, grad, partials.dev,
            status.dev, result, float(n) if reduction is Reduction.MEAN else 1.0, _shuffle())
        bad = -1
        if kind is BinaryInput.PROBS:
            first = int(call.read(status)[0])  # waits for the stream
            bad = first if first < n else -1
        return (losses if result is None else result), bad

    def divergence_rows(self, kind: Divergence, p2: Any, q2: Any, *,
                        want_grad: bool) -> Tuple[Any, Optional[Any]]:
        n_rows, n_classes = p2.shape
        values = self._empty((n_rows, 1), p2.dtype)
        grad = self._empty((n_rows, n_classes), p2.dtype) if want_grad else None
        if n_rows:
            launch, tpr = self._row_launch(divergence_kernels.divergence_rows, n_rows, n_classes)
            launch(p2, q2, int(kind), values, grad, tpr, _shuffle())
        return values, grad


def backend_for(primary: Any) -> CudaBackend:
    """The backend of one call whose first CUDA argument is ``primary``."""
    return CudaBackend(primary)
