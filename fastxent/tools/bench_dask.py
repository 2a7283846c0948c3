"""``python -m fastxent bench-dask``: the Dask backend's measurements (issue 15).

* ``fit``: per-evaluation time of the distributed SoftmaxRegression objective
  against N on a 2-worker LocalCluster (1 thread each) -- by tasks on the
  persisted blocks' futures (what ``fit`` does), and by a Dask-array graph per
  evaluation (the earlier design) -- beside the in-process fused objective on
  the same data (same 2 cores; the best of three thread settings),
  interleaved; bytes moved per evaluation; then full fits against
  scikit-learn's LogisticRegression in one process.
* ``dask-ml``: time to the same binary objective against dask-ml's
  ``LogisticRegression(solver="lbfgs")`` on the same cluster (dask-ml fits
  two classes only).
* ``logits``: cross-entropy over a lazily generated float32 logits array
  larger than the machine's memory (classes chunked and rows chunked) against
  ``da.map_blocks`` of the NumPy reference, with the peak resident memory.

``--json FILE`` writes the figures; ``--plot FILE`` draws the fit scaling.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import time
from typing import List, Optional

import numpy as np


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cluster(memory_limit="4GiB"):
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.memory.target": False,
                          "distributed.worker.memory.spill": False}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               memory_limit=memory_limit, dashboard_address=None,
                               silence_logs=logging.ERROR)
    return cluster, Client(cluster)


def _data(n, d, c, seed=0):
    from fastxent.tools.demo_dask import lazy_dataset

    return lazy_dataset(n, d, c, max(n // 8, 1), seed)  # 8 blocks: 4 per worker


# ------------------------------------------------------------------- fit
def bench_fit(sizes, d, c, repeats, out, fit_rows, json_path=None):
    import dask
    import numba
    from threadpoolctl import threadpool_limits

    from fastxent import dask as fxd
    from fastxent import sklearn as fsk

    cluster, client = _cluster()
    rows = []
    try:
        for n in sizes:
            X, y = _data(n, d, c)
            X, y = dask.persist(X, y)
            Xm, ym = dask.compute(X, y)
            dist = fxd.DistributedObjective(X, y, c, 1.0, True)
            # the previous design, for the before/after: a Dask-array graph per evaluation
            graph = fxd.DistributedObjective(X, y, c, 1.0, True)
            graph._client = None
            local = fsk._Objective(Xm, ym.astype(np.int64), None, c, 1.0, True)
            rng = np.random.default_rng(0)
            thetas = [rng.standard_normal(dist.size) * 0.01 for _ in range(repeats + 1)]
            dist(thetas[0]), graph(thetas[0]), local(thetas[0])  # warm up (compiles, BLAS threads)
            times = {"distributed": [], "graph": [], "local": [], "local1": [], "serial": []}
            for theta in thetas[1:]:  # interleaved
                for name, fun in (("distributed", dist), ("graph", graph), ("local", local)):
                    start = time.perf_counter()
                    value, _ = fun(theta)
                    times[name].append(time.perf_counter() - start)
                    if name == "distributed":
                        v1 = value
                # the workers run BLAS on one thread (distributed's default): so does this one
                with threadpool_limits(1, user_api="blas"):
                    start = time.perf_counter()
                    v0, _ = local(theta)
                    times["local1"].append(time.perf_counter() - start)
                    # and Numba on one thread too: on a loaded machine this can win
                    threads = numba.get_num_threads()
                    numba.set_num_threads(1)
                    start = time.perf_counter()
                    local(theta)
                    times["serial"].append(time.perf_counter() - start)
                    numba.set_num_threads(threads)
                assert abs(v1 - v0) <= 1e-9 * abs(v0), (v1, v0)
            t = {name: float(np.median(v)) for name, v in times.items()}
            best_local = min(t["local"], t["local1"], t["serial"])
            row = dict(n=n, d=d, c=c, blocks=X.numblocks[0],
                       distributed_s=t["distributed"], graph_per_evaluation_s=t["graph"],
                       in_process_s=best_local, in_process_blas_threads_s=t["local"],
                       in_process_blas_1_thread_s=t["local1"],
                       in_process_1_thread_s=t["serial"],
                       bytes_per_evaluation=dist.bytes_per_evaluation)
            row["overhead"] = row["distributed_s"] / row["in_process_s"]
            row["graph_overhead"] = row["graph_per_evaluation_s"] / row["in_process_s"]
            rows.append(row)
            print(f"  N={n:>9}  distributed {t['distributed'] * 1e3:8.1f} ms (graph per evaluation "
                  f"{t['graph'] * 1e3:.1f})  in-process {best_local * 1e3:8.1f} ms (BLAS threads "
                  f"{t['local'] * 1e3:.1f}, BLAS 1 thread {t['local1'] * 1e3:.1f}, all 1 thread "
                  f"{t['serial'] * 1e3:.1f})  ratio "
                  f"{row['overhead']:.2f} (graph {row['graph_overhead']:.2f})  moved "
                  f"{row['bytes_per_evaluation']} B/evaluation", file=out, flush=True)
            client.cancel([X, y])
            if json_path:  # the figures so far, in case a long run is cut short
                with open(json_path, "w") as f:
                    json.dump({"scaling": rows}, f, indent=1)
        fits = bench_full_fit(client, fit_rows, d, c, out) if fit_rows else None
    finally:
        client.close()
        cluster.close()
    return {"scaling": rows, "fits": fits}


def bench_full_fit(client, n, d, c, out):
    import warnings

    import dask
    from sklearn.linear_model import LogisticRegression

    from fastxent.sklearn import SoftmaxRegression

    X, y = _data(n, d, c)
    X, y = dask.persist(X, y)
    Xm, ym = dask.compute(X, y)
    results = []
    start = time.perf_counter()
    model = SoftmaxRegression(l2=1.0, tol=1e-6).fit(X, y)
    results.append(dict(model="fastxent SoftmaxRegression on Dask (2 workers)",
                        seconds=time.perf_counter() - start, iterations=model.n_iter_,
                        objective=model.objective_))
    start = time.perf_counter()
    memory = SoftmaxRegression(l2=1.0, tol=1e-6).fit(Xm, ym)
    results.append(dict(model="fastxent SoftmaxRegression in memory (1 process)",
                        seconds=time.perf_counter() - start, iterations=memory.n_iter_,
                        objective=memory.objective_))
    for tol in (1e-4, 1e-6):  # scikit-learn's default, and ours
        lr = LogisticRegression(C=1.0, tol=tol, max_iter=1000)  # C = 1/l2: the same objective
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            lr.fit(Xm, ym)
            seconds = time.perf_counter() - start
        results.append(dict(model=f"sklearn LogisticRegression lbfgs tol={tol:g} (1 process)",
                            seconds=seconds, iterations=int(np.max(lr.n_iter_)),
                            objective=_objective(lr, Xm, ym, 1.0)))
    for r in results:
        print(f"  {r['model']:<56} {r['seconds']:8.2f} s  {r['iterations']:4d} iterations  "
              f"objective {r['objective']:.10g}", file=out, flush=True)
    return dict(n=n, d=d, c=c, results=results)


def _objective(model, X, y, l2):
    from fastxent.tools._harness import softmax_objective

    return softmax_objective(model, X, y, l2)


# --------------------------------------------------------------- dask-ml
def bench_dask_ml(n, d, out):
    import dask

    try:
        from dask_ml.linear_model import LogisticRegression as DaskMLLogisticRegression
    except ImportError:
        print("  dask-ml is not installed (pip install 'fastxent[dask-compare]')", file=out)
        return None
    from fastxent.sklearn import SoftmaxRegression

    cluster, client = _cluster()
    try:
        X, y = _data(n, d, 2, seed=3)
        X, y = dask.persist(X, y)
        Xm, ym = dask.compute(X, y)
        # Two-class softmax with penalty l2 on both rows = logistic regression with
        # penalty l2/2 on β = w1 - w0: LogisticRegression(C = 2 / l2).
        l2 = 1.0

        def dask_ml_fit(max_iter):
            model = DaskMLLogisticRegression(solver="lbfgs", C=2.0 / l2, max_iter=max_iter,
                                             fit_intercept=True)
            start = time.perf_counter()
            model.fit(X, y)
            seconds = time.perf_counter() - start
            coef = np.asarray(model.coef_).ravel()
            obj = _binary_objective(coef, float(np.asarray(model.intercept_).ravel()[0]), Xm, ym,
                                    l2 / 2)
            return dict(model=f"dask-ml LogisticRegression(solver='lbfgs', max_iter={max_iter})",
                        seconds=seconds, iterations=max_iter, objective=obj)

        def our_fit(tol):
            start = time.perf_counter()
            model = SoftmaxRegression(l2=l2, tol=tol).fit(X, y)
            seconds = time.perf_counter() - start
            obj = _binary_objective(model.coef_[1] - model.coef_[0],
                                    model.intercept_[1] - model.intercept_[0], Xm, ym, l2 / 2)
            return dict(model=f"fastxent SoftmaxRegression(tol={tol:g}) (dask, lbfgs)",
                        seconds=seconds, iterations=model.n_iter_, objective=obj)

        our_fit(1e-3), dask_ml_fit(2)  # warm-up: imports, compiles, first graphs
        rows = [dask_ml_fit(max_iter) for max_iter in (25, 100)]
        target = min(r["objective"] for r in rows)
        ours = [our_fit(tol) for tol in (1e-4, 1e-5, 1e-6)]
        rows += ours
        # time to the same objective: our first fit at least as low as dask-ml's best,
        # against the dask-ml fit that reached that best
        reached = [r for r in ours if r["objective"] <= target]
        best_dask_ml = min((r for r in rows[:2] if r["objective"] == target),
                           key=lambda r: r["seconds"])
        speedup = best_dask_ml["seconds"] / reached[0]["seconds"] if reached else None
        for r in rows:
            print(f"  {r['model']:<58} {r['seconds']:8.2f} s  objective {r['objective']:.12g}",
                  file=out, flush=True)
        if speedup is not None:
            print(f"  to dask-ml's best objective: {reached[0]['model']} in "
                  f"{reached[0]['seconds']:.2f} s, {speedup:.2f}x faster", file=out, flush=True)
    finally:
        client.close()
        cluster.close()
    return dict(n=n, d=d, rows=rows, speedup_to_same_objective=speedup)


def _binary_objective(beta, intercept, X, y, penalty):
    """Σ log(1 + exp(-s f)) + (penalty/2)|β|², f = Xβ + b, s = ±1."""
    f = X @ beta + intercept
    s = np.where(y == 1, 1.0, -1.0)
    return float(np.logaddexp(0.0, -s * f).sum()) + 0.5 * penalty * float(beta @ beta)


# ---------------------------------------------------------------- logits
def _logits_block(block_id, rows, classes, c0):
    """A cheap deterministic float32 block of logits (about memory speed)."""
    rng = np.random.default_rng(block_id)
    row_scale = rng.uniform(0.5, 4.0, rows).astype(np.float32)
    pattern = np.sin(np.arange(c0, c0 + classes, dtype=np.float32) * np.float32(0.37))
    return row_scale[:, None] * pattern[None, :]


def lazy_logits(n_rows, n_classes, row_chunk, class_chunk):
    import dask
    import dask.array as da

    blocks = []
    for i, r0 in enumerate(range(0, n_rows, row_chunk)):
        rows = min(row_chunk, n_rows - r0)
        line = []
        for c0 in range(0, n_classes, class_chunk):
            k = min(class_chunk, n_classes - c0)
            line.append(da.from_delayed(dask.delayed(_logits_block, pure=True)(i, rows, k, c0),
                                        shape=(rows, k), dtype=np.float32))
        blocks.append(line)
    return da.block(blocks)


def bench_logits(gib, compare_gib, n_classes, out, large_cases=("classes",)):
    """The four cases on ``compare_gib`` GiB (after a warm-up call that loads
    or compiles the kernels), then ``large_cases`` (fastxent classes-chunked by
    default; "reference" for the map_blocks reference) on ``gib`` GiB (more
    than the machine's memory), with the peak resident memory of each run."""
    import dask

    import fastxent as fx

    row_chunk = 2048

    def graph(case, n_rows):
        import dask.array as da

        labels = da.from_array(np.arange(n_rows, dtype=np.int64) % n_classes, chunks=row_chunk)
        chunk = 8192 if case in ("generation", "classes") else n_classes
        x = lazy_logits(n_rows, n_classes, row_chunk, chunk)
        if case == "generation":
            return x, x.sum(dtype=np.float64)
        if case == "reference":
            return x, (x.map_blocks(_reference_block_sum, labels[:, None], drop_axis=1,
                                    dtype=np.float64).sum() / n_rows)
        return x, fx.cross_entropy(x, labels)

    names = {"generation": "generation only (sum of the logits)",
             "classes": "fastxent, classes chunked (4 x 8192)",
             "rows": "fastxent, rows chunked",
             "reference": "da.map_blocks(reference.cross_entropy), rows chunked"}
    rows = []

    def run(case, size_gib):
        n_rows = max(row_chunk, int(size_gib * 2**30 / (4 * n_classes)) // row_chunk * row_chunk)
        graph(case, row_chunk)[1].compute()  # warm-up: kernels loaded or compiled
        x, g = graph(case, n_rows)
        with _PeakResidentMemory() as during:
            start = time.perf_counter()
            value = float(g.compute())
            seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        row = dict(case=names[case], gib=x.nbytes / 2**30, seconds=seconds,
                   gib_per_s=x.nbytes / 2**30 / seconds, value=value,
                   peak_rss_gib=during.peak / 2**30, peak_rss_so_far_gib=peak / 2**20)
        rows.append(row)
        print(f"  {row['case']:<55} {row['gib']:6.1f} GiB in {seconds:7.1f} s = "
              f"{row['gib_per_s']:.3f} GiB/s  peak RSS during {row['peak_rss_gib']:.2f} GiB "
              f"(process high-water mark {row['peak_rss_so_far_gib']:.2f})  value {value:.8g}",
              file=out, flush=True)

    with dask.config.set(scheduler="threads", num_workers=2):
        for case in ("generation", "classes", "rows", "reference"):
            run(case, compare_gib)
        for case in large_cases if gib else ():
            run(case, gib)
    return dict(n_classes=n_classes, row_chunk=row_chunk, rows=rows)


class _PeakResidentMemory:
    """The largest resident set size of this process while the ``with`` block
    runs, sampled every 50 ms from /proc/self/statm (``peak``, bytes)."""

    def __enter__(self):
        import os
        import threading

        self.peak = 0
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _resident(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _sample(self):
        while True:
            self.peak = max(self.peak, self._resident())
            if self._stop.wait(0.05):
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._resident())
        return False


def _reference_block_sum(x, t):
    from fastxent import reference

    return np.atleast_1d(np.asarray(reference.cross_entropy(x, t[:, 0], reduction="sum"),
                                    dtype=np.float64))


# ------------------------------------------------------------------ main
def _plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["fit"]["scaling"]
    n = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, [r["distributed_s"] * 1e3 for r in rows], "o-",
            label="distributed, tasks on block futures (2 workers x 1 thread)")
    ax.plot(n, [r["graph_per_evaluation_s"] * 1e3 for r in rows], "^:",
            label="distributed, a Dask-array graph per evaluation")
    ax.plot(n, [r["in_process_s"] * 1e3 for r in rows], "s--", label="in process (best thread setting)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows N")
    ax.set_ylabel("ms per objective + gradient evaluation")
    ax.set_title(f"SoftmaxRegression objective, D={rows[0]['d']}, C={rows[0]['c']}")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastxent bench-dask", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=["fit", "dask-ml", "logits"],
                        help="which: fit, dask-ml, logits (default all)")
    parser.add_argument("--sizes", default="20000,80000,320000,1280000",
                        help="rows for the fit scaling (comma separated)")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fit-rows", type=int, default=400_000,
                        help="rows of the full-fit comparison with scikit-learn (0: skip)")
    parser.add_argument("--dask-ml-rows", type=int, default=400_000)
    parser.add_argument("--logits-gib", type=float, default=32.0,
                        help="size of the large class-chunked run (32 GiB; 0: skip)")
    parser.add_argument("--large-cases", default="classes",
                        help="cases run at --logits-gib, comma separated: classes, rows, "
                             "reference, generation (classes)")
    parser.add_argument("--compare-gib", type=float, default=1.0,
                        help="size for the four-way throughput comparison (1 GiB)")
    parser.add_argument("--logits-classes", type=int, default=32768)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    out = sys.stdout
    result = {"machine": f"{_cpu_name()}, {__import__('os').cpu_count()} cores"}
    print(f"machine: {result['machine']}", file=out)
    if "fit" in args.parts:
        print("distributed fit, per evaluation (median of interleaved repeats):", file=out)
        result["fit"] = bench_fit([int(s) for s in args.sizes.split(",")], args.features,
                                  args.classes, args.repeats, out, args.fit_rows,
                                  json_path=args.json)
    if "dask-ml" in args.parts:
        print("binary problem, same cluster:", file=out)
        result["dask_ml"] = bench_dask_ml(args.dask_ml_rows, args.features, out)
    if "logits" in args.parts:
        print("cross-entropy over lazily generated logits (threaded scheduler, 2 threads):",
              file=out)
        result["logits"] = bench_logits(args.logits_gib, args.compare_gib, args.logits_classes,
                                        out, large_cases=args.large_cases.split(","))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.plot and "fit" in result:
        _plot(result, args.plot)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
