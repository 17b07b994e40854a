"""scikit-learn estimators over the linear engine: ``HogwildClassifier`` and ``HogwildRegressor``.

The constructor stores its arguments as given (``get_params``/``set_params``/``clone`` work);
``fit`` validates, then trains with :class:`hogwild_mts.engines.linear.Engine` (one worker by
default, which is deterministic: the same seed gives the same coefficients; ``workers=m`` trains
with m lock-free processes).  Multiclass targets are trained one-vs-rest: one binary problem per
class, each a full Hogwild! run whose updates are stamped like any other.  Every run's FitResult
(staleness histogram, history) is kept in ``fit_results_``.
"""

from __future__ import annotations

import contextlib
import types
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from hogwild_mts.core.options import check_choice
from hogwild_mts.core.result import TrainingWarning, training_trouble
from hogwild_mts.core.params import (Checked, Flag, Fraction, Integer, NonNegative, Option, Table,
                                     validate)
from hogwild_mts.engines.linear import DEFAULT_ALPHA, ENGINE_OPTIONS, Engine
from hogwild_mts.model_file import ModelFileError, policy_from_spec, read, save_linear
from hogwild_mts.models.linear import LinearModel

CLASSIFIER_LOSSES = ("logreg", "svm")
REGRESSOR_LOSSES = ("lsq",)


# The estimators' options, in validation order.  Engine's entries where the estimators share
# its default; their own where they differ: one worker (deterministic: the same seed gives the
# same coefficients) and no progress bar (scikit-learn's estimators run quietly).
ESTIMATOR_OPTIONS = Table(
    (Option("loss", Checked("one of the estimator's losses (None: its first)"), None, "the model"),
     ENGINE_OPTIONS["policy"], ENGINE_OPTIONS["alpha"], Option("workers", Integer(1), 1, "run"),
     ENGINE_OPTIONS["epochs"], ENGINE_OPTIONS["batch_size"],
     Option("l2", NonNegative(), 0.0, "the model"), Option("fit_intercept", Flag(), True, "the model"),
     ENGINE_OPTIONS["seed"], Option("warm_start", Flag(), False, "fit"),
     Option("early_stopping", Flag(), False, "fit"),
     Option("validation_fraction", Fraction(allow_zero=False, allow_one=False), 0.1, "fit"),
     Option("n_iter_no_change", Integer(1), 3, "fit"), Option("tol", NonNegative(), 1e-4, "fit"),
     Option("progress", Flag(), False, "run"), ENGINE_OPTIONS["backend"],
     ENGINE_OPTIONS["ray_address"], ENGINE_OPTIONS["local_steps"]))
DEFAULTS = ESTIMATOR_OPTIONS.defaults


def _max_abs(X) -> float | None:
    """The largest |x| of the rows (dense or sparse), None when there are no values."""
    values = X.data if sp.issparse(X) else np.asarray(X)
    return float(np.abs(values).max()) if values.size else None


def _epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of epoch ``epoch`` of an epoch-by-epoch fit (early stopping, partial_fit)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class _HogwildLinear(BaseEstimator):
    """What the classifier and the regressor share: options, the engine runs, early stopping."""

    _losses: tuple = ()
    _default_alpha: float = DEFAULT_ALPHA  # base step of a named policy when ``alpha`` is None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def __init__(self, loss=DEFAULTS.loss, *, policy=DEFAULTS.policy, alpha=DEFAULTS.alpha,
                 workers=DEFAULTS.workers, epochs=DEFAULTS.epochs, batch_size=DEFAULTS.batch_size,
                 l2=DEFAULTS.l2, fit_intercept=DEFAULTS.fit_intercept, seed=DEFAULTS.seed,
                 warm_start=DEFAULTS.warm_start, early_stopping=DEFAULTS.early_stopping,
                 validation_fraction=DEFAULTS.validation_fraction,
                 n_iter_no_change=DEFAULTS.n_iter_no_change, tol=DEFAULTS.tol,
                 progress=DEFAULTS.progress, backend=DEFAULTS.backend,
                 ray_address=DEFAULTS.ray_address, local_steps=DEFAULTS.local_steps):
        self.loss = loss
        self.policy = policy
        self.alpha = alpha
        self.workers = workers
        self.epochs = epochs
        self.batch_size = batch_size
        self.l2 = l2
        self.fit_intercept = fit_intercept
        self.seed = seed
        self.warm_start = warm_start
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.progress = progress
        self.backend = backend
        self.ray_address = ray_address
        self.local_steps = local_steps

    def resolved_loss(self) -> str:
        """``loss``, or (None) the first of the estimator's losses."""
        return self._losses[0] if self.loss is None else self.loss

    # ------------------------------------------------------------------ checks
    def _check_options(self) -> None:
        """Validate the stored options against ESTIMATOR_OPTIONS (plain messages naming the
        value), and build an engine, which checks the policy with its alpha; before any training."""
        check_choice("loss", self.resolved_loss(), self._losses)
        validate(ESTIMATOR_OPTIONS, self.get_params())
        self._engine(epochs=1, seed=0)

    def _engine(self, epochs: int, seed: int) -> Engine:
        model = LinearModel(self.resolved_loss(), l2=self.l2, fit_intercept=bool(self.fit_intercept))
        alpha = self._default_alpha if self.alpha is None and isinstance(self.policy, str) else self.alpha
        return Engine(model, self.policy, alpha=alpha, workers=self.workers, epochs=epochs,
                      batch_size=self.batch_size, seed=seed, progress=bool(self.progress),
                      eval_every=3600.0, backend=self.backend, ray_address=self.ray_address,
                      local_steps=self.local_steps)

    def _validate(self, X, reset: bool = False):
        """X as float64 (CSR when sparse), checked against the fitted feature count (and names)."""
        return validate_data(self, X, accept_sparse="csr", dtype=np.float64, reset=reset)

    def _validate_xy(self, X, y, reset: bool):
        """X as :meth:`_validate`, y beside it (required); ``reset`` records the feature count."""
        return validate_data(self, X, y, accept_sparse="csr", dtype=np.float64,
                             y_numeric=isinstance(self, RegressorMixin), reset=reset)

    # ------------------------------------------------------------------ training
    @contextlib.contextmanager
    def _backend_session(self):
        """For ``backend="ray"``: connect (or start a local Ray) once around every engine run of
        a fit, and shut down what this call started; nothing for shared memory."""
        if self.backend != "ray":
            yield
            return
        from hogwild_mts.backends.ray.backend import connect

        started = connect(self.ray_address)
        try:
            yield
        finally:
            if started:
                import ray

                ray.shutdown()

    def _train_problems(self, X, targets: list, sample_weight, init: np.ndarray | None,
                        first_epoch: int, epochs: int, judge: bool = True):
        """Train one binary/regression problem per entry of ``targets`` (labels per row; rows
        weighted by ``sample_weight`` or None) for ``epochs`` epochs from ``init`` (K x
        n_params, or None for zeros); return the new (K x n_params) parameters and the
        FitResults.  ``judge``: warn a ConvergenceWarning for each run that went badly
        (:func:`~hogwild_mts.core.result.training_trouble`); an epoch-by-epoch fit judges its
        epochs together instead (:meth:`_judge`)."""
        n_params = X.shape[1] + int(bool(self.fit_intercept))
        params = np.zeros((len(targets), n_params)) if init is None else init.copy()
        results = []
        largest = _max_abs(X)
        with self._backend_session():
            for k, target in enumerate(targets):
                engine = self._engine(epochs=epochs, seed=_epoch_seed(self.seed, first_epoch))
                with warnings.catch_warnings():  # warned below as a ConvergenceWarning
                    warnings.simplefilter("ignore", TrainingWarning)
                    result = engine.fit(X, target, sample_weight=sample_weight, init_params=params[k])
                params[k, :X.shape[1]] = result.params
                if self.fit_intercept:
                    params[k, -1] = result.intercept
                results.append(result)
                if judge:
                    self._judge([result], k, len(targets), largest)
                if result.interrupted:  # a stop (Ctrl-C) stops the remaining problems too
                    break
        return params, results

    def _judge(self, runs: list, k: int, problems: int, largest: float | None) -> None:
        """Warn a ConvergenceWarning when problem ``k``'s ``runs`` (its FitResults in order:
        one, or one per epoch of an epoch-by-epoch fit, judged as one run from the first one's
        start) went badly."""
        last = runs[-1]
        whole = types.SimpleNamespace(
            history={"loss": [loss for run in runs for loss in run.history.get("loss", [])]},
            final_loss=last.final_loss, interrupted=any(run.interrupted for run in runs),
            workers=last.workers, settings=last.settings, policy=last.policy)
        trouble = training_trouble(whole, largest)
        if trouble is not None:
            problem = f"class {self.classes_[k]} against the rest: " if problems > 1 else ""
            warnings.warn(f"{type(self).__name__}: {problem}{trouble}", ConvergenceWarning, stacklevel=5)

    def _fit(self, X, y, sample_weight, init) -> None:
        """Full fit: ``epochs`` epochs in one run per problem, or, with early stopping, epoch by
        epoch on the rows outside a validation fraction until the (weighted) validation score
        has not improved by ``tol`` for ``n_iter_no_change`` epochs."""
        if not self.early_stopping:
            params, results = self._train_problems(X, self._targets(y), sample_weight, init, 0,
                                                   self.epochs)
            self._set_params(params, results, self.epochs)
            return
        train, held_out = self._split_validation(X, y)
        weights = (None, None) if sample_weight is None else (sample_weight[train],
                                                              sample_weight[held_out])
        for rows, part in zip(weights, ("training", "validation")):
            if rows is not None and not rows.any():
                raise ValueError(f"early stopping: every row of the {part} split (seed "
                                 f"{self.seed}, validation_fraction {self.validation_fraction}) "
                                 "has sample_weight 0; at least one must carry weight")
        X_val, y_val, weight_val = X[held_out], y[held_out], weights[1]
        X, targets, sample_weight = X[train], self._targets(y[train]), weights[0]
        best_score, best_params, stale_epochs, results = -np.inf, init, 0, []
        params = init
        for epoch in range(self.epochs):
            params, epoch_results = self._train_problems(X, targets, sample_weight, params, epoch, 1,
                                                         judge=False)
            results += epoch_results
            if any(result.interrupted for result in epoch_results):  # a stop ends the fit
                best_params = params if best_params is None else best_params
                break
            score = self._score_rows(X_val, y_val, weight_val, params)
            if score > best_score + self.tol:
                best_score, best_params, stale_epochs = score, params, 0
            else:
                stale_epochs += 1
            if stale_epochs >= self.n_iter_no_change:
                break
        largest = _max_abs(X)
        for k in range(len(targets)):
            self._judge(results[k::len(targets)], k, len(targets), largest)
        self._set_params(best_params, results, epoch + 1)

    def _set_params(self, params: np.ndarray, results: list, epochs_run: int) -> None:
        d = self.n_features_in_
        self.coef_ = params[:, :d].copy()
        self.intercept_ = params[:, d].copy() if self.fit_intercept else np.zeros(params.shape[0])
        self.fit_results_ = results
        self.n_iter_ = epochs_run

    def _current(self) -> np.ndarray:
        """The fitted parameters as (K x n_params): each row the weights, then the intercept."""
        return np.hstack([self.coef_] + ([self.intercept_[:, None]] if self.fit_intercept else []))

    def _initial(self):
        """The current parameters when ``warm_start`` continues a fitted model, else None."""
        return self._current() if self.warm_start and hasattr(self, "coef_") else None

    def _split_validation(self, X, y):
        """(training rows, validation rows) for early stopping, drawn with ``seed`` (stratified
        by class for a classifier)."""
        from sklearn.model_selection import train_test_split

        rows = np.arange(X.shape[0])
        stratify = y if isinstance(self, ClassifierMixin) else None
        train, held_out = train_test_split(rows, test_size=self.validation_fraction,
                                           random_state=self.seed, stratify=stratify)
        return train, held_out

    def _sample_weight(self, sample_weight, X):
        """``sample_weight`` as float64 (n,), or None; the engine checks the values."""
        return None if sample_weight is None else _check_sample_weight(sample_weight, X)

    @property
    def fit_result_(self):
        """The last engine run's FitResult (staleness histogram, history, speed); None for a
        model loaded from a file (its numbers are in the file's metrics)."""
        check_is_fitted(self, "fit_results_")
        return self.fit_results_[-1] if self.fit_results_ else None

    def save(self, path: str) -> str:
        """Write this fitted model to the directory ``path`` (see :func:`save`)."""
        return save(self, path)

    def _margins(self, X) -> np.ndarray:
        """(n, K) margins ``X coef_.T + intercept_``."""
        check_is_fitted(self, "coef_")
        X = self._validate(X)
        return np.asarray(X @ self.coef_.T) + self.intercept_


class HogwildClassifier(ClassifierMixin, _HogwildLinear):
    """A linear classifier (``loss``: ``logreg`` logistic regression, the default, or ``svm``
    hinge) trained by
    Hogwild! SGD with a staleness-aware step-size ``policy``.  Multiclass: one-vs-rest.
    Parameters are those of :class:`hogwild_mts.engines.linear.Engine` (``alpha`` of a named
    policy defaults to Engine's DEFAULT_ALPHA) plus scikit-learn's ``warm_start``, ``early_stopping``,
    ``validation_fraction``, ``n_iter_no_change``, ``tol``.
    """

    _losses = CLASSIFIER_LOSSES


    def _targets(self, y) -> list:
        """+-1 labels per problem: one problem (classes_[1] positive) for two classes, else one
        per class."""
        if len(self.classes_) == 2:
            return [np.where(y == self.classes_[1], 1.0, -1.0)]
        return [np.where(y == c, 1.0, -1.0) for c in self.classes_]

    def fit(self, X, y, sample_weight=None):
        """Fit on ``X`` (array or scipy sparse) and class labels ``y``, rows weighted by
        ``sample_weight`` (default 1 each); returns self."""
        self._check_options()
        X, y = self._validate_xy(X, y, reset=not (self.warm_start and hasattr(self, "coef_")))
        check_classification_targets(y)
        classes = np.unique(y)
        if classes.size < 2:
            raise ValueError(f"HogwildClassifier needs samples of at least 2 classes, got one "
                             f"class: {classes[0]!r}")
        if self.warm_start and hasattr(self, "classes_") and not np.array_equal(classes, self.classes_):
            raise ValueError(f"warm_start: y has the classes {classes.tolist()}, the fitted model "
                             f"{self.classes_.tolist()}")
        self.classes_ = classes
        self._fit(X, y, self._sample_weight(sample_weight, X), self._initial())
        return self

    def _score_rows(self, X, y, sample_weight, params) -> float:
        """Accuracy (weighted by ``sample_weight`` or None) of the parameter matrix ``params``."""
        d = X.shape[1]
        margins = np.asarray(X @ params[:, :d].T) + (params[:, d] if self.fit_intercept else 0.0)
        return float(np.average(self._labels_from(margins) == y, weights=sample_weight))

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One more epoch over ``X, y`` (rows weighted by ``sample_weight``) from the current
        coefficients (``classes`` is needed on the first call, as in scikit-learn)."""
        first = not hasattr(self, "coef_")
        self._check_options()
        X, y = self._validate_xy(X, y, reset=first)
        check_classification_targets(y)
        if first:
            if classes is None:
                raise ValueError("classes must be given on the first call to partial_fit")
            self.classes_ = np.unique(np.asarray(classes))
            if self.classes_.size < 2:
                raise ValueError(f"HogwildClassifier needs at least 2 classes, got {self.classes_.tolist()}")
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y has classes {unknown.tolist()} that are not in classes_ "
                             f"{self.classes_.tolist()}")
        init = None if first else self._current()
        epoch = 0 if first else self.n_iter_
        params, results = self._train_problems(X, self._targets(y),
                                               self._sample_weight(sample_weight, X), init, epoch, 1)
        self._set_params(params, ([] if first else self.fit_results_) + results, epoch + 1)
        return self

    def _labels_from(self, margins: np.ndarray) -> np.ndarray:
        if margins.shape[1] == 1:
            return self.classes_[(margins[:, 0] > 0).astype(int)]
        return self.classes_[np.argmax(margins, axis=1)]

    def decision_function(self, X) -> np.ndarray:
        """Margins: (n,) for two classes (positive: classes_[1]), else (n, classes)."""
        margins = self._margins(X)
        return margins[:, 0] if margins.shape[1] == 1 else margins

    def predict(self, X) -> np.ndarray:
        return self._labels_from(self._margins(X))

    def _is_logistic(self) -> bool:
        return self.resolved_loss() == "logreg"

    @available_if(_is_logistic)
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (logistic loss only): the sigmoid of the margin; one-vs-rest
        probabilities are normalised to sum to 1."""
        margins = self._margins(X)
        positive = 1.0 / (1.0 + np.exp(-np.clip(margins, -500, 500)))
        if positive.shape[1] == 1:
            return np.hstack([1.0 - positive, positive])
        return positive / positive.sum(axis=1, keepdims=True)

    @available_if(_is_logistic)
    def predict_log_proba(self, X) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


class HogwildRegressor(RegressorMixin, _HogwildLinear):
    """A linear least-squares regressor (``loss``: ``lsq``, the default) trained by Hogwild! SGD with a
    staleness-aware step-size ``policy``; parameters as :class:`HogwildClassifier` (a named
    policy's default ``alpha`` is 0.01 here: squared loss steps grow with the targets)."""

    _losses = REGRESSOR_LOSSES
    _default_alpha = 0.01  # squared-loss steps grow with the targets: a tenth of Engine's


    def _targets(self, y) -> list:
        """The one regression problem."""
        return [y]

    def fit(self, X, y, sample_weight=None):
        """Fit on ``X`` (array or scipy sparse) and real targets ``y``, rows weighted by
        ``sample_weight`` (default 1 each); returns self."""
        self._check_options()
        X, y = self._validate_xy(X, y, reset=not (self.warm_start and hasattr(self, "coef_")))
        self._fit(X, y, self._sample_weight(sample_weight, X), self._initial())
        return self

    def _score_rows(self, X, y, sample_weight, params) -> float:
        """R^2 (weighted by ``sample_weight`` or None) of the parameter row ``params[0]``."""
        from sklearn.metrics import r2_score

        d = X.shape[1]
        predicted = np.asarray(X @ params[0, :d]) + (params[0, d] if self.fit_intercept else 0.0)
        return float(r2_score(y, predicted, sample_weight=sample_weight))

    def partial_fit(self, X, y, sample_weight=None):
        """One more epoch over ``X, y`` (rows weighted by ``sample_weight``) from the current
        coefficients."""
        first = not hasattr(self, "coef_")
        self._check_options()
        X, y = self._validate_xy(X, y, reset=first)
        init = None if first else self._current()
        epoch = 0 if first else self.n_iter_
        params, results = self._train_problems(X, self._targets(y),
                                               self._sample_weight(sample_weight, X), init, epoch, 1)
        self._set_params(params, ([] if first else self.fit_results_) + results, epoch + 1)
        return self

    def predict(self, X) -> np.ndarray:
        return self._margins(X)[:, 0]


def estimator_from_run(result, classes, **params):
    """The fitted estimator that a finished binary or regression :class:`Engine` run amounts to
    (what ``hogwild-mts train --out`` saves): ``params`` are the estimator's constructor
    arguments, ``loss`` among them; ``classes`` the sorted labels (None for regression; the
    positive class, +1, is ``classes[1]``)."""
    cls = HogwildRegressor if params.get("loss") in REGRESSOR_LOSSES else HogwildClassifier
    estimator = cls(**params)
    estimator.coef_ = np.asarray(result.params, dtype=np.float64)[None, :]
    estimator.intercept_ = np.array([result.intercept])
    estimator.n_features_in_ = estimator.coef_.shape[1]
    if classes is not None:
        estimator.classes_ = np.asarray(classes)
    estimator.n_iter_ = int(result.settings.get("epochs", 0))
    estimator.fit_results_ = [result]
    return estimator


def save(estimator, path: str) -> str:
    """Save a fitted HogwildClassifier or HogwildRegressor into directory ``path`` (a model
    file: see :mod:`hogwild_mts.model_file`)."""
    check_is_fitted(estimator, "coef_")
    result = estimator.fit_result_
    if result is None:
        raise ValueError("this estimator was loaded from a file and not trained since: its file "
                         "is already the saved model")
    metrics = {key: value for key, value in result.to_dict().items()
               if key not in ("history", "staleness_histogram", "staleness_fit")}
    metrics["n_iter"] = estimator.n_iter_
    return save_linear(path, kind=type(estimator).__name__, coef=estimator.coef_,
                       intercept=estimator.intercept_, classes=getattr(estimator, "classes_", None),
                       estimator_params=estimator.get_params(),
                       histogram=result.staleness_histogram, counter=result.counter, metrics=metrics,
                       feature_names=getattr(estimator, "feature_names_in_", None))


def load(path: str):
    """The fitted estimator stored at ``path``: predicts at once; ``warm_start=True`` or
    ``partial_fit`` continue training from the stored coefficients."""
    document, arrays = read(path)
    cls = {"HogwildClassifier": HogwildClassifier, "HogwildRegressor": HogwildRegressor}[document["kind"]]
    params = dict(document["params"])
    params["policy"] = policy_from_spec(params.get("policy", {"name": "constant"}), path)
    allowed = set(cls._get_param_names())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ModelFileError(f"{path}: unknown estimator settings {unknown}")
    estimator = cls(**params)
    estimator.coef_ = arrays["coef"]
    estimator.intercept_ = arrays["intercept"]
    estimator.n_features_in_ = int(document["n_features"])
    estimator.n_iter_ = int(document.get("metrics", {}).get("n_iter", 0))
    if "classes" in arrays:
        estimator.classes_ = arrays["classes"]
    if document.get("feature_names") is not None:
        estimator.feature_names_in_ = np.asarray(document["feature_names"], dtype=object)
    estimator.fit_results_ = []
    return estimator
