"""Linear models: logistic regression, linear SVM (hinge) and least squares.

A linear model scores row ``x`` with the margin ``m = w . x + b`` (``b`` only with an intercept).
Labels of the classifiers are -1/+1 (0/1 is accepted and mapped to -1/+1).  The objective is
``mean_i loss(m_i, y_i) + l2 / 2 * ||w||^2``; the intercept is never penalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

LOSS_LOGISTIC = 0
LOSS_HINGE = 1
LOSS_SQUARED = 2

LOSS_IDS = {"logreg": LOSS_LOGISTIC, "svm": LOSS_HINGE, "lsq": LOSS_SQUARED}
CLASSIFIERS = ("logreg", "svm")


@njit(cache=True, inline="always")
def loss_value(loss_id, margin, label):
    """Loss of one sample (natural log for logistic; 0.5 (m - y)^2 for squared)."""
    if loss_id == LOSS_LOGISTIC:
        z = label * margin
        if z > 0.0:
            return math.log1p(math.exp(-z))
        return -z + math.log1p(math.exp(z))
    if loss_id == LOSS_HINGE:
        return max(0.0, 1.0 - label * margin)
    residual = margin - label
    return 0.5 * residual * residual


@njit(cache=True, inline="always")
def loss_derivative(loss_id, margin, label):
    """d loss / d margin for one sample (hinge: the subgradient -y where y m < 1, else 0)."""
    if loss_id == LOSS_LOGISTIC:
        z = label * margin
        if z > 0.0:
            e = math.exp(-z)
            return -label * e / (1.0 + e)
        return -label / (1.0 + math.exp(z))
    if loss_id == LOSS_HINGE:
        return -label if label * margin < 1.0 else 0.0
    return margin - label


@dataclass(frozen=True)
class LinearModel:
    """A linear model by loss name, with an optional L2 penalty and intercept."""

    name: str = "logreg"
    l2: float = 0.0
    fit_intercept: bool = True

    def __post_init__(self):
        if self.name not in LOSS_IDS:
            raise ValueError(f"unknown model {self.name!r}; choose one of {sorted(LOSS_IDS)}")
        l2 = float(self.l2)
        if not math.isfinite(l2) or l2 < 0.0:
            raise ValueError(f"l2 must be a finite number >= 0, got {self.l2!r}")

    @property
    def loss_id(self) -> int:
        return LOSS_IDS[self.name]

    @property
    def classifier(self) -> bool:
        return self.name in CLASSIFIERS

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
