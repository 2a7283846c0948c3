"""The CPU backend: NumPy arrays in and out, the Numba CPU kernels of this
package behind the interface of ``fastxent._backend.Backend``.

Native arrays are ``numpy.ndarray``.  Work arrays are C-contiguous views of
the caller's arrays where they already are C-contiguous arrays of the compute
dtype, copies otherwise.  Per-row losses are float64; reduced losses come
back as host floats.

:data:`TORCH_BACKEND` is the same backend for PyTorch CPU tensors: tensors
are viewed zero-copy as NumPy arrays (``Tensor.numpy()``), results are
wrapped zero-copy as tensors (``torch.from_numpy``).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

from fastxent import _checks as checks
from fastxent._backend import BinaryInput, Divergence, GradScale, Reduction, SoftmaxMode
from fastxent.cpu import binary as binary_kernels
from fastxent.cpu import divergence as divergence_kernels
from fastxent.cpu import softmax as softmax_kernels
from fastxent.cpu import xent as xent_kernels
from fastxent.cpu._config import TASK_ELEMENTS, rows_per_task

# Below this many per-row losses, summing them in Python beats np.sum's call
# overhead (a (64, 10) cross-entropy takes microseconds in all).
_SMALL_SUM = 512


def _total(losses: np.ndarray) -> float:
    """The sum of float64 losses (in order, for a short batch: a third of
    np.sum's call overhead, and of math.fsum's)."""
    if losses.size <= _SMALL_SUM:
        return sum(losses.tolist(), 0.0)
    return float(losses.sum())


class CpuLabelScan:
    """A finished label scan: the first bad row (or -1) and the denominator."""

    __slots__ = ("_bad", "_denominator")

    def __init__(self, bad: int, denominator: float):
        self._bad, self._denominator = bad, denominator

    def bad_row(self) -> int:
        return self._bad

    def denominator(self) -> float:
        return self._denominator


class CpuBackend:
    """NumPy arrays on the Numba CPU kernels (see the module docstring)."""

    name = "cpu"

    # ------------------------------------------------------ conversion in
    def array(self, obj: Any, name: str) -> np.ndarray:
        return obj if type(obj) is np.ndarray else np.asarray(obj)

    def operand(self, obj: Any, name: str) -> Union[float, np.ndarray]:
        a = self.array(obj, name)
        if a.ndim:
            return a
        checks.compute_dtype(a.dtype, name)
        return float(a)

    # --------------------------------------------------------- buffers
    def rows(self, a: np.ndarray, perm: Tuple[int, ...], n_rows: int, n_classes: int,
             dtype: np.dtype) -> np.ndarray:
        if (perm == _IDENTITY_2D and a.dtype == dtype and a.flags.c_contiguous
                and a.shape == (n_rows, n_classes)):
            return a  # the usual 2-D call: no copy, no view
        if perm != tuple(range(a.ndim)):
            a = a.transpose(perm)
        return np.ascontiguousarray(a.reshape(n_rows, n_classes), dtype=dtype)

    def flat(self, a: np.ndarray, dtype: np.dtype,
             shape: Optional[Tuple[int, ...]] = None) -> np.ndarray:
        if shape is not None and a.shape != shape:
            a = np.broadcast_to(a, shape)
        elif a.ndim == 1 and a.dtype == dtype and a.flags.c_contiguous:
            return a  # the usual labels: no copy, no view
        return np.ascontiguousarray(a, dtype=dtype).reshape(-1)

    def empty(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def full(self, shape: Tuple[int, ...], dtype: np.dtype, value: float) -> np.ndarray:
        return np.full(shape, value, dtype=dtype)

    def read_element(self, a: np.ndarray, index: int) -> Any:
        return a[index]

    def is_c_contiguous(self, a: np.ndarray) -> bool:
        return a.flags.c_contiguous

    def same_memory(self, a: np.ndarray, b: np.ndarray) -> bool:
        return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
                and a.shape == b.shape and a.strides == b.strides)

    def may_overlap(self, a: np.ndarray, b: np.ndarray) -> bool:
        return np.may_share_memory(a, b)

    # ----------------------------------------------------- conversion out
    def user_output(self, out: Any, name: str) -> np.ndarray:
        if not isinstance(out, np.ndarray):
            raise checks.output_kind_error(name, "a NumPy array", out)
        if not out.flags.writeable:
            raise checks.read_only_error(name)
        return out

    def result(self, a: Union[float, np.ndarray], dtype: np.dtype, shape: Tuple[int, ...],
               axes: Optional[Tuple[int, ...]] = None) -> Any:
        if type(a) is float:
            return dtype.type(a)
        if a.shape != shape:
            a = a.reshape(shape)
        if axes is not None:
            a = a.transpose(axes)
        a = a.astype(dtype, copy=False)
        return a[()] if a.ndim == 0 else a

    def copy_into(self, dst: np.ndarray, src: np.ndarray) -> None:
        dst[...] = src.reshape(dst.shape)

    # ---------------------------------------------------------- launches
    def softmax_rows(self, x2: np.ndarray, mode: SoftmaxMode) -> np.ndarray:
        n_rows, n_classes = x2.shape
        if mode == SoftmaxMode.LOGSUMEXP:
            out = np.empty(n_rows)
        else:
            out = np.empty(x2.shape, dtype=x2.dtype)
        softmax_kernels.softmax_rows(x2, out, int(mode), rows_per_task(n_classes))
        return out

    def scan_labels(self, labels: np.ndarray, n_classes: int, ignore_index: int,
                    weight: Optional[np.ndarray]) -> CpuLabelScan:
        bad, denominator = xent_kernels.scan_labels(labels, n_classes, ignore_index, weight)
        return CpuLabelScan(int(bad), float(denominator))

    @staticmethod
    def _row_scale(grad_scale: Optional[GradScale], n: int, denominator: float) -> np.ndarray:
        """The kernels' per-row (per-element) gradient factor, float64 (n,)."""
        if grad_scale is None:
            return _NO_ROW_SCALE
        factor = grad_scale.factor
        if grad_scale.mean:
            factor = checks.mean_of(factor, denominator)
        if grad_scale.rows is None:
            scale = np.empty(n)
            scale.fill(factor)  # (np.full costs a microsecond more on a (64, 10) call)
            return scale
        return grad_scale.rows * factor if factor != 1.0 else grad_scale.rows

    @staticmethod
    def _reduce(losses: np.ndarray, reduction: Reduction, denominator: float) -> Any:
        if reduction is Reduction.NONE:
            return losses
        total = _total(losses)
        return checks.mean_of(total, denominator) if reduction is Reduction.MEAN else total

    def cross_entropy_hard(self, x2: np.ndarray, labels: np.ndarray, scan: CpuLabelScan,
                           weight: Optional[np.ndarray], *, ignore_index: int, smoothing: float,
                           reduction: Reduction, grad_scale: Optional[GradScale],
                           grad: Optional[np.ndarray]) -> Any:
        n_rows, n_classes = x2.shape
        denominator = scan.denominator()
        row_scale = self._row_scale(grad_scale, n_rows, denominator)
        weight_total = float(weight.sum()) if weight is not None else float(n_classes)
        losses = np.empty(n_rows)
        xent_kernels.cross_entropy_hard_rows(x2, labels, weight, weight_total, ignore_index,
                                             smoothing, row_scale, losses, grad,
                                             rows_per_task(n_classes))
        return self._reduce(losses, reduction, denominator)

    def cross_entropy_soft(self, x2: np.ndarray, target2: np.ndarray,
                           weight: Optional[np.ndarray], *, smoothing: float,
                           reduction: Reduction, grad_scale: Optional[GradScale],
                           grad: Optional[np.ndarray]) -> Any:
        n_rows, n_classes = x2.shape
        row_scale = self._row_scale(grad_scale, n_rows, float(n_rows))
        losses = np.empty(n_rows)
        xent_kernels.cross_entropy_soft_rows(x2, target2, weight, smoothing, row_scale, losses,
                                             grad, rows_per_task(n_classes))
        return self._reduce(losses, reduction, float(n_rows))

    def binary_cross_entropy(self, values: np.ndarray, target: np.ndarray,
                             weight: Optional[np.ndarray], pos_weight: Optional[np.ndarray], *,
                             kind: BinaryInput, reduction: Reduction,
                             grad_scale: Optional[GradScale],
                             grad: Optional[np.ndarray]) -> Tuple[Any, int]:
        n = values.shape[0]
        scale, element_scale = 1.0, None
        if grad_scale is not None:
            scale, element_scale = grad_scale.factor, grad_scale.rows
            if grad_scale.mean:
                scale = checks.mean_of(scale, float(n))
        losses = np.empty(n) if reduction is Reduction.NONE else None
        total, bad = binary_kernels.bce_flat(values, target, weight, pos_weight,
                                             logits=kind is BinaryInput.LOGITS,
                                             grad_scale=element_scale, scale=scale,
                                             loss_out=losses, grad=grad,
                                             task_elements=TASK_ELEMENTS)
        if reduction is Reduction.NONE:
            return losses, bad
        return (checks.mean_of(total, float(n)) if reduction is Reduction.MEAN else total), bad

    def divergence_rows(self, kind: Divergence, p2: np.ndarray, q2: np.ndarray, *,
                        want_grad: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        values = np.empty(p2.shape[0])
        grad = np.empty(p2.shape, dtype=p2.dtype) if want_grad else None
        divergence_kernels.divergence_rows(int(kind), p2, q2, values, grad,
                                           rows_per_task(p2.shape[1]))
        return values, grad


_NO_ROW_SCALE = np.empty(0)  # the kernels' placeholder when no gradient is computed
_IDENTITY_2D = (0, 1)


class TorchCpuBackend(CpuBackend):
    """PyTorch CPU tensors on the CPU kernels: zero-copy NumPy views in,
    tensors out (NumPy arrays among the arguments are accepted too)."""

    name = "torch-cpu"

    def array(self, obj: Any, name: str) -> np.ndarray:
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.detach().resolve_conj().resolve_neg().numpy()
        return super().array(obj, name)

    def user_output(self, out: Any, name: str) -> np.ndarray:
        import torch

        if not isinstance(out, torch.Tensor):
            raise checks.output_kind_error(name, "a torch tensor like the inputs", out)
        if out.requires_grad:
            raise ValueError(f"{name} requires grad: pass a tensor that does not")
        return out.numpy()

    def result(self, a: Union[float, np.ndarray], dtype: np.dtype, shape: Tuple[int, ...],
               axes: Optional[Tuple[int, ...]] = None) -> Any:
        import torch

        value = super().result(a, dtype, shape, axes)
        return torch.from_numpy(np.asarray(value))


BACKEND = CpuBackend()
TORCH_BACKEND = TorchCpuBackend()
