"""Linear models: scikit-learn's SGD model family (the losses of ``SGDClassifier`` and
``SGDRegressor``) with L2 and L1 penalties.

A linear model scores row ``x`` with the margin ``p = w . x + b`` (``b`` only with an
intercept).  Labels of the classifiers are -1/+1 (0/1 is accepted and mapped to -1/+1).  The
objective is ``mean_i loss(p_i, y_i) + l2 / 2 * ||w||^2 + l1 * ||w||_1``; the intercept is never
penalised (scikit-learn's ``alpha`` and ``l1_ratio``: ``l2 = alpha (1 - l1_ratio)``, ``l1 =
alpha l1_ratio``).  ``intercept_decay`` multiplies every step of the intercept (1: a plain SGD
step; scikit-learn takes SPARSE_INTERCEPT_DECAY on sparse data, where the intercept sees every
row but each weight few of them).

The losses, their values and derivatives ``d loss / d p`` are scikit-learn's
(``sklearn.linear_model._sgd_fast`` and, for ``log_loss``, ``squared_error`` and ``huber``,
``sklearn._loss._loss``), with ``y`` in {-1, +1} for the classifiers:

* ``hinge`` (alias ``svm``): ``max(0, 1 - y p)``; derivative ``-y`` where ``y p <= 1``.
* ``perceptron``: hinge with threshold 0: ``max(0, -y p)``; derivative ``-y`` where ``y p <= 0``.
* ``squared_hinge``: ``max(0, 1 - y p)^2``; derivative ``-2 y (1 - y p)`` where positive.
* ``log_loss`` (alias ``logreg``): ``log(1 + exp(-y p))``, evaluated as scikit-learn's half
  binomial loss ``log1pexp(p) - y01 p`` with ``y01 = (y + 1) / 2``; derivative
  ``expit(p) - y01``.
* ``modified_huber``: ``(1 - y p)^2`` for ``-1 <= y p < 1``, ``-4 y p`` below, 0 above.
* ``squared_error`` (alias ``lsq``): ``0.5 (p - y)^2``; derivative ``p - y``.
* ``huber``: ``0.5 r^2`` for ``|r| <= epsilon`` else ``epsilon (|r| - epsilon / 2)``, ``r = p - y``.
* ``epsilon_insensitive``: ``max(0, |y - p| - epsilon)``.
* ``squared_epsilon_insensitive``: ``max(0, |y - p| - epsilon)^2``.

scikit-learn's SGD loop clips the derivative to [-1e12, 1e12] (``SKLEARN_MAX_DERIVATIVE``); a
model clips it to ``[-max_derivative, max_derivative]``, by default not at all (a derivative
that large has diverged anyway, and the kernels stop on a non-finite margin); the estimators
set scikit-learn's bound, so a run that scikit-learn keeps finite stays finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

LOSS_LOG = 0
LOSS_HINGE = 1
LOSS_SQUARED = 2
LOSS_MODIFIED_HUBER = 3
LOSS_SQUARED_HINGE = 4
LOSS_PERCEPTRON = 5
LOSS_HUBER = 6
LOSS_EPSILON_INSENSITIVE = 7
LOSS_SQUARED_EPSILON_INSENSITIVE = 8

CLASSIFIER_LOSSES = {"hinge": LOSS_HINGE, "log_loss": LOSS_LOG, "modified_huber": LOSS_MODIFIED_HUBER,
                     "squared_hinge": LOSS_SQUARED_HINGE, "perceptron": LOSS_PERCEPTRON}
REGRESSOR_LOSSES = {"squared_error": LOSS_SQUARED, "huber": LOSS_HUBER,
                    "epsilon_insensitive": LOSS_EPSILON_INSENSITIVE,
                    "squared_epsilon_insensitive": LOSS_SQUARED_EPSILON_INSENSITIVE}
ALIASES = {"logreg": "log_loss", "svm": "hinge", "lsq": "squared_error"}  # the CLI's names
LOSS_IDS = {**CLASSIFIER_LOSSES, **REGRESSOR_LOSSES,
            **{alias: {**CLASSIFIER_LOSSES, **REGRESSOR_LOSSES}[name] for alias, name in ALIASES.items()}}
CLASSIFIERS = (*CLASSIFIER_LOSSES, "logreg", "svm")
PROBABILISTIC = ("log_loss", "modified_huber", "logreg")  # losses whose margins give probabilities
LOG_CUTOFF = -37.0  # below it scikit-learn's log1pexp and expit take exp(p) (its _loss module)
SKLEARN_MAX_DERIVATIVE = 1e12  # scikit-learn's SGD clips d loss / d p to +-this (MAX_DLOSS)
SPARSE_INTERCEPT_DECAY = 0.01  # scikit-learn's intercept_decay on sparse data (linear_model._base)


@njit(cache=True, inline="always")
def _log1pexp(x):
    """log(1 + exp(x)) in scikit-learn's pieces (sklearn._loss._loss.log1pexp)."""
    if x <= LOG_CUTOFF:
        return math.exp(x)
    if x <= -2.0:
        return math.log1p(math.exp(x))
    if x <= 18.0:
        return math.log(1.0 + math.exp(x))
    if x <= 33.3:
        return x + math.exp(-x)
    return x


@njit(cache=True, inline="always")
def loss_value(loss_id, margin, label, epsilon):
    """Loss of one sample with margin ``p`` and label ``y`` (see the module docstring);
    ``epsilon`` is read by huber and the epsilon-insensitive losses only."""
    if loss_id == LOSS_LOG:
        return _log1pexp(margin) - 0.5 * (label + 1.0) * margin
    if loss_id == LOSS_HINGE or loss_id == LOSS_PERCEPTRON:
        threshold = 1.0 if loss_id == LOSS_HINGE else 0.0
        z = label * margin
        return threshold - z if z <= threshold else 0.0
    if loss_id == LOSS_SQUARED:
        residual = margin - label
        return 0.5 * residual * residual
    if loss_id == LOSS_MODIFIED_HUBER:
        z = label * margin
        if z >= 1.0:
            return 0.0
        if z >= -1.0:
            return (1.0 - z) * (1.0 - z)
        return -4.0 * z
    if loss_id == LOSS_SQUARED_HINGE:
        z = 1.0 - label * margin
        return z * z if z > 0.0 else 0.0
    if loss_id == LOSS_HUBER:
        error = abs(label - margin)
        if error <= epsilon:
            return 0.5 * error ** 2
        return epsilon * (error - 0.5 * epsilon)
    excess = abs(label - margin) - epsilon
    if loss_id == LOSS_EPSILON_INSENSITIVE:
        return excess if excess > 0.0 else 0.0
    return excess * excess if excess > 0.0 else 0.0


@njit(cache=True, inline="always")
def loss_derivative(loss_id, margin, label, epsilon):
    """d loss / d margin of one sample (the subgradients scikit-learn takes at the kinks)."""
    if loss_id == LOSS_LOG:
        positive = 0.5 * (label + 1.0)
        if margin > LOG_CUTOFF:
            e = math.exp(-margin)
            return ((1.0 - positive) - positive * e) / (1.0 + e)
        return math.exp(margin) - positive
    if loss_id == LOSS_HINGE or loss_id == LOSS_PERCEPTRON:
        threshold = 1.0 if loss_id == LOSS_HINGE else 0.0
        return -label if label * margin <= threshold else 0.0
    if loss_id == LOSS_SQUARED:
        return margin - label
    if loss_id == LOSS_MODIFIED_HUBER:
        z = label * margin
        if z >= 1.0:
            return 0.0
        if z >= -1.0:
            return 2.0 * (1.0 - z) * -label
        return -4.0 * label
    if loss_id == LOSS_SQUARED_HINGE:
        z = 1.0 - label * margin
        return -2.0 * label * z if z > 0.0 else 0.0
    if loss_id == LOSS_HUBER:
        residual = margin - label
        if abs(residual) <= epsilon:
            return residual
        return epsilon if residual >= 0.0 else -epsilon
    z = label - margin
    if loss_id == LOSS_EPSILON_INSENSITIVE:
        if z > epsilon:
            return -1.0
        return 1.0 if -z > epsilon else 0.0
    if z > epsilon:
        return -2.0 * (z - epsilon)
    if z < -epsilon:
        return 2.0 * (-z - epsilon)
    return 0.0


def _non_negative(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


@dataclass(frozen=True)
class LinearModel:
    """A linear model by loss name (scikit-learn's, or the aliases ``logreg``, ``svm``,
    ``lsq``), with L2 and L1 penalties (>= 0), an optional intercept, the ``epsilon`` of
    huber and the epsilon-insensitive losses (>= 0, default 0.1 as scikit-learn's), and the
    bound ``max_derivative`` (> 0, default inf: none) the SGD kernels clip each row's loss
    derivative to (scikit-learn's is SKLEARN_MAX_DERIVATIVE), and the ``intercept_decay`` in
    (0, 1] every step of the intercept is multiplied by (default 1; scikit-learn's on sparse data
    is SPARSE_INTERCEPT_DECAY)."""

    name: str = "logreg"
    l2: float = 0.0
    l1: float = 0.0
    fit_intercept: bool = True
    epsilon: float = 0.1
    max_derivative: float = math.inf
    intercept_decay: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or self.name not in LOSS_IDS:
            raise ValueError(f"unknown model {self.name!r}; choose one of the classifier losses "
                             f"{list(CLASSIFIER_LOSSES)}, the regressor losses "
                             f"{list(REGRESSOR_LOSSES)} or the aliases {list(ALIASES)}")
        for name in ("l2", "l1", "epsilon"):
            object.__setattr__(self, name, _non_negative(name, getattr(self, name)))
        bound = self.max_derivative
        if not (isinstance(bound, (int, float)) and not isinstance(bound, bool) and bound > 0):
            raise ValueError(f"max_derivative must be a number > 0 (inf: no bound), got {bound!r}")
        object.__setattr__(self, "max_derivative", float(bound))
        decay = self.intercept_decay
        if not (isinstance(decay, (int, float)) and not isinstance(decay, bool) and 0 < decay <= 1):
            raise ValueError(f"intercept_decay must be a number in (0, 1] (1: plain intercept "
                             f"steps), got {decay!r}")
        object.__setattr__(self, "intercept_decay", float(decay))

    @property
    def loss_id(self) -> int:
        return LOSS_IDS[self.name]

    @property
    def loss(self) -> str:
        """The scikit-learn name of the loss (an alias resolved)."""
        return ALIASES.get(self.name, self.name)

    @property
    def classifier(self) -> bool:
        return self.name in CLASSIFIERS

    @property
    def probabilistic(self) -> bool:
        """Whether the margins give class probabilities (log_loss, modified_huber)."""
        return self.name in PROBABILISTIC

    @property
    def penalty(self) -> float:
        """The regularisation strength ``l1 + l2`` (scikit-learn's ``alpha``)."""
        return self.l1 + self.l2

    def n_params(self, n_features: int) -> int:
        """Length of the flat parameter vector: the weights, then the intercept if any."""
        return n_features + int(self.fit_intercept)

    def check_labels(self, y: np.ndarray) -> np.ndarray:
        """Return float64 labels in the model's domain or raise ValueError naming what was found
        (a classifier needs both classes)."""
        y = np.asarray(y, dtype=np.float64)
        if not self.classifier:
            return y
        classes = np.unique(y)
        if classes.size == 1:
            raise ValueError(f"model {self.name!r} needs labels of two classes, but every label is "
                             f"{classes[0]:g}; a binary classifier cannot learn from one class")
        if np.all(np.isin(classes, (-1.0, 1.0))):
            return y
        if np.all(np.isin(classes, (0.0, 1.0))):
            return np.where(y > 0.5, 1.0, -1.0)
        shown = ", ".join(f"{c:g}" for c in classes[:6]) + (", ..." if classes.size > 6 else "")
        raise ValueError(f"model {self.name!r} needs binary labels in {{-1, +1}} or {{0, 1}}, "
                         f"got the values {{{shown}}}")
