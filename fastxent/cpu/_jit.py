"""How the CPU kernels are compiled and launched.

Every kernel is written once, as a plain Python function over ``prange``, and
compiled twice: single-threaded for small inputs (no thread-pool wake-up) and
``parallel=True`` for large ones.  ``Kernel.__call__`` picks one from the
amount of work.

Thread safety: Numba's default ``workqueue`` threading layer aborts the process
when two Python threads launch parallel kernels at once.  At import we ask for
a thread-safe layer (OpenMP or TBB: ``threadsafe``) unless the user chose one;
if neither can be loaded, parallel launches are serialised with a lock.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import threading
import types
from contextlib import nullcontext
from typing import Any, Callable

import numba
from numba import njit
from numba.core import caching

from fastxent.cpu import _config
from fastxent.cpu._fastmath import FASTMATH


def _threadsafe_layer_available() -> bool:
    for module in ("numba.np.ufunc.omppool", "numba.np.ufunc.tbbpool"):
        try:
            __import__(module)
            return True
        except ImportError:
            continue
    return False


_LAYER_IS_THREADSAFE = _threadsafe_layer_available()
if "NUMBA_THREADING_LAYER" not in os.environ and _LAYER_IS_THREADSAFE:
    # Takes effect at the first parallel launch in this process, unless some
    # other code already launched one (checked again in _parallel_guard).
    numba.config.THREADING_LAYER = "threadsafe"

_WORKQUEUE_LOCK = threading.Lock()


def _parallel_guard():
    """A lock around parallel launches when the active layer is not thread-safe."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel launch yet: the configured layer will load
        layer = numba.config.THREADING_LAYER
        if layer in ("threadsafe", "safe", "omp", "tbb") and _LAYER_IS_THREADSAFE:
            return nullcontext()
        return _WORKQUEUE_LOCK
    return _WORKQUEUE_LOCK if layer == "workqueue" else nullcontext()


# ------------------------------------------------------------ on-disk cache
# Numba marks a cached kernel stale only when the file defining *that kernel*
# changes, but our kernels inline helpers from other files (_rows.py,
# _fastmath.py): an edit there would leave stale machine code in the cache.
# These locators stamp every fastxent kernel with a hash of all the CPU kernel
# sources instead.  Cache files are written atomically by Numba (temp file +
# rename), so several processes starting at once are safe.
_CPU_DIR = pathlib.Path(__file__).resolve().parent  # fastxent/cpu, this file included
_SOURCES = sorted(_CPU_DIR.glob("*.py"))
_PACKAGE_STAMP = hashlib.sha256(b"".join(p.read_bytes() for p in _SOURCES)).hexdigest()


def _package_locator(base: type) -> type:
    class PackageStampLocator(base):
        @classmethod
        def from_function(cls, py_func, py_file):
            if not str(pathlib.Path(py_file).resolve()).startswith(str(_CPU_DIR)):
                return None
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return _PACKAGE_STAMP

    PackageStampLocator.__name__ = "Fastxent" + base.__name__.lstrip("_")
    return PackageStampLocator


def _install_cache_locators() -> None:
    names = ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")
    bases = [getattr(caching, n, None) or getattr(caching, "_" + n, None) for n in names]
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    if impl is None or None in bases:  # an unknown Numba: keep its own locators
        return
    impl._locator_classes[:0] = [_package_locator(b) for b in bases]


_install_cache_locators()


def _renamed(fn: Callable, suffix: str) -> Callable:
    """A copy of ``fn`` under another name, so that the serial and parallel
    compilations get separate entries in Numba's on-disk cache."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                              fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return copy


class Kernel:
    """A row kernel compiled serial and parallel; called as ``kernel(n_elements, *args)``."""

    def __init__(self, fn: Callable):
        options = dict(fastmath=FASTMATH, cache=True, nogil=True, error_model="numpy")
        self.py_func = fn
        self.serial = njit(**options)(_renamed(fn, "_serial"))
        self.parallel = njit(parallel=True, **options)(_renamed(fn, "_parallel"))
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __call__(self, n_elements: int, *args: Any) -> Any:
        if n_elements < _config.PARALLEL_MIN_ELEMENTS or numba.get_num_threads() == 1:
            return self.serial(*args)
        with _parallel_guard():
            return self.parallel(*args)


def kernel(fn: Callable) -> Kernel:
    """Decorator: compile ``fn`` as a serial/parallel :class:`Kernel`."""
    return Kernel(fn)


def specialise(template: Callable, name: str, **functions: Callable) -> Kernel:
    """A :class:`Kernel` from ``template``, a factory whose closure binds
    element-wise helpers: one loop written once, compiled per helper, so that
    each variant's loop has no runtime branch and vectorises."""
    fn = template(**functions)
    fn.__name__ = name
    fn.__qualname__ = name
    return Kernel(fn)


def helper(fn: Callable) -> Callable:
    """Decorator for inner-loop helpers shared by several kernels."""
    return njit(fastmath=FASTMATH, cache=True, nogil=True, error_model="numpy")(fn)
