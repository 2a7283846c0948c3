"""Command line: ``python -m fastxent bench|bench-linear|bench-torch|demo ...``."""

from __future__ import annotations

import sys
from typing import List, Optional

USAGE = """usage: python -m fastxent {bench,bench-linear,bench-torch,bench-dask,demo} [options]

  bench         time every kernel against NumPy, PyTorch and JAX (--quick, --json, --plot,
                --device cuda); see `python -m fastxent bench --help`
  bench-linear  the fused linear cross-entropy's memory and speed against PyTorch, and
                SoftmaxRegression against LogisticRegression
  bench-torch   fastxent.torch's CrossEntropyLoss and LinearCrossEntropyLoss against PyTorch
                eager, torch.compile and F.linear_cross_entropy (time and peak memory)
  bench-dask    the Dask backend: distributed fit against N, against scikit-learn and
                dask-ml, cross-entropy over lazily generated logits larger than memory
  demo          train SoftmaxRegression on the digits data and a synthetic set, beside
                scikit-learn's LogisticRegression; --dask: across a Dask cluster (a LocalCluster,
                or --scheduler ADDRESS) on data larger than one worker's memory
"""


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        from fastxent.tools import bench

        return bench.main(rest)
    if command == "bench-linear":
        from fastxent.tools import bench_linear

        return bench_linear.main(rest)
    if command == "bench-torch":
        from fastxent.tools import bench_torch

        return bench_torch.main(rest)
    if command == "bench-dask":
        from fastxent.tools import bench_dask

        return bench_dask.main(rest)
    if command == "demo":
        from fastxent.tools import demo

        return demo.main(rest)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
