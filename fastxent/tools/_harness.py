"""The measuring pieces that every tool shares: shape arguments, interleaved
timing rounds, peak memory, wall-clock fits, and the objective of a linear
softmax model.  Tools only; the library never imports this."""

from __future__ import annotations

import argparse
import gc
import os
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np


# ------------------------------------------------------------------ shapes
def parse_shapes(parser: argparse.ArgumentParser, values: Sequence[str], dims: int = 2,
                 example: str = "4096x1000") -> List[Tuple[int, ...]]:
    """``["4096x1000", ...]`` as tuples of ``dims`` ints (``parser.error`` otherwise)."""
    shapes = []
    for text in values:
        try:
            shape = tuple(int(v) for v in text.lower().split("x"))
        except ValueError:
            shape = ()
        if len(shape) != dims or min(shape) < 0:
            letters = "NxDxC" if dims == 3 else "NxC"
            parser.error(f"shapes are {letters} values such as {example}, got {text!r}")
        shapes.append(shape)
    return shapes


# ------------------------------------------------------------------ timing
def timed(fn: Callable[[], object]) -> Tuple[object, float]:
    """(fn(), wall-clock seconds)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def interleaved(impls: Dict[str, Callable[[], object]], rounds: int, *,
                round_seconds: float = 0.0) -> Dict[str, float]:
    """Median seconds per call of each implementation, measured in
    interleaved rounds (every implementation once per round, so that a noisy
    neighbour slows all of them alike), after one warm-up call each (JIT
    compilation, caches, allocator).  With ``round_seconds``, a round runs
    each implementation enough times for about that long (timed by the first
    implementation), so that short calls are not dominated by the clock."""
    for fn in impls.values():
        fn()
    reps = 1
    if round_seconds:
        first = next(iter(impls.values()))
        reps = max(1, int(round_seconds / max(timed(first)[1], 1e-6)))
    samples: Dict[str, List[float]] = {k: [] for k in impls}
    for _ in range(rounds):
        for key, fn in impls.items():
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[key].append((time.perf_counter() - start) / reps)
    return {k: float(np.median(v)) for k, v in samples.items()}


# ------------------------------------------------------------ peak memory
class PeakRSS:
    """The process's resident-set high-water mark above a starting point
    (Linux: ``/proc/self/clear_refs`` resets it)."""

    @staticmethod
    def available() -> bool:
        return os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field} not in /proc/self/status")

    def reset(self) -> None:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
        self.start = self._status("VmRSS")

    def above_start(self) -> int:
        return self._status("VmHWM") - self.start


def result_bytes(result: object) -> int:
    """Bytes held by a result (arrays, tensors, nested tuples)."""
    if isinstance(result, (tuple, list)):
        return sum(result_bytes(r) for r in result)
    if hasattr(result, "nbytes"):
        return int(result.nbytes)
    if hasattr(result, "element_size"):  # a torch tensor
        return int(result.numel() * result.element_size())
    return 0


def extra_bytes(call: Callable[[], object]) -> int:
    """Peak bytes a call adds above what was resident before it, minus what it returns."""
    meter = PeakRSS()
    meter.reset()
    result = call()
    extra = meter.above_start() - result_bytes(result)
    del result
    return max(extra, 0)


# --------------------------------------------------------------- objective
def softmax_objective(model, X: np.ndarray, y: np.ndarray, l2: float) -> float:
    """Σ Lₙ + (l2/2)‖W‖² of any fitted linear softmax model (coef_, intercept_)."""
    from fastxent import log_softmax

    W = model.coef_
    b = model.intercept_
    if W.shape[0] == 1:  # a binary LogisticRegression: scores (0, f)
        W = np.vstack([np.zeros_like(W), W])
        b = np.concatenate([[0.0], b])
    y_index = np.searchsorted(model.classes_, y)
    losses = -log_softmax(X @ W.T + b)[np.arange(len(y)), y_index]
    return float(losses.sum()) + 0.5 * l2 * float((model.coef_ ** 2).sum())
