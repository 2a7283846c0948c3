"""Cross-entropy from logits and its fused gradient: against the float64
NumPy reference, PyTorch (values and autograd gradients) and finite
differences."""

import itertools

import numpy as np
import pytest

import fastxent as fx
from fastxent import reference
from tests.conftest import as64, assert_close, numeric_grad

REDUCTIONS = ["mean", "sum", "none"]


def _problem(rng, batch=(13,), n_classes=7, soft=False, ignore=True):
    logits = rng.standard_normal(batch + (n_classes,)) * 2
    if soft:
        t = rng.random(batch + (n_classes,))
        target = t / t.sum(-1, keepdims=True)
    else:
        target = rng.integers(0, n_classes, batch)
        if ignore:
            target.reshape(-1)[:: 5] = -100
    return logits, target


OPTIONS = list(itertools.product(REDUCTIONS, [0.0, 0.25], [False, True], [False, True]))


@pytest.mark.parametrize("reduction,smoothing,weighted,soft", OPTIONS)
def test_matches_reference(rng, reduction, smoothing, weighted, soft):
    logits, target = _problem(rng, batch=(5, 4), soft=soft)
    weight = rng.random(7) + 0.1 if weighted else None
    kw = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)
    grad_output = rng.random((5, 4)) if reduction == "none" else 0.7
    loss, grad = fx.cross_entropy_with_grad(logits, target, grad_output=grad_output, **kw)
    ref_loss, ref_grad = reference.cross_entropy_with_grad(logits, target, grad_output=grad_output, **kw)
    assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15)
    assert_close(fx.cross_entropy(logits, target, **kw), ref_loss, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction,smoothing,weighted,soft", OPTIONS)
def test_matches_torch(rng, reduction, smoothing, weighted, soft):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    logits, target = _problem(rng, batch=(11,), n_classes=6, soft=soft)
    weight = rng.random(6) + 0.1 if weighted else None
    x = torch.tensor(logits, requires_grad=True)
    t_loss = F.cross_entropy(x, torch.tensor(target), reduction=reduction, label_smoothing=smoothing,
                             weight=None if weight is None else torch.tensor(weight))
    upstream = rng.random(11) if reduction == "none" else 1.3
    t_loss.backward(torch.as_tensor(upstream, dtype=torch.float64))
    loss, grad = fx.cross_entropy_with_grad(logits, target, weight=weight, reduction=reduction,
                                            label_smoothing=smoothing, grad_output=upstream)
    assert_close(loss, t_loss.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert_close(grad, x.grad.numpy(), rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4096, 10), (64, 1000), (3, 40000)])
def test_torch_float32_and_float64_shapes(rng, dtype, shape):
    """Shapes that take every code path: blocks of short rows, long rows."""
    torch = pytest.importorskip("torch")
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0])
    x = torch.tensor(as64(logits), requires_grad=True)
    torch.nn.functional.cross_entropy(x, torch.tensor(labels)).backward()
    loss, grad = fx.cross_entropy_with_grad(logits, labels)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert loss.dtype == dtype and grad.dtype == dtype
    assert_close(loss, torch.nn.functional.cross_entropy(x, torch.tensor(labels)).item(), rtol=rtol)
    assert_close(grad, x.grad.numpy(), rtol=rtol, atol=rtol * np.abs(x.grad.numpy()).max())


@pytest.mark.parametrize("smoothing,weighted,soft", list(itertools.product([0.0, 0.3], [False, True], [False, True])))
def test_gradient_matches_finite_differences(rng, smoothing, weighted, soft):
    logits, target = _problem(rng, batch=(4,), n_classes=5, soft=soft)
    weight = rng.random(5) + 0.5 if weighted else None
    kw = dict(weight=weight, label_smoothing=smoothing, reduction="mean")
    _, grad = fx.cross_entropy_with_grad(logits, target, **kw)
    numeric = numeric_grad(lambda z: fx.cross_entropy(z, target, **kw), logits)
    assert_close(grad, numeric, rtol=1e-6, atol=1e-8)


def test_out_receives_gradient_and_in_place(rng):
    logits, target = _problem(rng, batch=(50,), n_classes=300)
    loss, grad = fx.cross_entropy_with_grad(logits, target)
    out = np.full_like(logits, np.nan)
    loss2, grad2 = fx.cross_entropy_with_grad(logits, target, out=out)
    assert grad2 is out and loss2 == loss
    np.testing.assert_array_equal(out, grad)
    inplace = logits.copy()
    loss3, grad3 = fx.cross_entropy_with_grad(inplace, target, out=inplace)
    assert grad3 is inplace and loss3 == loss
    np.testing.assert_array_equal(inplace, grad)


def test_out_overlapping_the_logits_is_still_right(rng):
    logits, target = _problem(rng, batch=(8,), n_classes=6, ignore=False)
    expected = fx.cross_entropy_with_grad(logits, target)[1]
    buf = np.concatenate([logits, logits])  # out is a shifted view of the same memory
    x = buf[:8]
    out = buf[4:12]
    fx.cross_entropy_with_grad(x.copy(), target)  # sanity
    _, got = fx.cross_entropy_with_grad(x, target, out=out)
    np.testing.assert_array_equal(got, expected)


def test_out_non_contiguous_and_float16(rng):
    logits, target = _problem(rng, batch=(10,), n_classes=8)
    expected = fx.cross_entropy_with_grad(logits, target)[1]
    holder = np.zeros((10, 16))
    out = holder[:, ::2]
    _, got = fx.cross_entropy_with_grad(logits, target, out=out)
    assert got is out
    np.testing.assert_array_equal(holder[:, ::2], expected)
    half = logits.astype(np.float16)
    out16 = np.empty_like(half)
    loss16, g16 = fx.cross_entropy_with_grad(half, target, out=out16)
    assert g16 is out16 and loss16.dtype == np.float16
    assert_close(g16, reference.cross_entropy_with_grad(half.astype(np.float32), target)[1],
                 rtol=1e-2, atol=1e-3)


def test_soft_one_hot_equals_hard_labels(rng):
    logits, target = _problem(rng, batch=(30,), n_classes=9, ignore=False)
    one_hot = np.eye(9)[target]
    for reduction in REDUCTIONS:
        hard = fx.cross_entropy_with_grad(logits, target, reduction=reduction)
        soft = fx.cross_entropy_with_grad(logits, one_hot, reduction=reduction)
        assert_close(hard[0], soft[0], rtol=1e-13, atol=1e-15)
        assert_close(hard[1], soft[1], rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("n_classes", [10, 1000, 32000, 262144])
def test_float32_within_1e5_of_float64(rng, n_classes):
    rows = max(2, 2_000_000 // n_classes)
    logits = (rng.standard_normal((rows, n_classes)) * 4).astype(np.float32)
    labels = rng.integers(0, n_classes, rows)
    ref_loss, ref_grad = reference.cross_entropy_with_grad(as64(logits), labels, reduction="none")
    loss, grad = fx.cross_entropy_with_grad(logits, labels, reduction="none")
    ref_lse = reference.logsumexp(as64(logits))
    # A row's loss is lse - x_y: when it is tiny (a confident, correct row)
    # it is a cancellation, and no float32 computation from float32 inputs
    # can be relatively exact; there the error is measured against |lse|.
    scale = np.maximum(np.abs(ref_loss), np.abs(ref_lse))
    assert np.max(np.abs(loss - ref_loss) / scale) < 1e-5
    mean = fx.cross_entropy(logits, labels)
    assert abs(mean - ref_loss.mean()) / ref_loss.mean() < 1e-5
    # the gradient is a probability (minus one): relative to its row's scale
    assert np.max(np.abs(grad - ref_grad)) < 1e-5 * np.max(np.abs(ref_grad))
    lse = fx.logsumexp(logits)
    # lse crosses 0 for some rows: relative to the row's magnitude there
    assert np.max(np.abs(lse - ref_lse) / np.maximum(np.abs(ref_lse), np.abs(logits).max(-1))) < 1e-5


def test_batch_axes_and_single_sample(rng):
    logits, target = _problem(rng, batch=(3, 4, 2), n_classes=5)
    loss = fx.cross_entropy(logits, target, reduction="none")
    assert loss.shape == (3, 4, 2)
    assert_close(loss, reference.cross_entropy(logits, target, reduction="none"), rtol=1e-12)
    single = fx.cross_entropy(logits[0, 0, 0], np.int64(2))
    assert np.ndim(single) == 0
    assert_close(single, reference.cross_entropy(logits[0, 0, 0][None], np.array([2])), rtol=1e-12)


# --------------------------------------------------------------- PyTorch, more
def _torch_ce(torch, logits, target, grad_output=None, **kw):
    """PyTorch's loss and autograd gradient with the class axis moved to where
    PyTorch wants it (axis 1 for N-d input)."""
    x = torch.tensor(logits, requires_grad=True)
    moved = x.movedim(-1, 1) if x.ndim > 2 else x
    if "weight" in kw and kw["weight"] is not None:
        kw["weight"] = torch.tensor(kw["weight"])
    t = torch.tensor(target)
    if t.is_floating_point() and t.ndim > 2:
        t = t.movedim(-1, 1)
    loss = torch.nn.functional.cross_entropy(moved, t, **kw)
    upstream = 1.0 if grad_output is None else grad_output
    loss.backward(torch.as_tensor(upstream, dtype=loss.dtype).expand_as(loss))
    return loss.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("ignore_index", [3, 0, -1, 10**6])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_custom_ignore_index_against_torch(rng, ignore_index, reduction):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((17, 6)) * 2
    target = rng.integers(0, 6, 17)
    target[::3] = ignore_index  # ignore_index 3 and 0 are also valid classes elsewhere
    weight = rng.random(6) + 0.1
    upstream = rng.random(17) if reduction == "none" else 0.6
    kw = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=0.2)
    t_loss, t_grad = _torch_ce(torch, logits, target, upstream, **kw)
    loss, grad = fx.cross_entropy_with_grad(logits, target, grad_output=upstream, **kw)
    assert_close(loss, t_loss, rtol=1e-12, atol=1e-14)
    assert_close(grad, t_grad, rtol=1e-11, atol=1e-15)
    assert (grad[::3] == 0).all()  # ignored rows: zero gradient


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_batch_axes_against_torch(rng, soft, reduction):
    """(2, 3, 4, C) logits: PyTorch takes them as (N, C, d1, d2) with the class
    axis second; fastxent keeps it last."""
    torch = pytest.importorskip("torch")
    logits, target = _problem(rng, batch=(2, 3, 4), n_classes=5, soft=soft)
    weight = rng.random(5) + 0.2
    upstream = rng.random((2, 3, 4)) if reduction == "none" else 1.1
    kw = dict(weight=weight, reduction=reduction, label_smoothing=0.1)
    t_loss, t_grad = _torch_ce(torch, logits, target, upstream, **kw)  # "none": (2, 3, 4) both
    loss, grad = fx.cross_entropy_with_grad(logits, target, grad_output=upstream, **kw)
    assert_close(loss, t_loss, rtol=1e-12, atol=1e-14)
    assert_close(grad, t_grad, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("soft", [False, True])
def test_single_sample_against_torch(rng, soft):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal(7)
    if soft:
        target = rng.random(7)
        target /= target.sum()
    else:
        target = np.int64(4)
    t_loss, t_grad = _torch_ce(torch, logits, np.asarray(target), 0.5, label_smoothing=0.3)
    loss, grad = fx.cross_entropy_with_grad(logits, target, grad_output=0.5, label_smoothing=0.3)
    assert np.ndim(loss) == 0 and grad.shape == (7,)
    assert_close(loss, t_loss, rtol=1e-12)
    assert_close(grad, t_grad, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_out_and_in_place_against_torch(rng, soft, reduction):
    torch = pytest.importorskip("torch")
    logits, target = _problem(rng, batch=(40,), n_classes=33, soft=soft)
    weight = rng.random(33) + 0.1
    upstream = rng.random(40) if reduction == "none" else 2.5
    kw = dict(weight=weight, reduction=reduction, label_smoothing=0.05)
    t_loss, t_grad = _torch_ce(torch, logits, target, upstream, **kw)
    out = np.full_like(logits, np.nan)
    loss, grad = fx.cross_entropy_with_grad(logits, target, grad_output=upstream, out=out, **kw)
    assert grad is out
    assert_close(loss, t_loss, rtol=1e-12, atol=1e-14)
    assert_close(out, t_grad, rtol=1e-11, atol=1e-15)
    buf = logits.copy()
    loss, grad = fx.cross_entropy_with_grad(buf, target, grad_output=upstream, out=buf, **kw)
    assert grad is buf
    assert_close(loss, t_loss, rtol=1e-12, atol=1e-14)
    assert_close(buf, t_grad, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("soft", [False, True])
def test_float32_against_torch_float32(rng, soft):
    """fastxent in float32 is about as close to the float64 truth as PyTorch
    in float32 is: within 4x PyTorch's error or a few float32 ulps (8 ulps
    of the largest gradient entry: a float32 sum over the 1000 classes done
    naively would miss that), and within 1e-5."""
    torch = pytest.importorskip("torch")
    logits, target = _problem(rng, batch=(64,), n_classes=1000, soft=soft, ignore=False)
    kw = dict(label_smoothing=0.1, reduction="none")
    truth_loss, truth_grad = _torch_ce(torch, logits, target, **kw)
    t32_loss, t32_grad = _torch_ce(torch, logits.astype(np.float32),
                                   target.astype(np.float32) if soft else target, **kw)
    loss, grad = fx.cross_entropy_with_grad(logits.astype(np.float32),
                                            target.astype(np.float32) if soft else target, **kw)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    err = np.max(np.abs(loss - truth_loss) / np.abs(truth_loss))
    t_err = np.max(np.abs(t32_loss - truth_loss) / np.abs(truth_loss))
    assert err < max(4 * t_err, 1e-6) and err < 1e-5
    scale = np.abs(truth_grad).max()
    assert np.max(np.abs(grad - truth_grad)) < max(4 * np.max(np.abs(t32_grad - truth_grad)),
                                                        8 * np.finfo(np.float32).eps * scale)


# ----------------------------------------------------- finite differences, more
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True])
def test_finite_differences_every_reduction_with_grad_output(rng, reduction, soft):
    """d(sum(grad_output * loss))/dlogits for every reduction, with ignored
    rows, class weights, smoothing and a (2, 3) batch."""
    logits, target = _problem(rng, batch=(2, 3), n_classes=4, soft=soft)
    weight = rng.random(4) + 0.5
    upstream = rng.random((2, 3)) + 0.5 if reduction == "none" else 1.7
    kw = dict(weight=weight, label_smoothing=0.15, reduction=reduction)
    _, grad = fx.cross_entropy_with_grad(logits, target, grad_output=upstream, **kw)
    numeric = numeric_grad(lambda z: upstream * fx.cross_entropy(z, target, **kw), logits)
    assert_close(grad, numeric, rtol=1e-6, atol=1e-8)
    if not soft:
        assert (grad[target == -100] == 0).all()


# ----------------------------------------------------------- reference, more
@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("n_classes", [1, 3, 64, 5000])
def test_matches_reference_across_class_counts(rng, n_classes, ignore_index):
    """Short rows (blocked kernels) and long rows (one row per task)."""
    batch = (max(2, 20000 // n_classes),)
    logits = rng.standard_normal(batch + (n_classes,)) * 3
    target = rng.integers(0, n_classes, batch)
    target[::7] = ignore_index
    weight = rng.random(n_classes) + 0.1
    for kw in (dict(ignore_index=ignore_index),
               dict(weight=weight, label_smoothing=0.3, ignore_index=ignore_index)):
        for reduction in REDUCTIONS:
            got = fx.cross_entropy_with_grad(logits, target, reduction=reduction, **kw)
            ref = reference.cross_entropy_with_grad(logits, target, reduction=reduction, **kw)
            # the mean/sum add up to 10^4 row losses in a different order: 1e-11
            assert_close(got[0], ref[0], rtol=1e-11, atol=1e-14)
            assert_close(got[1], ref[1], rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [10, 300, 5000])
@pytest.mark.parametrize("smoothing,weighted", [(0.0, False), (0.2, True)])
def test_target_logit_far_below_the_max(rng, dtype, n_classes, smoothing, weighted):
    """Hard-label rows are shifted by their target logit first; where that
    overflows the sum (target far below the max) the row must fall back to
    the max shift and still match the float64 reference.  Rows of one block
    mix both cases, and an ignored row, a -inf target and a NaN row."""
    gaps = [0.0, 50.0, 88.0, 100.0, 800.0, 1e4, 1e30]
    rows = 3 * len(gaps) + 3
    x = (rng.standard_normal((rows, n_classes)) * 2).astype(dtype)
    y = rng.integers(0, n_classes, rows)
    for r, gap in enumerate(gaps * 3):
        x[r, y[r]] = x[r].max() - gap
    x[rows - 3, y[rows - 3]] = -np.inf
    x[rows - 2, 0] = np.nan
    y[rows - 1] = -100
    weight = np.linspace(0.5, 1.5, n_classes) if weighted else None
    kw = dict(reduction="none", label_smoothing=smoothing, weight=weight)
    with np.errstate(all="ignore"):
        loss, grad = fx.cross_entropy_with_grad(x, y, **kw)
        ref_loss, ref_grad = reference.cross_entropy_with_grad(as64(x), y, **kw)
        fwd = fx.cross_entropy(x, y, **kw)
    tol = dict(rtol=2e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    assert_close(loss, ref_loss, **tol)
    assert_close(fwd, ref_loss, **tol)
    assert_close(grad, ref_grad, **tol)
    assert np.isposinf(loss[rows - 3]) and np.isnan(loss[rows - 2]) and loss[rows - 1] == 0
    assert np.isfinite(loss[:rows - 3]).all() and np.isfinite(grad[:rows - 2]).all()
