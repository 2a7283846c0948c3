"""The Dask backend on a distributed.LocalCluster with 2 worker processes:
every public function on row-chunked and class-chunked Dask arrays against
the NumPy path, laziness, errors at call time and at compute time,
SoftmaxRegression across the cluster against the in-memory fit, a worker
killed mid-fit, the graph size, and Numba's cache shared by the workers."""

import os
import signal

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
import dask  # noqa: E402

import fastxent as fx  # noqa: E402
from fastxent import dask as fxd  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, memory_limit="2GiB")
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _check(got, expected, rtol, atol=None):
    """Same kind (Dask), dtype and shape as the NumPy path; values to rtol."""
    assert isinstance(got, da.Array), type(got)
    value = got.compute()
    expected = np.asarray(expected)
    value = np.asarray(value)
    assert value.dtype == expected.dtype, (value.dtype, expected.dtype)
    assert value.shape == expected.shape, (value.shape, expected.shape)
    np.testing.assert_allclose(value.astype(np.float64), expected.astype(np.float64), rtol=rtol,
                               atol=rtol * 1e-3 if atol is None else atol, equal_nan=True)


def _rtol(dtype):
    return 2e-6 if np.dtype(dtype) == np.float32 else 1e-12


# ------------------------------------------------------------ inputs
N, C = 45, 13


def _inputs(rng, dtype):
    logits = (3 * rng.standard_normal((N, C))).astype(dtype)
    labels = rng.integers(0, C, N)
    labels[[4, 30]] = -100
    probs = rng.dirichlet(np.ones(C), N).astype(dtype)
    weight = rng.uniform(0.5, 2.0, C)
    return logits, labels, probs, weight


ROW_CHUNKS = (10, C)      # several row blocks, whole rows
CLASS_CHUNKS = (20, 5)    # rows and classes both chunked


def _dask(a, chunks):
    return da.from_array(a, chunks=chunks[: a.ndim] if a.ndim < 2 else chunks)


CE_OPTIONS = [
    {},
    {"weight": True},
    {"label_smoothing": 0.2},
    {"weight": True, "label_smoothing": 0.3, "ignore_index": 7},
]


@pytest.mark.parametrize("chunks", [ROW_CHUNKS, CLASS_CHUNKS], ids=["rows", "classes"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_family(client, rng, chunks, dtype):
    x, _, _, _ = _inputs(rng, dtype)
    dx = _dask(x, chunks)
    for axis in (-1, 0, None, (0, 1)):
        _check(fx.logsumexp(dx, axis=axis), fx.logsumexp(x, axis=axis), _rtol(dtype))
        _check(fx.logsumexp(dx, axis=axis, keepdims=True),
               fx.logsumexp(x, axis=axis, keepdims=True), _rtol(dtype))
    for axis in (-1, 0):
        _check(fx.softmax(dx, axis=axis), fx.softmax(x, axis=axis), _rtol(dtype))
        # near 0, log-probabilities x - lse agree to a few ulps of the logits' magnitude
        atol = 8 * np.finfo(dtype).eps * float(np.abs(x).max())
        _check(fx.log_softmax(dx, axis=axis), fx.log_softmax(x, axis=axis), _rtol(dtype), atol)


@pytest.mark.parametrize("chunks", [ROW_CHUNKS, CLASS_CHUNKS], ids=["rows", "classes"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "probs"])
def test_cross_entropy(client, rng, chunks, dtype, soft):
    x, labels, probs, weight = _inputs(rng, dtype)
    dx = _dask(x, chunks)
    jobs = []
    for option in CE_OPTIONS:
        kw = dict(option)
        if soft:
            kw.pop("ignore_index", None)
            target = probs
        else:  # the ignored rows carry this option's ignore_index
            target = np.where(labels == -100, kw.get("ignore_index", -100), labels)
        dt = _dask(target, chunks)
        if kw.get("weight"):
            kw["weight"] = weight
        for reduction in ("mean", "sum", "none"):
            kw["reduction"] = reduction
            jobs.append((fx.cross_entropy(dx, dt, **kw), fx.cross_entropy(x, target, **kw)))
            loss, grad = fx.cross_entropy_with_grad(dx, dt, **kw)
            loss0, grad0 = fx.cross_entropy_with_grad(x, target, **kw)
            jobs += [(loss, loss0), (grad, grad0)]
        g = rng.uniform(0.5, 2.0, N)
        loss, grad = fx.cross_entropy_with_grad(dx, dt, reduction="none", grad_output=da.from_array(g, chunks=15), **{k: v for k, v in kw.items() if k != "reduction"})
        loss0, grad0 = fx.cross_entropy_with_grad(x, target, reduction="none", grad_output=g, **{k: v for k, v in kw.items() if k != "reduction"})
        jobs += [(loss, loss0), (grad, grad0)]
        loss, grad = fx.cross_entropy_with_grad(dx, dt, reduction="mean", grad_output=2.5, **{k: v for k, v in kw.items() if k != "reduction"})
        loss0, grad0 = fx.cross_entropy_with_grad(x, target, reduction="mean", grad_output=2.5, **{k: v for k, v in kw.items() if k != "reduction"})
        jobs += [(loss, loss0), (grad, grad0)]
    values = dask.compute(*[got for got, _ in jobs])  # one graph for the lot
    for (got, expected), value in zip(jobs, values):
        assert isinstance(got, da.Array)
        expected = np.asarray(expected)
        assert np.asarray(value).dtype == expected.dtype and np.shape(value) == expected.shape
        # gradients (a p - b, cancelling) agree to a few ulps of the array's largest entry
        scale = float(np.abs(expected).max()) if expected.size else 0.0
        np.testing.assert_allclose(np.asarray(value, dtype=np.float64), expected.astype(np.float64),
                                   rtol=_rtol(dtype), atol=8 * np.finfo(dtype).eps * scale)


def test_class_chunked_agrees_with_unchunked_float32(client, rng):
    """Issue 15's goal: ≤ 1e-6 relative in float32, with 7 class blocks of a
    1000-class vocabulary."""
    x = (4 * rng.standard_normal((64, 1000))).astype(np.float32)
    y = rng.integers(0, 1000, 64)
    dx = da.from_array(x, chunks=(32, 150))
    loss = fx.cross_entropy(dx, y, reduction="none").compute()
    np.testing.assert_allclose(loss, fx.cross_entropy(x, y, reduction="none"), rtol=1e-6)
    # the gradient: as close to the float64 gradient as the unchunked one, to float32 rounding
    _, grad = fx.cross_entropy_with_grad(dx, y, reduction="sum")
    _, grad0 = fx.cross_entropy_with_grad(x, y, reduction="sum")
    _, exact = fx.cross_entropy_with_grad(x.astype(np.float64), y, reduction="sum")
    error = np.abs(grad.compute() - exact)
    ulps = error / (np.finfo(np.float32).eps * np.abs(exact))
    assert ulps.max() <= max(4.0, (np.abs(grad0 - exact) / (np.finfo(np.float32).eps * np.abs(exact))).max())


def test_class_chunked_nasty_rows(client):
    x = np.array([[np.inf, 1, 2, 0], [-np.inf] * 4, [np.nan, 1, 2, 0], [-np.inf, 0, 1, 2],
                  [np.inf, np.inf, 0, 0], [1e30, -1e30, 0, 5], [20, -20, -20, -20]], np.float32)
    y = np.array([1, 1, 1, 0, 2, 0, 0])
    dx = da.from_array(x, chunks=(3, 2))
    for fn in (fx.logsumexp, fx.softmax, fx.log_softmax):
        _check(fn(dx), fn(x), 1e-6)
    for kw in ({}, {"label_smoothing": 0.1}):
        _check(fx.cross_entropy(dx, y, reduction="none", **kw),
               fx.cross_entropy(x, y, reduction="none", **kw), 1e-6)
        loss, grad = fx.cross_entropy_with_grad(dx, y, reduction="none", **kw)
        loss0, grad0 = fx.cross_entropy_with_grad(x, y, reduction="none", **kw)
        _check(loss, loss0, 1e-6)
        _check(grad, grad0, 1e-6)


@pytest.mark.parametrize("chunks", [(7, 4), (20, 9)])
def test_binary_cross_entropy(client, rng, chunks):
    p = rng.uniform(0, 1, (20, 9)).astype(np.float32)
    t = rng.uniform(0, 1, (20, 9)).astype(np.float32)
    w = rng.uniform(0.5, 2, (20, 9))
    pw = rng.uniform(0.5, 2, 9)
    dp, dt = da.from_array(p, chunks=chunks), da.from_array(t, chunks=chunks)
    for reduction in ("mean", "sum", "none"):
        kw = dict(weight=w, reduction=reduction)
        _check(fx.binary_cross_entropy(dp, dt, **kw), fx.binary_cross_entropy(p, t, **kw), 2e-6)
        for (got, expected) in zip(fx.binary_cross_entropy_with_grad(dp, dt, grad_output=2.0, **kw),
                                   fx.binary_cross_entropy_with_grad(p, t, grad_output=2.0, **kw)):
            _check(got, expected, 2e-6)
        kw["pos_weight"] = pw
        _check(fx.binary_cross_entropy_with_logits(dp, dt, **kw),
               fx.binary_cross_entropy_with_logits(p, t, **kw), 2e-6)
        for (got, expected) in zip(fx.binary_cross_entropy_with_logits_with_grad(dp, dt, **kw),
                                   fx.binary_cross_entropy_with_logits_with_grad(p, t, **kw)):
            _check(got, expected, 2e-6)


@pytest.mark.parametrize("chunks", [(7, 9), (7, 4)], ids=["rows", "classes"])
def test_divergences(client, rng, chunks):
    P = rng.dirichlet(np.ones(9), 20)
    Q = rng.dirichlet(np.ones(9), 20)
    P[3, 2] = 0.0
    dP, dQ = da.from_array(P, chunks=chunks), da.from_array(Q, chunks=chunks)
    for axis in (-1, 0, None):
        _check(fx.entropy(dP, axis=axis), fx.entropy(P, axis=axis), 1e-12)
        for got, expected in zip(fx.entropy_with_grad(dP, axis=axis), fx.entropy_with_grad(P, axis=axis)):
            _check(got, expected, 1e-12)
        for fn, fn_grad in ((fx.kl_divergence, fx.kl_divergence_with_grad),
                            (fx.cross_entropy_probs, fx.cross_entropy_probs_with_grad)):
            _check(fn(dP, dQ, axis=axis), fn(P, Q, axis=axis), 1e-12)
            for got, expected in zip(fn_grad(dP, dQ, axis=axis), fn_grad(P, Q, axis=axis)):
                _check(got, expected, 1e-12)


def test_linear_cross_entropy(client, rng):
    X = rng.standard_normal((50, 6))
    W = rng.standard_normal((4, 6))
    b = rng.standard_normal(4)
    y = rng.integers(0, 4, 50)
    y[5] = -100
    dX, dy = da.from_array(X, chunks=(13, 6)), da.from_array(y, chunks=20)
    for reduction, l2 in (("mean", 0.0), ("mean", 0.5), ("sum", 0.5), ("none", 0.0)):
        kw = dict(bias=b, l2=l2, reduction=reduction, weight=np.arange(1, 5.0))
        _check(fx.linear_cross_entropy(dX, W, dy, **kw), fx.linear_cross_entropy(X, W, y, **kw), 1e-12)
        loss, grads = fx.linear_cross_entropy_with_grad(dX, W, dy, **kw)
        loss0, grads0 = fx.linear_cross_entropy_with_grad(X, W, y, **kw)
        _check(loss, loss0, 1e-12)
        for got, expected in zip(grads, grads0):
            _check(got, expected, 1e-12)


# ------------------------------------------------------------ laziness and errors
def _poisoned(shape, dtype):
    """A Dask array whose computation raises: building graphs on it must not."""
    def boom():
        raise RuntimeError("computed")
    return da.from_delayed(dask.delayed(boom)(), shape=shape, dtype=dtype)


def test_nothing_is_computed_at_call_time():
    x = _poisoned((8, 5), np.float32)
    y = _poisoned((8,), np.int64)
    results = [fx.logsumexp(x), fx.softmax(x), fx.log_softmax(x), fx.cross_entropy(x, y),
               fx.cross_entropy_with_grad(x, y)[1], fx.entropy(x), fx.kl_divergence(x, x),
               fx.binary_cross_entropy(x, x), fx.cross_entropy(x.rechunk((4, 2)), y)]
    assert all(isinstance(r, da.Array) for r in results)
    assert fx.cross_entropy(x, y).shape == ()
    with pytest.raises(RuntimeError, match="computed"):
        results[0].compute(scheduler="sync")


@pytest.mark.parametrize("chunks", [(10, 11), (10, 4)], ids=["rows", "classes"])
def test_bad_label_raises_at_compute_time_with_the_numpy_message(client, rng, chunks):
    x = rng.standard_normal((30, 11))
    y = rng.integers(0, 11, 30)
    y[17] = 11
    with pytest.raises(IndexError) as expected:
        fx.cross_entropy(x, y)
    lazy = fx.cross_entropy(da.from_array(x, chunks=chunks), da.from_array(y, chunks=10))
    with pytest.raises(IndexError) as got:
        lazy.compute()
    assert str(got.value) == str(expected.value)
    lazy_grad = fx.cross_entropy_with_grad(da.from_array(x, chunks=chunks), y)[1]
    with pytest.raises(IndexError, match="target 11 at row 17"):
        lazy_grad.compute()


def test_bad_probability_raises_at_compute_time_with_the_numpy_message(client, rng):
    p = rng.uniform(0, 1, (20, 9))
    p[13, 5] = 1.5
    t = rng.uniform(0, 1, (20, 9))
    with pytest.raises(ValueError) as expected:
        fx.binary_cross_entropy(p, t)
    lazy = fx.binary_cross_entropy(da.from_array(p, chunks=(7, 4)), t)
    with pytest.raises(ValueError) as got:
        lazy.compute()
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("call, error", [
    (lambda x, y: fx.cross_entropy(x, y, reduction="avg"), ValueError),
    (lambda x, y: fx.cross_entropy(x, y[:3]), ValueError),
    (lambda x, y: fx.cross_entropy(x, y, weight=np.ones(3)), ValueError),
    (lambda x, y: fx.cross_entropy(x, y, label_smoothing=2.0), ValueError),
    (lambda x, y: fx.cross_entropy(x, x[:, :1].astype(complex)), TypeError),
    (lambda x, y: fx.softmax(x.astype(complex)), TypeError),
    (lambda x, y: fx.logsumexp(x, axis=5), np.exceptions.AxisError),
    (lambda x, y: fx.cross_entropy_with_grad(x, y, out=np.empty((8, 5))), ValueError),
    (lambda x, y: fx.cross_entropy_with_grad(x, y, grad_output=np.ones(8)), ValueError),
    (lambda x, y: fx.binary_cross_entropy(x, x[:4]), ValueError),
    (lambda x, y: fx.kl_divergence(x, x[:4]), ValueError),
    (lambda x, y: fx.linear_cross_entropy(x, np.ones((3, 4)), y), ValueError),
])
def test_metadata_errors_at_call_time(call, error):
    x = _poisoned((8, 5), np.float64)
    y = _poisoned((8,), np.int64)
    with pytest.raises(error):
        call(x, y)


# ------------------------------------------------------------ graph size
def _n_tasks(arr):
    return len(arr.__dask_graph__())


@pytest.mark.parametrize("class_chunks", [1, 3], ids=["rows", "classes"])
def test_graph_grows_linearly_with_the_chunks(class_chunks):
    counts = []
    for row_blocks in (4, 16, 64):
        n, c = row_blocks * 8, 6 * class_chunks
        x = da.zeros((n, c), chunks=(8, 6))
        y = da.zeros(n, dtype=np.int64, chunks=8)
        loss, grad = fx.cross_entropy_with_grad(x, y)
        counts.append(_n_tasks(loss) + _n_tasks(grad))
        blocks = row_blocks * class_chunks
        assert counts[-1] <= 20 * blocks + 50, counts
    # 16x the blocks: at most 16x the tasks (plus a constant), never quadratic
    assert counts[2] - counts[0] <= 16 * (counts[0] + 10)
    assert counts[2] >= 4 * counts[0] // 2  # and it does grow with them


# ------------------------------------------------------------ SoftmaxRegression
def _classification(rng, n=3000, d=8, c=4):
    X = rng.standard_normal((n, d)) * np.linspace(0.5, 3, d) + 0.7
    W = rng.standard_normal((c, d))
    y = np.argmax(X @ W.T + rng.gumbel(size=(n, c)), axis=1)
    return X, np.array(["a", "b", "c", "d"])[y]


def test_softmax_regression_dask_matches_in_memory(client, rng):
    from fastxent.sklearn import SoftmaxRegression

    X, y = _classification(rng)
    memory = SoftmaxRegression(l2=1.0).fit(X, y)
    dX, dy = da.from_array(X, chunks=(700, 8)), da.from_array(y, chunks=700)
    model = SoftmaxRegression(l2=1.0).fit(dX, dy)
    assert abs(model.objective_ - memory.objective_) <= 1e-8 * abs(memory.objective_)
    np.testing.assert_allclose(model.coef_, memory.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.classes_, memory.classes_)
    proba = model.predict_proba(dX)
    assert isinstance(proba, da.Array)
    np.testing.assert_allclose(proba.compute(), memory.predict_proba(X), atol=1e-6)
    for name in ("predict", "decision_function", "predict_log_proba"):
        got = getattr(model, name)(dX)
        assert isinstance(got, da.Array), name
    np.testing.assert_array_equal(model.predict(dX).compute(), memory.predict(X))
    score = model.score(dX, dy)
    assert isinstance(score, da.Array) and score.shape == ()
    assert float(score.compute()) == pytest.approx(memory.score(X, y))


def test_softmax_regression_dask_sample_weight_matches_in_memory(client, rng):
    """Weighted rows (some of weight 0) as a Dask vector chunked like y, and as
    a NumPy vector: the in-memory weighted optimum, objective to 1e-8."""
    from fastxent.sklearn import SoftmaxRegression

    X, y = _classification(rng, n=2000)
    s = rng.uniform(0.0, 3.0, len(y))
    s[rng.random(len(y)) < 0.2] = 0.0
    memory = SoftmaxRegression(l2=1.0).fit(X, y, sample_weight=s)
    dX, dy = da.from_array(X, chunks=(500, 8)), da.from_array(y, chunks=500)
    for weights in (da.from_array(s, chunks=500), s):
        model = SoftmaxRegression(l2=1.0).fit(dX, dy, sample_weight=weights)
        assert abs(model.objective_ - memory.objective_) <= 1e-8 * abs(memory.objective_)
        np.testing.assert_allclose(model.coef_, memory.coef_, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.intercept_, memory.intercept_, rtol=1e-5, atol=1e-6)
    unweighted = SoftmaxRegression(l2=1.0).fit(X, y)
    ones = SoftmaxRegression(l2=1.0).fit(dX, dy, sample_weight=da.ones(len(y), chunks=500))
    assert abs(ones.objective_ - unweighted.objective_) <= 1e-8 * abs(unweighted.objective_)


@pytest.mark.parametrize("weights, message", [
    (lambda n: -np.ones(n), "Negative values in data passed to `sample_weight`"),
    (lambda n: np.full(n, np.nan), "NaN or infinity"),
    (lambda n: np.ones(n + 1), "sample_weight.shape"),
    (lambda n: np.r_[np.ones(n // 2), np.zeros(n - n // 2)], "at least 2 classes with a positive"),
], ids=["negative", "nan", "length", "one-class"])
def test_softmax_regression_dask_bad_sample_weight(client, weights, message):
    from fastxent.sklearn import SoftmaxRegression

    n = 40
    X = da.from_array(np.arange(2.0 * n).reshape(n, 2), chunks=(10, 2))
    y = da.from_array(np.repeat([0, 1], n // 2), chunks=10)  # class 1 only in the second half
    with pytest.raises(ValueError, match=message):
        SoftmaxRegression().fit(X, y, sample_weight=weights(n))


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_distributed_objective_futures_path_matches_the_graph_path(client, rng, weighted):
    """One evaluation by tasks on the persisted blocks' futures (the cluster
    path, a tree of sums at split_every=2 over 7 blocks) equals the Dask-array
    graph of the same per-block work (the local-scheduler path) and the
    in-memory objective."""
    from fastxent import sklearn as fsk

    X, labels = _classification(rng, n=1400)
    y = np.searchsorted(np.unique(labels), labels)
    s = rng.uniform(0.5, 2.0, len(y)) if weighted else None
    dX, dy = da.from_array(X, chunks=(200, 8)), da.from_array(y, chunks=200)
    ds = da.from_array(s, chunks=200) if weighted else None
    futures = fxd.DistributedObjective(dX, dy, 4, 1.0, True, split_every=2, sample_weight=ds)
    assert futures._client is client
    graph = fxd.DistributedObjective(dX, dy, 4, 1.0, True, split_every=2, sample_weight=ds)
    graph._client = None
    with dask.config.set(scheduler="synchronous"):
        local_scheduler = fxd.DistributedObjective(dX, dy, 4, 1.0, True, sample_weight=ds)
    assert local_scheduler._client is None
    memory = fsk._Objective(X, y, s, 4, 1.0, True)
    theta = rng.standard_normal(futures.size) * 0.1
    value, grad = memory(theta)
    for fun in (futures, graph):
        got_value, got_grad = fun(theta)
        assert got_value == pytest.approx(value, rel=1e-12)
        np.testing.assert_allclose(got_grad, grad, rtol=1e-9, atol=1e-12)
    with dask.config.set(scheduler="synchronous"):
        got_value, got_grad = local_scheduler(theta)
    assert got_value == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(got_grad, grad, rtol=1e-9, atol=1e-12)


def test_softmax_regression_survives_a_killed_worker(client, rng, monkeypatch):
    """A worker process killed in the middle of fit (its persisted blocks of X
    lost): Dask recomputes them from the graph and the fit ends at the same
    optimum."""
    from fastxent.sklearn import SoftmaxRegression

    X, y = _classification(rng, n=2000)
    dX, dy = da.from_array(X, chunks=(250, 8)), da.from_array(y, chunks=250)
    reference = SoftmaxRegression(l2=1.0).fit(dX, dy)

    original = fxd.DistributedObjective.data_terms
    state = {"calls": 0, "killed": None}

    def data_terms_killing_a_worker(self, W, b):
        state["calls"] += 1
        assert self._client is client  # the evaluations by tasks on the block futures
        if state["calls"] == 3:
            holders = client.who_has(self.X)  # the worker holding X's first block dies
            victim = next(iter(holders.values()))[0]
            pid = client.run(os.getpid, workers=[victim])[victim]
            os.kill(pid, signal.SIGKILL)
            state["killed"] = victim
        return original(self, W, b)

    monkeypatch.setattr(fxd.DistributedObjective, "data_terms", data_terms_killing_a_worker)
    model = SoftmaxRegression(l2=1.0).fit(dX, dy)
    assert state["killed"] is not None and state["calls"] > 3
    assert abs(model.objective_ - reference.objective_) <= 1e-10 * abs(reference.objective_)
    np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-8, atol=1e-10)
    client.wait_for_workers(2, timeout=120)


def test_workers_share_one_numba_cache(tmp_path):
    """Two worker processes compiling into one empty NUMBA_CACHE_DIR at once:
    both succeed, agree, and leave the kernels in the cache."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, env=env) as cluster, \
            distributed.Client(cluster) as c:
        x = np.linspace(-3, 3, 400, dtype=np.float32).reshape(40, 10)
        workers = sorted(c.scheduler_info()["workers"])
        assert len(workers) == 2
        # one logsumexp pinned to each worker, submitted together: two cold compiles at once
        futures = [c.submit(fx.logsumexp, x[i::2], workers=[w], allow_other_workers=False,
                            pure=False) for i, w in enumerate(workers)]
        values = c.gather(futures)
        cache_dirs = c.run(lambda: os.environ.get("NUMBA_CACHE_DIR"))
        warm = c.submit(fx.logsumexp, x, pure=False).result()
    assert set(cache_dirs.values()) == {str(tmp_path)}
    for i, value in enumerate(values):
        np.testing.assert_allclose(value, fx.logsumexp(x[i::2]), rtol=1e-6)
    np.testing.assert_allclose(warm, fx.logsumexp(x), rtol=1e-6)
    assert any(f.endswith(".nbi") for _, _, files in os.walk(tmp_path) for f in files)
