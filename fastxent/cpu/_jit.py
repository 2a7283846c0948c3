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
from llvmlite import binding as llvm
from llvmlite import ir as llvm_ir
from numba import njit
from numba.core import caching, codegen

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
_PACKAGE_DIR = _CPU_DIR.parent  # kernels elsewhere in fastxent (tools/bench.py's floors) too
_SOURCES = sorted(_CPU_DIR.glob("*.py"))
_PACKAGE_STAMP = hashlib.sha256(b"".join(p.read_bytes() for p in _SOURCES)
                                + repr(_config.vector_width()).encode()).hexdigest()


def _package_locator(base: type) -> type:
    class PackageStampLocator(base):
        @classmethod
        def from_function(cls, py_func, py_file):
            if not str(pathlib.Path(py_file).resolve()).startswith(str(_PACKAGE_DIR)):
                return None
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            own = os.stat(self._py_file)  # a kernel outside cpu/: its own file too
            return _PACKAGE_STAMP, own.st_mtime, own.st_size

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


# ------------------------------------------------------------ code generation
# Two adjustments to how Numba builds the LLVM modules of fastxent's
# functions, both scoped to modules that define or call a fastxent function
# (names mangled as _ZN8fastxent...), so other Numba code in the process is
# untouched.
#
# 1. Same bits from a fresh compile and from the cache (issue 17, item 6).
#    Numba links a copy of every helper a kernel calls into the kernel's
#    module as ``linkonce_odr`` (a weak definition), and the helper's own
#    library defines the same symbol.  LLVM does not inline every helper
#    (exp_into, row_sum, ... are called), and MCJIT binds such a call to the
#    first definition of the symbol it has loaded: in the process that
#    compiled the kernel, the helper's stand-alone library (compiled before
#    the kernel), in a process that loads the kernel from the cache, the
#    kernel's own copy (the helpers are never compiled there).  The two
#    copies are optimised separately -- the kernel's copy a second time, in
#    the kernel's module -- and their vectorised sums associate differently:
#    softmax, log_softmax and the gradients differed in the last bits between
#    the two processes.  Giving the linked copies internal linkage before the
#    module is optimised makes every kernel call its own copy, compiled once,
#    in every process.
# 2. The vector width (see ``_config.vector_width``): every function defined
#    in such a module gets the ``"prefer-vector-width"`` attribute that
#    clang's -mprefer-vector-width sets (with ``"min-legal-vector-width"``),
#    which LLVM's x86 vectoriser and back end read per function.  LLVM's own choice (256 bits on Intel AVX-512 server targets,
#    512 on AMD Zen 4 / Zen 5) applies when it is None.
_OWN_SYMBOL_PREFIX = "_ZN8fastxent"


_LINKED_COPY_LINKAGES = ("linkonce_odr", "weak_odr")  # helpers; parfor gufunc wrappers


def _internalise_linked_copies(module, own_names) -> None:
    """In an LLVM module (llvmlite.binding) that defines fastxent functions,
    make every definition linked in from another library (not in
    ``own_names``) internal."""
    definitions = [fn for fn in module.functions if not fn.is_declaration]
    if not any(fn.name.startswith(_OWN_SYMBOL_PREFIX) for fn in definitions):
        return
    linked = {getattr(llvm.Linkage, name) for name in _LINKED_COPY_LINKAGES}
    for fn in definitions:
        if fn.name not in own_names and fn.linkage in linked:
            fn.linkage = llvm.Linkage.internal


def _prefer_vector_width(ir_module, width: int) -> None:
    """Add ``"prefer-vector-width"="<width>"`` to every function defined in
    an llvmlite.ir module that defines or calls a fastxent function."""
    functions = [g for g in ir_module.global_values if isinstance(g, llvm_ir.Function)]
    if not any(fn.name.startswith(_OWN_SYMBOL_PREFIX) for fn in functions):
        return
    # "min-legal-vector-width"="0" as clang writes it: without it the x86
    # back end must assume the function needs any width (an ABI of vector
    # arguments) and never splits 512-bit operations, whatever is preferred
    attributes = (f'"prefer-vector-width"="{width}"', '"min-legal-vector-width"="0"')
    for fn in functions:
        if fn.blocks:
            for attribute in attributes:
                # llvmlite.ir knows no string attributes; its set holds text
                set.add(fn.attributes, attribute)


def _install_codegen_hooks() -> None:
    library = getattr(codegen, "CPUCodeLibrary", None)
    if library is None or not all(hasattr(library, name) for name in
                                  ("_optimize_final_module", "add_ir_module", "add_llvm_module")):
        return  # an unknown Numba: its own code generation
    optimize_final_module = library._optimize_final_module
    add_ir_module = library.add_ir_module
    add_llvm_module = library.add_llvm_module
    width = _config.vector_width()

    def _add_llvm_module(self, ll_module):
        own = self.__dict__.setdefault("_fastxent_own_definitions", set())
        own.update(fn.name for fn in ll_module.functions if not fn.is_declaration)
        add_llvm_module(self, ll_module)

    def _optimize_final_module(self):
        _internalise_linked_copies(self._final_module,
                                   self.__dict__.get("_fastxent_own_definitions", ()))
        optimize_final_module(self)

    def _add_ir_module(self, ir_module):
        if width is not None:
            _prefer_vector_width(ir_module, width)
        add_ir_module(self, ir_module)

    library._optimize_final_module = _optimize_final_module
    library.add_ir_module = _add_ir_module
    library.add_llvm_module = _add_llvm_module


_install_codegen_hooks()


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
