"""Tuning thresholds, in one place (measured on a 2-core AVX2 machine; see
docs/performance.md).  Plain module attributes: tests and benchmarks may
monkeypatch them."""

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
