"""The one place that imports numba.cuda.

Everything else in ``fastxent.cuda`` imports ``cuda`` (and the few helpers
below) from here, so a move to numba.cuda's successor (numba-cuda is in
maintenance mode; NVIDIA points to numba-cuda-mlir) is a change to the import
line below.

``numba.cuda`` is provided by the ``numba-cuda`` package when it is installed
(it redirects ``numba.cuda`` to ``numba_cuda``), otherwise by the target built
into Numba.  Both come with the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` set
before numba is imported), on which the test suite runs every kernel without a
GPU.  The simulator differs from a GPU in a few ways that this module evens
out, so that the kernels and the array plumbing are the same code on both:

* ``exp``/``log``/``log1p``: on a GPU, ``math.exp(1000.0)`` is inf and
  ``math.log(0.0)`` is -inf; the simulator runs plain Python, where they raise.
  Kernels call these names, which are ``math``'s on a GPU and NumPy's (with
  floating-point errors silenced) on the simulator.
* Simulated device arrays have no ``__cuda_array_interface__``, and the
  simulator has no ``as_cuda_array`` or ``external_stream``: :func:`as_device_array`
  and :func:`external_stream` provide them (device memory is host memory there,
  so a device pointer is a host pointer).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

try:
    from numba import config as _numba_config
    from numba import cuda  # the one import of the CUDA target
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "fastxent's CUDA kernels need numba.cuda, which could not be imported "
        f"({exc}); install the 'cuda' extra: pip install 'fastxent[cuda]'"
    ) from exc

#: True when kernels run on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1).
SIMULATED = bool(_numba_config.ENABLE_CUDASIM)

# FASTXENT_CUDA_COMPILE_ONLY=1 skips the device check, for compiling the
# kernels to PTX on a machine without a GPU (tests/cuda_compile.py).
if not SIMULATED and not os.environ.get("FASTXENT_CUDA_COMPILE_ONLY") and not cuda.is_available():
    _reason = cuda.cuda_error() if hasattr(cuda, "cuda_error") else None
    raise ImportError(
        "numba.cuda finds no usable CUDA GPU"
        + (f" ({_reason})" if _reason else "")
        + ": fastxent's CUDA kernels need an NVIDIA GPU with its driver and the "
        "'cuda' extra (pip install 'fastxent[cuda]'); for testing without a GPU "
        "set NUMBA_ENABLE_CUDASIM=1 before numba is imported"
    )

if SIMULATED:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    def exp(x):
        with np.errstate(all="ignore"):
            return np.exp(x)

    def log(x):
        with np.errstate(all="ignore"):
            return np.log(x)

    def log1p(x):
        with np.errstate(all="ignore"):
            return np.log1p(x)

    def div(a, b):
        with np.errstate(all="ignore"):
            return np.float64(a) / np.float64(b)

    def _simulated_interface(self) -> dict:
        """``__cuda_array_interface__`` of a simulated device array (its
        memory is host memory)."""
        ai = self._ary.__array_interface__
        return {"shape": ai["shape"], "typestr": ai["typestr"], "data": ai["data"],
                "strides": ai["strides"], "descr": ai.get("descr"), "version": 3,
                "stream": None}

    if not hasattr(FakeCUDAArray, "__cuda_array_interface__"):
        FakeCUDAArray.__cuda_array_interface__ = property(_simulated_interface)

    class _HostView:
        """Turns a ``__cuda_array_interface__`` into an ``__array_interface__``
        (simulator only), keeping the owner alive."""

        def __init__(self, interface: dict, owner: Any):
            self.owner = owner
            self.__array_interface__ = {
                "shape": tuple(interface["shape"]), "typestr": interface["typestr"],
                "data": (interface["data"][0], bool(interface["data"][1])),
                "strides": interface.get("strides"), "version": 3,
            }

    def as_device_array(obj: Any) -> Any:
        """A Numba device array viewing ``obj``'s memory (no copy, no sync)."""
        if isinstance(obj, FakeCUDAArray):
            return obj
        if not hasattr(obj, "__cuda_array_interface__"):
            # host memory is device memory here: e.g. the CPU tensors that a
            # simulated run allocates through PyTorch
            return FakeCUDAArray(np.asarray(obj))
        interface = obj.__cuda_array_interface__
        if 0 in tuple(interface["shape"]) or interface["data"][0] == 0:
            host = np.empty(tuple(interface["shape"]), dtype=np.dtype(interface["typestr"]))
        else:
            host = np.asarray(_HostView(interface, obj))
        return FakeCUDAArray(host)

    def external_stream(ptr: int) -> Any:
        return cuda.stream()

    def default_stream() -> Any:
        return 0

    def is_device_array(obj: Any) -> bool:
        return isinstance(obj, FakeCUDAArray)

    def host_view(dev: Any) -> np.ndarray:
        """The NumPy array that holds a simulated device array's memory (a view)."""
        return dev._ary

else:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    exp = math.exp
    log = math.log
    log1p = math.log1p

    def _div(a, b):
        return a / b

    div = cuda.jit(device=True)(_div)

    def as_device_array(obj: Any) -> Any:
        """A Numba device array viewing ``obj``'s memory (no copy).  No
        synchronisation on the producer's stream: fastxent launches its
        kernels on that stream instead (see ``fastxent.cuda._arrays``)."""
        if isinstance(obj, DeviceNDArray):
            return obj
        return cuda.as_cuda_array(obj, sync=False)

    def external_stream(ptr: int) -> Any:
        return cuda.external_stream(ptr)

    def default_stream() -> Any:
        return cuda.default_stream()

    def is_device_array(obj: Any) -> bool:
        return isinstance(obj, DeviceNDArray)

    def host_view(dev: Any) -> np.ndarray:
        raise TypeError("device memory has no host view on a GPU (simulator only)")


# ---------------------------------------------------------------- device helpers
# The hot row loops use these instead of plain indexing and ``math``:
#
# * ``load4(a, i)`` / ``store4(a, i, (v0, v1, v2, v3))``: a[i:i+4] of a 1-D
#   C-contiguous array as one vector access (``ld/st.global.v4.f32``, two
#   ``v2.f64`` for float64).  The caller guarantees that &a[i] is 16-byte
#   aligned and that i + 3 is in bounds: nothing is checked on a GPU.
# * ``load1(a, i)`` / ``store1(a, i, v)``: a[i] without Numba's negative-index
#   wraparound (one select per access less); the caller guarantees
#   0 <= i < len(a).
# * ``address(a)``: the address of a[0] as an int64 (alignment checks).
# * ``cast_like(v, like)``: v converted to like's (scalar) type.
# * ``fmax``/``fmin``: one ``max.f32``/``min.f32`` (NaN-ignoring, as C's fmax).
# * ``exp_fast(t)``: e^t, for float32 ``ex2.approx.ftz(t * log2 e)`` (2
#   instructions, relative error about 2 ulp + |t| * 2^-24, results below
#   2^-126 flushed to 0, exactly 1 at t = 0); for float64 the accurate ``exp``.
# * ``syncwarp()``: ``__syncwarp()`` (a no-op on the simulator, whose threads
#   are not grouped in warps).
#
# On the simulator these are plain Python on NumPy scalars (still bounds
# checked by NumPy indexing).
#: Every lane of a warp (the mask of ``syncwarp``).
FULL_WARP = 0xFFFFFFFF

if SIMULATED:
    def load4(a, i):
        return (a[i], a[i + 1], a[i + 2], a[i + 3])

    def store4(a, i, v):
        a[i] = v[0]
        a[i + 1] = v[1]
        a[i + 2] = v[2]
        a[i + 3] = v[3]

    def load1(a, i):
        return a[i]

    def store1(a, i, v):
        a[i] = v

    def address(a):
        return np.asarray(a).ctypes.data

    def fmax(a, b):
        return np.fmax(a, b)

    def fmin(a, b):
        return np.fmin(a, b)

    def exp_fast(t):
        with np.errstate(all="ignore"):
            return np.exp(t)

    def cast_like(value, like):
        return type(like)(value)

    def syncwarp():
        pass

else:
    from llvmlite import ir as _ir
    from numba import types as _types
    from numba.cuda import libdevice as _libdevice
    from numba.cuda.extending import intrinsic as _intrinsic
    from numba.cuda.extending import overload as _overload

    def _element_pointer(context, builder, array_type, array, index_type, index):
        ary = context.make_array(array_type)(context, builder, array)
        offset = context.cast(builder, index, index_type, _types.intp)
        return builder.gep(ary.data, [offset])

    @_intrinsic
    def load4(typingctx, array, index):
        sig = _types.UniTuple(array.dtype, 4)(array, index)

        def codegen(context, builder, sig, args):
            array_type, index_type = sig.args
            vector = _ir.VectorType(context.get_value_type(array_type.dtype), 4)
            ptr = _element_pointer(context, builder, array_type, args[0], index_type, args[1])
            loaded = builder.load(builder.bitcast(ptr, vector.as_pointer()), align=16)
            values = [builder.extract_element(loaded, _ir.Constant(_ir.IntType(32), k))
                      for k in range(4)]
            return context.make_tuple(builder, sig.return_type, values)

        return sig, codegen

    @_intrinsic
    def store4(typingctx, array, index, values):
        sig = _types.void(array, index, values)

        def codegen(context, builder, sig, args):
            array_type, index_type, values_type = sig.args
            vector_type = _ir.VectorType(context.get_value_type(array_type.dtype), 4)
            vector = _ir.Constant(vector_type, _ir.Undefined)
            for k in range(4):
                value = context.cast(builder, builder.extract_value(args[2], k),
                                     values_type[k], array_type.dtype)
                vector = builder.insert_element(vector, value, _ir.Constant(_ir.IntType(32), k))
            ptr = _element_pointer(context, builder, array_type, args[0], index_type, args[1])
            builder.store(vector, builder.bitcast(ptr, vector_type.as_pointer()), align=16)

        return sig, codegen

    @_intrinsic
    def load1(typingctx, array, index):
        sig = array.dtype(array, index)

        def codegen(context, builder, sig, args):
            ptr = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            return builder.load(ptr)

        return sig, codegen

    @_intrinsic
    def store1(typingctx, array, index, value):
        sig = _types.void(array, index, value)

        def codegen(context, builder, sig, args):
            array_type, index_type, value_type = sig.args
            ptr = _element_pointer(context, builder, array_type, args[0], index_type, args[1])
            builder.store(context.cast(builder, args[2], value_type, array_type.dtype), ptr)

        return sig, codegen

    @_intrinsic
    def address(typingctx, array):
        sig = _types.int64(array)

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            return builder.ptrtoint(ary.data, _ir.IntType(64))

        return sig, codegen

    def fmax(a, b):
        """max.f32 / max.f64 (stub: see the overload)."""

    def fmin(a, b):
        """min.f32 / min.f64 (stub: see the overload)."""

    def exp_fast(t):
        """e^t (stub: see the overload)."""

    def cast_like(value, like):
        """``value`` converted to the type of ``like`` (stub: see the overload)."""

    @_overload(cast_like, target="cuda")
    def _cast_like(value, like):
        if like == _types.float32:
            return lambda value, like: np.float32(value)
        return lambda value, like: np.float64(value)

    @_overload(fmax, target="cuda")
    def _fmax(a, b):
        if a == _types.float32 and b == _types.float32:
            return lambda a, b: _libdevice.fmaxf(a, b)
        return lambda a, b: _libdevice.fmax(a, b)

    @_overload(fmin, target="cuda")
    def _fmin(a, b):
        if a == _types.float32 and b == _types.float32:
            return lambda a, b: _libdevice.fminf(a, b)
        return lambda a, b: _libdevice.fmin(a, b)

    @_intrinsic
    def _ex2_ftz(typingctx, value):
        """2^value by one MUFU.EX2 (``ex2.approx.ftz.f32``; libdevice's
        fast_expf uses the non-ftz form, which costs four more instructions
        to keep subnormal results)."""
        sig = _types.float32(_types.float32)

        def codegen(context, builder, sig, args):
            fnty = _ir.FunctionType(_ir.FloatType(), [_ir.FloatType()])
            asm = _ir.InlineAsm(fnty, "ex2.approx.ftz.f32 $0, $1;", "=f,f")
            return builder.call(asm, [args[0]])

        return sig, codegen

    _LOG2E_F32 = np.float32(1.4426950408889634)

    @_overload(exp_fast, target="cuda")
    def _exp_fast(t):
        if t == _types.float32:
            return lambda t: _ex2_ftz(t * _LOG2E_F32)
        return lambda t: math.exp(t)

    @cuda.jit(device=True)
    def syncwarp():
        cuda.syncwarp(FULL_WARP)


def kernel(max_registers: int = 0):
    """``cuda.jit`` for a kernel, with a register limit on a GPU (ptxas
    ``-maxrregcount``: a block of 1024 threads needs <= 64 registers per
    thread).  The simulator takes no such option."""
    if SIMULATED or not max_registers:
        return cuda.jit
    return cuda.jit(max_registers=max_registers)


def legacy_default_stream() -> Any:
    """The legacy default stream (``__cuda_array_interface__`` stream 1)."""
    if SIMULATED or not hasattr(cuda, "legacy_default_stream"):
        return default_stream()
    return cuda.legacy_default_stream()


def per_thread_default_stream() -> Any:
    """The per-thread default stream (``__cuda_array_interface__`` stream 2)."""
    if SIMULATED or not hasattr(cuda, "per_thread_default_stream"):
        return default_stream()
    return cuda.per_thread_default_stream()


__all__ = ["cuda", "SIMULATED", "exp", "log", "log1p", "div", "load4", "store4", "load1", "store1",
           "address", "fmax", "fmin", "exp_fast", "cast_like", "syncwarp", "as_device_array", "external_stream",
           "default_stream", "kernel", "legacy_default_stream", "per_thread_default_stream",
           "is_device_array", "host_view"]
