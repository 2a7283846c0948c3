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

The fused linear cross-entropy (``fastxent._linear``) runs its chunk loop
on this backend through :class:`CudaOps`: the three products of a chunk by
:meth:`CudaBackend.matmul` (cuBLAS through torch / CuPy for their arrays,
else the tiled GEMM of ``fastxent.cuda.linear``), the fused cross-entropy
kernel in place on the chunk's logits, and the loss finished on the device.
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
from fastxent.cuda import linear as linear_kernels
from fastxent.cuda import softmax as softmax_kernels
from fastxent.cuda import xent as xent_kernels
from fastxent.cuda._arrays import Buffer, Call
from fastxent.cuda._numba_cuda import SIMULATED, host_view

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
        # the one host wait of a hard-label call: 8 bytes, before the loss kernel
        return arrays.first_bad(self.call.read(self.status)[0], self.n_rows)

    def denominator(self) -> float:
        return float(self.call.read(self.den)[0]) if self.n_rows else 0.0


class CudaBackend:
    """The CUDA arrays of one call on the numba.cuda kernels."""

    name = "cuda"

    @property
    def chunk_bytes(self) -> int:
        """The size of a chunk of logits of the linear cross-entropy."""
        return _config.LINEAR_CHUNK_BYTES

    def __init__(self, primary: Any):
        self.call = Call(primary)
        self._owners: dict = {}  # id(native view) -> its Buffer (the library's array)
        self._wrapped: dict = {}  # device views as the library's arrays (_library_array)

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
            bad = arrays.first_bad(call.read(status)[0], n)  # waits for the stream
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

    # ----------------------------------------------- linear cross-entropy
    def matmul(self, a: Any, b: Any, out: Any, *, transpose_a: bool = False,
               transpose_b: bool = False, bias: Optional[Any] = None,
               accumulate: bool = False) -> None:
        """out = op(a) @ op(b) (+ bias) (+ out when ``accumulate``), op = the
        transpose where asked (read through the strides, no copy).  Operands
        of one float dtype, any strides; ``out`` C-contiguous.  torch tensors
        and CuPy arrays go to their library's matmul (cuBLAS) when
        ``_config.LIBRARY_GEMM``, everything else to the tiled GEMM kernel."""
        n_rows, n_cols = out.shape
        if not (n_rows and n_cols):
            return
        if _config.LIBRARY_GEMM and self.call.library in ("torch", "cupy"):
            self._library_matmul(a, b, out, transpose_a, transpose_b, bias, accumulate)
            return
        depth = a.shape[0] if transpose_a else a.shape[1]
        grid, threads, per_slice = _config.gemm_launch(n_rows, n_cols, depth)
        kernel = linear_kernels.GEMM[bool(transpose_a), bool(transpose_b), out.dtype.itemsize]
        launch = self.call.launch(kernel, grid, threads)
        if grid[2] == 1:
            launch(a, b, bias, out.reshape(1, n_rows, n_cols), bool(accumulate), np.int64(per_slice))
            return
        slices = self.call.empty((grid[2], n_rows, n_cols), out.dtype)
        launch(a, b, None, slices.dev, False, np.int64(per_slice))
        blocks, threads = _config.elementwise_launch(n_rows * n_cols)
        self.call.launch(linear_kernels.sum_slices, blocks, threads)(slices.dev, bias, out,
                                                                     bool(accumulate))

    def _library_array(self, dev: Any) -> Any:
        """The call library's zero-copy array of a device view (on the
        simulator a CPU tensor over the same host memory).  Cached per view
        for the call: the chunk loop multiplies the same W, bias, dW and
        logits buffer in every chunk, and each wrap costs host time."""
        cai = dev.__cuda_array_interface__
        key = (cai["data"][0], tuple(cai["shape"]), cai.get("strides"), cai["typestr"])
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._wrapped[key] = self._wrap(dev)
        return wrapped

    def _wrap(self, dev: Any) -> Any:
        if self.call.library == "torch":
            import torch

            if SIMULATED:
                return torch.from_numpy(host_view(dev))
            return torch.as_tensor(dev, device=self.call.primary.device)
        import cupy

        with self.call.primary.device:
            return cupy.asarray(dev)

    def _library_matmul(self, a: Any, b: Any, out: Any, transpose_a: bool, transpose_b: bool,
                        bias: Optional[Any], accumulate: bool) -> None:
        A, B, O = (self._library_array(v) for v in (a, b, out))
        A = A.T if transpose_a else A
        B = B.T if transpose_b else B
        if self.call.library == "torch":  # on torch's current stream: the call's
            import torch

            if accumulate:
                O.addmm_(A, B)
            elif bias is not None:
                torch.addmm(self._library_array(bias), A, B, out=O)
            else:
                torch.matmul(A, B, out=O)
            return
        import cupy  # on CuPy's current stream: the call's

        with self.call.primary.device:
            if accumulate:
                O += A @ B
            else:
                cupy.matmul(A, B, out=O)
            if bias is not None:
                O += self._library_array(bias)

    def scale_into(self, out: Any, a: Any, factor: float) -> None:
        """out = factor * a (2-D, one shape)."""
        if out.size:
            blocks, threads = _config.elementwise_launch(out.size)
            self.call.launch(linear_kernels.scale_into, blocks, threads)(
                out, a, out.dtype.type(factor))

    def add_column_sums(self, acc: Any, g: Any) -> None:
        """acc (float64) += the column sums of g."""
        if g.size:
            blocks, threads = _config.elementwise_launch(g.shape[1])
            self.call.launch(linear_kernels.add_column_sums, blocks, threads)(acc, g)

    def add_loss(self, total: Any, value: Any) -> None:
        """total[0] (float64) += value[0], on the device."""
        self.call.launch(linear_kernels.add_loss, 1, 1)(total, value)

    def finish_loss(self, total: Any, denominator: Optional[float], half_l2: float,
                    w: Optional[Any], dtype: np.dtype) -> Any:
        """(1,) array of ``dtype``: total[0] / denominator (None: no division)
        + half_l2 * ||w||² (w None: no penalty), summed on the device."""
        call = self.call
        blocks, threads = _config.elementwise_launch(1 if w is None else w.size)
        partials = call.empty((2 * blocks,), np.float64)
        status = call.status(blocks)
        result = self._empty((1,), dtype)
        call.launch(linear_kernels.finish_loss, blocks, threads)(
            total, denominator is not None, 0.0 if denominator is None else float(denominator),
            float(half_l2), w, partials.dev, status.dev, result, _shuffle())
        return result


class CudaOps:
    """The array work of the linear cross-entropy's chunk loop
    (``fastxent._linear.run``, see ``NumPyOps`` there for the methods) on the
    CUDA backend of one call: Numba device views of the caller's arrays,
    buffers from the caller's library, every step a launch on the call's
    stream.  The labels were checked once, before the loop (one host wait):
    each chunk's loss kernel reuses that scan, so the loop itself never waits
    for the device.  Results come back as the caller's kind of array."""

    def __init__(self, problem: Any):
        self.backend: CudaBackend = problem.backend
        self.call = self.backend.call
        self.scan = problem.scan
        self._buffers: dict = {}  # device pointer -> Buffer, of the loop's allocations

    def _keep(self, buf: Buffer) -> Any:
        self._buffers[arrays.span(buf.dev)[0]] = buf
        return self.backend._own(buf)

    def asarray(self, a: Any) -> Any:
        return a  # the problem's fields already are device views

    def empty(self, shape: Tuple[int, ...], dtype: np.dtype) -> Any:
        return self._keep(self.call.empty(shape, dtype))

    def zeros(self, shape: Tuple[int, ...], dtype: np.dtype) -> Any:
        return self._keep(self.call.zeros(shape, dtype))

    def gemm_operand(self, a: Any) -> Any:
        return a  # the GEMMs read any strides

    def logits(self, x: Any, W: Any, bias: Optional[Any], out: Any) -> None:
        self.backend.matmul(x, W, out, transpose_b=True, bias=bias)

    def matmul(self, a: Any, b: Any, out: Any) -> None:
        self.backend.matmul(a, b, out)

    def weight_grad(self, dW: Any, G: Any, x: Any, *, accumulate: bool) -> None:
        self.backend.matmul(G, x, dW, transpose_a=True, accumulate=accumulate)

    def cross_entropy(self, logits: Any, target: Any, *, reduction: str, want_grad: bool,
                      grad_output: Any = None, weight: Optional[Any] = None,
                      label_smoothing: float = 0.0, ignore_index: Optional[int] = None) -> Any:
        scale = None
        if want_grad:
            scale = (GradScale(float(grad_output)) if isinstance(grad_output, numbers.Number)
                     else GradScale(1.0, grad_output))
        grad = logits if want_grad else None  # in place: each row is read before it is written
        reduction = Reduction(reduction)
        if self.scan is not None:
            return self.backend.cross_entropy_hard(
                logits, target, self.scan, weight, ignore_index=ignore_index,
                smoothing=label_smoothing, reduction=reduction, grad_scale=scale, grad=grad)
        return self.backend.cross_entropy_soft(logits, target, weight, smoothing=label_smoothing,
                                               reduction=reduction, grad_scale=scale, grad=grad)

    def copy_rows(self, dst: Any, start: int, src: Any) -> None:
        if src.shape[0]:
            self.backend.copy_into(dst[start:start + src.shape[0]], src)

    def add_loss(self, total: Any, value: Any) -> Any:
        if total is None:
            total = self.call.zeros((1,), np.float64).dev
        self.backend.add_loss(total, value)
        return total

    def reduced_loss(self, total: Any, denominator: Optional[float], half_l2: float, W: Any,
                     dtype: np.dtype) -> Any:
        if total is None:  # no rows
            total = self.call.zeros((1,), np.float64).dev
        result = self.backend.finish_loss(total, denominator, half_l2,
                                          W if half_l2 != 0.0 else None, W.dtype)
        return self.backend.result(result, dtype, ())

    def scale_into(self, out: Any, a: Any, factor: float) -> None:
        self.backend.scale_into(out, a, factor)

    def add_column_sums(self, acc: Any, G: Any) -> None:
        self.backend.add_column_sums(acc, G)

    def result(self, a: Any, dtype: np.dtype) -> Any:
        """A loop buffer (or a reshaped view of one) as the caller's array of ``dtype``."""
        if not a.size:
            return self.call.result(self.call.empty(a.shape, dtype))
        buf = self._buffers[arrays.span(a)[0]]
        if a.dtype != dtype:  # a cast copy (float16 results, the float64 dbias)
            return self.call.result(arrays.gather(self.call, a, tuple(range(len(a.shape))), dtype))
        return self.call.result(buf, a.shape)


def backend_for(primary: Any) -> CudaBackend:
    """The backend of one call whose first CUDA argument is ``primary``."""
    return CudaBackend(primary)
