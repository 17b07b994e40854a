"""``hogwild-mts predict MODEL --data FILE [--out predictions.csv]``: score a data file with a
saved model and write one row per sample: the prediction, then, for logistic models and
cross-entropy networks, one probability column per class (a one-vs-rest hinge model of three or
more classes: one margin column per class).

A linear model reads an svmlight/libsvm file or an .npz; a network (a model file of kind
``TorchNetwork``) reads an image set the CLI loads (``digits``, ``mnist1d``, ``mnist:DIR``, ...:
its test split, the rows the run evaluated) or an .npz with ``X`` (rows of the network's input
shape, preprocessed as the training rows were) and optionally ``y``."""

from __future__ import annotations

import csv
import io
import os
import sys

import numpy as np
import scipy.sparse as sp

from hogwild_mts.core.files import write_atomic


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a model directory written by `train --out` or save()")
    parser.add_argument("--data", required=True,
                        help="rows to score: an svmlight/libsvm file or an .npz; for a torch network "
                             "an image set (digits, mnist1d, mnist:DIR, ...: its test split) or an "
                             ".npz with X (labels in the data are not used for the predictions; "
                             "when present the score is printed)")
    parser.add_argument("--out", metavar="FILE", help="write the predictions as CSV here (default: stdout)")


def design_matrix(dataset, n_features: int):
    """The data set's rows as a matrix with the model's ``n_features`` columns.  A sparse file
    may name fewer features than the model (its highest columns were all zero); more is an
    error naming both counts."""
    if dataset.n_features > n_features or (dataset.dense and dataset.n_features != n_features):
        raise ValueError(f"{dataset.name} has {dataset.n_features} features; the model was "
                         f"trained on {n_features}")
    X = dataset.to_scipy()
    if sp.issparse(X) and X.shape[1] < n_features:
        X = sp.csr_matrix((X.data, X.indices, X.indptr), shape=(X.shape[0], n_features))
    return X


def predictions_csv(model, X) -> str:
    """CSV text, one row per sample: header ``prediction``, then for a logistic model one
    probability column per class (``p_<class>``), for a hinge (svm) model of three or more
    classes (one-vs-rest) one margin column per class (``score_<class>``: the largest one is
    the prediction)."""
    predicted = model.predict(X)
    columns = [predicted]
    header = ["prediction"]
    if hasattr(model, "predict_proba"):
        probabilities = model.predict_proba(X)
        header += [f"p_{label}" for label in model.classes_]
        columns += list(probabilities.T)
    elif hasattr(model, "classes_") and len(model.classes_) > 2:
        header += [f"score_{label}" for label in model.classes_]
        columns += list(model.decision_function(X).T)
    return _csv(header, columns)


def _csv(header: list, columns: list) -> str:
    """CSV text: ``header``, then one row per entry of the ``columns``."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(zip(*columns))
    return text.getvalue()


def _write(text: str, rows: int, out) -> None:
    """The predictions CSV to ``out`` (atomically) or stdout."""
    if out:
        write_atomic(out, text)
        print(f"wrote {rows:,} predictions to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def main(args) -> int:
    from hogwild_mts.data.tabular import load_data
    from hogwild_mts.estimators import load
    from hogwild_mts.model_file import NETWORK_KIND, model_kind

    if args.out and os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a directory; give a file name")
    if model_kind(args.model) == NETWORK_KIND:
        return predict_network(args)
    model = load(args.model)
    dataset = load_data(args.data)
    X = design_matrix(dataset, model.n_features_in_)
    _write(predictions_csv(model, X), dataset.n_samples, args.out)
    labels = dataset.y
    if hasattr(model, "classes_"):
        labels = _model_labels(model, labels)
    if labels is not None:
        print(f"score on {dataset.name}: {model.score(X, labels):.4f} "
              f"({'accuracy' if hasattr(model, 'classes_') else 'R^2'})", file=sys.stderr)
    return 0


def _model_labels(model, labels: np.ndarray):
    """The file's labels in the model's classes (svmlight stores -1/+1 or 0/1 as floats), or
    None when they are not all among them."""
    classes = model.classes_
    if np.all(np.isin(labels, classes)):
        return labels.astype(classes.dtype) if classes.dtype.kind in "iuf" else labels
    return None


# ---------------------------------------------------------------------------- networks
def network_rows(spec: str, input_shape: tuple):
    """(inputs, targets or None, name) of ``--data`` for a network: an .npz with ``X`` (and
    optionally ``y``), or an image set's test split; ValueError naming the data and the shapes
    when its rows are not of ``input_shape``."""
    if spec.endswith(".npz"):
        try:
            with np.load(spec, allow_pickle=False) as archive:
                if "X" not in archive.files:
                    raise ValueError(f"--data {spec}: an .npz for a network needs an array X (the "
                                     f"rows), found {sorted(archive.files)}")
                inputs = archive["X"].astype(np.float32)
                targets = archive["y"] if "y" in archive.files else None
        except (OSError, ValueError) as error:
            raise ValueError(f"--data {spec}: {error}") from None
        name = os.path.basename(spec)
    else:
        from hogwild_mts.data.images import load_images

        from hogwild_mts.data.tabular import DataError

        try:
            dataset = load_images(spec)
        except DataError as error:
            raise DataError(f"{error}; or, for a network, an .npz with an array X") from None
        inputs, targets = dataset.test_inputs, dataset.test_targets
        name = f"{dataset.name} ({dataset.evaluated_on})"
    if tuple(inputs.shape[1:]) != tuple(input_shape):
        raise ValueError(f"--data {spec}: rows of shape {tuple(inputs.shape[1:])}; the network "
                         f"takes rows of shape {tuple(input_shape)}")
    if targets is not None and targets.shape[0] != inputs.shape[0]:
        raise ValueError(f"--data {spec}: {inputs.shape[0]} rows of X but {targets.shape[0]} of y")
    return inputs, targets, name


def predict_network(args) -> int:
    """``predict`` with a network's model file: the predicted class and one softmax
    probability column per class (cross-entropy), or the predicted values (mse:
    ``prediction``, or ``prediction_0 ...`` for several values per row)."""
    from hogwild_mts.engines.networks import network_outputs, saved_network
    from hogwild_mts.model_file import read_network

    document, state_dict = read_network(args.model)
    network = saved_network(document, state_dict, where=args.model)
    inputs, targets, name = network_rows(args.data, document["network"]["input_shape"])
    outputs = network_outputs(network, inputs, document["dtype"])
    if document["loss"] == "cross_entropy":
        classes = document["classes"] or [str(k) for k in range(outputs.shape[1])]
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        predicted = outputs.argmax(axis=1)
        _write(_csv(["prediction"] + [f"p_{label}" for label in classes],
                    [np.asarray(classes)[predicted]] + list(probabilities.T)), len(inputs), args.out)
        if targets is not None:
            print(f"score on {name}: {float(np.mean(predicted == targets)):.4f} (accuracy)", file=sys.stderr)
    else:
        header = (["prediction"] if outputs.shape[1] == 1
                  else [f"prediction_{k}" for k in range(outputs.shape[1])])
        _write(_csv(header, list(outputs.T)), len(inputs), args.out)
        if targets is not None:
            error = float(np.mean((outputs - targets.reshape(len(targets), -1)) ** 2))
            print(f"score on {name}: {error:.6g} (mean squared error)", file=sys.stderr)
    return 0
