"""scikit-learn estimators over the linear engine: ``HogwildClassifier`` and ``HogwildRegressor``.

They take scikit-learn's ``SGDClassifier`` / ``SGDRegressor`` parameters with the same names,
meanings and defaults (``alpha`` is the regularisation strength, ``eta0`` the base step,
``max_iter`` the epochs, ``random_state`` the seed), so ``HogwildClassifier(**SGDClassifier()
.get_params())`` without ``n_jobs`` trains the same model family; docs/api.md lists every
parameter against scikit-learn's.  The Hogwild! parameters are ``workers`` (in place of
``n_jobs``), ``policy`` (the staleness shape of the step), ``backend``, ``ray_address`` and
``local_steps``.  ``workers`` defaults to 1: one worker is deterministic, so a fixed
``random_state`` gives the same coefficients on every fit, as scikit-learn's contract (and
``check_estimator``'s ``check_fit_idempotent``) asks; ``workers=m`` trains with m lock-free
processes.

``fit`` validates, then trains epoch by epoch as scikit-learn's SGD does: each epoch is one
:class:`hogwild_mts.engines.linear.Engine` run (its updates stamped like any other) that
continues the step schedule (``start_update``), the average and the cumulative L1 penalty (which,
as scikit-learn's, lives for one call: all of a fit's epochs, or one partial_fit; on sparse
X every intercept step is multiplied by scikit-learn's 0.01); after each epoch the stopping
rule of scikit-learn looks at the epoch's training objective (or, with ``early_stopping``, the
score on the held-out rows).  Multiclass targets are trained one-vs-rest: one binary problem
per class, each with its own epochs and stopping, as scikit-learn does.  Every run's FitResult
(staleness histogram, history) is kept in ``fit_results_``, problem by problem:
``problem_epochs_[k]`` runs of problem k (those of the last call).
"""

from __future__ import annotations

import contextlib
import types
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state, compute_class_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from hogwild_mts.core.params import (Checked, Choice, Flag, Fraction, Integer, NonNegative, Option,
                                     Optional, Positive, Table, validate)
from hogwild_mts.core.result import L1State, TrainingWarning, training_trouble
from hogwild_mts.data.tabular import Dataset, as_dataset
from hogwild_mts.engines.linear import ENGINE_OPTIONS, Engine, average_start
from hogwild_mts.model_file import (CLASSIFIER_LOSSES, LEGACY_LOSSES, REGRESSOR_LOSSES,
                                    ModelFileError, policy_from_spec, read, run_estimator_params,
                                    save_linear)
from hogwild_mts.models.linear import SKLEARN_MAX_DERIVATIVE, SPARSE_INTERCEPT_DECAY, LinearModel

PENALTIES = ("l2", "l1", "elasticnet")
LEARNING_RATES = ("constant", "optimal", "invscaling", "adaptive")
ADAPTIVE_DIVISOR = 5.0  # 'adaptive': the step is divided by this each time the stopping rule triggers
ADAPTIVE_SMALLEST = 1e-6  # ... and training stops once it is not above this (scikit-learn's rule)


class _Average:
    """``average``: a bool, or an integer >= 0 (average from that many updates on; 0: off)."""

    def __call__(self, name: str, value):
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        return Integer(0)(name, value)

    def __str__(self) -> str:
        return "bool or an integer >= 0"


def _options(loss: str, losses: tuple, learning_rate: str, eta0: float, power_t: float,
             classifier: bool) -> Table:
    """An estimator's option table: scikit-learn's SGD parameters with its defaults for this
    estimator, then the Hogwild! ones (Engine's entries, ``workers`` defaulting to 1)."""
    sgd = (Option("loss", Choice(losses), loss, "the model"),
           Option("penalty", Optional(Choice(PENALTIES)), "l2", "the model"),
           Option("alpha", NonNegative(), 1e-4, "the model (regularisation strength)"),
           Option("l1_ratio", Optional(Fraction(allow_zero=True, allow_one=True)), 0.15, "the model"),
           Option("fit_intercept", Flag(), True, "the model"),
           Option("max_iter", Integer(1), 1000, "fit (epochs at most)"),
           Option("tol", Optional(NonNegative()), 1e-3, "fit (stopping rule; None: off)"),
           Option("shuffle", Flag(), True, "run"),
           Option("verbose", Integer(0), 0, "fit (a line per epoch)"),
           Option("epsilon", NonNegative(), 0.1, "the model"),
           Option("random_state", Checked("None, an integer or a numpy RandomState"), None, "run"),
           Option("learning_rate", Choice(LEARNING_RATES), learning_rate, "schedule"),
           Option("eta0", Positive(), eta0, "schedule (base step)"),
           Option("power_t", NonNegative(), power_t, "schedule"),
           Option("early_stopping", Flag(), False, "fit"),
           Option("validation_fraction", Fraction(allow_zero=False, allow_one=False), 0.1, "fit"),
           Option("n_iter_no_change", Integer(1), 5, "fit"))
    weights = (Option("class_weight", Checked("None, 'balanced' or a dict: class -> weight"),
                      None, "fit (row weights)"),) if classifier else ()
    rest = (Option("warm_start", Flag(), False, "fit"),
            Option("average", _Average(), False, "schedule (averaged SGD)"),
            ENGINE_OPTIONS["policy"], Option("workers", Integer(1), 1, "run"),
            ENGINE_OPTIONS["backend"], ENGINE_OPTIONS["ray_address"], ENGINE_OPTIONS["local_steps"])
    return Table(sgd + weights + rest, rules=(_penalty_rule, _optimal_rule, _adaptive_rule))


def _penalty_rule(values) -> dict:
    """elasticnet needs ``l1_ratio`` (scikit-learn's error)."""
    if values["penalty"] == "elasticnet" and values["l1_ratio"] is None:
        raise ValueError("l1_ratio must be set when penalty is 'elasticnet'")
    return {}


def _optimal_rule(values) -> dict:
    """learning_rate='optimal' derives the step from ``alpha``, which must then be > 0."""
    if values["learning_rate"] == "optimal" and values["alpha"] == 0:
        raise ValueError("alpha must be > 0 since learning_rate is 'optimal' (alpha sets the "
                         "optimal learning rate); use learning_rate='constant' with eta0 otherwise")
    return {}


def _adaptive_rule(values) -> dict:
    """learning_rate='adaptive' divides the step ``eta0`` of a named policy; a policy object
    brings its own base step, which it cannot divide."""
    if values["learning_rate"] == "adaptive" and not isinstance(values["policy"], str):
        raise ValueError("learning_rate='adaptive' divides eta0, the base step of a named policy; "
                         f"the policy object {values['policy']!r} brings its own base step: give "
                         "the policy by name, or another learning_rate")
    return {}


# The same tables as scikit-learn's defaults (docs/api.md shows them).
CLASSIFIER_OPTIONS = _options("hinge", CLASSIFIER_LOSSES, "optimal", 0.01, 0.5, classifier=True)
REGRESSOR_OPTIONS = _options("squared_error", REGRESSOR_LOSSES, "invscaling", 0.01, 0.25,
                             classifier=False)
_C, _R = CLASSIFIER_OPTIONS.defaults, REGRESSOR_OPTIONS.defaults

# Parameters of files written before the estimators took scikit-learn's names.
LEGACY_PARAMS = ("epochs", "seed", "l2", "progress", "batch_size")


def _max_abs(X) -> float | None:
    """The largest |x| of the rows (dense or sparse), None when there are no values."""
    values = X.data if sp.issparse(X) else np.asarray(X)
    return float(np.abs(values).max()) if values.size else None


def _epoch_seed(seed: int, problem: int, epoch: int) -> int:
    """The shuffle seed of epoch ``epoch`` of binary problem ``problem``."""
    return int(np.random.SeedSequence([seed, problem, epoch]).generate_state(1)[0])


class _Problem:
    """One binary or regression problem's training state between epochs: the plain and the
    averaged parameters (weights, then the intercept), the update count the schedule has
    reached, the step of ``learning_rate='adaptive'`` and the cumulative L1 penalty of the
    call's epochs so far (an L1State; None: none yet, or no L1 penalty)."""

    def __init__(self, params: np.ndarray, average: np.ndarray | None, updates: int, eta: float,
                 l1: L1State | None = None):
        self.params, self.average, self.updates, self.eta, self.l1 = params, average, updates, eta, l1


class _HogwildLinear(BaseEstimator):
    """What the classifier and the regressor share: options, the epochs, the stopping rule."""

    _options: Table

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _keep_params(self, arguments: dict) -> None:
        """``__init__``'s body: each constructor argument stored unchanged under its name, as
        scikit-learn's estimators do (validation waits for ``fit``)."""
        for name in self._get_param_names():
            setattr(self, name, arguments[name])

    # ------------------------------------------------------------------ options
    def _check_options(self, for_partial_fit: bool = False):
        """The validated options (plain messages naming the value), after building the model and
        one engine, which check the loss and the policy; before any training."""
        options = validate(self._options, self.get_params())
        if for_partial_fit and options.early_stopping:
            raise ValueError("early_stopping should be False with partial_fit")
        self._engine(options, _Problem(None, None, 0, options.eta0), seed=0)
        return options

    def _model(self, options, sparse: bool = False) -> LinearModel:
        """The engine's model: the loss, the penalty as L2 and L1 strengths, scikit-learn's
        clipping of the loss derivative and its intercept decay (``sparse`` X: every intercept
        step times SPARSE_INTERCEPT_DECAY)."""
        alpha, penalty = options.alpha, options.penalty
        l1_share = {"l2": 0.0, "l1": 1.0, "elasticnet": options.l1_ratio, None: None}[penalty]
        l2, l1 = (0.0, 0.0) if l1_share is None else (alpha * (1.0 - l1_share), alpha * l1_share)
        return LinearModel(options.loss, l2=l2, l1=l1, fit_intercept=options.fit_intercept,
                           max_derivative=SKLEARN_MAX_DERIVATIVE, epsilon=options.epsilon,
                           intercept_decay=SPARSE_INTERCEPT_DECAY if sparse else 1.0)

    def _engine(self, options, problem: _Problem, seed: int, sparse: bool = False) -> Engine:
        """The engine of one epoch of ``problem`` on rows that are ``sparse`` or not: its
        schedule and average continue from ``problem.updates`` ('adaptive' runs at the constant
        step ``problem.eta``; 'optimal' derives its step from ``alpha``, whatever the penalty; a
        policy object or function keeps its own base step, and ``eta0`` applies to a named
        policy).  ``shuffle=False``: the epoch visits the rows in stored order (``seed`` then
        draws no order)."""
        schedule = "constant" if options.learning_rate == "adaptive" else options.learning_rate
        optimal = schedule == "optimal"
        step = None if optimal or not isinstance(options.policy, str) else problem.eta
        return Engine(self._model(options, sparse), options.policy, lr=step,
                      learning_rate=schedule, power_t=options.power_t,
                      optimal_alpha=options.alpha if optimal else None, average=options.average,
                      start_update=problem.updates, workers=options.workers, epochs=1,
                      batch_size=1, seed=seed, shuffle=options.shuffle, progress=False,
                      eval_every=3600.0,
                      backend=options.backend, ray_address=options.ray_address,
                      local_steps=options.local_steps)

    def _validate(self, X, reset: bool = False):
        """X as float64 (CSR when sparse), checked against the fitted feature count (and names)."""
        return validate_data(self, X, accept_sparse="csr", dtype=np.float64, reset=reset)

    def _validate_xy(self, X, y, reset: bool):
        """X as :meth:`_validate`, y beside it (required); ``reset`` records the feature count."""
        return validate_data(self, X, y, accept_sparse="csr", dtype=np.float64,
                             y_numeric=isinstance(self, RegressorMixin), reset=reset)

    def _seed(self) -> int:
        """The run's seed, drawn from ``random_state`` (an int gives the same seed every fit)."""
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    # ------------------------------------------------------------------ training
    @contextlib.contextmanager
    def _backend_session(self, options):
        """For ``backend="ray"``: connect (or start a local Ray) once around every engine run of
        a fit, and shut down what this call started; nothing for shared memory."""
        if options.backend != "ray":
            yield
            return
        from hogwild_mts.backends.ray.backend import connect

        started = connect(options.ray_address)
        try:
            yield
        finally:
            if started:
                import ray

                ray.shutdown()

    def _epoch(self, options, rows: Dataset, weights, problem: _Problem, seed: int):
        """Train ``problem`` for one epoch over ``rows`` (a Dataset with the +-1 or real
        targets, built once per fit; weights or None), continuing its parameters, schedule,
        average and L1 penalty; return its FitResult."""
        engine = self._engine(options, problem, seed, not rows.dense)
        with warnings.catch_warnings():  # judged below as a ConvergenceWarning
            warnings.simplefilter("ignore", TrainingWarning)
            result = engine.fit(rows, sample_weight=weights, init_params=problem.params,
                                init_average=problem.average, init_l1=problem.l1)
        def flat(params, intercept):
            return np.append(params, intercept) if options.fit_intercept else params

        averaging = result.last_params is not None  # result.params: the averaged ones
        problem.params = (flat(result.last_params, result.last_intercept) if averaging
                          else flat(result.params, result.intercept))
        problem.updates += result.updates
        problem.l1 = result.l1_state
        if averaging and problem.updates > average_start(options.average):
            problem.average = flat(result.params, result.intercept)
        return result

    def _train(self, options, X, y, targets: list, weights: list, problems: list, seed: int,
               epochs: int, stop: bool):
        """Train each problem ``k`` (labels ``targets[k]``, row weights ``weights[k]`` or None,
        state ``problems[k]``) for at most ``epochs`` epochs; with ``stop``, epoch by epoch
        until scikit-learn's stopping rule ends it (:meth:`_stopped`).  Returns (the FitResults
        in order, the epochs each problem ran)."""
        held_out = self._held_out(options, y, seed) if stop and options.early_stopping else None
        train = slice(None) if held_out is None else ~held_out
        # the training rows, copied once for every problem (each has its own labels)
        shared = as_dataset(X if held_out is None else X[train], targets[0][train])
        results, epochs_run, largest = [], [], _max_abs(X)
        with self._backend_session(options):
            for k, (target, weight) in enumerate(zip(targets, weights)):
                if held_out is not None:
                    self._check_split(weight, held_out)
                rows = (shared.with_labels(target[train]), None if weight is None else weight[train])
                stopping = _Stopping(options) if stop else None
                runs = []
                for epoch in range(epochs):
                    runs.append(self._epoch(options, *rows, problems[k], _epoch_seed(seed, k, epoch)))
                    if runs[-1].interrupted:  # a stop (Ctrl-C) ends the fit
                        break
                    if options.verbose:
                        self._report(options, k, epoch, problems[k], runs[-1])
                    if stopping is not None:
                        score = None if held_out is None else self._score_rows(
                            X[held_out], target[held_out],
                            None if weight is None else weight[held_out], self._coefs(problems[k]))
                        if stopping.done(runs[-1].final_loss, score, problems[k]):
                            break
                if options.learning_rate != "optimal":
                    self._judge(runs, k, len(targets), largest)
                results += runs
                epochs_run.append(len(runs))
                if runs[-1].interrupted:
                    break
        return results, epochs_run

    def _report(self, options, k: int, epoch: int, problem: _Problem, result) -> None:
        """``verbose``: one line per epoch, as scikit-learn's SGD prints."""
        d = self.n_features_in_
        weights = problem.params[:d]
        bias = problem.params[d] if options.fit_intercept else 0.0
        label = f" (problem {k})" if len(getattr(self, "classes_", ())) > 2 else ""
        print(f"-- Epoch {epoch + 1}{label}\nNorm: {np.linalg.norm(weights):.2f}, NNZs: "
              f"{np.count_nonzero(weights)}, Bias: {bias:.6f}, T: {problem.updates}, Objective: "
              f"{result.final_loss:.6f}", flush=True)

    def _judge(self, runs: list, k: int, problems: int, largest: float | None) -> None:
        """Warn a ConvergenceWarning when problem ``k``'s ``runs`` (its FitResults, one per
        epoch, judged as one run from the first one's start) went badly.  Not called for
        ``learning_rate='optimal'``: its first steps are about ``1 / alpha`` by design, so its
        loss (hinge's above all) often ends above the loss at zero while the model is good."""
        last = runs[-1]
        whole = types.SimpleNamespace(
            history={"loss": [loss for run in runs for loss in run.history.get("loss", [])]},
            final_loss=last.final_loss, interrupted=any(run.interrupted for run in runs),
            workers=last.workers, settings=last.settings, policy=last.policy)
        trouble = training_trouble(whole, largest)
        if trouble is not None:
            problem = f"class {self.classes_[k]} against the rest: " if problems > 1 else ""
            warnings.warn(f"{type(self).__name__}: {problem}{trouble}", ConvergenceWarning, stacklevel=5)

    def _held_out(self, options, y, seed: int) -> np.ndarray:
        """The validation rows of early stopping (a boolean mask), drawn as scikit-learn does:
        stratified by class for a classifier; ValueError when a side would be empty."""
        from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

        splitter = StratifiedShuffleSplit if isinstance(self, ClassifierMixin) else ShuffleSplit
        try:
            train, held_out = next(splitter(test_size=options.validation_fraction,
                                            random_state=seed).split(np.zeros((len(y), 1)), y))
        except ValueError as error:
            raise ValueError(f"early stopping: {len(y)} rows cannot be split with "
                             f"validation_fraction={options.validation_fraction} ({error}); give "
                             "more rows or another validation_fraction, or early_stopping=False") from None
        mask = np.zeros(len(y), dtype=bool)
        mask[held_out] = True
        return mask

    @staticmethod
    def _check_split(weight, held_out: np.ndarray) -> None:
        """Both sides of the early-stopping split must carry weight."""
        if weight is None:
            return
        for rows, part in ((~held_out, "training"), (held_out, "validation")):
            if not weight[rows].any():
                raise ValueError(f"early stopping: every row of the {part} split has weight 0 "
                                 "(sample_weight times class_weight); use another random_state "
                                 "or validation_fraction")

    @staticmethod
    def _coefs(problem: _Problem) -> np.ndarray:
        """The problem's parameters as the fitted model holds them: the average once it covers
        an update (``average`` set and reached; True: from the first), else the plain ones
        (scikit-learn's rule)."""
        return problem.params if problem.average is None else problem.average

    def _fit(self, options, X, y, sample_weight, classes, first_problems, epochs: int, stop: bool):
        """Train every problem from ``first_problems`` and set the fitted attributes."""
        seed = self._seed()
        targets = self._targets(y)
        weights = self._row_weights(options, y, sample_weight, classes)
        results, epochs_run = self._train(options, X, y, targets, weights, first_problems, seed,
                                          epochs, stop)
        self._problems = first_problems
        params = np.vstack([self._coefs(p) for p in first_problems])
        d = X.shape[1]
        self._set_coef(params[:, :d], params[:, d] if options.fit_intercept else np.zeros(len(params)))
        self.fit_results_, self.problem_epochs_ = results, epochs_run
        return max(epochs_run)

    def _start(self, options, n_features: int, problems: int, keep: bool) -> list:
        """Each problem's starting state: the fitted one when ``keep`` (warm start, partial_fit),
        else zeros at the first update.  Every call (fit or partial_fit) starts a new
        cumulative L1 penalty, as scikit-learn's (its ``u`` and ``q`` live for one call of its
        SGD loop: all of a fit's epochs, or one partial_fit)."""
        if keep and getattr(self, "_problems", None) is not None:
            for problem in self._problems:
                problem.eta = options.eta0  # each call starts from eta0, as scikit-learn
                problem.l1 = None
            return self._problems
        if keep and hasattr(self, "coef_"):  # loaded from a file: the stored coefficients
            current = np.hstack([np.atleast_2d(self.coef_)] + (
                [np.atleast_1d(self.intercept_)[:, None]] if options.fit_intercept else []))
            return [_Problem(row.copy(), None, 0, options.eta0) for row in current]
        n_params = n_features + int(options.fit_intercept)
        return [_Problem(np.zeros(n_params), None, 0, options.eta0) for _ in range(problems)]

    def _full_fit(self, X, y, sample_weight, classes):
        """``fit``: up to ``max_iter`` epochs per problem under the stopping rule; warns a
        ConvergenceWarning when ``max_iter`` ran out with ``tol`` set (as scikit-learn)."""
        options = self._check_options()
        problems = self._start(options, X.shape[1], len(self._targets(y)), keep=options.warm_start)
        for problem in problems:  # a fit starts the schedule and the average again, as scikit-learn
            problem.updates, problem.average = 0, None
        self.n_iter_ = self._fit(options, X, y, self._sample_weight(sample_weight, X), classes,
                                 problems, options.max_iter, stop=True)
        self.t_ = float(max(p.updates for p in problems) + 1)
        if options.tol is not None and self.n_iter_ == options.max_iter:
            warnings.warn(f"{type(self).__name__}: max_iter={options.max_iter} epochs ran out "
                          "before the stopping rule ended training; consider a larger max_iter",
                          ConvergenceWarning, stacklevel=3)
        return self

    def _partial(self, X, y, sample_weight, classes, first: bool):
        """``partial_fit``: one epoch per problem from the current state, no stopping rule."""
        options = self._check_options(for_partial_fit=True)
        problems = self._start(options, X.shape[1], len(self._targets(y)), keep=not first)
        previous = [] if first else list(getattr(self, "fit_results_", []))
        epochs = self._fit(options, X, y, self._sample_weight(sample_weight, X), classes,
                           problems, 1, stop=False)
        self.fit_results_ = previous + self.fit_results_
        self.n_iter_ = (0 if first else self.n_iter_) + epochs
        self.t_ = float(max(p.updates for p in problems) + 1)
        return self

    def _sample_weight(self, sample_weight, X):
        """``sample_weight`` as float64 (n,), or None; the engine checks the values."""
        return None if sample_weight is None else _check_sample_weight(sample_weight, X)

    def _row_weights(self, options, y, sample_weight, classes) -> list:
        """Each problem's row weights (None: unweighted)."""
        return [sample_weight] * len(self._targets(y))

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
        """(n, K) margins ``X coef.T + intercept``."""
        check_is_fitted(self, "coef_")
        X = self._validate(X)
        return np.asarray(X @ np.atleast_2d(self.coef_).T) + np.atleast_1d(self.intercept_)


class HogwildClassifier(ClassifierMixin, _HogwildLinear):
    """A linear classifier trained by Hogwild! SGD, with scikit-learn's ``SGDClassifier``
    parameters (same names, meanings and defaults: ``loss='hinge'``, ``penalty='l2'``,
    ``alpha=1e-4`` the regularisation strength, ``learning_rate='optimal'``, ``max_iter=1000``
    epochs at most, ``tol=1e-3``, ...) and the Hogwild! ones: ``workers`` (1, deterministic),
    ``policy`` (the staleness shape of the step), ``backend``, ``ray_address``, ``local_steps``.
    Multiclass: one-vs-rest.  ``class_weight``: a dict class -> weight or 'balanced', applied as
    row weights (the positive class's weight on its rows; the negative rows' weight is the other
    class's for two classes, 1 one-vs-rest, as scikit-learn)."""

    _options = CLASSIFIER_OPTIONS

    def __init__(self, loss=_C.loss, *, penalty=_C.penalty, alpha=_C.alpha, l1_ratio=_C.l1_ratio,
                 fit_intercept=_C.fit_intercept, max_iter=_C.max_iter, tol=_C.tol,
                 shuffle=_C.shuffle, verbose=_C.verbose, epsilon=_C.epsilon,
                 random_state=_C.random_state, learning_rate=_C.learning_rate, eta0=_C.eta0,
                 power_t=_C.power_t, early_stopping=_C.early_stopping,
                 validation_fraction=_C.validation_fraction, n_iter_no_change=_C.n_iter_no_change,
                 class_weight=_C.class_weight, warm_start=_C.warm_start, average=_C.average,
                 policy=_C.policy, workers=_C.workers, backend=_C.backend,
                 ray_address=_C.ray_address, local_steps=_C.local_steps):
        self._keep_params(locals())

    def _targets(self, y) -> list:
        """+-1 labels per problem: one problem (classes_[1] positive) for two classes, else one
        per class."""
        if len(self.classes_) == 2:
            return [np.where(y == self.classes_[1], 1.0, -1.0)]
        return [np.where(y == c, 1.0, -1.0) for c in self.classes_]

    def _class_weights(self, classes, y) -> np.ndarray:
        """The weight of each class of ``classes`` (``class_weight``; 1 each when None)."""
        weight = self.class_weight
        if weight is None:
            return np.ones(len(classes))
        if not (weight == "balanced" or isinstance(weight, dict)):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict class -> weight, "
                             f"got {weight!r}")
        return compute_class_weight(weight, classes=classes, y=y)

    def _row_weights(self, options, y, sample_weight, classes) -> list:
        """Each problem's row weights: ``sample_weight`` times the class weights, the positive
        class's on its rows, the other class's (two classes) or 1 (one-vs-rest) on the rest."""
        if self.class_weight is None:
            return [sample_weight] * len(self._targets(y))
        per_class = self._class_weights(self.classes_, y)
        base = np.ones(len(y)) if sample_weight is None else sample_weight
        if len(self.classes_) == 2:
            return [base * np.where(y == self.classes_[1], per_class[1], per_class[0])]
        return [base * np.where(y == c, per_class[k], 1.0) for k, c in enumerate(self.classes_)]

    def fit(self, X, y, sample_weight=None):
        """Fit on ``X`` (array or scipy sparse) and class labels ``y``, rows weighted by
        ``sample_weight`` (default 1 each); returns self."""
        warm = self.warm_start and hasattr(self, "coef_")
        X, y = self._validate_xy(X, y, reset=not warm)
        check_classification_targets(y)
        classes = np.unique(y)
        if classes.size < 2:
            raise ValueError(f"HogwildClassifier needs samples of at least 2 classes, got one "
                             f"class: {classes[0]!r}")
        if warm and not np.array_equal(classes, self.classes_):
            raise ValueError(f"warm_start: y has the classes {classes.tolist()}, the fitted model "
                             f"{self.classes_.tolist()}")
        if not warm:
            self._problems = None
        self.classes_ = classes
        return self._full_fit(X, y, sample_weight, None)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One more epoch over ``X, y`` (rows weighted by ``sample_weight``) from the current
        coefficients (``classes`` is needed on the first call, as in scikit-learn)."""
        first = not hasattr(self, "coef_")
        X, y = self._validate_xy(X, y, reset=first)
        check_classification_targets(y)
        if self.class_weight == "balanced":
            raise ValueError("class_weight 'balanced' is not supported for partial_fit (the "
                             "class frequencies of later batches are unknown); give a dict")
        if first:
            if classes is None:
                raise ValueError("classes must be given on the first call to partial_fit")
            self.classes_ = np.unique(np.asarray(classes))
            if self.classes_.size < 2:
                raise ValueError(f"HogwildClassifier needs at least 2 classes, got {self.classes_.tolist()}")
            self._problems = None
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y has classes {unknown.tolist()} that are not in classes_ "
                             f"{self.classes_.tolist()}")
        return self._partial(X, y, sample_weight, self.classes_, first)

    def _set_coef(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        self.coef_, self.intercept_ = coef, intercept

    def _score_rows(self, X, target, weights, params) -> float:
        """Accuracy (weighted by ``weights`` or None) of one binary problem's ``params`` on
        labels ``target`` (+-1): scikit-learn's validation score of early stopping."""
        d = X.shape[1]
        margins = np.asarray(X @ params[:d]) + (params[d] if len(params) > d else 0.0)
        return float(np.average(np.where(margins > 0, 1.0, -1.0) == target, weights=weights))

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

    def _has_proba(self) -> bool:
        return LEGACY_LOSSES.get(self.loss, self.loss) in ("log_loss", "modified_huber")

    @available_if(_has_proba)
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (``log_loss``: the sigmoid of the margin; ``modified_huber``:
        ``(clip(margin, -1, 1) + 1) / 2``); one-vs-rest probabilities are normalised to sum to
        1 (rows where every class has 0 share them equally), as scikit-learn."""
        margins = self._margins(X)
        if LEGACY_LOSSES.get(self.loss, self.loss) == "log_loss":
            positive = 1.0 / (1.0 + np.exp(-np.clip(margins, -500, 500)))
        else:
            positive = (np.clip(margins, -1.0, 1.0) + 1.0) / 2.0
        if positive.shape[1] == 1:
            return np.hstack([1.0 - positive, positive])
        totals = positive.sum(axis=1, keepdims=True)
        return np.where(totals > 0, positive / np.where(totals > 0, totals, 1.0), 1.0 / positive.shape[1])

    @available_if(_has_proba)
    def predict_log_proba(self, X) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


class HogwildRegressor(RegressorMixin, _HogwildLinear):
    """A linear regressor trained by Hogwild! SGD, with scikit-learn's ``SGDRegressor``
    parameters and defaults (``loss='squared_error'``, ``learning_rate='invscaling'``,
    ``eta0=0.01``, ``power_t=0.25``, ...) and the Hogwild! ones (see :class:`HogwildClassifier`).
    ``coef_`` has shape (n_features,) and ``intercept_`` (1,), as scikit-learn's."""

    _options = REGRESSOR_OPTIONS

    def __init__(self, loss=_R.loss, *, penalty=_R.penalty, alpha=_R.alpha, l1_ratio=_R.l1_ratio,
                 fit_intercept=_R.fit_intercept, max_iter=_R.max_iter, tol=_R.tol,
                 shuffle=_R.shuffle, verbose=_R.verbose, epsilon=_R.epsilon,
                 random_state=_R.random_state, learning_rate=_R.learning_rate, eta0=_R.eta0,
                 power_t=_R.power_t, early_stopping=_R.early_stopping,
                 validation_fraction=_R.validation_fraction, n_iter_no_change=_R.n_iter_no_change,
                 warm_start=_R.warm_start, average=_R.average, policy=_R.policy,
                 workers=_R.workers, backend=_R.backend, ray_address=_R.ray_address,
                 local_steps=_R.local_steps):
        self._keep_params(locals())

    def _targets(self, y) -> list:
        """The one regression problem."""
        return [np.asarray(y, dtype=np.float64)]

    def fit(self, X, y, sample_weight=None):
        """Fit on ``X`` (array or scipy sparse) and real targets ``y``, rows weighted by
        ``sample_weight`` (default 1 each); returns self."""
        warm = self.warm_start and hasattr(self, "coef_")
        X, y = self._validate_xy(X, y, reset=not warm)
        if not warm:
            self._problems = None
        return self._full_fit(X, y, sample_weight, None)

    def partial_fit(self, X, y, sample_weight=None):
        """One more epoch over ``X, y`` (rows weighted by ``sample_weight``) from the current
        coefficients."""
        first = not hasattr(self, "coef_")
        X, y = self._validate_xy(X, y, reset=first)
        if first:
            self._problems = None
        return self._partial(X, y, sample_weight, None, first)

    def _set_coef(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        self.coef_, self.intercept_ = coef[0], intercept[:1]

    def _score_rows(self, X, target, weights, params) -> float:
        """R^2 (weighted by ``weights`` or None) of ``params`` on ``target``: scikit-learn's
        validation score of early stopping."""
        from sklearn.metrics import r2_score

        d = X.shape[1]
        predicted = np.asarray(X @ params[:d]) + (params[d] if len(params) > d else 0.0)
        return float(r2_score(target, predicted, sample_weight=weights))

    def predict(self, X) -> np.ndarray:
        return self._margins(X)[:, 0]


class _Stopping:
    """scikit-learn's stopping rule, epoch by epoch: an epoch that does not improve the best
    training objective by ``tol`` (with ``early_stopping``: the best validation score) counts;
    ``n_iter_no_change`` such epochs in a row stop training, or, with
    ``learning_rate='adaptive'``, divide the step by 5 and start counting again, until the step
    is not above 1e-6.  ``tol=None``: never stops (``max_iter`` epochs)."""

    def __init__(self, options):
        self.options = options
        self.best_loss, self.best_score, self.stale = np.inf, -np.inf, 0

    def done(self, loss: float, score: float | None, problem: _Problem) -> bool:
        tol = self.options.tol
        if tol is None:
            return False
        if score is None:
            self.stale = self.stale + 1 if loss > self.best_loss - tol else 0
            self.best_loss = min(self.best_loss, loss)
        else:
            self.stale = self.stale + 1 if score < self.best_score + tol else 0
            self.best_score = max(self.best_score, score)
        if self.stale < self.options.n_iter_no_change:
            return False
        if self.options.learning_rate == "adaptive" and problem.eta > ADAPTIVE_SMALLEST:
            problem.eta /= ADAPTIVE_DIVISOR
            self.stale = 0
            return False
        return True


def current_params(params: dict, kind: str) -> dict:
    """An estimator's parameters with the names of this version: a file written before the
    estimators took scikit-learn's names (``epochs``, ``seed``, ``l2``, ``progress``,
    ``batch_size``; ``alpha`` the constant base step; losses logreg/svm/lsq) maps onto them as
    the run it describes: a constant step ``eta0``, the L2 penalty, every epoch run (no
    stopping rule unless it stopped early).  Current parameters are returned unchanged."""
    if not set(LEGACY_PARAMS) & set(params):
        return dict(params)
    old = dict(params)
    regressor = kind == "HogwildRegressor"
    new = run_estimator_params(old.get("loss") or ("lsq" if regressor else "logreg"),
                               step=old.get("alpha") or (0.01 if regressor else 0.1),
                               epochs=old.get("epochs", 5), l2=float(old.get("l2") or 0.0),
                               seed=old.get("seed", 0))
    new["verbose"] = int(bool(old.get("progress", False)))
    if old.get("early_stopping"):
        new["tol"] = old.get("tol", 1e-4)
    kept = ("fit_intercept", "warm_start", "early_stopping", "validation_fraction",
            "n_iter_no_change", "policy", "workers", "backend", "ray_address", "local_steps")
    new.update({name: old[name] for name in kept if name in old})
    return new


def estimator_from_run(result, classes, **params):
    """The fitted estimator that a finished binary or regression :class:`Engine` run amounts to
    (what ``hogwild-mts train --out`` saves): ``params`` are the estimator's constructor
    arguments (:func:`hogwild_mts.model_file.run_estimator_params` and the Hogwild! ones),
    ``loss`` among them; ``classes`` the sorted labels (None for regression; the positive
    class, +1, is ``classes[1]``)."""
    regressor = params["loss"] in REGRESSOR_LOSSES and classes is None
    estimator = (HogwildRegressor if regressor else HogwildClassifier)(**params)
    coef = np.asarray(result.params, dtype=np.float64)[None, :]
    estimator._set_coef(coef, np.array([result.intercept]))
    estimator.n_features_in_ = coef.shape[1]
    if classes is not None:
        estimator.classes_ = np.asarray(classes)
    estimator.n_iter_ = int(result.settings.get("epochs", 0))
    estimator.fit_results_ = [result]
    return estimator


def save(estimator, path: str) -> str:
    """Save a fitted HogwildClassifier or HogwildRegressor into directory ``path`` (a model
    file: see :mod:`hogwild_mts.model_file`); ``random_state`` is stored when it is None or an
    integer (a RandomState is stored as None)."""
    check_is_fitted(estimator, "coef_")
    result = estimator.fit_result_
    if result is None:
        raise ValueError("this estimator was loaded from a file and not trained since: its file "
                         "is already the saved model")
    metrics = {key: value for key, value in result.to_dict().items()
               if key not in ("history", "staleness_histogram", "staleness_fit")}
    metrics["n_iter"] = estimator.n_iter_
    params = estimator.get_params()
    if not (params["random_state"] is None or isinstance(params["random_state"], (int, np.integer))):
        params["random_state"] = None
    return save_linear(path, kind=type(estimator).__name__, coef=np.atleast_2d(estimator.coef_),
                       intercept=np.atleast_1d(estimator.intercept_),
                       classes=getattr(estimator, "classes_", None), estimator_params=params,
                       histogram=result.staleness_histogram, counter=result.counter, metrics=metrics,
                       feature_names=getattr(estimator, "feature_names_in_", None))


def load(path: str):
    """The fitted estimator stored at ``path``: predicts at once; ``warm_start=True`` or
    ``partial_fit`` continue training from the stored coefficients.  Files of earlier versions
    (the engine's parameter names) load with their parameters mapped by :func:`current_params`."""
    document, arrays = read(path)
    kind = document["kind"]
    cls = {"HogwildClassifier": HogwildClassifier, "HogwildRegressor": HogwildRegressor}[kind]
    params = current_params(document["params"], kind)
    params["policy"] = policy_from_spec(params.get("policy", {"name": "constant"}), path)
    unknown = sorted(set(params) - set(cls._get_param_names()))
    if unknown:
        raise ModelFileError(f"{path}: unknown estimator settings {unknown}")
    estimator = cls(**params)
    estimator._set_coef(arrays["coef"], arrays["intercept"])
    estimator.n_features_in_ = int(document["n_features"])
    estimator.n_iter_ = int(document.get("metrics", {}).get("n_iter", 0))
    if "classes" in arrays:
        estimator.classes_ = arrays["classes"]
    if document.get("feature_names") is not None:
        estimator.feature_names_in_ = np.asarray(document["feature_names"], dtype=object)
    estimator.fit_results_ = []
    return estimator
