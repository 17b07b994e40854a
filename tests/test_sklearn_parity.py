"""HogwildClassifier / HogwildRegressor against scikit-learn's SGDClassifier / SGDRegressor: the
same get_params() (less n_jobs) on both sides trains the same model family, so the test scores
agree; and scikit-learn's parameter names, defaults and errors."""

import warnings

import numpy as np
import pytest
import scipy.sparse
from sklearn.datasets import (load_breast_cancer, load_diabetes, load_digits, make_classification,
                              make_regression)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from hogwild_mts import HogwildClassifier, HogwildRegressor

MAX_ITER = 15  # epochs at most on both sides: each fit takes well under a few seconds
SEEDS = (0, 1, 2)  # one SGD run's test score moves with its shuffles by more than 0.01 on these
# test sets (143 rows for breast_cancer): the tests compare each side's mean over these seeds


def _split(X, y, scale=True):
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    if scale:
        scaler = StandardScaler().fit(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    return X_train, X_test, y_train, y_test


def _sparse(X):
    """A sparse copy of ``X``: about 80% of the entries set to zero, stored as CSR."""
    rng = np.random.default_rng(0)
    return scipy.sparse.csr_matrix(np.where(rng.random(X.shape) < 0.8, 0.0, X))


def _classification(name):
    if name == "breast_cancer":
        return _split(*load_breast_cancer(return_X_y=True))
    if name == "digits":
        return _split(*load_digits(return_X_y=True))
    if name == "dense_classification":  # 2000 rows, 50 features of which 38 carry nothing
        return _split(*make_classification(n_samples=2000, n_features=50, n_informative=8,
                                           n_redundant=4, flip_y=0.05, random_state=0))
    rng = np.random.default_rng(0)  # a text-like sparse set: 3000 rows, 500 features, 2% filled
    X = scipy.sparse.random(3000, 500, density=0.02, format="csr", random_state=0)
    y = (X @ rng.normal(size=500) + 0.05 * rng.normal(size=3000) > 0).astype(int)
    return _split(X, y, scale=False)


def _regression(name):
    if name == "diabetes":
        return _split(*load_diabetes(return_X_y=True))
    X, y, coef = make_regression(n_samples=1000, n_features=40, n_informative=20, noise=10.0,
                                 coef=True, random_state=0)
    if name == "make_regression":
        return _split(X, y / y.std())
    sparse = _sparse(X)
    return _split(sparse, sparse @ coef / y.std() + 0.1 * np.random.default_rng(1).normal(size=len(y)),
                  scale=False)


def _same_params(sklearn_class, **changes):
    params = sklearn_class(random_state=0, max_iter=MAX_ITER, **changes).get_params()
    params.pop("n_jobs", None)
    return params


def _both(sklearn_class, hogwild_class, params, X_train, y_train):
    """The two estimators fitted with ``params`` (random_state as given)."""
    with warnings.catch_warnings():  # MAX_ITER may end either side before its stopping rule
        warnings.simplefilter("ignore", ConvergenceWarning)
        return (sklearn_class(**params).fit(X_train, y_train),
                hogwild_class(**params).fit(X_train, y_train))


def _mean_scores(sklearn_class, hogwild_class, params, X_train, X_test, y_train, y_test):
    """(scikit-learn's, ours): each side's mean test score over SEEDS; the two estimators'
    coefficients have the same shapes."""
    scores = []
    for seed in SEEDS:
        reference, ours = _both(sklearn_class, hogwild_class, {**params, "random_state": seed},
                                X_train, y_train)
        assert ours.coef_.shape == reference.coef_.shape
        assert ours.intercept_.shape == reference.intercept_.shape
        scores.append((reference.score(X_test, y_test), ours.score(X_test, y_test)))
    return tuple(np.mean(scores, axis=0))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("data", ["breast_cancer", "sparse_classification", "digits"])
def test_classifier_scores_as_sgd_classifier_with_the_same_params(data):
    X_train, X_test, y_train, y_test = _classification(data)
    params = _same_params(SGDClassifier)
    ours_params = HogwildClassifier(**params).get_params()
    assert {name: ours_params[name] for name in params} == params  # every parameter accepted as given
    theirs, mine = _mean_scores(SGDClassifier, HogwildClassifier, params, X_train, X_test, y_train, y_test)
    assert abs(mine - theirs) <= 0.01, (mine, theirs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("data", ["diabetes", "make_regression", "sparse_regression"])
def test_regressor_scores_as_sgd_regressor_with_the_same_params(data):
    X_train, X_test, y_train, y_test = _regression(data)
    params = _same_params(SGDRegressor)
    theirs, mine = _mean_scores(SGDRegressor, HogwildRegressor, params, X_train, X_test, y_train, y_test)
    assert abs(mine - theirs) <= 0.01, (mine, theirs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("changes", [
    {"loss": "log_loss", "penalty": "elasticnet", "l1_ratio": 0.5},
    {"loss": "modified_huber", "learning_rate": "adaptive", "eta0": 0.1, "average": True},
    {"class_weight": "balanced", "early_stopping": True, "n_iter_no_change": 3},
], ids=["log_loss-elasticnet", "modified_huber-adaptive-average", "balanced-early_stopping"])
def test_classifier_options_score_as_scikit_learn(changes):
    X_train, X_test, y_train, y_test = _classification("breast_cancer")
    params = _same_params(SGDClassifier, **changes)
    theirs, mine = _mean_scores(SGDClassifier, HogwildClassifier, params, X_train, X_test, y_train, y_test)
    assert abs(mine - theirs) <= 0.02, (mine, theirs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("data", ["sparse_classification", "dense_classification"])
@pytest.mark.parametrize("penalty", ["l1", "elasticnet"])
def test_l1_penalties_score_and_sparsify_as_scikit_learn(data, penalty):
    """The cumulative L1 penalty of a whole fit (and, on sparse rows, the intercept decay):
    every epoch run (tol None), each side's mean over SEEDS of the test accuracy within 0.01 and
    of the number of zero coefficients within 15% of scikit-learn's (a penalty that restarted
    every epoch left a quarter to a half of them)."""
    X_train, X_test, y_train, y_test = _classification(data)
    params = {**_same_params(SGDClassifier, penalty=penalty, alpha=1e-3, tol=None), "max_iter": 10}
    scores, zeros = [], []
    for seed in SEEDS:
        reference, ours = _both(SGDClassifier, HogwildClassifier, {**params, "random_state": seed},
                                X_train, y_train)
        scores.append((reference.score(X_test, y_test), ours.score(X_test, y_test)))
        zeros.append((np.count_nonzero(reference.coef_ == 0), np.count_nonzero(ours.coef_ == 0)))
    (theirs, mine), (their_zeros, my_zeros) = np.mean(scores, axis=0), np.mean(zeros, axis=0)
    assert abs(mine - theirs) <= 0.01, (mine, theirs)
    assert their_zeros > 20 and abs(my_zeros - their_zeros) <= 0.15 * their_zeros, (my_zeros, their_zeros)


def test_defaults_and_parameter_names_are_scikit_learn_s():
    for sklearn_class, ours in ((SGDClassifier, HogwildClassifier), (SGDRegressor, HogwildRegressor)):
        theirs = sklearn_class().get_params()
        theirs.pop("n_jobs", None)
        mine = ours().get_params()
        assert {name: mine[name] for name in theirs} == theirs
        assert set(mine) - set(theirs) == {"policy", "workers", "backend", "ray_address", "local_steps"}
        assert mine["workers"] == 1


def test_stopping_rule_and_convergence_warning_follow_scikit_learn():
    X_train, _, y_train, _ = _classification("breast_cancer")
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        model = HogwildClassifier(max_iter=2, random_state=0).fit(X_train, y_train)
    assert model.n_iter_ == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # tol=None: every epoch, no warning
        assert HogwildClassifier(max_iter=3, tol=None, random_state=0).fit(X_train, y_train).n_iter_ == 3
    # a tol no epoch can beat: the first epoch sets the best, n_iter_no_change more do not beat it
    stopped = HogwildClassifier(tol=1e6, n_iter_no_change=2, random_state=0).fit(X_train, y_train)
    assert stopped.n_iter_ == 3


def test_same_random_state_gives_the_same_coefficients_with_one_worker():
    X_train, _, y_train, _ = _classification("breast_cancer")
    first = HogwildClassifier(random_state=3).fit(X_train, y_train)
    again = HogwildClassifier(random_state=3).fit(X_train, y_train)
    np.testing.assert_array_equal(first.coef_, again.coef_)


@pytest.mark.parametrize("params,message", [
    ({"alpha": 0.0}, "alpha must be > 0 since learning_rate is 'optimal'"),
    ({"penalty": "elasticnet", "l1_ratio": None}, "l1_ratio must be set when penalty is 'elasticnet'"),
    ({"learning_rate": "pa1"}, "learning_rate must be one of"),
    ({"eta0": 0.0}, "eta0 must be a finite number > 0"),
    ({"loss": "logreg"}, "loss must be one of"),
    ({"class_weight": "heavy"}, "class_weight must be None, 'balanced' or a dict"),
])
def test_bad_parameters_are_refused_with_the_value(params, message):
    X, y = load_breast_cancer(return_X_y=True)
    with pytest.raises(ValueError, match=message):
        HogwildClassifier(**params).fit(X[:50], y[:50])


def test_partial_fit_refuses_early_stopping_and_balanced_weights():
    X, y = load_breast_cancer(return_X_y=True)
    with pytest.raises(ValueError, match="early_stopping should be False with partial_fit"):
        HogwildClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match="class_weight 'balanced' is not supported for partial_fit"):
        HogwildClassifier(class_weight="balanced").partial_fit(X, y, classes=[0, 1])


def _documented_examples():
    """The Python blocks of README.md and of docs/api.md, each file's in order."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    for name in ("README.md", "docs/api.md"):
        blocks = re.findall(r"```python\n(.*?)```", (root / name).read_text(), re.S)
        yield pytest.param(name, blocks, id=name)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name,blocks", list(_documented_examples()))
def test_the_examples_of_the_docs_run_in_order_and_score_as_stated(name, blocks, tmp_path,
                                                                   monkeypatch, capsys):
    """Every Python block of the file runs as written, in order, in one namespace (in a fresh
    directory); each printed score is within 0.03 of the "about X" its comment states."""
    import re

    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for number, block in enumerate(blocks):
        exec(compile(block, f"{name} block {number + 1}", "exec"), namespace)
        printed = capsys.readouterr().out.split("\n")
        stated = [float(value) for value in re.findall(r"print\(.*?# .*?about ([0-9.]+)", block)]
        first_lines = [line for line in printed if line.strip()][:len(stated)]  # a score leads each
        scores = [float(line.split()[0].strip("()[],")) for line in first_lines]
        assert len(scores) == len(stated) and all(abs(s - t) <= 0.03 for s, t in zip(scores, stated)), (
            name, number + 1, scores, stated)
