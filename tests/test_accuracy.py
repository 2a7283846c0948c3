"""Reproducers of issue 17 (differential fuzzing) and issue 12.5 (relative
accuracy near 0), each run on every backend: NumPy arrays on the CPU
kernels, Numba device arrays on the CUDA kernels (the simulator without a
GPU).  References are float64 NumPy formulas written so that they do not
cancel, scipy.special, or mpmath where float64 itself would not do.
"""

import math

import numpy as np
import pytest

import fastxent as fx

try:
    from fastxent.cuda import _numba_cuda
    _CUDA = _numba_cuda.cuda
except ImportError:  # no numba.cuda, or no GPU without the simulator
    _CUDA = None

BACKENDS = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(_CUDA is None, reason="no numba.cuda"))]


@pytest.fixture(params=BACKENDS)
def call(request):
    """call(name, *arrays, **kwargs): fastxent's public function on this
    backend, NumPy results out (tuples kept)."""
    on_cuda = request.param == "cuda"

    def to_backend(a):
        if on_cuda and isinstance(a, np.ndarray):
            return _CUDA.to_device(np.ascontiguousarray(a))
        return a

    def to_host(r):
        if isinstance(r, tuple):
            return tuple(to_host(v) for v in r)
        if hasattr(r, "copy_to_host"):
            return np.asarray(r.copy_to_host())
        return r if r is None else np.asarray(r)

    def run(name, *args, **kwargs):
        kwargs = {k: to_backend(v) for k, v in kwargs.items()}
        with np.errstate(all="ignore"):
            return to_host(getattr(fx, name)(*map(to_backend, args), **kwargs))

    run.backend = request.param
    return run


def rel_err(got, expected):
    got = np.asarray(got, np.float64)
    expected = np.asarray(expected, np.float64)
    return np.abs(got - expected) / np.abs(expected)


def softmax64(x):
    """float64 softmax, exact to rounding elementwise (max shift)."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def lse_minus64(x, c):
    """lse(x) - x_c per row (c: one column per row) in float64 without
    cancellation: (m - x_c) + log1p(sum of the other terms exp(x_j - m))."""
    x = np.asarray(x, np.float64)
    k = x.argmax(-1)
    m = np.take_along_axis(x, k[..., None], -1)
    e = np.exp(x - m)
    np.put_along_axis(e, k[..., None], 0.0, -1)
    xc = np.take_along_axis(x, np.asarray(c)[..., None], -1)
    return ((m - xc)[..., 0]) + np.log1p(e.sum(-1))


# ------------------------------------------------ 12.5: log1p near zero
def test_logsumexp_one_dominating_term(call):
    assert rel_err(call("logsumexp", np.array([0.0, -40.0])), np.log1p(np.exp(-40.0))) < 1e-15
    lse = call("logsumexp", np.array([0.0, -20.0], np.float32))
    assert lse.dtype == np.float32 and rel_err(lse, np.log1p(np.exp(-20.0))) < 2e-7
    assert rel_err(call("log_softmax", np.array([0.0, -40.0]))[0], -np.log1p(np.exp(-40.0))) < 1e-15
    assert rel_err(call("cross_entropy", np.array([[0.0, -40.0]]), np.array([0])), np.log1p(np.exp(-40.0))) < 1e-15
    # a tie of the max: log(2 + e^-40)
    assert rel_err(call("logsumexp", np.array([0.0, -40.0, 0.0])), np.log(2.0)) < 1e-15


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [2, 10, 300, 1000])  # short rows, long rows (stored or not)
def test_near_zero_losses_keep_relative_accuracy(call, dtype, n_classes):
    """Confident rows: one logit far above the others (gap 18..45), the
    answers between 1e-20 and 1e-5, each within a few ulps relative to a
    float64 np.log1p reference."""
    rng = np.random.default_rng(n_classes)
    rows = 6
    x = rng.standard_normal((rows, n_classes)) - rng.uniform(18, 45, (rows, 1))
    top = rng.integers(0, n_classes, rows)
    x[np.arange(rows), top] = rng.uniform(-2, 2, rows)
    x = x.astype(dtype)
    x64 = x.astype(np.float64)
    tiny = lse_minus64(x64, top)  # lse - x_top, 1e-20..1e-5
    assert (tiny < 1e-4).all()
    eps = np.finfo(dtype).eps
    bound = (64 if dtype == np.float32 else 8) * eps
    np.testing.assert_allclose(call("logsumexp", x), x64[np.arange(rows), top] + tiny, rtol=4 * eps)
    logp = call("log_softmax", x)
    assert rel_err(-logp[np.arange(rows), top], tiny).max() < bound
    assert rel_err(call("cross_entropy", x, top, reduction="none"), tiny).max() < bound
    loss, grad = call("cross_entropy_with_grad", x, top, reduction="none")
    assert rel_err(loss, tiny).max() < bound
    one_hot = np.eye(n_classes, dtype=dtype)[top]
    assert rel_err(call("cross_entropy", x, one_hot, reduction="none"), tiny).max() < bound
    soft_loss, _ = call("cross_entropy_with_grad", x, one_hot, reduction="none")
    assert rel_err(soft_loss, tiny).max() < bound


# ------------------------------------------ item 1: gradient for any gap
def _grad_reference(x, y, grad_output):
    p = softmax64(x)
    p[np.arange(len(y)), y] -= 1.0
    return p * grad_output


def _assert_exact_gradient(got, x, y, grad_output, dtype):
    expected = _grad_reference(x, y, grad_output)
    tiny = np.finfo(dtype).tiny
    # a few ulps of each element (exp's 2, the rounding of its argument, the
    # products); a true value in the subnormals rounds there
    err = np.abs(got.astype(np.float64) - expected)
    bound = 8 * np.finfo(dtype).eps * np.abs(expected) + 4 * tiny * np.finfo(dtype).eps
    bad = np.flatnonzero(err > bound)
    assert bad.size == 0, (bad[:5], got.reshape(-1)[bad[:5]], expected.reshape(-1)[bad[:5]])


@pytest.mark.parametrize("dtype,gaps", [(np.float32, [0, 20, 60, 77, 85, 87, 88.5, 89, 95, 120]),
                                        (np.float64, [0, 100, 700, 709, 709.5, 709.9, 715, 800])])
@pytest.mark.parametrize("grad_output", [1.0, 1e-6, 1e-8, 1e-20])
def test_gradient_exact_for_any_gap_below_the_max(call, dtype, gaps, grad_output):
    x = np.zeros((len(gaps), 3), dtype)
    x[:, 1] = gaps
    x[:, 2] = np.asarray(gaps) / 2
    y = np.zeros(len(gaps), np.int64)  # the target at 0, far below the max
    loss, grad = call("cross_entropy_with_grad", x, y, reduction="sum", grad_output=grad_output)
    _assert_exact_gradient(grad, x.astype(np.float64), y, grad_output, dtype)
    np.testing.assert_allclose(loss, lse_minus64(x, y).sum(), rtol=4 * np.finfo(dtype).eps)


def test_issue_17_item_1_reproducer(call):
    x = np.array([[0.0, 87.0]], np.float32)
    y = np.array([0])
    for grad_output in (1e-8, 1e-6):
        grad = call("cross_entropy_with_grad", x, y, reduction="sum", grad_output=grad_output)[1]
        np.testing.assert_allclose(grad, [[-grad_output, grad_output]], rtol=1e-6)
    grad = call("cross_entropy_with_grad", np.array([[0.0, 709.5]]), y, reduction="sum",
                grad_output=1e-6)[1]
    np.testing.assert_allclose(grad, [[-1e-6, 1e-6]], rtol=1e-15)


def test_gradient_mean_reduction_with_large_gaps(call):
    """Gaps of 77-89 under an ordinary mean over many rows (float32)."""
    rng = np.random.default_rng(1)
    rows, n_classes = 300, 5
    x = rng.standard_normal((rows, n_classes)).astype(np.float32)
    y = rng.integers(0, n_classes, rows)
    x[np.arange(rows), y] -= rng.uniform(77, 89, rows).astype(np.float32)
    loss, grad = call("cross_entropy_with_grad", x, y)
    _assert_exact_gradient(grad, x.astype(np.float64), y, 1.0 / rows, np.float32)


def test_linear_cross_entropy_gradient_with_a_large_gap():
    x = np.array([[1.0], [2.0]], np.float32)
    W = np.array([[0.0], [43.6]], np.float32)  # logits [0, 43.6] and [0, 87.2]
    y = np.array([0, 0])
    for grad_output in (1e-6, 1e-8):
        _, (dx, dW, _) = fx.linear_cross_entropy_with_grad(x, W, y, reduction="sum",
                                                           grad_output=grad_output)
        g = _grad_reference(x.astype(np.float64) @ W.T.astype(np.float64), y, grad_output)
        np.testing.assert_allclose(dW, g.T @ x.astype(np.float64), rtol=1e-6)
        np.testing.assert_allclose(dx, g @ W.astype(np.float64), rtol=1e-6)


# ------------------------------------- item 8: smoothing at large gaps
def _smoothed_loss_mpmath(x, y, weight, eps):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    total = mpmath.mpf(0)
    den = mpmath.mpf(0)
    n_classes = x.shape[1]
    for row, label in zip(x, y):
        lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row))
        w = [mpmath.mpf(float(v)) for v in weight]
        total += (1 - eps) * w[label] * (lse - float(row[label]))
        total += mpmath.mpf(eps) / n_classes * mpmath.fsum(w[c] * (lse - float(row[c])) for c in range(n_classes))
        den += w[label]
    return float(total / den)


def test_issue_17_item_8_reproducer(call):
    got = call("cross_entropy", np.array([[-700.0, 0.0]]), np.array([0]), weight=np.array([1e-6, 1.0]),
               label_smoothing=0.5)
    assert rel_err(got, 525.0) < 1e-15


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smoothing_with_large_gaps_matches_mpmath(call, dtype):
    rng = np.random.default_rng(8)
    rows, n_classes = 12, 4
    x = (rng.standard_normal((rows, n_classes)) * 3).astype(dtype)
    y = rng.integers(0, n_classes, rows)
    x[np.arange(rows), y] -= np.array([0, 1, 5, 20, 40, 80, 85, 88, 300, 500, 650, 700])[:rows].astype(dtype) \
        * (1 if dtype == np.float64 else 0.12)
    weight = rng.uniform(0, 1, n_classes)
    weight[y[:3]] = 1e-6
    for eps in (0.1, 0.5, 1.0):
        got = call("cross_entropy", x, y, weight=weight.astype(dtype), label_smoothing=eps)
        expected = _smoothed_loss_mpmath(x, y, weight.astype(dtype), eps)
        assert rel_err(got, expected) < 16 * np.finfo(dtype).eps, eps


# ------------------------------------------- items 2 and 3: KL divergence
def test_kl_ratio_out_of_range(call):
    sp = pytest.importorskip("scipy.special")
    for p, q in [(0.5, 1e-310), (5e-324, 2.0), (1e-300, 1e300), (1e300, 1e-300), (0.3, 0.7)]:
        got = call("kl_divergence", np.array([p]), np.array([q]))
        expected = sp.rel_entr(p, q)
        assert np.isfinite(got), (p, q, got, expected)
        # subnormal answers: within a unit of the smallest subnormal
        assert abs(got - expected) <= max(1e-14 * abs(expected), 5e-324), (p, q, got, expected)
    p, q = np.array([0.5, 0.5]), np.array([1e-310, 1.0])
    h_pq = call("cross_entropy_probs", p, q)
    assert np.isfinite(h_pq) and rel_err(call("entropy", p) + call("kl_divergence", p, q), h_pq) < 1e-15


def test_kl_special_values(call):
    def kl(p, q):
        return call("kl_divergence_with_grad", np.array([p]), np.array([q]))

    value, grad = kl(0.9, -0.0)
    assert value == np.inf and grad[0] == -np.inf  # -0.0 is 0, as +0.0
    assert kl(0.9, 0.0)[0] == np.inf
    assert np.isnan(kl(np.nan, -0.5)[0]) and np.isnan(kl(-0.5, np.nan)[0])
    assert np.isnan(kl(np.nan, 0.5)[0]) and np.isnan(kl(0.5, np.nan)[0])
    assert kl(0.0, -0.0)[0] == 0.0 and kl(-0.5, 0.5)[0] == np.inf


# ------------------------------------------------ item 4: BCE near 0 and 1
def test_binary_cross_entropy_relative_accuracy(call):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    p = np.array([1e-17, 1e-12, 0.9999, 0.9999999999, 0.5, 1e-300])
    t = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    expected = [float(-mpmath.log(mpmath.mpf(v)) if tv else -mpmath.log1p(-mpmath.mpf(v))) for v, tv in zip(p, t)]
    got = call("binary_cross_entropy", p, t, reduction="none")
    assert rel_err(got, expected).max() < 4e-16
    got32 = call("binary_cross_entropy", np.array([1e-17, 1e-7], np.float32), np.array([0.0, 0.0], np.float32),
                 reduction="none")
    np.testing.assert_allclose(got32, [1e-17, -np.log1p(-np.float64(np.float32(1e-7)))], rtol=1e-7)


def test_binary_cross_entropy_with_logits_tiny_losses(call):
    x = np.array([-40.0, 40.0, -700.0, 30.0, -30.0])
    t = np.array([0.0, 1.0, 0.0, 1.0, 0.0])
    pw = np.array([1.0, 2.0, 1.0, 0.5, 3.0])
    loss, grad = call("binary_cross_entropy_with_logits_with_grad", x, t, pos_weight=pw, reduction="none")
    e = np.exp(-np.abs(x))
    expected = np.where(t == 1, pw * np.log1p(e), np.log1p(e))
    assert rel_err(loss, expected).max() < 4e-16
    expected_grad = np.where(t == 1, -pw * e / (1 + e), e / (1 + e))
    assert rel_err(grad, expected_grad).max() < 4e-16


# ------------------------------------------ item 5: deterministic BCE grad
def test_issue_17_item_5_reproducer(call):
    p = np.full((10, 12), 0.5)
    t = np.full((10, 12), 0.5)
    t[9, 9] = 0.21086043839346835
    w = np.random.default_rng(0).uniform(0, 3, (1, 12))
    go = np.array([[0.7]])
    seen = set()
    keep = []
    for n in range(60 if call.backend == "cpu" else 3):
        keep.append(np.empty(n * 7 + 1))  # move the heap around
        loss, grad = call("binary_cross_entropy_with_grad", p, t, weight=w, reduction="none", grad_output=go)
        seen.add((loss.tobytes(), grad.tobytes()))
    assert len(seen) == 1


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("n", [120, 5000])
def test_bce_outputs_do_not_depend_on_where_they_lie(from_logits, n):
    """Per-element losses and gradients (grad_output per element, weights)
    carved out of one buffer right next to an input, 0..8 elements apart:
    the bits are those of outputs far away (the vectoriser's overlap check
    once sent such calls through scalar code with other roundings)."""
    from fastxent.cpu.binary import bce_flat

    rng = np.random.default_rng(n)
    values = rng.standard_normal(n) * 4 if from_logits else rng.random(n)
    inputs = dict(values=values, target=rng.random(n), weight=rng.random(n) + 0.1,
                  grad_scale=rng.random(n) + 0.3)
    pos_weight = rng.random(n) * 3 if from_logits else None

    def run(loss, grad, **moved):
        a = dict(inputs, **moved)
        return bce_flat(a["values"], a["target"], a["weight"], pos_weight, from_logits, a["grad_scale"],
                        0.7, loss, grad, 4096)

    far_loss, far_grad = np.empty(n), np.empty(n)
    run(far_loss, far_grad)
    for name in inputs:
        for gap in range(9):
            buf = np.empty(3 * n + gap)
            buf[:n] = inputs[name]
            grad, loss = buf[n + gap:2 * n + gap], buf[2 * n + gap:]
            run(loss, grad, **{name: buf[:n]})
            np.testing.assert_array_equal(grad, far_grad, err_msg=f"{name} {gap}")
            np.testing.assert_array_equal(loss, far_loss, err_msg=f"{name} {gap}")
