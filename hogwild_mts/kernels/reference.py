"""Slow pure-Python references for the numba kernels (tests check the kernels against these)."""

from __future__ import annotations

import math

from hogwild_mts.models.linear import ALIASES


def _log1pexp(x: float) -> float:
    if x <= -37.0:
        return math.exp(x)
    if x <= -2.0:
        return math.log1p(math.exp(x))
    if x <= 18.0:
        return math.log(1.0 + math.exp(x))
    return x + math.exp(-x) if x <= 33.3 else x


def loss_value(name: str, margin: float, label: float, epsilon: float = 0.1) -> float:
    """scikit-learn's loss ``name`` (or an alias: logreg, svm, lsq) of one sample."""
    name = ALIASES.get(name, name)
    p, y = margin, label
    if name == "log_loss":
        return _log1pexp(p) - (y + 1.0) / 2.0 * p
    if name in ("hinge", "perceptron"):
        threshold = 1.0 if name == "hinge" else 0.0
        return threshold - y * p if y * p <= threshold else 0.0
    if name == "squared_hinge":
        return max(0.0, 1.0 - y * p) ** 2
    if name == "modified_huber":
        z = y * p
        return 0.0 if z >= 1.0 else (1.0 - z) ** 2 if z >= -1.0 else -4.0 * z
    if name == "squared_error":
        return 0.5 * (p - y) ** 2
    if name == "huber":
        r = abs(y - p)
        return 0.5 * r ** 2 if r <= epsilon else epsilon * (r - 0.5 * epsilon)
    excess = max(0.0, abs(y - p) - epsilon)
    return excess if name == "epsilon_insensitive" else excess ** 2


def loss_derivative(name: str, margin: float, label: float, epsilon: float = 0.1) -> float:
    """d loss / d margin of scikit-learn's loss ``name`` (its subgradient at the kinks)."""
    name = ALIASES.get(name, name)
    p, y = margin, label
    if name == "log_loss":
        positive = (y + 1.0) / 2.0
        if p > -37.0:
            e = math.exp(-p)
            return ((1.0 - positive) - positive * e) / (1.0 + e)
        return math.exp(p) - positive
    if name in ("hinge", "perceptron"):
        return -y if y * p <= (1.0 if name == "hinge" else 0.0) else 0.0
    if name == "squared_hinge":
        z = 1.0 - y * p
        return -2.0 * y * z if z > 0.0 else 0.0
    if name == "modified_huber":
        z = y * p
        return 0.0 if z >= 1.0 else 2.0 * (1.0 - z) * -y if z >= -1.0 else -4.0 * y
    if name == "squared_error":
        return p - y
    if name == "huber":
        r = p - y
        return r if abs(r) <= epsilon else (epsilon if r >= 0.0 else -epsilon)
    z = y - p
    if name == "epsilon_insensitive":
        return -1.0 if z > epsilon else 1.0 if -z > epsilon else 0.0
    return -2.0 * (z - epsilon) if z > epsilon else 2.0 * (-z - epsilon) if z < -epsilon else 0.0


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


def sequential_sgd(dataset, model, order, batch_size, lr, weights, intercept,
                   sample_weight=None, momentum=0.0, schedule=(1.0, 0.0), first_update=0,
                   applied=None, average_start=None, averaged=None, l1_total=None):
    """One worker's pass over ``order`` in mini-batches (tau = 0); ``sample_weight[i]`` (default
    1) multiplies row i's loss gradient.  The step of update t (counted from ``first_update``) is
    ``lr * (t0 / (t0 + t))^power`` with ``schedule = (t0, power)`` (power 0: ``lr``).
    ``momentum`` 0: each row of a batch moves the weights in turn by ``step / B`` times its
    gradient (the penalty term read from the weights as they are then).  ``momentum`` > 0: per
    batch, for each coordinate j that some row of the batch stores, ``v_j = momentum * v_j +
    g_j`` (g the batch's mean gradient, the penalty term taken per storing row at the batch's
    start) and ``w_j -= step * v_j``; other coordinates keep their velocity and weight.  Every
    step of the intercept is multiplied by ``model.intercept_decay``.
    ``model.l1`` > 0: after each update, ``u += l1 * step`` and every coordinate a row of the
    batch stores is clipped with scikit-learn's cumulative penalty, row after row (``applied``:
    the penalty each weight received, default zeros, updated in place; ``l1_total``: a
    one-element list holding u, default [0.0], updated in place: a pass continues another's
    state when both are given theirs).  ``average_start`` (an
    update number): after every update t >= it, the mean of all parameters (weights, then the
    intercept if fitted) takes the new iterate, ``mean += (theta - mean) / n`` over every
    coordinate (eagerly); ``averaged`` (a list) receives the final means, or the last iterate
    when no update was averaged.

    Returns the new (weights, intercept) as a list and a float; inputs are not modified.
    """
    weights = [float(w) for w in weights]
    velocity, intercept_velocity = [0.0] * len(weights), 0.0
    applied = [0.0] * len(weights) if applied is None else applied
    l1_total = [0.0] if l1_total is None else l1_total
    t0, power = schedule
    all_rows = list(rows(dataset))
    counts = dataset.feature_counts()
    scale = [dataset.n_samples / c if c > 0 else 0.0 for c in counts]
    mean, averaged_count = [0.0] * (len(weights) + 1), 0
    for t, start in enumerate(range(0, len(order), batch_size), start=first_update):
        batch = [int(i) for i in order[start:start + batch_size]]
        step = lr if power == 0.0 else lr * (t0 / (t0 + t)) ** power
        bound = model.max_derivative
        derivatives = [min(max(loss_derivative(model.name, margin(all_rows[i], weights, intercept),
                                               float(dataset.y[i]), model.epsilon), -bound), bound)
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
                weights[column] -= step * velocity[column]
            if model.fit_intercept:
                intercept_velocity = momentum * intercept_velocity + sum(derivatives) / len(batch)
                intercept -= model.intercept_decay * step * intercept_velocity
        else:
            for i, derivative in zip(batch, derivatives):
                for column, value in all_rows[i]:
                    gradient = derivative * value + model.l2 * scale[column] * weights[column]
                    weights[column] -= step / len(batch) * gradient
                if model.fit_intercept:
                    intercept -= step / len(batch) * derivative * model.intercept_decay
        if model.l1:
            l1_total[0] += model.l1 * step
            u = l1_total[0]
            for column in [column for i in batch for column, _ in all_rows[i]]:  # the kernel's order
                before = weights[column]
                if before > 0.0:
                    weights[column] = max(0.0, before - (u + applied[column]))
                elif before < 0.0:
                    weights[column] = min(0.0, before + (u - applied[column]))
                applied[column] += weights[column] - before
        if average_start is not None and t >= average_start:
            averaged_count += 1
            mean = [m + (value - m) / averaged_count for m, value in zip(mean, weights + [intercept])]
    if averaged is not None:
        final = mean if averaged_count else weights + [intercept]
        averaged[:] = final if model.fit_intercept else final[:-1]
    return weights, intercept


def objective(dataset, model, weights, intercept, sample_weight=None):
    """(sum of weight * loss / n + l2/2 ||w||^2 + l1 ||w||_1, weighted accuracy) in plain
    Python; unit weights by default."""
    row_weights = [1.0] * dataset.n_samples if sample_weight is None else \
        [float(w) for w in sample_weight]
    losses, correct = [], 0.0
    for row, label, weight in zip(rows(dataset), dataset.y, row_weights):
        m = margin(row, weights, intercept)
        losses.append(weight * loss_value(model.name, m, float(label), model.epsilon))
        correct += weight * ((m >= 0.0) == (label > 0.0))
    penalty = 0.5 * model.l2 * sum(w * w for w in weights) + model.l1 * sum(abs(w) for w in weights)
    return sum(losses) / len(losses) + penalty, correct / sum(row_weights)


def server_push(params, step, version, version_read, alpha_table, histogram, indices=None):
    """The parameter server's apply of one push, one coordinate at a time: ``tau = version -
    version_read``, ``lr = alpha_table[min(tau, T - 1)]``, ``params[j] -= lr * step[j]``
    for every j (``indices`` None: ``step`` is the dense step sum) or ``params[indices[k]] -=
    lr * step[k]``; counts tau in ``histogram`` (last bin: larger tau).  Returns (new
    parameters as a list, version + 1, tau)."""
    params = [float(value) for value in params]
    tau = version - version_read
    lr = float(alpha_table[min(tau, len(alpha_table) - 1)])
    pairs = enumerate(step) if indices is None else zip(indices, step)
    for column, value in pairs:
        params[int(column)] -= lr * float(value)
    histogram[min(tau, len(histogram) - 1)] += 1
    return params, version + 1, tau
