"""SoftmaxRegression: scikit-learn's estimator checks, the optimum of
LogisticRegression(C=1/l2), sample weights, labels of any type, progress
output."""

import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import load_iris, make_classification  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastxent  # noqa: E402
from fastxent.sklearn import SoftmaxRegression  # noqa: E402
from tests.conftest import assert_close  # noqa: E402


@parametrize_with_checks([SoftmaxRegression(), SoftmaxRegression(fit_intercept=False, l2=0.5)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _objective(W, b, X, y_index, l2, sample_weight=None):
    scores = X @ W.T + b
    m = scores.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(scores - m).sum(1))
    losses = lse - scores[np.arange(len(y_index)), y_index]
    s = np.ones(len(losses)) if sample_weight is None else sample_weight
    return float(s @ losses) + l2 / 2 * float((W ** 2).sum())


def _tight_logistic_regression(X, y, C, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=C, tol=1e-12, max_iter=100000, **kw).fit(X, y)


@pytest.mark.parametrize("l2", [0.1, 1.0, 10.0])
def test_optimum_is_logistic_regressions(l2):
    X, y = load_iris(return_X_y=True)
    model = SoftmaxRegression(l2=l2).fit(X, y)
    lr = _tight_logistic_regression(X, y, 1 / l2)
    ours = _objective(model.coef_, model.intercept_, X, y, l2)
    theirs = _objective(lr.coef_, lr.intercept_, X, y, l2)
    assert ours <= theirs * (1 + 1e-10)
    assert_close(ours, model.objective_, rtol=1e-12)
    assert_close(model.coef_, lr.coef_, rtol=1e-4, atol=1e-5)
    assert_close(model.predict_proba(X), lr.predict_proba(X), rtol=1e-4, atol=1e-6)


def test_digits_objective_is_tight():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    model = SoftmaxRegression().fit(X, y)
    reference = 17.0323521816  # L-BFGS to relative reduction < 64 eps, two parametrisations
    assert abs(model.objective_ - reference) < 1e-6
    assert abs(model.objective(X, y) - model.objective_) < 1e-9


def test_binary_is_two_class_softmax():
    """Two classes: the softmax with penalty (l2/2)(|w0|^2 + |w1|^2) has w1 = -w0 at the
    optimum, so it is the logistic regression on w = w1 - w0 with penalty l2/4 |w|^2,
    i.e. LogisticRegression(C=2/l2)."""
    X, y = make_classification(n_samples=300, n_features=6, random_state=0)
    model = SoftmaxRegression(l2=1.0).fit(X, y)
    assert model.coef_.shape == (2, 6)
    lr = _tight_logistic_regression(X, y, 2.0)
    decision = model.decision_function(X)
    assert decision.shape == (300,)
    assert_close(decision, lr.decision_function(X), rtol=1e-5, atol=1e-6)
    assert_close(model.coef_[1] - model.coef_[0], lr.coef_[0], rtol=1e-5, atol=1e-6)


def test_sample_weight_is_repetition():
    X, y = make_classification(n_samples=120, n_features=5, n_informative=3, n_classes=3,
                               random_state=1)
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, len(y))
    weighted = SoftmaxRegression(l2=0.3).fit(X, y, sample_weight=counts)
    repeated = SoftmaxRegression(l2=0.3).fit(np.repeat(X, counts, axis=0), np.repeat(y, counts))
    assert_close(weighted.coef_, repeated.coef_, rtol=1e-6, atol=1e-7)
    assert_close(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-6, atol=1e-8)
    assert_close(weighted.objective_, repeated.objective_, rtol=1e-10)
    # real-valued weights: the objective is the weighted one, at LogisticRegression's optimum
    s = rng.random(len(y)) * 2
    model = SoftmaxRegression(l2=0.3).fit(X, y, sample_weight=s)
    lr = _tight_logistic_regression(X, y, 1 / 0.3)
    lr.fit(X, y, sample_weight=s)
    ours = _objective(model.coef_, model.intercept_, X, y, 0.3, s)
    assert ours <= _objective(lr.coef_, lr.intercept_, X, y, 0.3, s) * (1 + 1e-10)
    assert_close(ours, model.objective_, rtol=1e-12)


@pytest.mark.parametrize("labels", [np.array(["cat", "dog", "emu"]), np.array([-5, 2, 40]),
                                    np.array([3.0, 1.0, 2.0]), np.array([True, False, True])])
def test_labels_of_any_type(labels):
    X, y = make_classification(n_samples=90, n_features=4, n_informative=3, n_redundant=0,
                               n_classes=3, random_state=2)
    y_labels = labels[y]
    model = SoftmaxRegression().fit(X, y_labels)
    assert (model.classes_ == np.unique(y_labels)).all()
    assert set(model.predict(X)) <= set(y_labels)
    reference = SoftmaxRegression().fit(X, y)
    if len(np.unique(labels)) == 3:
        proba = model.predict_proba(X)
        order = np.argsort(np.argsort(labels))  # class index of each original class
        assert_close(proba[:, order], reference.predict_proba(X), rtol=1e-8, atol=1e-10)


def test_probabilities_and_scores():
    X, y = load_iris(return_X_y=True)
    model = SoftmaxRegression(l2=0.1).fit(X, y)
    scores = model.decision_function(X)
    assert scores.shape == (150, 3)
    proba = model.predict_proba(X)
    assert_close(proba.sum(1), np.ones(150), rtol=1e-14)
    assert_close(model.predict_log_proba(X), np.log(proba), rtol=1e-12, atol=1e-12)
    assert (model.predict(X) == model.classes_[np.argmax(proba, 1)]).all()
    assert model.score(X, y) > 0.95


def test_one_class_is_an_error():
    X = np.random.default_rng(0).random((10, 3))
    with pytest.raises(ValueError, match="class"):
        SoftmaxRegression().fit(X, np.ones(10))
    with pytest.raises(ValueError, match="class"):
        SoftmaxRegression().fit(X, np.arange(10) % 2, sample_weight=np.arange(10) % 2)


def test_verbose_progress_and_convergence_warning(capsys):
    X, y = load_iris(return_X_y=True)
    SoftmaxRegression(verbose=1).fit(X, y)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if " iter " in line]
    assert len(lines) >= 5 and "objective" in lines[0]
    with pytest.warns(ConvergenceWarning):
        model = SoftmaxRegression(max_iter=2).fit(X, y)
    assert model.n_iter_ == 2


def test_lazy_import():
    assert fastxent.SoftmaxRegression is SoftmaxRegression
