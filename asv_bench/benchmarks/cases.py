"""The one table of benchmark cases for fastxent.

Both suites are driven from here, so that they cannot drift apart:

* the asv suites next to this file (``asv_bench/benchmarks/*.py``) import it as
  ``benchmarks.cases`` (asv imports the benchmark directory as a package);
* the pytest-benchmark suite (``benchmarks/conftest.py``) loads this file by
  path.

What is in the table:

* ``FUNCTIONS``: every public function, mapped to the family of inputs it takes
  (``INPUTS``) and, for the ``*_with_grad`` functions, the arguments the
  gradient is taken with respect to (``DIFF_ARGS``);
* ``IMPLS``: fastxent, the NumPy reference (``fastxent.reference``), SciPy
  (``scipy.special``, where it has the function), PyTorch and JAX (when
  importable; JAX runs under ``jax.jit``, PyTorch's ``*_with_grad`` under
  autograd, forward + backward);
* ``SHAPES``: (rows N, classes C) -- a small, a mid and an LLM-vocabulary class
  count, modest enough that a whole ``asv run --quick`` takes minutes on two
  cores; ``FULL_SHAPES`` are the shapes of issue 5 (``python -m fastxent
  bench``), for the pytest-benchmark suite's ``--fx-shapes=full``.

``prepare(impl, name, shape, dtype)`` returns a zero-argument callable that runs
one implementation on fixed random inputs, already called once (JIT compiled,
caches warm).  It raises ``NotImplementedError`` when that implementation does
not exist -- a peer that is not installed, a function SciPy does not have, or a
fastxent function missing at an older commit (asv runs these suites against
every commit of main) -- which asv reports as "n/a" and pytest as a skip.

This module must not launch a parallel Numba kernel at import time: asv imports
it once in its fork server and forks a process per benchmark, and an OpenMP
thread pool does not survive a fork.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

# ---------------------------------------------------------------- the table
IMPLS = ["fastxent", "numpy", "scipy", "torch", "jax"]
DTYPES = ["float32", "float64"]

# label -> (N rows, C classes).  Labels are the asv parameter values.
SHAPES: Dict[str, Tuple[int, int]] = {
    "16384x10": (16384, 10),  # small C: many short rows (row blocking matters)
    "2048x1000": (2048, 1000),  # mid C: ImageNet-sized heads
    "64x32000": (64, 32000),  # LLM-vocabulary C (Llama-2's 32000)
}
# The shapes of issue 5 / `python -m fastxent bench` (memory-bound sizes).
FULL_SHAPES: Dict[str, Tuple[int, int]] = {
    "65536x10": (65536, 10),
    "4096x1000": (4096, 1000),
    "1024x32000": (1024, 32000),
    "256x128000": (256, 128000),
}
# Feature dimension D of the linear (classifier-head) functions: x is N x D, W is C x D.
LINEAR_D = 256

# public function -> input family (see make_inputs)
FUNCTIONS: Dict[str, str] = {
    "logsumexp": "logits",
    "softmax": "logits",
    "log_softmax": "logits",
    "cross_entropy": "labels",
    "cross_entropy_with_grad": "labels",
    "binary_cross_entropy": "binary_probs",
    "binary_cross_entropy_with_grad": "binary_probs",
    "binary_cross_entropy_with_logits": "binary_logits",
    "binary_cross_entropy_with_logits_with_grad": "binary_logits",
    "entropy": "one_dist",
    "entropy_with_grad": "one_dist",
    "kl_divergence": "two_dists",
    "kl_divergence_with_grad": "two_dists",
    "cross_entropy_probs": "two_dists",
    "cross_entropy_probs_with_grad": "two_dists",
    "linear_cross_entropy": "linear",
    "linear_cross_entropy_with_grad": "linear",
}
FUNCTION_NAMES = list(FUNCTIONS)

# For the peers' autograd: which positional arguments the gradient is taken
# with respect to (DESIGN.md: "grad w.r.t. the predicted side").
DIFF_ARGS: Dict[str, Tuple[int, ...]] = {
    "kl_divergence": (1,),
    "cross_entropy_probs": (1,),
    "linear_cross_entropy": (0, 1),
}


# The functions scipy.special has (no gradients there).
SCIPY_FUNCTIONS = {"logsumexp", "softmax", "log_softmax", "entropy", "kl_divergence",
                   "cross_entropy_probs"}


def impls_for(name: str) -> list:
    """The implementations that can exist for ``name`` (whether PyTorch and
    JAX are installed is only found out in ``prepare``)."""
    return [impl for impl in IMPLS if impl != "scipy" or name in SCIPY_FUNCTIONS]


def base_name(name: str) -> str:
    return name[: -len("_with_grad")] if name.endswith("_with_grad") else name


# ------------------------------------------------------------------- inputs
# Inputs are made in their own dtype, in place: no temporary larger than the
# array itself, so that peakmem_ benchmarks see the kernels, not the set-up.
def _logits(rng: np.random.Generator, n: int, c: int, dtype) -> np.ndarray:
    x = rng.standard_normal((n, c), dtype=dtype)
    x *= 3
    return x


def _probs(rng: np.random.Generator, n: int, c: int, dtype) -> np.ndarray:
    p = rng.random((n, c), dtype=dtype)
    p += 1e-3
    p /= p.sum(-1, keepdims=True)
    return p


def _coin(rng: np.random.Generator, n: int, c: int, dtype) -> np.ndarray:
    t = rng.random((n, c), dtype=dtype)
    np.less(t, 0.5, out=t, casting="unsafe")  # {0, 1} targets
    return t


@functools.lru_cache(maxsize=2)
def make_inputs(family: str, shape: Tuple[int, int], dtype: str) -> tuple:
    """Positional arguments for one input family; fixed seed, cached (the
    pytest suite runs every implementation of a cell on the same arrays)."""
    n, c = shape
    dtype = np.dtype(dtype).type
    rng = np.random.default_rng(20240601)
    if family == "logits":
        return (_logits(rng, n, c, dtype),)
    if family == "labels":
        return _logits(rng, n, c, dtype), rng.integers(0, c, n)
    if family == "binary_probs":
        p = rng.random((n, c), dtype=dtype)
        p *= 0.98
        p += 0.01
        return p, _coin(rng, n, c, dtype)
    if family == "binary_logits":
        return _logits(rng, n, c, dtype), _coin(rng, n, c, dtype)
    if family == "one_dist":
        return (_probs(rng, n, c, dtype),)
    if family == "two_dists":
        return _probs(rng, n, c, dtype), _probs(rng, n, c, dtype)
    if family == "linear":
        x = rng.standard_normal((n, LINEAR_D), dtype=dtype)
        w = rng.standard_normal((c, LINEAR_D), dtype=dtype)
        w *= 1 / np.sqrt(LINEAR_D)
        return x, w, rng.integers(0, c, n)
    raise ValueError(f"unknown input family {family!r}")


def shape_of(label: str) -> Tuple[int, int]:
    if label in SHAPES:
        return SHAPES[label]
    if label in FULL_SHAPES:
        return FULL_SHAPES[label]
    n, c = label.split("x")
    return int(n), int(c)


# -------------------------------------------------------------- the peers
def _optional(module: str):
    try:
        return importlib.import_module(module)
    except Exception:  # not installed, or broken: that peer is skipped
        return None


torch = _optional("torch")
jax = _optional("jax")
if jax is not None:
    try:
        jax.config.update("jax_enable_x64", True)  # float64 runs in float64; float32 stays float32
        import jax.numpy as jnp
        import jax.scipy.special as jsp
    except Exception:
        jax = None
scipy_special = _optional("scipy.special")

# fastxent itself, imported now so that asv's fork server pays for it once
# (Numba kernels are compiled or loaded from the on-disk cache per process, in
# prepare(); importing launches no thread).  Looked up again in _fastxent_fn:
# a commit without some function skips only that function.
fastxent = _optional("fastxent")
if fastxent is not None:
    _optional("fastxent.reference")
    for _lazy in ("linear_cross_entropy",):  # names the package imports on first use
        try:
            getattr(fastxent, _lazy)
        except Exception:
            pass


def _fastxent_fn(name: str) -> Callable:
    try:
        import fastxent
        return getattr(fastxent, name)
    except Exception as exc:  # e.g. the linear family at a commit before it existed
        raise NotImplementedError(f"fastxent.{name}: {type(exc).__name__}: {exc}") from None


def _numpy_fn(name: str) -> Callable:
    try:
        from fastxent import reference
        return getattr(reference, name)
    except Exception as exc:
        raise NotImplementedError(f"fastxent.reference.{name}: {type(exc).__name__}: {exc}") from None


def _scipy_fn(name: str) -> Callable:
    if scipy_special is None:
        raise NotImplementedError("scipy is not installed")
    sp = scipy_special
    table = {  # keys: SCIPY_FUNCTIONS
        "logsumexp": lambda x: sp.logsumexp(x, axis=-1),
        "softmax": lambda x: sp.softmax(x, axis=-1),
        "log_softmax": lambda x: sp.log_softmax(x, axis=-1),
        "entropy": lambda p: sp.entr(p).sum(-1),
        "kl_divergence": lambda p, q: sp.rel_entr(p, q).sum(-1),
        "cross_entropy_probs": lambda p, q: -sp.xlogy(p, q).sum(-1),
    }
    if name not in table:
        raise NotImplementedError(f"scipy.special has no {name}")
    return table[name]


def _torch_forward(name: str) -> Callable:
    F = torch.nn.functional
    return {
        "logsumexp": lambda x: torch.logsumexp(x, -1),
        "softmax": lambda x: torch.softmax(x, -1),
        "log_softmax": lambda x: torch.log_softmax(x, -1),
        "cross_entropy": lambda x, y: F.cross_entropy(x, y),
        "binary_cross_entropy": lambda p, t: F.binary_cross_entropy(p, t),
        "binary_cross_entropy_with_logits": lambda x, t: F.binary_cross_entropy_with_logits(x, t),
        "entropy": lambda p: torch.special.entr(p).sum(-1),
        "kl_divergence": lambda p, q: F.kl_div(q.log(), p, reduction="none").sum(-1),
        "cross_entropy_probs": lambda p, q: -torch.special.xlogy(p, q).sum(-1),
        "linear_cross_entropy": lambda x, w, y: F.cross_entropy(x @ w.T, y),
    }[name]


def _torch_call(name: str, args: tuple) -> Callable[[], Any]:
    if torch is None:
        raise NotImplementedError("torch is not installed")
    forward = _torch_forward(base_name(name))
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in args]
    if not name.endswith("_with_grad"):
        def run():
            with torch.no_grad():
                return forward(*tensors)
        return run
    diff = DIFF_ARGS.get(base_name(name), (0,))

    def run_with_grad():  # forward + backward, as a PyTorch user would train
        ts = [t.detach().requires_grad_(True) if i in diff else t for i, t in enumerate(tensors)]
        value = forward(*ts)
        value.backward(torch.ones_like(value))
        return value.detach(), [ts[i].grad for i in diff]
    return run_with_grad


def _jax_forward(name: str) -> Callable:
    def ce(x, y):
        return jnp.mean(jax.nn.logsumexp(x, axis=-1) - jnp.take_along_axis(x, y[:, None], axis=-1)[:, 0])

    return {
        "logsumexp": lambda x: jax.nn.logsumexp(x, axis=-1),
        "softmax": lambda x: jax.nn.softmax(x, axis=-1),
        "log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
        "cross_entropy": ce,
        "binary_cross_entropy": lambda p, t: jnp.mean(
            -(t * jnp.maximum(jnp.log(p), -100) + (1 - t) * jnp.maximum(jnp.log1p(-p), -100))),
        "binary_cross_entropy_with_logits": lambda x, t: jnp.mean(
            jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))),
        "entropy": lambda p: jsp.entr(p).sum(-1),
        "kl_divergence": lambda p, q: jsp.rel_entr(p, q).sum(-1),
        "cross_entropy_probs": lambda p, q: -jsp.xlogy(p, q).sum(-1),
        "linear_cross_entropy": lambda x, w, y: ce(x @ w.T, y),
    }[name]


def _jax_call(name: str, args: tuple) -> Callable[[], Any]:
    if jax is None:
        raise NotImplementedError("jax is not installed")
    forward = _jax_forward(base_name(name))
    if name.endswith("_with_grad"):
        def summed(*a):
            value = forward(*a)
            return jnp.sum(value), value
        value_and_grad = jax.value_and_grad(summed, argnums=DIFF_ARGS.get(base_name(name), (0,)),
                                            has_aux=True)

        def with_grad(*a):
            (_, value), grads = value_and_grad(*a)
            return value, grads
        fn = jax.jit(with_grad)
    else:
        fn = jax.jit(forward)
    arrays = [jax.device_put(a) for a in args]
    return lambda: jax.block_until_ready(fn(*arrays))


# ----------------------------------------------------------------- prepare
def call_for(impl: str, name: str, args: tuple) -> Callable[[], Any]:
    """An un-warmed zero-argument callable running ``impl``'s ``name`` on ``args``."""
    if name not in FUNCTIONS:
        raise ValueError(f"unknown function {name!r}")
    if impl == "fastxent":
        fn = _fastxent_fn(name)
        return lambda: fn(*args)
    if impl == "numpy":
        fn = _numpy_fn(name)
        return lambda: fn(*args)
    if impl == "scipy":
        fn = _scipy_fn(name)
        return lambda: fn(*args)
    if impl == "torch":
        return _torch_call(name, args)
    if impl == "jax":
        return _jax_call(name, args)
    raise ValueError(f"unknown implementation {impl!r}")


def prepare(impl: str, name: str, shape, dtype: str) -> Callable[[], Any]:
    """A warmed zero-argument callable (see the module docstring)."""
    if isinstance(shape, str):
        shape = shape_of(shape)
    args = make_inputs(FUNCTIONS[name], tuple(shape), dtype)
    call = call_for(impl, name, args)
    call()  # JIT compile (Numba, XLA), first-touch allocations
    return call


def logits_nbytes(name: str, shape, dtype: str) -> int:
    """Bytes of the N x C logits (or probabilities) a function works on."""
    n, c = shape_of(shape) if isinstance(shape, str) else shape
    return n * c * np.dtype(dtype).itemsize


# ------------------------------------------------------------ measurements
def interleaved_seconds(calls: Dict[str, Callable[[], Any]], rounds: int = 5,
                        min_seconds: float = 0.01) -> Dict[str, float]:
    """Median seconds per call of each callable, timed in interleaved rounds
    (a noisy neighbour slows all of them alike); each round repeats a callable
    until it has run for at least ``min_seconds``."""
    import time

    reps = {}
    for key, call in calls.items():
        start = time.perf_counter()
        call()
        once = max(time.perf_counter() - start, 1e-7)
        reps[key] = max(1, int(min_seconds / once))
    samples: Dict[str, list] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            start = time.perf_counter()
            for _ in range(reps[key]):
                call()
            samples[key].append((time.perf_counter() - start) / reps[key])
    return {key: float(np.median(v)) for key, v in samples.items()}


class PeakRSS:
    """Peak resident memory of this process above a starting point, on Linux.

    ``reset()`` records the current RSS and resets the kernel's high-water mark
    (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0); ``above_start()`` is
    then the peak RSS since ``reset()`` minus the RSS at ``reset()``: every
    temporary and output the code in between touched, whoever allocated it
    (NumPy, Numba's runtime, BLAS, PyTorch)."""

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise NotImplementedError(f"/proc/self/status has no {field}")

    @classmethod
    def available(cls) -> bool:
        try:
            cls().reset()
            return True
        except (OSError, NotImplementedError):
            return False

    def reset(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.start = self._status("VmRSS")

    def above_start(self) -> int:
        return self._status("VmHWM") - self.start



def result_nbytes(result: Any) -> int:
    """Bytes held by the arrays in a (nested) result: NumPy, PyTorch or JAX."""
    if result is None:
        return 0
    if isinstance(result, (tuple, list)):
        return sum(result_nbytes(r) for r in result)
    if hasattr(result, "element_size") and hasattr(result, "nelement"):  # torch.Tensor
        return int(result.element_size() * result.nelement())
    return int(getattr(result, "nbytes", 0))
