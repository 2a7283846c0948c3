"""``python -m fastxent demo``: SoftmaxRegression beside scikit-learn's
LogisticRegression on the bundled digits data and on a larger synthetic set.

For each data set both models are fitted on a training split with the same
penalty (SoftmaxRegression(l2=λ) minimises Σ Lₙ + (λ/2)‖W‖², the objective of
LogisticRegression(C=1/λ)), and the demo prints test accuracy, the final
objective on the training split, iterations and wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import warnings
from typing import List, Optional

import numpy as np

from fastxent.tools._harness import softmax_objective, timed


class _Progress(io.TextIOBase):
    """Passes every ``every``-th line of the estimator's per-iteration output
    (and every summary line) through to the real stdout."""

    def __init__(self, stream, every):
        self.stream, self.every, self.buffer, self.count = stream, every, "", 0

    def write(self, text):
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            if " iter " in line:
                self.count += 1
                if self.count % self.every:
                    continue
            self.stream.write("    " + line + "\n")
        self.stream.flush()
        return len(text)


def _run(name, X, y, l2, args, out):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from fastxent.sklearn import SoftmaxRegression

    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0,
                                                        stratify=y)
    print(f"\n{name}: {X_train.shape[0]} training samples, {X.shape[1]} features, "
          f"{len(np.unique(y))} classes, l2 = {l2:g} (LogisticRegression C = {1 / l2:g})",
          file=out)
    rows = []

    model = SoftmaxRegression(l2=l2, max_iter=args.max_iter, tol=args.tol,
                              verbose=0 if args.quiet else 1)
    print("  fastxent.SoftmaxRegression (L-BFGS over the fused linear cross-entropy):", file=out)
    with contextlib.redirect_stdout(_Progress(out, args.every)):
        seconds = timed(lambda: model.fit(X_train, y_train))[1]
    rows.append(("fastxent SoftmaxRegression", model, seconds, model.n_iter_))

    print("  sklearn LogisticRegression (lbfgs, default tol and max_iter) ...", file=out,
          flush=True)
    lr = LogisticRegression(C=1 / l2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter=100 is expected
        seconds = timed(lambda: lr.fit(X_train, y_train))[1]
    rows.append(("sklearn LogisticRegression", lr, seconds, int(np.max(lr.n_iter_))))

    print(f"  {'model':<28} {'test acc':>8} {'objective (train)':>20} {'iters':>6} "
          f"{'time':>9}", file=out)
    for label, m, seconds, iters in rows:
        acc = float((m.predict(X_test) == y_test).mean())
        obj = softmax_objective(m, X_train, y_train, l2)
        print(f"  {label:<28} {acc:8.4f} {obj:20.10f} {iters:6d} {seconds:8.3f}s", file=out)
    speedup = rows[1][2] / rows[0][2]
    print(f"  SoftmaxRegression is {speedup:.1f}x the speed of LogisticRegression here", file=out)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    if argv is not None and "--dask" in argv:  # across a Dask cluster: fastxent/tools/demo_dask.py
        from fastxent.tools import demo_dask

        return demo_dask.main(argv)
    parser = argparse.ArgumentParser(
        prog="python -m fastxent demo",
        description="SoftmaxRegression (fastxent) beside LogisticRegression (scikit-learn) "
                    "on the digits data and a synthetic set.")
    parser.add_argument("--samples", type=int, default=40000,
                        help="rows of the synthetic set (default 40000)")
    parser.add_argument("--features", type=int, default=64, help="synthetic features (64)")
    parser.add_argument("--classes", type=int, default=20, help="synthetic classes (20)")
    parser.add_argument("--l2", type=float, default=1.0, help="penalty λ = 1/C (1.0)")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="SoftmaxRegression max_iter (its default)")
    parser.add_argument("--tol", type=float, default=None, help="SoftmaxRegression tol")
    parser.add_argument("--every", type=int, default=25,
                        help="print every N-th iteration's progress line (25)")
    parser.add_argument("--quiet", action="store_true", help="no per-iteration progress")
    parser.add_argument("--skip-synthetic", action="store_true", help="digits only")
    parser.add_argument("--dask", action="store_true",
                        help="train across a Dask cluster instead (see --dask --help)")
    args = parser.parse_args(argv)
    try:
        from sklearn.datasets import load_digits, make_classification
    except ImportError:
        print("the demo needs scikit-learn: pip install 'fastxent[sklearn]'", file=sys.stderr)
        return 1
    from fastxent.sklearn import SoftmaxRegression

    defaults = SoftmaxRegression().get_params()
    args.max_iter = defaults["max_iter"] if args.max_iter is None else args.max_iter
    args.tol = defaults["tol"] if args.tol is None else args.tol
    out = sys.stdout

    X, y = load_digits(return_X_y=True)
    _run("digits (scikit-learn's bundled 8x8 handwritten digits)", X, y, args.l2, args, out)
    if not args.skip_synthetic:
        n_informative = max(2, min(args.features // 2, 32))
        X, y = make_classification(n_samples=args.samples, n_features=args.features,
                                   n_informative=n_informative,
                                   n_redundant=min(4, args.features - n_informative),
                                   n_classes=args.classes, n_clusters_per_class=1,
                                   random_state=0)
        _run("synthetic (make_classification)", X, y, args.l2, args, out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
