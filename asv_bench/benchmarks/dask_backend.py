"""The Dask backend (fastxent.dask) on the threaded scheduler (2 threads):
cross-entropy over rows-chunked and classes-chunked Dask logits beside
``da.map_blocks`` of the NumPy reference, and one evaluation of the
distributed SoftmaxRegression objective.  Self-contained: skipped where dask
or fastxent.dask is missing (older commits)."""

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError:  # pragma: no cover
    dask = da = None

ROWS, CLASSES = 8192, 4096


def _require_backend():
    if da is None:
        raise NotImplementedError("dask is not installed")
    try:
        from fastxent import dask as backend  # noqa: F401
    except ImportError:
        raise NotImplementedError("this commit has no fastxent.dask") from None


def _reference_block_sum(x, t):
    from fastxent import reference

    return np.atleast_1d(np.asarray(reference.cross_entropy(x, t[:, 0], reduction="sum"),
                                    dtype=np.float64))


class DaskCrossEntropy:
    """Mean cross-entropy of (8192, 4096) float32 logits in Dask blocks."""

    params = ["fastxent rows chunked", "fastxent classes chunked", "map_blocks reference"]
    param_names = ["impl"]

    def setup(self, impl):
        _require_backend()
        import fastxent as fx

        rng = np.random.default_rng(0)
        x = rng.standard_normal((ROWS, CLASSES), dtype=np.float32)
        y = rng.integers(0, CLASSES, ROWS)
        class_chunk = CLASSES // 4 if impl == "fastxent classes chunked" else CLASSES
        self.x = da.from_array(x, chunks=(1024, class_chunk))
        self.y = da.from_array(y, chunks=1024)
        if impl == "map_blocks reference":
            self.graph = (self.x.map_blocks(_reference_block_sum, self.y[:, None], drop_axis=1,
                                            dtype=np.float64).sum() / ROWS)
        else:
            self.graph = fx.cross_entropy(self.x, self.y)
        dask.config.set(scheduler="threads", num_workers=2)
        self.graph.compute()  # compile once

    def time_cross_entropy(self, impl):
        self.graph.compute()


class DaskCrossEntropyWithGrad:
    """Loss and gradient of (8192, 4096) float32 logits, classes in 4 chunks."""

    def setup(self):
        _require_backend()
        import fastxent as fx

        rng = np.random.default_rng(0)
        x = da.from_array(rng.standard_normal((ROWS, CLASSES), dtype=np.float32),
                          chunks=(1024, CLASSES // 4))
        y = da.from_array(rng.integers(0, CLASSES, ROWS), chunks=1024)
        self.loss, self.grad = fx.cross_entropy_with_grad(x, y)
        dask.config.set(scheduler="threads", num_workers=2)
        dask.compute(self.loss, self.grad)

    def time_cross_entropy_with_grad(self):
        dask.compute(self.loss, self.grad)


class DistributedObjective:
    """One SoftmaxRegression objective + gradient evaluation over (200000, 64)
    Dask X in 8 blocks, 10 classes."""

    def setup(self):
        _require_backend()
        try:
            from fastxent.dask import DistributedObjective as Objective
        except ImportError:
            raise NotImplementedError("this commit has no distributed objective") from None
        dask.config.set(scheduler="threads", num_workers=2)
        rng = np.random.default_rng(0)
        X = rng.standard_normal((200_000, 64))
        y = rng.integers(0, 10, 200_000)
        self.objective = Objective(da.from_array(X, chunks=(25_000, 64)),
                                   da.from_array(y, chunks=25_000), 10, 1.0, True)
        self.theta = rng.standard_normal(self.objective.size) * 0.01
        self.objective(self.theta)

    def time_evaluation(self):
        self.objective(self.theta)


class DistributedObjectiveOnCluster:
    """The same evaluation on a 2-worker LocalCluster (1 thread each), as
    ``SoftmaxRegression.fit`` runs it there: one task per persisted block on
    the blocks' futures, against the previous design's Dask-array graph per
    evaluation (``graph``)."""

    params = ["futures", "graph"]
    param_names = ["path"]
    timeout = 180

    def setup(self, path):
        _require_backend()
        try:
            import logging

            from distributed import Client, LocalCluster

            from fastxent.dask import DistributedObjective as Objective
        except ImportError:
            raise NotImplementedError("distributed or the distributed objective is missing") from None
        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=logging.ERROR)
        self.client = Client(self.cluster)
        rng = np.random.default_rng(0)
        X = rng.standard_normal((200_000, 64))
        y = rng.integers(0, 10, 200_000)
        self.objective = Objective(da.from_array(X, chunks=(25_000, 64)),
                                   da.from_array(y, chunks=25_000), 10, 1.0, True)
        if path == "graph":
            if not hasattr(self.objective, "_client"):
                raise NotImplementedError("this commit has only the graph path")
            self.objective._client = None  # computed by the Dask-array graph, same cluster
        self.theta = rng.standard_normal(self.objective.size) * 0.01
        self.objective(self.theta)

    def teardown(self, path):
        self.client.close()
        self.cluster.close()

    def time_evaluation(self, path):
        self.objective(self.theta)
