"""Tuning thresholds and the target machine, in one place (see
docs/performance.md).  Plain module attributes: tests and benchmarks may
monkeypatch the thresholds."""

from __future__ import annotations

import os
from typing import FrozenSet, Optional, Tuple

# Below this many elements (rows x classes) a kernel runs single-threaded:
# waking the thread pool costs more than the work (a (64, 10) call must stay
# in the microseconds).
PARALLEL_MIN_ELEMENTS = 1 << 16

# Each parallel task handles whole rows, about this many elements in all:
# one row per task for large class counts, blocks of rows for small ones, so
# that C = 10 is not dominated by scheduling.
TASK_ELEMENTS = 1 << 14


def rows_per_task(n_classes: int) -> int:
    """Rows handled by one parallel task for rows of ``n_classes`` elements."""
    return max(1, TASK_ELEMENTS // max(n_classes, 1))


# AVX-512 subsets the kernels' 512-bit code uses (float32/float64 arithmetic,
# masks, 32/64-bit integer lanes for the exponent bits).
AVX512_FEATURES = frozenset({"avx512f", "avx512dq", "avx512bw", "avx512vl"})

# FASTXENT_VECTOR_WIDTH: "auto" (default), "llvm" (LLVM's per-CPU default),
# or a width in bits (128, 256, 512).
VECTOR_WIDTH_VARIABLE = "FASTXENT_VECTOR_WIDTH"


def target_cpu() -> Tuple[str, FrozenSet[str]]:
    """(CPU name, enabled feature flags) that Numba compiles for, in LLVM's
    names (e.g. ``"znver5"``, ``{"avx2", "avx512f", ...}``): the host's,
    unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES say otherwise."""
    import numba
    from llvmlite import binding as llvm
    from numba.core.codegen import get_host_cpu_features

    name = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    features = numba.config.CPU_FEATURES
    if features is None:
        features = get_host_cpu_features()
    enabled = frozenset(f[1:] for f in features.split(",") if f.startswith("+"))
    return name, enabled


# Widths measured per CPU (LLVM's names), kernel time side by side with the
# other width (docs/performance.md).  znver5 (AMD EPYC, Zen 5): 256 bits ran
# the cross-entropy kernels 14-27% faster at 4096 x 1000 and 65536 x 10,
# 512 bits logsumexp 20% faster; the cross-entropy decides.  znver4 (AMD
# EPYC, Zen 4: 512-bit operations double-pumped on 256-bit units): 512 bits
# 5-21% faster on every kernel but log_softmax (4% slower: a memory-bound
# pass) and logsumexp (even); the exp loop 0.27 against 0.42 ns/element.
# rocketlake: what LLVM calls the 2-core Intel Xeon slice under KVM (family
# 6, model 167, AVX-512 with FP16/BF16/AMX: a Sapphire/Emerald Rapids class
# server whose model number the hypervisor shows as Rocket Lake's): 512 bits
# ran cross_entropy 3-41% and its gradient 21-39% faster, 256 bits
# logsumexp and log_softmax 5-17% faster; the exp loop 0.16 against 0.22
# ns/element.  The cross-entropy decides.
MEASURED_VECTOR_WIDTH = {"znver5": 256, "znver4": 512, "rocketlake": 512}


def vector_width() -> Optional[int]:
    """Preferred vector width in bits for the kernels, or None for LLVM's
    own per-CPU choice.  ``auto``: the measured width for CPUs in
    ``MEASURED_VECTOR_WIDTH``; 512 on other CPUs with AVX-512 (unmeasured:
    LLVM prefers 256 bits on Intel server targets, where the exp, the
    kernels' bound, takes twice the instructions in 256-bit code); else
    LLVM's choice (256 with AVX2)."""
    setting = os.environ.get(VECTOR_WIDTH_VARIABLE, "auto").strip().lower()
    if setting == "llvm":
        return None
    if setting in ("128", "256", "512"):
        return int(setting)
    if setting not in ("", "auto"):
        raise ValueError(f"{VECTOR_WIDTH_VARIABLE}={setting!r}: expected auto, llvm, 128, 256 or 512")
    name, features = target_cpu()
    if not AVX512_FEATURES <= features:
        return None
    return MEASURED_VECTOR_WIDTH.get(name, 512)
