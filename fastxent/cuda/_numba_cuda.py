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


__all__ = ["cuda", "SIMULATED", "exp", "log", "log1p", "div", "as_device_array", "external_stream",
           "default_stream", "kernel", "legacy_default_stream", "per_thread_default_stream",
           "is_device_array"]
