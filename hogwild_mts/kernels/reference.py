"""Slow pure-Python references for the numba kernels (tests check the kernels against these)."""

from __future__ import annotations

import math


def loss_value(name: str, margin: float, label: float) -> float:
    if name == "logreg":
        return math.log(1.0 + math.exp(-label * margin))
    if name == "svm":
        return max(0.0, 1.0 - label * margin)
    return 0.5 * (margin - label) ** 2


def loss_derivative(name: str, margin: float, label: float) -> float:
    if name == "logreg":
        return -label / (1.0 + math.exp(label * margin))
    if name == "svm":
        return -label if label * margin < 1.0 else 0.0
    return margin - label


def rows(dataset):
    """Yield each row as a list of (column, value) pairs."""
    for i in range(dataset.n_samples):
        start, stop = int(dataset.indptr[i]), int(dataset.indptr[i + 1])
        if dataset.dense:
            yield [(k - start, float(dataset.values[k])) for k in range(start, stop)]
        else:
            yield [(int(dataset.indices[k]), float(dataset.values[k])) for k in range(start, stop)]


def margin(row, weights, intercept):
    return sum(value * weights[column] for column, value in row) + intercept


def sequential_sgd(dataset, model, order, batch_size, alpha, weights, intercept,
                   sample_weight=None, momentum=0.0):
    """One worker's pass over ``order`` in mini-batches with a fixed step ``alpha`` (tau = 0);
    ``sample_weight[i]`` (default 1) multiplies row i's loss gradient.  ``momentum`` 0: each
    row of a batch moves the weights in turn by ``alpha / B`` times its gradient (the penalty
    term read from the weights as they are then).  ``momentum`` > 0: per batch, for each
    coordinate j that some row of the batch stores, ``v_j = momentum * v_j + g_j`` (g the
    batch's mean gradient, the penalty term taken per storing row at the batch's start) and
    ``w_j -= alpha * v_j``; other coordinates keep their velocity and weight.

    Returns the new (weights, intercept) as a list and a float; inputs are not modified.
    """
    weights = [float(w) for w in weights]
    velocity, intercept_velocity = [0.0] * len(weights), 0.0
    all_rows = list(rows(dataset))
    counts = dataset.feature_counts()
    scale = [dataset.n_samples / c if c > 0 else 0.0 for c in counts]
    for start in range(0, len(order), batch_size):
        batch = [int(i) for i in order[start:start + batch_size]]
        derivatives = [loss_derivative(model.name, margin(all_rows[i], weights, intercept),
                                       float(dataset.y[i]))
                       * (1.0 if sample_weight is None else float(sample_weight[i]))
                       for i in batch]
        if momentum:
            gradient = {}
            for i, derivative in zip(batch, derivatives):
                for column, value in all_rows[i]:
                    term = derivative * value + model.l2 * scale[column] * weights[column]
                    gradient[column] = gradient.get(column, 0.0) + term / len(batch)
            for column, g in gradient.items():
                velocity[column] = momentum * velocity[column] + g
                weights[column] -= alpha * velocity[column]
            if model.fit_intercept:
                intercept_velocity = momentum * intercept_velocity + sum(derivatives) / len(batch)
                intercept -= alpha * intercept_velocity
            continue
        step = alpha / len(batch)
        for i, derivative in zip(batch, derivatives):
            for column, value in all_rows[i]:
                gradient = derivative * value + model.l2 * scale[column] * weights[column]
                weights[column] -= step * gradient
            if model.fit_intercept:
                intercept -= step * derivative
    return weights, intercept


def objective(dataset, model, weights, intercept, sample_weight=None):
    """(sum of weight * loss / n + l2/2 ||w||^2, weighted accuracy) in plain Python; unit
    weights by default."""
    row_weights = [1.0] * dataset.n_samples if sample_weight is None else \
        [float(w) for w in sample_weight]
    losses, correct = [], 0.0
    for row, label, weight in zip(rows(dataset), dataset.y, row_weights):
        m = margin(row, weights, intercept)
        losses.append(weight * loss_value(model.name, m, float(label)))
        correct += weight * ((m >= 0.0) == (label > 0.0))
    penalty = 0.5 * model.l2 * sum(w * w for w in weights)
    return sum(losses) / len(losses) + penalty, correct / sum(row_weights)


def server_push(params, step, version, version_read, alpha_table, histogram, indices=None):
    """The parameter server's apply of one push, one coordinate at a time: ``tau = version -
    version_read``, ``alpha = alpha_table[min(tau, T - 1)]``, ``params[j] -= alpha * step[j]``
    for every j (``indices`` None: ``step`` is the dense step sum) or ``params[indices[k]] -=
    alpha * step[k]``; counts tau in ``histogram`` (last bin: larger tau).  Returns (new
    parameters as a list, version + 1, tau)."""
    params = [float(value) for value in params]
    tau = version - version_read
    alpha = float(alpha_table[min(tau, len(alpha_table) - 1)])
    pairs = enumerate(step) if indices is None else zip(indices, step)
    for column, value in pairs:
        params[int(column)] -= alpha * float(value)
    histogram[min(tau, len(histogram) - 1)] += 1
    return params, version + 1, tau
