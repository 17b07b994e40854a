"""``hogwild-mts predict MODEL --data FILE [--out predictions.csv]``: score a data file with a
saved linear model and write one row per sample (the prediction, then, for logistic models, one
probability column per class)."""

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
                        help="rows to score: an svmlight/libsvm file or an .npz (labels in the file "
                             "are not used for the predictions; when present the score is printed)")
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
    """CSV text: header ``prediction[,p_<class>...]``, one row per sample."""
    predicted = model.predict(X)
    columns = [predicted]
    header = ["prediction"]
    if hasattr(model, "predict_proba"):
        probabilities = model.predict_proba(X)
        header += [f"p_{label}" for label in model.classes_]
        columns += list(probabilities.T)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(zip(*columns))
    return text.getvalue()


def main(args) -> int:
    from hogwild_mts.data.tabular import load_data
    from hogwild_mts.estimators import load

    model = load(args.model)
    if args.out and os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a directory; give a file name")
    dataset = load_data(args.data)
    X = design_matrix(dataset, model.n_features_in_)
    text = predictions_csv(model, X)
    if args.out:
        write_atomic(args.out, text)
        print(f"wrote {dataset.n_samples:,} predictions to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
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
