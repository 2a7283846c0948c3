"""``python -m fastxent demo --dask``: SoftmaxRegression trained across a Dask
cluster on a data set larger than one worker's memory limit.

The data are generated lazily on the workers (each block of rows from its own
seed: Gaussian features of different scales, labels drawn from a planted
softmax model), persisted there once, and never pass through the client.
A LocalCluster of 2 worker processes is started unless ``--scheduler
ADDRESS`` names a running one.  Every L-BFGS iteration prints the objective,
the largest gradient component (the ∞-norm that ``tol`` bounds) and the time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import List, Optional

import numpy as np


def _block_data(block_id: int, rows: int, features: int, classes: int, seed: int, with_y: bool):
    """One block of (X, y): deterministic in (seed, block_id), so any worker
    can regenerate it (which is how a lost block is recomputed)."""
    rng = np.random.default_rng([seed, block_id])
    X = rng.standard_normal((rows, features)) * np.linspace(0.5, 2.0, features)
    W = np.random.default_rng(seed).standard_normal((classes, features)) / np.sqrt(features) * 2
    scores = X @ W.T + rng.gumbel(size=(rows, classes))
    return np.argmax(scores, axis=1) if with_y else X


def lazy_dataset(n_samples: int, n_features: int, n_classes: int, rows_per_block: int, seed: int,
                 first_block: int = 0):
    """(X, y) as Dask arrays whose blocks are generated on the workers.  The
    planted model depends on ``seed`` only; blocks are numbered from
    ``first_block``, so a held-out set from the same model takes block
    numbers past the training set's."""
    import dask
    import dask.array as da

    X_blocks, y_blocks = [], []
    for i, start in enumerate(range(0, n_samples, rows_per_block), start=first_block):
        rows = min(rows_per_block, n_samples - start)
        X_blocks.append(da.from_delayed(
            dask.delayed(_block_data, pure=True)(i, rows, n_features, n_classes, seed, False),
            shape=(rows, n_features), dtype=np.float64))
        y_blocks.append(da.from_delayed(
            dask.delayed(_block_data, pure=True)(i, rows, n_features, n_classes, seed, True),
            shape=(rows,), dtype=np.int64))
    return da.concatenate(X_blocks), da.concatenate(y_blocks)


def _parse_bytes(text: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(text))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastxent demo --dask",
        description="SoftmaxRegression across a Dask cluster, on lazily generated data larger "
                    "than one worker's memory limit.")
    parser.add_argument("--dask", action="store_true", help="(selects this demo)")
    parser.add_argument("--scheduler", default=None,
                        help="address of a running scheduler (default: start a LocalCluster)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers (2)")
    parser.add_argument("--memory-limit", default="1GiB",
                        help="LocalCluster memory limit per worker (1GiB)")
    parser.add_argument("--samples", type=int, default=None,
                        help="rows (default: 1.05x one worker's memory limit of float64 data)")
    parser.add_argument("--features", type=int, default=32, help="features (32)")
    parser.add_argument("--classes", type=int, default=10, help="classes (10)")
    parser.add_argument("--rows-per-block", type=int, default=250_000,
                        help="rows per block (250000)")
    parser.add_argument("--l2", type=float, default=1.0, help="penalty λ (1.0)")
    parser.add_argument("--max-iter", type=int, default=100, help="most L-BFGS iterations (100)")
    parser.add_argument("--tol", type=float, default=1e-6, help="gradient tolerance (1e-6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        print("the Dask demo needs the dask extra: pip install 'fastxent[dask]'", file=sys.stderr)
        return 1
    from fastxent.sklearn import SoftmaxRegression

    cluster = None
    if args.scheduler:
        client = Client(args.scheduler)
    else:
        # The data set is meant to stay in the workers' memory (it exceeds one
        # worker's limit, not the cluster's): no spilling to disk, and no pause
        # of a worker near its limit (the process's own ~250 MB count too).
        with dask.config.set({"distributed.worker.memory.target": False,
                              "distributed.worker.memory.spill": False,
                              "distributed.worker.memory.pause": False,
                              "distributed.worker.memory.terminate": 0.98}):
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                   memory_limit=args.memory_limit, dashboard_address=None,
                                   silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        workers = client.scheduler_info()["workers"]
        limits = [w.get("memory_limit") or 0 for w in workers.values()]
        worker_limit = min(limits) if limits and min(limits) else _parse_bytes(args.memory_limit)
        n = args.samples or int(1.05 * worker_limit / (8 * args.features))
        X, y = lazy_dataset(n, args.features, args.classes, args.rows_per_block, args.seed)
        X_test, y_test = lazy_dataset(50_000, args.features, args.classes, 50_000, args.seed,
                                      first_block=X.numblocks[0])  # same model, new rows
        print(f"cluster: {client.scheduler_info()['address']}, {len(workers)} workers, memory limit "
              f"{worker_limit / 2**30:.2f} GiB per worker")
        print(f"data: {n} x {args.features} float64 = {X.nbytes / 2**30:.2f} GiB "
              f"({X.nbytes / worker_limit:.2f}x one worker's memory limit), {args.classes} classes, "
              f"{X.numblocks[0]} blocks, generated lazily on the workers")
        model = SoftmaxRegression(l2=args.l2, max_iter=args.max_iter, tol=args.tol, verbose=1)
        start = time.perf_counter()
        model.fit(X, y)
        seconds = time.perf_counter() - start
        accuracy = float(model.score(X_test, y_test).compute())
        per_block = 8 * (1 + args.classes * (args.features + 1))
        print(f"fit: {model.n_iter_} iterations in {seconds:.1f} s; objective {model.objective_:.10g}; "
              f"held-out accuracy {accuracy:.4f}")
        parameters = 8 * args.classes * (args.features + 1)
        print(f"moved per evaluation: W and b out inside each block's task ({parameters} bytes "
              f"each), {per_block} bytes per block back ({(parameters + per_block) * X.numblocks[0]} "
              f"bytes in all), whatever N is")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
