"""Device-array plumbing of the CUDA path: which library produced the input,
which stream to launch on, where to allocate, how to give results back, and
how to make a strided, transposed or differently typed input a C-contiguous
(rows, classes) work array on the device.

Streams
-------
Every kernel of a call is launched on the stream on which the caller's arrays
are produced, so no host synchronisation is needed to order fastxent's work
after the producer's and the consumer's after fastxent's:

* PyTorch tensors: ``torch.cuda.current_stream(device).cuda_stream``;
* CuPy arrays: ``cupy.cuda.get_current_stream().ptr``;
* Numba device arrays: the stream the array is bound to (``arr.stream``), else
  the default stream;
* any other ``__cuda_array_interface__`` object: the interface's ``stream``
  entry (version 3: 1 = legacy default stream, 2 = per-thread default stream,
  another integer = that stream), else the default stream.

Inputs are viewed with ``as_cuda_array(sync=False)``: no host-side wait on the
producer's stream.  The stream of the first device array argument is used for
all arguments; arrays made on other streams must be ready on it.  The host
waits only where a result must come back to raise an error: the check of
class-index targets (IndexError naming the first bad label and its row) and of
BCE probabilities (ValueError), one small copy per call.

Allocation and results
----------------------
Outputs and scratch buffers come from the caller's library (``torch.empty``,
``cupy.empty``: their caching allocators and streams) and are handed back as
that library's arrays, viewed zero-copy by the kernels.  Numba device arrays,
and objects of unknown libraries, get Numba device arrays back.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Optional, Sequence

import numpy as np

from fastxent._backend import is_cuda_array
from fastxent.cuda import _config
from fastxent.cuda._numba_cuda import (SIMULATED, as_device_array, cuda, default_stream,
                                       external_stream, is_device_array, legacy_default_stream,
                                       per_thread_default_stream)


def _library(obj: Any) -> str:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return "torch"
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(obj, cupy.ndarray):
        return "cupy"
    if is_device_array(obj):
        return "numba"
    return "other"


def _stream_from_pointer(ptr: Optional[int]) -> Any:
    """A Numba stream for a producer's stream handle.  Handle 0 (PyTorch's
    and CuPy's default stream) is the *legacy* default stream, also when
    Numba itself runs with per-thread default streams
    (NUMBA_CUDA_PER_THREAD_DEFAULT_STREAM=1, where ``default_stream()`` is
    the per-thread one)."""
    if ptr is None:
        return default_stream()
    if ptr == 0 or ptr == 1:
        return legacy_default_stream()
    if ptr == 2:
        return per_thread_default_stream()
    return external_stream(ptr)


def stream_of(obj: Any, library: str) -> Any:
    """The stream on which ``obj``'s producer works (see the module docstring)."""
    if library == "torch":
        import torch

        if SIMULATED or not obj.is_cuda:
            return default_stream()
        return _stream_from_pointer(torch.cuda.current_stream(obj.device).cuda_stream)
    if library == "cupy":
        import cupy

        if SIMULATED:
            return default_stream()
        return _stream_from_pointer(cupy.cuda.get_current_stream().ptr)
    if library == "numba":
        stream = getattr(obj, "stream", 0)
        return stream if stream else default_stream()
    return _stream_from_pointer(obj.__cuda_array_interface__.get("stream"))


class _Interface:
    """An object exposing a given ``__cuda_array_interface__`` (keeps its owner alive)."""

    def __init__(self, interface: dict, owner: Any):
        self.__cuda_array_interface__ = interface
        self.owner = owner


class Buffer:
    """A device allocation: the library's object and the Numba view of it."""

    __slots__ = ("native", "dev")

    def __init__(self, native: Any, dev: Any):
        self.native, self.dev = native, dev


class Call:
    """The context of one public call on CUDA arrays: the library, device and
    stream of its first device array argument."""

    def __init__(self, primary: Any):
        self.library = _library(primary)
        self.primary = primary
        self.device_id = device_of(primary, self.library)
        with on_device(self.device_id):
            self.stream = stream_of(primary, self.library)

    # ------------------------------------------------------------- inputs
    def device(self, obj: Any, name: str) -> Any:
        """The Numba device view of a required array argument."""
        if not is_cuda_array(obj):
            raise TypeError(
                f"{name} is a host object ({type(obj).__name__}) while other arguments are CUDA "
                "arrays: pass every array argument on the same GPU (or all on the host)"
            )
        if self.library == "torch" and getattr(obj, "requires_grad", False):
            obj = obj.detach()
        return as_device_array(obj)

    def optional(self, obj: Any, name: str) -> Any:
        """``device`` for an optional array argument (None stays None)."""
        return None if obj is None else self.device(obj, name)

    # --------------------------------------------------------- allocation
    def empty(self, shape: Sequence[int], dtype: Any) -> Buffer:
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        if self.library == "torch":
            import torch

            native = torch.empty(shape, dtype=_torch_dtype(dtype), device=self.primary.device)
            return Buffer(native, as_device_array(native))
        if self.library == "cupy":
            import cupy

            with self.primary.device:
                native = cupy.empty(shape, dtype=dtype)
            return Buffer(native, as_device_array(native))
        dev = cuda.device_array(shape, dtype=dtype, stream=self.stream)
        return Buffer(dev, dev)

    def to_device(self, host: np.ndarray) -> Buffer:
        """A small host array copied to the device, in stream order."""
        host = np.ascontiguousarray(host)
        if self.library == "torch":
            import torch

            native = torch.from_numpy(host).to(self.primary.device)
            return Buffer(native, as_device_array(native))
        if self.library == "cupy":
            import cupy

            with self.primary.device:
                native = cupy.asarray(host)
            return Buffer(native, as_device_array(native))
        dev = cuda.to_device(host, stream=self.stream)
        return Buffer(dev, dev)

    def full(self, shape: Sequence[int], dtype: Any, value: float) -> Buffer:
        return self.to_device(np.full(shape, value, dtype=dtype))

    def status(self, bad_default: int) -> Buffer:
        """The int64 status array of the kernels (see ``_rows``): the 'first
        bad item' slot at ``bad_default`` (no bad item), the tickets at 0."""
        return self.to_device(np.array([bad_default, 0, 0], dtype=np.int64))

    def read(self, buf: Buffer) -> np.ndarray:
        """Copy a (small) device buffer to the host; waits for the stream."""
        host = buf.dev.copy_to_host(stream=self.stream)
        synchronize(self.stream)
        return host

    # ------------------------------------------------------------ results
    def result(self, buf: Buffer, shape: Optional[Sequence[int]] = None,
               axes: Optional[Sequence[int]] = None) -> Any:
        """The user-facing array of ``buf``: reshaped, then transposed by ``axes``."""
        out = buf.native
        if shape is not None and tuple(out.shape) != tuple(shape):
            out = out.reshape(tuple(shape))
        if axes is not None and tuple(axes) != tuple(range(len(axes))):
            out = out.permute(*axes) if self.library == "torch" else out.transpose(tuple(axes))
        return out

    def launch(self, kernel: Any, blocks: int, threads: int) -> Any:
        """``kernel[blocks, threads, stream]``, launched with the arrays'
        device current (a tensor on cuda:1 runs on GPU 1)."""
        configured = kernel[blocks, threads, self.stream]
        if self.device_id is None:
            return configured

        def launch_on_device(*args: Any) -> Any:
            with on_device(self.device_id):
                return configured(*args)

        return launch_on_device


def device_of(obj: Any, library: str) -> Optional[int]:
    """The ordinal of the GPU holding ``obj`` (None: the current one, or unknown)."""
    if SIMULATED:
        return None
    if library == "torch":
        return obj.device.index if obj.is_cuda else None
    if library == "cupy":
        return int(obj.device.id)
    return None


class on_device:
    """Make GPU ``device_id`` current for the block (nothing when it already is, or None)."""

    def __init__(self, device_id: Optional[int]):
        self.device_id = device_id
        self._context = None

    def __enter__(self):
        if self.device_id is not None and cuda.get_current_device().id != self.device_id:
            self._context = cuda.gpus[self.device_id]
            self._context.__enter__()
        return self

    def __exit__(self, *exc):
        if self._context is not None:
            self._context.__exit__(*exc)
        return False


def synchronize(stream: Any) -> None:
    if stream == 0 or stream is None:
        cuda.synchronize()
    else:
        stream.synchronize()


def _torch_dtype(dtype: np.dtype) -> Any:
    import torch

    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


# ------------------------------------------------------------ layouts
@cuda.jit(device=True)
def _strided_offset(k, offset, shape, strides):
    """offset + sum_d i_d strides_d for the C-order multi-index (i_d) of flat
    position k over ``shape``."""
    ndim = len(shape)
    rest = k
    at = offset
    for back in range(ndim):
        d = ndim - 1 - back
        at += (rest % shape[d]) * strides[d]
        rest //= shape[d]
    return at


@cuda.jit
def _gather(src, offset, shape, strides, dst):
    """dst[k] = src[offset + sum_d i_d strides_d] for the C-order multi-index
    (i_d) of k over ``shape`` (with a cast to dst's dtype)."""
    start = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    step = np.int64(cuda.gridDim.x) * cuda.blockDim.x
    for k in range(start, dst.shape[0], step):
        dst[k] = src[_strided_offset(k, offset, shape, strides)]


@cuda.jit
def _scatter(src, dst, offset, shape, strides):
    """The inverse of _gather: dst[offset + sum_d i_d strides_d] = src[k]."""
    start = np.int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    step = np.int64(cuda.gridDim.x) * cuda.blockDim.x
    for k in range(start, src.shape[0], step):
        dst[_strided_offset(k, offset, shape, strides)] = src[k]


def _interface(dev: Any) -> tuple:
    """(data pointer, shape, strides in elements, dtype) of a device array."""
    cai = dev.__cuda_array_interface__
    dtype = np.dtype(cai["typestr"])
    shape = tuple(int(n) for n in cai["shape"])
    strides = cai.get("strides")
    if strides is None:
        strides, step = [], dtype.itemsize
        for n in reversed(shape):
            strides.append(step)
            step *= max(n, 1)
        strides = tuple(reversed(strides))
    if any(s % dtype.itemsize for s in strides):
        raise ValueError(f"strides {tuple(strides)} are not a multiple of the item size {dtype.itemsize}")
    return int(cai["data"][0]), shape, tuple(int(s) // dtype.itemsize for s in strides), dtype


def _flat(dev: Any) -> tuple:
    """A 1-D device view of all the memory that ``dev`` spans, the offset of
    dev's first element in it, and dev's shape and element strides."""
    ptr, shape, strides, dtype = _interface(dev)
    lo = sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    hi = sum(max(0, (n - 1) * s) for n, s in zip(shape, strides))
    interface = {"shape": (hi - lo + 1,), "typestr": dtype.str, "data": (ptr + lo * dtype.itemsize, False),
                 "strides": None, "version": 3, "stream": None}
    return as_device_array(_Interface(interface, dev)), -lo, shape, strides


def is_c_contiguous(dev: Any) -> bool:
    _, shape, strides, _ = _interface(dev)
    if 0 in shape:
        return True
    step = 1
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1 and s != step:
            return False
        step *= n
    return True


def _gather_into(call: Call, dev: Any, shape: tuple, strides: tuple, offset: int, out: Any) -> None:
    n = math.prod(shape)
    if n:
        if not shape:  # 0-d: one element
            shape, strides = (1,), (0,)
        blocks, threads = _config.elementwise_launch(n)
        call.launch(_gather, blocks, threads)(dev, np.int64(offset),
                                              tuple(np.int64(s) for s in shape),
                                              tuple(np.int64(s) for s in strides),
                                              out.reshape(n))


def gather(call: Call, dev: Any, axes: Sequence[int], dtype: Any) -> Buffer:
    """A C-contiguous copy of ``dev.transpose(axes)`` in ``dtype``."""
    out_shape = tuple(dev.shape[a] for a in axes)
    buf = call.empty(out_shape, dtype)
    if math.prod(out_shape):
        flat, offset, shape, strides = _flat(dev)
        _gather_into(call, flat, out_shape, tuple(strides[a] for a in axes), offset, buf.dev)
    return buf


def broadcast(call: Call, dev: Any, shape: Sequence[int], dtype: Any, name: str) -> Any:
    """``dev`` broadcast to ``shape`` (NumPy rules), as a C-contiguous flat
    device array of ``dtype`` (a view when no copy is needed)."""
    shape = tuple(shape)
    try:
        if np.broadcast_shapes(tuple(dev.shape), shape) != shape:
            raise ValueError
    except ValueError:
        raise ValueError(f"{name} of shape {tuple(dev.shape)} does not broadcast to the input's "
                         f"shape {shape}") from None
    if tuple(dev.shape) == shape:
        return flat(call, dev, dtype)
    buf = call.empty(shape, dtype)
    n = math.prod(shape)
    if n:
        flat_dev, offset, src_shape, src_strides = _flat(dev)
        lead = len(shape) - len(src_shape)
        strides = tuple(0 if d < lead or src_shape[d - lead] == 1 else src_strides[d - lead]
                        for d in range(len(shape)))
        _gather_into(call, flat_dev, shape, strides, offset, buf.dev)
    return buf.dev.reshape(n)


def scatter(call: Call, src: Any, dev: Any) -> None:
    """dev[...] = src (a C-contiguous array of dev's size), any strides and dtypes."""
    n = math.prod(dev.shape)
    if n:
        flat, offset, shape, strides = _flat(dev)
        blocks, threads = _config.elementwise_launch(n)
        call.launch(_scatter, blocks, threads)(src.reshape(n), flat, np.int64(offset),
                                               tuple(np.int64(s) for s in shape),
                                               tuple(np.int64(s) for s in strides))


def rows(call: Call, dev: Any, layout: Any, dtype: Any) -> Any:
    """``dev`` as a C-contiguous (rows, classes) device array of ``dtype``
    (``layout`` a ``fastxent._checks.Rows``): a view when it already is one,
    else a copy made on the device."""
    dtype = np.dtype(dtype)
    if dev.dtype == dtype and layout.is_identity and is_c_contiguous(dev):
        return dev.reshape(layout.n_rows, layout.n_classes)
    return gather(call, dev, layout.perm, dtype).dev.reshape(layout.n_rows, layout.n_classes)


def flat(call: Call, dev: Any, dtype: Any) -> Any:
    """``dev`` as a C-contiguous 1-D device array of ``dtype`` (a view when possible)."""
    dtype = np.dtype(dtype)
    n = math.prod(dev.shape)
    if dev.dtype == dtype and is_c_contiguous(dev):
        return dev.reshape(n)
    return gather(call, dev, tuple(range(len(dev.shape))), dtype).dev.reshape(n)


def span(dev: Any) -> tuple:
    """[first byte, last byte + 1) of the memory a device array touches."""
    ptr, shape, strides, dtype = _interface(dev)
    if 0 in shape:
        return ptr, ptr
    lo = sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    hi = sum(max(0, (n - 1) * s) for n, s in zip(shape, strides))
    return ptr + lo * dtype.itemsize, ptr + (hi + 1) * dtype.itemsize


def overlaps(a: Any, b: Any) -> bool:
    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1 and a1 > a0 and b1 > b0


def same_memory(a: Any, b: Any) -> bool:
    """True when a and b are the same C-contiguous memory of the same shape."""
    return (_interface(a)[0] == _interface(b)[0] and tuple(a.shape) == tuple(b.shape)
            and a.dtype == b.dtype and is_c_contiguous(a) and is_c_contiguous(b))
