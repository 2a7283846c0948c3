"""Chooses the CPU or the CUDA implementation from the input arrays.

NumPy arrays (and anything ``np.asarray`` accepts) run on the CPU kernels.
Objects exposing ``__cuda_array_interface__`` -- numba device arrays, CuPy
arrays, PyTorch CUDA tensors -- run on the numba.cuda kernels in
``fastxent.cuda``, imported only when first needed so that ``import fastxent``
works on machines without CUDA.
"""

from __future__ import annotations

import functools
import sys
from types import ModuleType
from typing import Any, Callable, TypeVar

import numpy as np

F = TypeVar("F", bound=Callable[..., Any])


def is_cuda_array(obj: Any) -> bool:
    """True for objects that live on an NVIDIA GPU (``__cuda_array_interface__``).

    Numba device arrays (simulated ones included) are recognised by their
    marker attribute and PyTorch CUDA tensors by ``is_cuda`` (their interface
    property raises RuntimeError when they require grad); anything else by the
    interface itself (PyTorch CPU tensors raise AttributeError there: False)."""
    if getattr(obj, "__cuda_ndarray__", False):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor) and obj.is_cuda:
        return True
    return hasattr(obj, "__cuda_array_interface__")


@functools.lru_cache(maxsize=None)
def cuda_api() -> ModuleType:
    """The CUDA implementations of the public functions (``fastxent.cuda.api``)."""
    try:
        from fastxent.cuda import api
    except ImportError as exc:  # numba-cuda missing, or no CUDA driver
        raise RuntimeError(
            "a CUDA array was passed, but fastxent's CUDA kernels cannot be loaded: "
            f"{exc}. Install the 'cuda' extra (pip install 'fastxent[cuda]') on a machine "
            "with an NVIDIA GPU and driver."
        ) from exc
    return api


def is_dask_array(obj: Any) -> bool:
    """True for Dask collections (``__dask_graph__``); the class is checked,
    not the instance, so a lazy object is never asked to build its graph."""
    return hasattr(type(obj), "__dask_graph__")


def dispatch(fn: F) -> F:
    """Route a public function to ``fastxent.dask.<same name>`` when any
    positional array argument is a Dask array, to ``fastxent.cuda.api.<same
    name>`` when one is a CUDA array; otherwise run the CPU body.

    (The Dask route is temporary: it moves into the registry of array kinds.)"""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for a in args:
            if type(a) is not np.ndarray and is_dask_array(a):
                from fastxent import dask as dask_backend

                return getattr(dask_backend, name)(*args, **kwargs)
        for a in args:
            if type(a) is not np.ndarray and is_cuda_array(a):  # the check costs ~0.5 us
                return getattr(cuda_api(), name)(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
