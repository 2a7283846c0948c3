"""``python -m fastxent bench-linear``: the fused linear cross-entropy and
SoftmaxRegression against their peers, measured in one run.

Four measurements, each printed as it finishes:

1. **memory** -- the peak memory that ``linear_cross_entropy_with_grad`` adds
   above its inputs and outputs at N x D x C (default 8192 x 256 x 32000,
   float32), as a fraction of the full N x C logits, beside PyTorch's unfused
   matmul -> ``F.cross_entropy`` -> ``backward()``.  Read from Linux's
   resident-set high-water mark (reset through /proc/self/clear_refs), so
   every allocator counts.
2. **speed** -- forward + gradient (dx, dW, dbias) at 2048 x 256 x 32000 against
   the same PyTorch pipeline: medians of interleaved rounds.
3. **agreement** -- float64 loss and gradients against PyTorch autograd, with
   class weights, ignore_index and label smoothing.
4. **SoftmaxRegression** -- on a 200,000 x 128, 50-class synthetic problem
   against ``LogisticRegression(C=1/l2)`` (lbfgs, default settings), and on
   scikit-learn's digits against the tight optimum (LogisticRegression's
   lbfgs run to tol=1e-12 from our solution).

PyTorch and scikit-learn parts are skipped, with a note, when not installed.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Dict, List, Optional

import numpy as np

import fastxent as fx
from fastxent.tools._harness import (PeakRSS, extra_bytes, interleaved, parse_shapes,
                                     softmax_objective, timed)


def _say(text: str) -> None:
    print(text, flush=True)


def _problem(n: int, d: int, c: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    W = (rng.standard_normal((c, d)) / np.sqrt(d)).astype(dtype)
    b = (0.1 * rng.standard_normal(c)).astype(dtype)
    y = rng.integers(0, c, n)
    return x, W, b, y


def _torch_pipeline(x, W, b, y, **options):
    """PyTorch's unfused linear cross-entropy: (loss, (dx, dW, db)), or None."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    tx, tW, tb = (torch.from_numpy(a) for a in (x, W, b))
    ty = torch.from_numpy(y)
    kw = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}

    def run():
        xs, Ws, bs = (t.detach().requires_grad_(True) for t in (tx, tW, tb))
        loss = F.cross_entropy(xs @ Ws.T + bs, ty, **kw)
        loss.backward()
        return loss.detach(), (xs.grad, Ws.grad, bs.grad)

    return run


def measure_memory(n: int, d: int, c: int) -> Dict[str, float]:
    x, W, b, y = _problem(n, d, c, np.float32)
    logits_bytes = n * c * 4
    _say(f"[memory] N={n} D={d} C={c} float32: full logits = {logits_bytes / 1e6:.0f} MB")
    if not PeakRSS.available():
        _say("  skipped: needs Linux's /proc/self/clear_refs")
        return {}
    fx.linear_cross_entropy_with_grad(x[:64], W, y[:64], bias=b)  # compile outside the meter
    out = {"logits_mb": logits_bytes / 1e6}
    extra = extra_bytes(lambda: fx.linear_cross_entropy_with_grad(x, W, y, bias=b))
    out["fastxent_mb"] = extra / 1e6
    _say(f"  fastxent.linear_cross_entropy_with_grad: {extra / 1e6:8.1f} MB above inputs and "
         f"outputs = {extra / logits_bytes:.3f} x the logits (goal <= 0.125)")
    run = _torch_pipeline(x, W, b, y)
    if run is None:
        _say("  PyTorch: not installed")
    else:
        small = _torch_pipeline(x[:64], W, b, y[:64])
        small()
        extra = extra_bytes(run)
        out["torch_mb"] = extra / 1e6
        _say(f"  PyTorch matmul -> F.cross_entropy -> backward: {extra / 1e6:8.1f} MB "
             f"= {extra / logits_bytes:.2f} x the logits")
    return out


def measure_speed(n: int, d: int, c: int, rounds: int) -> Dict[str, float]:
    x, W, b, y = _problem(n, d, c, np.float32)
    _say(f"[speed] forward + gradient, N={n} D={d} C={c} float32, {rounds} interleaved rounds")
    impls = {"fastxent": lambda: fx.linear_cross_entropy_with_grad(x, W, y, bias=b)}
    run = _torch_pipeline(x, W, b, y)
    if run is not None:
        impls["torch"] = run
    else:
        _say("  PyTorch: not installed")
    times = interleaved(impls, rounds)
    for k, v in times.items():
        _say(f"  {k:<10} {v * 1e3:9.1f} ms")
    if "torch" in times:
        _say(f"  fastxent is {times['torch'] / times['fastxent']:.2f}x the speed of PyTorch "
             "(goal >= 1)")
    return times


def measure_agreement() -> Dict[str, float]:
    _say("[agreement] float64, N=512 D=64 C=1000, class weights, ignore_index, label smoothing")
    x, W, b, y = _problem(512, 64, 1000, np.float64, seed=1)
    y[::7] = -100
    weight = np.random.default_rng(2).uniform(0.5, 2.0, 1000)
    options = dict(weight=weight, ignore_index=-100, label_smoothing=0.1)
    run = _torch_pipeline(x, W, b, y, **options)
    if run is None:
        _say("  PyTorch: not installed")
        return {}
    loss, (dx, dW, db) = fx.linear_cross_entropy_with_grad(x, W, y, bias=b, **options)
    t_loss, (t_dx, t_dW, t_db) = run()
    errors = {}
    for name, mine, theirs in [("loss", np.asarray(loss), t_loss.numpy()), ("dx", dx, t_dx.numpy()),
                               ("dW", dW, t_dW.numpy()), ("dbias", db, t_db.numpy())]:
        scale = max(float(np.max(np.abs(theirs))), 1e-300)
        errors[name] = float(np.max(np.abs(mine - theirs))) / scale
        _say(f"  {name:<6} max |fastxent - torch| / max |torch| = {errors[name]:.2e}")
    return errors


def measure_softmax_regression(n: int, d: int, c: int, l2: float) -> Dict[str, float]:
    try:
        from sklearn.datasets import load_digits, make_classification
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        _say("[SoftmaxRegression] skipped: scikit-learn is not installed")
        return {}
    from fastxent.sklearn import SoftmaxRegression

    out: Dict[str, float] = {}
    _say(f"[SoftmaxRegression] synthetic {n} x {d}, {c} classes, l2 = {l2:g}")
    X, y = make_classification(n_samples=n, n_features=d, n_informative=min(d // 2, 64),
                               n_redundant=min(8, d // 4), n_classes=c, n_clusters_per_class=1,
                               random_state=0)
    rows = []
    for label, model in [("fastxent SoftmaxRegression", SoftmaxRegression(l2=l2)),
                         ("sklearn LogisticRegression", LogisticRegression(C=1 / l2))]:
        _say(f"  fitting {label} ...")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LogisticRegression's ConvergenceWarning
            seconds = timed(lambda: model.fit(X, y))[1]
        objective = softmax_objective(model, X, y, l2)
        rows.append((label, seconds, objective))
        _say(f"  {label:<28} {seconds:8.2f} s   objective {objective:.6f}")
    out.update(fastxent_s=rows[0][1], sklearn_s=rows[1][1], fastxent_objective=rows[0][2],
               sklearn_objective=rows[1][2])
    _say(f"  SoftmaxRegression: {rows[1][1] / rows[0][1]:.1f}x faster (goal >= 3), objective "
         f"{rows[0][2] - rows[1][2]:+.3e} relative to LogisticRegression's (goal <= 0)")

    X, y = load_digits(return_X_y=True)
    model = SoftmaxRegression(l2=l2).fit(X, y)
    # The tight optimum: LogisticRegression's lbfgs with tol=1e-12, started from
    # our solution (the problem is strictly convex: one optimum).  From a cold
    # start it stalls above it after minutes of line searches.
    tight = LogisticRegression(C=1 / l2, tol=1e-12, max_iter=100000, warm_start=True)
    tight.coef_, tight.intercept_ = model.coef_.copy(), model.intercept_.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tight.fit(X, y)
    mine, best = softmax_objective(model, X, y, l2), softmax_objective(tight, X, y, l2)
    out.update(digits_objective=mine, digits_tight=best)
    _say(f"[digits] SoftmaxRegression objective {mine:.10f}, tight optimum {best:.10f}: "
         f"difference {mine - best:+.2e} (goal: |difference| <= 1e-6)")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastxent bench-linear", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["memory", "speed", "agreement", "sklearn"],
                        choices=["memory", "speed", "agreement", "sklearn"])
    parser.add_argument("--memory-shape", default="8192x256x32000", metavar="NxDxC")
    parser.add_argument("--speed-shape", default="2048x256x32000", metavar="NxDxC")
    parser.add_argument("--sklearn-shape", default="200000x128x50", metavar="NxDxC")
    parser.add_argument("--l2", type=float, default=1.0, help="SoftmaxRegression l2 = 1/C (1.0)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)

    def shape(text: str):
        return parse_shapes(parser, [text], dims=3, example="2048x256x32000")[0]

    if "memory" in args.parts:
        measure_memory(*shape(args.memory_shape))
    if "speed" in args.parts:
        measure_speed(*shape(args.speed_shape), args.rounds)
    if "agreement" in args.parts:
        measure_agreement()
    if "sklearn" in args.parts:
        measure_softmax_regression(*shape(args.sklearn_shape), args.l2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
