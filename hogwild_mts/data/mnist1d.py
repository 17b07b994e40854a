"""MNIST-1D (S. Greydanus, *Scaling down deep learning*, 2020), generated offline.

Ten 1-D digit templates, each padded, dilated, scaled, translated, given correlated and iid
noise, sheared and resampled to 40 points, by the ``mnist1d`` package's own algorithm
(``mnist1d.data.make_dataset``) with its published arguments: 5,000 signals (500 per class),
seed 42, shuffled, standardised over the whole set, the first 80% for training.  No download:
the package generates the signals.  As an :class:`~hogwild_mts.data.images.ImageDataset` the
signals are images of shape (C, H, W) = (1, 1, 40).

Spec: ``mnist1d`` or ``mnist1d:n=10000,seed=0`` (``n`` signals in all, a multiple of 10; the
generator's ``seed``).
"""

from __future__ import annotations

import random

import numpy as np

from hogwild_mts.data.images import MNIST_CLASSES, ImageDataset
from hogwild_mts.data.tabular import DataError

__all__ = ["load_mnist1d", "MNIST1D_OPTIONS"]

MNIST1D_OPTIONS = {"n": "num_samples", "seed": "seed"}   # spec key -> generator argument


def _options(text: str) -> dict:
    """``n=..,seed=..`` -> generator arguments (integers; n a positive multiple of 10, seed >= 0)."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if key not in MNIST1D_OPTIONS or not equals:
            raise DataError(f"mnist1d option {item!r}: expected key=value with key in {sorted(MNIST1D_OPTIONS)}")
        try:
            number = int(value)
        except ValueError:
            raise DataError(f"mnist1d option {key}={value!r}: expected an integer") from None
        if key == "n" and (number < 10 or number % 10):
            raise DataError(f"mnist1d option n={number}: expected a positive multiple of 10 (one share per digit)")
        if key == "seed" and number < 0:
            raise DataError(f"mnist1d option seed={number}: expected an integer >= 0")
        options[MNIST1D_OPTIONS[key]] = number
    return options


def load_mnist1d(spec: str = "mnist1d") -> ImageDataset:
    """MNIST-1D from ``spec`` (see the module docstring); 4,000 train + 1,000 test by default.

    The generator seeds numpy's and Python's global random state; both are restored afterwards."""
    kind, _, text = str(spec).strip().partition(":")
    if kind != "mnist1d":
        raise DataError(f"not an mnist1d spec: {spec!r}; expected 'mnist1d' or 'mnist1d:n=..,seed=..'")
    arguments = _options(text)
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError("data 'mnist1d' needs the mnist1d package: pip install mnist1d") from None
    args = get_dataset_args()
    vars(args).update(arguments)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    name = "mnist1d" + (f":{text}" if text else "")
    return ImageDataset(data["x"][:, None, None, :], data["y"], data["x_test"][:, None, None, :],
                        data["y_test"], MNIST_CLASSES, name)
