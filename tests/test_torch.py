"""fastxent.torch against its torch.nn.functional / torch.nn namesakes: values
and gradients, gradcheck, torch.compile, inplace_backward, a training loop."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastxent.torch as xt  # noqa: E402

DTYPES = [torch.float32, torch.float64]
REDUCTIONS = ["mean", "sum", "none"]


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)


def check_same(ours_fn, torch_fn, inputs, dtype, grad_of=(0,)):
    """Values of ours_fn(*inputs) and torch_fn(*inputs) and their gradients,
    with respect to inputs[grad_of], for a random grad_output."""
    ours_in = [t.detach().clone().requires_grad_(i in grad_of) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
               for i, t in enumerate(inputs)]
    ref_in = [t.detach().clone().requires_grad_(i in grad_of) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
              for i, t in enumerate(inputs)]
    ours, ref = ours_fn(*ours_in), torch_fn(*ref_in)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    torch.testing.assert_close(ours, ref, **tol(dtype), equal_nan=True)
    if ref.numel() == 0 or not torch.isfinite(ref).all():
        return
    go = torch.rand(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(3)) + 0.5
    g_ours = torch.autograd.grad(ours, [ours_in[i] for i in grad_of], go)
    g_ref = torch.autograd.grad(ref, [ref_in[i] for i in grad_of], go)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, **tol(dtype))


def rng(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------ cross-entropy
CE_OPTIONS = [
    dict(),
    dict(label_smoothing=0.2),
    dict(weight="w"),
    dict(weight="w", label_smoothing=0.1, ignore_index=1),
    dict(ignore_index=1),
]
CE_SHAPES = [(6, 5), (5,), (3, 5, 4), (2, 5, 3, 2), (0, 5)]


def ce_inputs(shape, dtype, probabilities, seed=0):
    g = rng(seed)
    x = torch.randn(shape, dtype=dtype, generator=g) * 3
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    if probabilities:
        t = torch.softmax(torch.randn(shape, dtype=dtype, generator=g), dim=0 if len(shape) == 1 else 1)
    else:
        batch = () if len(shape) == 1 else (shape[0],) + shape[2:]
        t = torch.randint(0, n_classes, batch, generator=g)
        if t.numel() > 1:
            t.view(-1)[0] = 1  # a row with label 1 (ignored in some options)
    w = torch.rand(n_classes, dtype=dtype, generator=g) + 0.5
    return x, t, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize("probabilities,options",
                         [(False, o) for o in CE_OPTIONS] +
                         [(True, o) for o in CE_OPTIONS if "ignore_index" not in o], ids=str)
def test_cross_entropy_matches_torch(dtype, reduction, shape, probabilities, options):
    # (ignore_index with probabilities is an error: test_cross_entropy_errors_like_torch)
    x, t, w = ce_inputs(shape, dtype, probabilities)
    kw = dict(options, reduction=reduction)
    if "weight" in kw:
        kw["weight"] = w
    check_same(lambda x, t: xt.cross_entropy(x, t, **kw), lambda x, t: F.cross_entropy(x, t, **kw),
               (x, t), dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_module_and_inplace(reduction):
    x, t, w = ce_inputs((7, 6), torch.float64, False)
    x[0, 2] = -torch.inf  # a masked class
    ours = xt.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=0.1)
    ref = torch.nn.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=0.0)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    ref.label_smoothing = 0.1
    check_same(ours, ref, (x, t), torch.float64)
    inplace = xt.CrossEntropyLoss(weight=w, reduction=reduction, inplace_backward=True)
    plain = torch.nn.CrossEntropyLoss(weight=w, reduction=reduction)
    h = torch.randn(7, 3, dtype=torch.float64, generator=rng(1), requires_grad=True)
    W = torch.randn(6, 3, dtype=torch.float64, generator=rng(2), requires_grad=True)
    loss = inplace(h @ W.T, t)
    go = torch.rand(loss.shape, dtype=torch.float64, generator=rng(3))
    ours_grads = torch.autograd.grad(loss, (h, W), go)
    ref_loss = plain(h @ W.T, t)
    torch.testing.assert_close(loss, ref_loss)
    for a, b in zip(ours_grads, torch.autograd.grad(ref_loss, (h, W), go)):
        torch.testing.assert_close(a, b)


def test_cross_entropy_low_precision():
    x, t, _ = ce_inputs((8, 33), torch.float32, False)
    for dtype in (torch.float16, torch.bfloat16):
        xl = x.to(dtype).requires_grad_()
        loss = xt.cross_entropy(xl, t, label_smoothing=0.1)
        assert loss.dtype == dtype
        ref = F.cross_entropy(xl.detach().float().requires_grad_(), t, label_smoothing=0.1)
        torch.testing.assert_close(loss.float(), ref, rtol=1e-2, atol=1e-3)
        loss.backward()
        assert xl.grad.dtype == dtype
        xr = xl.detach().float().requires_grad_()
        F.cross_entropy(xr, t, label_smoothing=0.1).backward()
        torch.testing.assert_close(xl.grad.float(), xr.grad, rtol=1e-2, atol=1e-3)


def test_cross_entropy_probability_target_promotes_like_torch():
    x = torch.randn(4, 3)
    p = torch.softmax(torch.randn(4, 3, dtype=torch.float64), 1)
    ours, ref = xt.cross_entropy(x, p), F.cross_entropy(x, p)
    assert ours.dtype == ref.dtype == torch.float64
    torch.testing.assert_close(ours, ref)


def test_cross_entropy_errors_like_torch():
    x = torch.randn(3, 4)
    with pytest.raises(IndexError):
        xt.cross_entropy(x, torch.tensor([0, 1, 4]))
    with pytest.raises(IndexError):
        F.cross_entropy(x, torch.tensor([0, 1, 4]))
    with pytest.raises(RuntimeError, match="Long or Byte"):
        xt.cross_entropy(x, torch.tensor([0, 1, 2], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="ignore_index"):
        xt.cross_entropy(x, torch.softmax(x, 1), ignore_index=0)
    with pytest.raises(ValueError):
        xt.cross_entropy(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        xt.cross_entropy(x, torch.tensor([0, 1, 2]), reduction="mean_please")
    with pytest.raises(NotImplementedError, match="target"):
        xt.cross_entropy(x, torch.softmax(x, 1).requires_grad_())
    with pytest.raises(ValueError, match="leaf"):
        xt.cross_entropy(x.clone().requires_grad_(), torch.tensor([0, 1, 2]), inplace_backward=True)
    with pytest.raises(NotImplementedError, match="torch.func"):
        torch.func.grad(lambda z: xt.cross_entropy(z, torch.tensor([0, 1, 2])))(x)


def test_inplace_backward_reuses_storage_and_allocates_no_logits():
    n, c = 256, 2000
    h = torch.randn(n, 16, generator=rng(0), requires_grad=True)
    W = torch.randn(c, 16, generator=rng(1), requires_grad=True)
    t = torch.randint(0, c, (n,), generator=rng(2))
    logits_bytes = n * c * 4
    results = {}
    for inplace in (False, True):
        logits = h @ W.T
        pointer = logits.data_ptr()
        seen = []
        logits.register_hook(lambda g: seen.append(g.data_ptr()))
        tracemalloc.start()
        loss = xt.cross_entropy(logits, t, inplace_backward=inplace)
        del logits
        loss.backward()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        results[inplace] = (peak, seen[0] == pointer, h.grad.clone())
        h.grad = W.grad = None
    # the default path allocates one logits-sized gradient (a NumPy array: traced) ...
    assert results[False][0] >= logits_bytes
    assert not results[False][1]
    # ... inplace_backward none: the gradient handed to the matmul is the logits' storage
    assert results[True][0] < logits_bytes / 8
    assert results[True][1]
    torch.testing.assert_close(results[True][2], results[False][2])


def test_inplace_backward_refuses_a_second_backward_and_protects_saved_logits():
    h = torch.randn(5, 3, requires_grad=True)
    W = torch.randn(4, 3, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3, 0])
    loss = xt.cross_entropy(h @ W.T, t, inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="consumed"):
        loss.backward()
    # tanh saved its output for its backward: overwriting it must be detected
    loss = xt.cross_entropy(torch.tanh(h @ W.T), t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="inplace operation"):
        loss.backward()
    # the default path keeps its buffer: retain_graph works, for leaf logits too
    loss = xt.cross_entropy(h @ W.T, t)
    first = torch.autograd.grad(loss, h, retain_graph=True)[0]
    torch.testing.assert_close(torch.autograd.grad(loss, h)[0], first)
    logits = (h @ W.T).detach().requires_grad_()
    loss = xt.cross_entropy(logits, t)
    single = torch.autograd.grad(F.cross_entropy(logits, t), logits)[0]
    for times in (1, 2, 3):
        loss.backward(retain_graph=True)
        torch.testing.assert_close(logits.grad, times * single)


# ---------------------------------------------------- binary cross-entropy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(6, 4), (5,), (0, 3)], ids=str)
def test_binary_cross_entropy_matches_torch(dtype, reduction, weighted, shape):
    g = rng(4)
    logits = torch.randn(shape, dtype=dtype, generator=g) * 4
    probs = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)
    target = torch.rand(shape, dtype=dtype, generator=g)
    w = torch.rand(shape[-1:], dtype=dtype, generator=g) + 0.5 if weighted else None
    pw = torch.rand(shape[-1:], dtype=dtype, generator=g) + 0.5 if weighted else None
    check_same(lambda p, t: xt.binary_cross_entropy(p, t, w, reduction=reduction),
               lambda p, t: F.binary_cross_entropy(p, t, w, reduction=reduction),
               (probs, target), dtype)
    check_same(lambda x, t: xt.binary_cross_entropy_with_logits(x, t, w, reduction=reduction, pos_weight=pw),
               lambda x, t: F.binary_cross_entropy_with_logits(x, t, w, reduction=reduction, pos_weight=pw),
               (logits, target), dtype)
    check_same(xt.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction=reduction),
               torch.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction=reduction),
               (logits, target), dtype)
    check_same(xt.BCELoss(weight=w, reduction=reduction), torch.nn.BCELoss(weight=w, reduction=reduction),
               (probs, target), dtype)


def test_binary_cross_entropy_errors():
    with pytest.raises(ValueError):
        xt.binary_cross_entropy(torch.tensor([1.5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="size"):
        xt.binary_cross_entropy(torch.tensor([0.5, 0.5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="size"):
        xt.binary_cross_entropy_with_logits(torch.tensor([0.5, 0.5]), torch.tensor([1.0]))


# ------------------------------------------------------------------ softmax
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((5, 7), 1), ((5, 7), 0), ((3, 4, 5), 1), ((3, 4, 5), -1), ((6,), 0), ((0, 4), 1)], ids=str)
def test_softmax_family_matches_torch(dtype, shape, dim):
    x = torch.randn(shape, dtype=dtype, generator=rng(5)) * 5
    check_same(lambda x: xt.softmax(x, dim), lambda x: F.softmax(x, dim), (x,), dtype)
    check_same(lambda x: xt.log_softmax(x, dim=dim), lambda x: F.log_softmax(x, dim=dim), (x,), dtype)
    for keepdim in (False, True):
        check_same(lambda x: xt.logsumexp(x, dim, keepdim), lambda x: torch.logsumexp(x, dim, keepdim),
                   (x,), dtype)
    if len(shape) == 3:
        check_same(lambda x: xt.logsumexp(x, (0, 2)), lambda x: torch.logsumexp(x, (0, 2)), (x,), dtype)


def test_softmax_dtype_argument_and_extremes():
    x = torch.tensor([[0.0, 1000.0, -torch.inf], [1e30, -1e30, 0.0]])
    torch.testing.assert_close(xt.log_softmax(x, 1), F.log_softmax(x, 1))
    torch.testing.assert_close(xt.softmax(x, 1, dtype=torch.float64), F.softmax(x, 1, dtype=torch.float64))
    torch.testing.assert_close(xt.logsumexp(torch.arange(4), 0), torch.logsumexp(torch.arange(4), 0))


# -------------------------------------------------------------- divergence
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "batchmean", "sum", "mean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_matches_torch(dtype, reduction, log_target):
    g = rng(6)
    x = torch.log_softmax(torch.randn(5, 6, dtype=dtype, generator=g), 1)
    p = torch.softmax(torch.randn(5, 6, dtype=dtype, generator=g), 1)
    p[0, 0] = 0.0
    t = torch.log(p) if log_target else p
    with pytest.warns(UserWarning) if reduction == "mean" else _no_warning_check():
        check_same(lambda x, t: xt.kl_div(x, t, reduction=reduction, log_target=log_target),
                   lambda x, t: F.kl_div(x, t, reduction=reduction, log_target=log_target),
                   (x, t), dtype, grad_of=(0,) if not log_target else (0, 1))
    check_same(xt.KLDivLoss(reduction="sum", log_target=log_target),
               torch.nn.KLDivLoss(reduction="sum", log_target=log_target), (x, t), dtype)


class _no_warning_check:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------- linear cross-entropy
def linear_inputs(dtype, n=37, d=6, c=11, probabilities=False, seed=7):
    g = rng(seed)
    x = torch.randn(n, d, dtype=dtype, generator=g)
    W = torch.randn(c, d, dtype=dtype, generator=g)
    b = torch.randn(c, dtype=dtype, generator=g)
    if probabilities:
        t = torch.softmax(torch.randn(n, c, dtype=dtype, generator=g), 1)
    else:
        t = torch.randint(0, c, (n,), generator=g)
        t[:3] = 2
    w = torch.rand(c, dtype=dtype, generator=g) + 0.5
    return x, W, b, t, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", [dict(), dict(bias=True), dict(weight=True, ignore_index=2),
                                     dict(label_smoothing=0.1, bias=True), dict(probabilities=True)],
                         ids=str)
def test_linear_cross_entropy_matches_torch(dtype, reduction, options):
    options = dict(options)
    x, W, b, t, w = linear_inputs(dtype, probabilities=options.pop("probabilities", False))
    kw = dict(reduction=reduction, label_smoothing=options.get("label_smoothing", 0.0))
    if options.get("weight"):
        kw["weight"] = w
    if "ignore_index" in options:
        kw["ignore_index"] = options["ignore_index"]
    bias = b if options.get("bias") else None
    grad_of = (0, 1, 3) if bias is not None else (0, 1)
    for chunk_size in (None, 8):
        check_same(lambda x, W, t, b: xt.linear_cross_entropy(x, W, t, linear_bias=b, chunk_size=chunk_size, **kw),
                   lambda x, W, t, b: F.linear_cross_entropy(x, W, t, linear_bias=b, **kw),
                   (x, W, t, bias), dtype, grad_of=grad_of)


def test_linear_cross_entropy_l2_unbatched_and_empty():
    x, W, b, t, w = linear_inputs(torch.float64)
    l2 = 0.3
    check_same(lambda x, W: xt.linear_cross_entropy(x, W, t, l2=l2, chunk_size=5),
               lambda x, W: F.cross_entropy(x @ W.T, t) + l2 / 2 * W.square().sum(),
               (x, W), torch.float64, grad_of=(0, 1))
    check_same(lambda x, W: xt.linear_cross_entropy(x, W, t[0]),
               lambda x, W: F.linear_cross_entropy(x, W, t[0]), (x[0], W), torch.float64, grad_of=(0, 1))
    empty = torch.zeros(0, 6, dtype=torch.float64)
    for reduction in REDUCTIONS:
        ours = xt.linear_cross_entropy(empty, W, t[:0], reduction=reduction)
        torch.testing.assert_close(ours, F.linear_cross_entropy(empty, W, t[:0], reduction=reduction),
                                   equal_nan=True)


@pytest.mark.parametrize("probabilities", [False, True])
def test_linear_cross_entropy_device_path_on_cpu_tensors(monkeypatch, probabilities):
    """The CUDA tensors' path (validation on host stand-ins, device tensors
    swapped in, every array op in torch) run on CPU tensors."""
    from fastxent.torch import _ops

    monkeypatch.setattr(_ops, "_validate_on_stand_ins", lambda input: True)
    x, W, b, t, w = linear_inputs(torch.float64, probabilities=probabilities)
    kw = dict(weight=w, label_smoothing=0.1) if not probabilities else dict(label_smoothing=0.1)
    for reduction in REDUCTIONS:
        check_same(lambda x, W, t, b: xt.linear_cross_entropy(x, W, t, linear_bias=b, reduction=reduction, chunk_size=8, **kw),
                   lambda x, W, t, b: F.linear_cross_entropy(x, W, t, linear_bias=b, reduction=reduction, **kw),
                   (x, W, t, b), torch.float64, grad_of=(0, 1, 3))
    with pytest.raises(IndexError):
        xt.linear_cross_entropy(x[:2], W, torch.tensor([0, 11]))


def test_linear_cross_entropy_module_and_errors():
    torch.manual_seed(0)
    ours = xt.LinearCrossEntropyLoss(6, 11, bias=True, dtype=torch.float64, label_smoothing=0.1)
    torch.manual_seed(0)
    ref = torch.nn.LinearCrossEntropyLoss(6, 11, bias=True, dtype=torch.float64, label_smoothing=0.1)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x, _, _, t, _ = linear_inputs(torch.float64)
    a, b = ours(x, t), ref(x, t)
    torch.testing.assert_close(a, b)
    a.backward()
    b.backward()
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    with pytest.raises(NotImplementedError):
        xt.LinearCrossEntropyLoss(6, 11, out_features=(2,))
    with pytest.raises(RuntimeError, match="dimensionality"):
        xt.linear_cross_entropy(torch.randn(2, 3, 6), torch.randn(11, 6), t[:2])
    with pytest.raises(RuntimeError, match="in_features"):
        xt.linear_cross_entropy(torch.randn(2, 5), torch.randn(11, 6), t[:2])
    with pytest.raises(RuntimeError, match="probabilities"):
        xt.linear_cross_entropy(torch.randn(2, 6), torch.randn(11, 6), torch.rand(2, 11), ignore_index=1)
    with pytest.raises(IndexError):
        xt.linear_cross_entropy(torch.randn(2, 6), torch.randn(11, 6), torch.tensor([0, 11]))


# ------------------------------------------------------ gradcheck, compile
def test_gradcheck_float64():
    g = rng(8)
    x = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    x3 = torch.randn(2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.tensor([0, 4, 2, 1])
    probs = torch.softmax(torch.randn(4, 5, dtype=torch.float64, generator=g), 1)
    w = torch.rand(5, dtype=torch.float64, generator=g) + 0.5
    gc = torch.autograd.gradcheck
    for reduction in REDUCTIONS:
        assert gc(lambda x: xt.cross_entropy(x, labels, weight=w, reduction=reduction, label_smoothing=0.1), (x,))
        assert gc(lambda x: xt.cross_entropy(x, probs, reduction=reduction), (x,))
        assert gc(lambda x: xt.cross_entropy(x, labels[:2, None].expand(2, 3), reduction=reduction), (x3,))
        assert gc(lambda x: xt.binary_cross_entropy_with_logits(x, probs, reduction=reduction), (x,))
        assert gc(lambda x: xt.binary_cross_entropy(torch.sigmoid(x), probs, reduction=reduction), (x,))
        assert gc(lambda x: xt.kl_div(torch.log_softmax(x, 1), probs, reduction=reduction if reduction != "mean" else "batchmean"), (x,))
    assert gc(lambda x: xt.softmax(x, 1), (x,))
    assert gc(lambda x: xt.log_softmax(x3, 1) * x3, (x3,))
    assert gc(lambda x: xt.logsumexp(x, (0, 2)), (x3,))
    h = torch.randn(9, 3, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    t9 = torch.randint(0, 5, (9,), generator=g)
    for reduction in REDUCTIONS:
        assert gc(lambda h, W, b: xt.linear_cross_entropy(h, W, t9, linear_bias=b, reduction=reduction,
                                                          chunk_size=4), (h, W, b))
    # the softmax family's backward is made of torch ops: second derivatives too
    assert torch.autograd.gradgradcheck(lambda x: xt.log_softmax(x, 1), (x,))
    # the losses refuse a graph-building backward instead of a silently wrong second derivative
    with pytest.raises(RuntimeError, match="double backward"):
        gx, = torch.autograd.grad(xt.cross_entropy(x, labels), x, create_graph=True)
        gx.sum().backward()


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))
    head = xt.LinearCrossEntropyLoss(10, 7, bias=True)
    x = torch.randn(12, 8)
    y = torch.randint(0, 10, (12,))
    y7 = torch.randint(0, 7, (12,))
    p = torch.softmax(torch.randn(12, 10), 1)

    def losses(x):
        z = model(x)
        return torch.stack([
            xt.cross_entropy(z, y, label_smoothing=0.1),
            xt.cross_entropy(z * 2, p, reduction="none").sum(),
            xt.kl_div(xt.log_softmax(z, 1), p, reduction="batchmean"),
            xt.logsumexp(z, 1).mean(),
            xt.softmax(z, 1)[:, 0].sum(),
            xt.binary_cross_entropy_with_logits(z, p),
            head(torch.tanh(z), y7),
        ])

    compiled = torch.compile(losses, fullgraph=True)
    results = []
    for fn in (losses, compiled):
        for prm in list(model.parameters()) + list(head.parameters()):
            prm.grad = None
        values = fn(x)
        values.sum().backward()
        results.append((values.detach(), [q.grad.clone() for q in list(model.parameters()) + list(head.parameters())]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_training_loop_matches_torch_loss():
    """50 SGD steps of a small MLP: fastxent's loss and torch's give the same
    losses (and so the same parameters) to 1e-5."""
    data = torch.randn(256, 20, generator=rng(9))
    labels = torch.randint(0, 10, (256,), generator=rng(10))

    def run(loss_fn):
        torch.manual_seed(11)
        model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        history = []
        for step in range(50):
            batch = slice((step * 64) % 256, (step * 64) % 256 + 64)
            opt.zero_grad()
            loss = loss_fn(model(data[batch]), labels[batch])
            loss.backward()
            opt.step()
            history.append(loss.item())
        return np.array(history)

    ours = run(xt.CrossEntropyLoss(label_smoothing=0.05, inplace_backward=True))
    ref = run(torch.nn.CrossEntropyLoss(label_smoothing=0.05))
    assert ours[-1] < ours[0] * 0.8  # it learns
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------- the plain API on CPU tensors
def test_plain_api_takes_and_returns_cpu_tensors():
    """DESIGN.md's "torch in, torch out" for every public function, on tensors
    that require grad too, with the NumPy path's values."""
    import fastxent as fx

    g = rng(12)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(torch.randn(6, 5, generator=g, dtype=torch.float64), 1)
    q = torch.softmax(torch.randn(6, 5, generator=g, dtype=torch.float64), 1)
    y = torch.randint(0, 5, (6,), generator=g)
    W = torch.randn(4, 5, generator=g, dtype=torch.float64)
    y4 = torch.randint(0, 4, (6,), generator=g)
    calls = {
        "cross_entropy": (x, y), "cross_entropy_with_grad": (x, y), "logsumexp": (x,),
        "softmax": (x,), "log_softmax": (x,), "binary_cross_entropy": (p, q),
        "binary_cross_entropy_with_grad": (p, q), "binary_cross_entropy_with_logits": (x, q),
        "binary_cross_entropy_with_logits_with_grad": (x, q), "entropy": (p,),
        "entropy_with_grad": (p,), "kl_divergence": (p, q), "kl_divergence_with_grad": (p, q),
        "cross_entropy_probs": (p, q), "cross_entropy_probs_with_grad": (p, q),
        "linear_cross_entropy": (x, W, y4), "linear_cross_entropy_with_grad": (x, W, y4),
    }
    for name, args in calls.items():
        ours = getattr(fx, name)(*args)
        numpy_args = [a.detach().numpy() for a in args]
        ref = getattr(fx, name)(*numpy_args)
        flat_ours = ours if isinstance(ours, tuple) else (ours,)
        flat_ref = ref if isinstance(ref, tuple) else (ref,)
        if name == "linear_cross_entropy_with_grad":
            flat_ours, flat_ref = (flat_ours[0], *flat_ours[1][:2]), (flat_ref[0], *flat_ref[1][:2])
        for a, b in zip(flat_ours, flat_ref):
            assert isinstance(a, torch.Tensor), (name, type(a))
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-12, atol=1e-14, err_msg=name)


def test_bench_torch_runs_on_small_shapes(capsys, tmp_path):
    from fastxent.tools import bench_torch

    out = tmp_path / "bench.json"
    # (--no-memory: each memory measurement is a fresh process, tens of seconds on a loaded machine)
    assert bench_torch.main(["--ce-shapes", "64x10", "--linear-shapes", "64x8x50", "--rounds", "1",
                             "--no-memory", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "vs eager" in text and "fastest PyTorch variant" in text
    import json

    results = json.loads(out.read_text())
    assert results["cross_entropy"][0]["vs_eager"] > 0
    assert results["linear_cross_entropy"][0]["vs_fastest_torch"] > 0
