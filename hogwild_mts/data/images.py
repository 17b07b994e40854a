"""Data sets for the torch engine: arrays of any shape, image classification sets and their loaders.

An :class:`ArrayDataset` holds inputs ``(N, ...)`` of any row shape with class labels or float
regression targets (:func:`array_dataset` builds one from numpy arrays or torch tensors).  An
:class:`ImageDataset` (an ArrayDataset of images) holds float32 images ``(N, C, H, W)`` standardised per channel with the
training set's mean and standard deviation, int64 labels in ``[0, classes)``, and class names.
Loaders (no network access anywhere):

* ``mnist1d[:n=..,seed=..]`` -- MNIST-1D signals generated offline (see its section below);
* ``digits`` -- scikit-learn's bundled 8x8 digits (1,797 images), a fixed stratified 80/20 split;
* ``mnist:DIR`` / ``fashion-mnist:DIR`` -- the four IDX files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each plain
  or gzipped (``.gz``);
* ``cifar10:DIR`` -- the CIFAR-10 python batches ``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch`` in DIR or DIR/cifar-10-batches-py.  These are pickles; they are read by a
  restricted unpickler that builds only plain containers, strings, bytes, numbers and numpy
  arrays, so a crafted file is refused before any of its code could run.

Bad input raises :class:`hogwild_mts.data.tabular.DataError` (a ValueError) naming the file and the problem.
"""

from __future__ import annotations

import builtins
import codecs
import gzip
import math
import os
import pickle
import random
import sys
from dataclasses import dataclass

import numpy as np

from hogwild_mts.core.resources import check_memory
from hogwild_mts.data.tabular import READ_ERRORS, DataError

__all__ = ["ArrayDataset", "ImageDataset", "array_dataset", "load_images", "load_digits", "load_mnist", "load_fashion_mnist",
           "load_cifar10", "read_idx", "IMAGE_SPEC_FORMS"]

IMAGE_SPEC_FORMS = "'digits', 'mnist1d[:n=..,seed=..]', 'mnist:DIR', 'fashion-mnist:DIR' or 'cifar10:DIR'"
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
IDX_UBYTE = 0x08
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_SUBDIR = "cifar-10-batches-py"
CIFAR_SHAPE = (3, 32, 32)


@dataclass(eq=False, repr=False)
class ArrayDataset:
    """Training and evaluation arrays for the torch engine.

    ``train_inputs`` / ``test_inputs``: float32, ``(N, ...)`` of any row shape, finite.  Targets:
    with ``classes`` (classification) int64 labels ``(N,)`` in ``[0, len(classes))``, given as
    integers; with ``classes=None`` (regression) float32 values ``(N, ...)``, finite.  The
    evaluations score the ``test_*`` arrays; ``evaluated_on`` names them: ``"test"``, or
    ``"train"`` when the training arrays themselves are scored (no test set was given).
    """

    train_inputs: np.ndarray
    train_targets: np.ndarray
    test_inputs: np.ndarray
    test_targets: np.ndarray
    classes: tuple | None
    name: str
    evaluated_on: str = "test"

    INPUTS = "inputs"    # how messages name the inputs and targets
    TARGETS = "targets"
    ROW_FORM = "(N, ...)"
    INPUT_NDIM = None    # the inputs' required number of dimensions, if any

    def __post_init__(self):
        if self.classes is not None:
            self.classes = tuple(str(c) for c in self.classes)
            if len(self.classes) < 2:
                raise DataError(f"{self.name}: need at least 2 classes, got {self.classes!r}")
        same_rows = self.test_inputs is self.train_inputs and self.test_targets is self.train_targets
        for part in ("train", "test"):
            if part == "test" and same_rows:  # the training rows are scored: one copy of them
                self.test_inputs, self.test_targets = self.train_inputs, self.train_targets
                break
            inputs = _real_array(getattr(self, f"{part}_inputs"), f"{self.name}: {part} {self.INPUTS}")
            targets = _real_array(getattr(self, f"{part}_targets"), f"{self.name}: {part} {self.TARGETS}")
            if inputs.ndim < 2 or inputs.shape[0] == 0 or self.INPUT_NDIM not in (None, inputs.ndim):
                raise DataError(f"{self.name}: {part} {self.INPUTS} must be a non-empty {self.ROW_FORM} "
                                f"array, got shape {inputs.shape}")
            inputs = np.ascontiguousarray(inputs, dtype=np.float32)
            if not np.isfinite(inputs).all():
                raise DataError(f"{self.name}: {part} {self.INPUTS} contain NaN or infinite values")
            if self.classes is None:
                targets = self._check_values(part, targets, inputs.shape[0])
            else:
                targets = self._check_labels(part, targets, inputs.shape[0])
            setattr(self, f"{part}_inputs", inputs)
            setattr(self, f"{part}_targets", targets)
        for kind, train, test in ((self.INPUTS, self.train_inputs, self.test_inputs),
                                  (self.TARGETS, self.train_targets, self.test_targets)):
            if train.shape[1:] != test.shape[1:]:
                raise DataError(f"{self.name}: train {kind} are {train.shape[1:]} but test "
                                f"{kind} are {test.shape[1:]} (per row)")

    def _check_labels(self, part: str, labels: np.ndarray, rows: int) -> np.ndarray:
        if labels.shape != (rows,):
            raise DataError(f"{self.name}: {part} {self.TARGETS} have shape {labels.shape}, "
                            f"expected ({rows},) to match the {self.INPUTS}")
        if labels.dtype.kind not in "iub":
            raise DataError(f"{self.name}: {part} {self.TARGETS} must be integer class labels, got "
                            f"dtype {labels.dtype} (float targets are for regression: loss 'mse')")
        bad = np.flatnonzero((labels < 0) | (labels >= len(self.classes)))
        if bad.size:
            raise DataError(f"{self.name}: {part} {self.TARGETS[:-1]} {int(labels[bad[0]])} at row "
                            f"{int(bad[0])} is outside [0, {len(self.classes)})")
        return np.ascontiguousarray(labels, dtype=np.int64)

    def _check_values(self, part: str, values: np.ndarray, rows: int) -> np.ndarray:
        if values.ndim < 1 or values.shape[0] != rows:
            raise DataError(f"{self.name}: {part} {self.TARGETS} have shape {values.shape}, "
                            f"expected {rows} rows to match the {self.INPUTS}")
        values = np.ascontiguousarray(values, dtype=np.float32)
        if not np.isfinite(values).all():
            raise DataError(f"{self.name}: {part} {self.TARGETS} contain NaN or infinite values")
        return values

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One row's shape (without the batch dimension)."""
        return tuple(int(s) for s in self.train_inputs.shape[1:])

    @property
    def outputs(self) -> int:
        """Values a network must output per row: the classes, or the values per target row."""
        if self.classes is not None:
            return len(self.classes)
        return math.prod(int(s) for s in self.train_targets.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.train_inputs.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_inputs.shape[0])

    def __repr__(self) -> str:
        task = f"{len(self.classes)} classes" if self.classes is not None else f"{self.outputs} target values per row"
        scored = "" if self.evaluated_on == "test" else ", scored on the training rows"
        return (f"{type(self).__name__}({self.name!r}: {self.n_train} train + {self.n_test} test "
                f"{self.INPUTS} {self.input_shape}, {task}{scored})")


def _real_array(data, what: str) -> np.ndarray:
    """``data`` (a numpy array, a torch tensor or a nested sequence) as a numpy array of real
    numbers (bool, integer or float), or DataError naming ``what`` and its dtype."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    try:
        array = np.asarray(data)
    except (TypeError, ValueError) as error:
        raise DataError(f"{what}: not an array of numbers ({error})") from None
    if array.dtype.kind not in "biuf":
        raise DataError(f"{what} must hold real numbers (bool, integer or float), got dtype {array.dtype}")
    return array


class ImageDataset(ArrayDataset):
    """An :class:`ArrayDataset` of images for classification: float32 ``(N, C, H, W)`` with
    int64 labels in ``[0, len(classes))``; ``train_images`` ... ``test_labels`` name its arrays."""

    INPUTS = "images"
    TARGETS = "labels"
    ROW_FORM = "(N, C, H, W)"
    INPUT_NDIM = 4

    def __init__(self, train_images, train_labels, test_images, test_labels, classes, name):
        super().__init__(train_images, train_labels, test_images, test_labels, classes, name)

    train_images = property(lambda self: self.train_inputs, doc="float32 (N, C, H, W)")
    train_labels = property(lambda self: self.train_targets, doc="int64 (N,)")
    test_images = property(lambda self: self.test_inputs, doc="float32 (N, C, H, W)")
    test_labels = property(lambda self: self.test_targets, doc="int64 (N,)")

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def array_dataset(inputs, targets, test=None, *, classification: bool, name: str = "arrays") -> ArrayDataset:
    """An :class:`ArrayDataset` from arrays or torch tensors: ``inputs`` ``(N, ...)``,
    ``targets`` integer class labels ``(N,)`` >= 0 (``classification``: the classes are
    ``0 .. largest label`` of the training and test labels) or float values ``(N, ...)``;
    ``test`` an ``(inputs, targets)`` pair or None (then the evaluations score the training rows).
    DataError on mismatched lengths, dtypes or shapes."""
    if targets is None:
        raise DataError("fit(X, y): the targets y are missing")
    if test is None:
        test_inputs, test_targets, evaluated_on = inputs, targets, "train"
    else:
        if not isinstance(test, (tuple, list)) or len(test) != 2:
            raise DataError(f"test must be a pair (inputs, targets), got {type(test).__name__}")
        (test_inputs, test_targets), evaluated_on = test, "test"
    classes = None
    if classification:
        labels = {part: _real_array(t, f"{name}: {part} targets")
                  for part, t in (("train", targets), ("test", test_targets))}
        classes = (0, 1)  # unless every label is an integer: then the dataset's checks name them
        if all(t.dtype.kind in "iub" for t in labels.values()):
            for part, t in labels.items():
                negative = np.flatnonzero(t < 0)
                if negative.size:
                    raise DataError(f"{name}: {part} target {int(t.flat[negative[0]])} at row "
                                    f"{int(negative[0])} is negative; class labels must be integers >= 0")
            classes = tuple(range(max((int(t.max()) for t in labels.values() if t.size), default=0) + 1))
    return ArrayDataset(inputs, targets, test_inputs, test_targets, classes, name, evaluated_on)


def _standardised(train: np.ndarray, test: np.ndarray, scale: float, classes, name: str,
                 train_labels, test_labels) -> ImageDataset:
    """Divide by ``scale`` (the pixel maximum), then standardise each channel with the training
    set's mean and standard deviation; build the ImageDataset."""
    train = train.astype(np.float32) / np.float32(scale)
    test = test.astype(np.float32) / np.float32(scale)
    mean = train.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
    std = train.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
    std[std == 0] = 1.0
    return ImageDataset((train - mean) / std, train_labels, (test - mean) / std, test_labels, classes, name)


def load_digits() -> ImageDataset:
    """scikit-learn's 8x8 digits (bundled, no download): 1,437 train / 360 test, stratified, seed 0.

    Read from the CSV file scikit-learn ships without importing scikit-learn (its import takes
    about a second, most of a short command's start-up), and split exactly as
    ``train_test_split(..., test_size=0.2, random_state=0, stratify=labels)`` does
    (:func:`stratified_split`; tests/test_images.py checks both against scikit-learn)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits data set comes with scikit-learn, which is not installed "
                        "(pip install scikit-learn)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    except READ_ERRORS as error:
        raise DataError(f"{path}: cannot read the digits data set: {error}") from None
    images, labels = table[:, :64].reshape(-1, 1, 8, 8), table[:, 64].astype(np.int64)
    train_rows, test_rows = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return _standardised(images[train_rows], images[test_rows], 16.0, MNIST_CLASSES, "digits",
                         labels[train_rows], labels[test_rows])


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) as scikit-learn's ``train_test_split(test_size=test_fraction,
    random_state=seed, stratify=labels)`` draws them (StratifiedShuffleSplit: per class, a share
    of the rows by the approximate mode of the multivariate hypergeometric law, then a shuffle),
    with the same ``RandomState`` draws in the same order."""
    rng = np.random.RandomState(seed)
    n_test = math.ceil(test_fraction * labels.shape[0])
    n_train = labels.shape[0] - n_test
    classes, label_ids = np.unique(labels, return_inverse=True)
    class_counts = np.bincount(label_ids)
    class_rows = np.split(np.argsort(label_ids, kind="mergesort"), np.cumsum(class_counts)[:-1])
    train_counts = _approximate_mode(class_counts, n_train, rng)
    test_counts = _approximate_mode(class_counts - train_counts, n_test, rng)
    train, test = [], []
    for rows, n_class_train, n_class_test in zip(class_rows, train_counts, test_counts):
        shuffled = rows.take(rng.permutation(rows.shape[0]), mode="clip")
        train.extend(shuffled[:n_class_train])
        test.extend(shuffled[n_class_train:n_class_train + n_class_test])
    return rng.permutation(np.array(train, dtype=np.int64)), rng.permutation(np.array(test, dtype=np.int64))


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of ``n_draws`` rows each class gets (scikit-learn's ``_approximate_mode``): the
    floor of its share, then one more for the classes with the largest remainders, ties broken
    by ``rng``."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(np.int64)


# ---------------------------------------------------------------------------------------- IDX
def read_idx(path: str, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array with ``ndim`` dimensions (gzipped when the name ends in .gz).

    Header: two zero bytes, type code 0x08, the number of dimensions, then each dimension as a
    big-endian uint32; the payload must hold exactly their product of bytes.  Only that many
    bytes are read (after checking them against the available memory).
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            return _read_idx_stream(path, handle, ndim)
    except READ_ERRORS as error:
        raise DataError(f"{path}: cannot read IDX file: {error}") from None


def _read_idx_stream(path: str, handle, ndim: int) -> np.ndarray:
    magic = handle.read(4)
    if len(magic) < 4:
        raise DataError(f"{path}: not an IDX file: {len(magic)} bytes, shorter than the 4-byte magic")
    if magic[0:2] != b"\x00\x00" or magic[2] != IDX_UBYTE:
        raise DataError(f"{path}: bad IDX magic {magic.hex()}; expected 0000{IDX_UBYTE:02x}{ndim:02x} "
                        "(unsigned bytes)")
    if magic[3] != ndim:
        raise DataError(f"{path}: IDX file has {magic[3]} dimensions, expected {ndim}")
    dimensions = handle.read(4 * ndim)
    if len(dimensions) < 4 * ndim:
        raise DataError(f"{path}: IDX header truncated: {4 + len(dimensions)} bytes, need "
                        f"{4 + 4 * ndim} for {ndim} dimensions")
    shape = tuple(int(d) for d in np.frombuffer(dimensions, dtype=">u4"))
    expected = math.prod(shape)
    check_memory(expected, f"{path} (IDX dimensions {shape})", "use a smaller data set")
    payload = handle.read(expected + 1)
    if len(payload) != expected:
        held = len(payload) + sum(len(chunk) for chunk in iter(lambda: handle.read(1 << 20), b""))
        raise DataError(f"{path}: IDX dimensions {shape} need {expected} data bytes, "
                        f"the file holds {held}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def _find_file(directory: str, candidates: list[str], what: str) -> str:
    for name in candidates:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise DataError(f"{what}: no {candidates[0]} in {directory!r}; looked for {', '.join(candidates)}")


def _idx_candidates(stem: str) -> list[str]:
    dotted = stem.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte, as some mirrors name them
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def _load_idx_pair(directory: str, part: str, what: str):
    images = read_idx(_find_file(directory, _idx_candidates(IDX_FILES[f"{part}_images"]), what), 3)
    labels_path = _find_file(directory, _idx_candidates(IDX_FILES[f"{part}_labels"]), what)
    labels = read_idx(labels_path, 1)
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} {part} images")
    return images[:, None, :, :], labels


def _check_directory(directory, what: str) -> str:
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DataError(f"{what}: {directory!r} is not a directory")
    return directory


def load_mnist(directory, name: str = "mnist", classes=MNIST_CLASSES) -> ImageDataset:
    """MNIST-format IDX files (60,000 + 10,000 images of 28x28 for MNIST itself) from ``directory``."""
    directory = _check_directory(directory, name)
    train, train_labels = _load_idx_pair(directory, "train", name)
    test, test_labels = _load_idx_pair(directory, "test", name)
    return _standardised(train, test, 255.0, classes, name, train_labels, test_labels)


def load_fashion_mnist(directory) -> ImageDataset:
    """Fashion-MNIST: the MNIST file format and sizes, 10 clothing classes."""
    return load_mnist(directory, "fashion-mnist", FASHION_CLASSES)


# ---------------------------------------------------------------------------------------- CIFAR
class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds: plain containers, strings, bytes, numbers and
    numpy arrays.  Every other global (a function, a class) is refused by name before it is
    imported, so a crafted file cannot run code."""

    ALLOWED = {
        **{(module, "_reconstruct"): np.empty(0).__reduce__()[0]
           for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
        **{(module, "scalar"): np.float64(0).__reduce__()[0]
           for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
        **{(module, "_frombuffer"): np.empty(1).__reduce_ex__(5)[0]
           for module in ("numpy.core.numeric", "numpy._core.numeric")},
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles written by Python 3 hold bytes
        **{(module, name): getattr(builtins, name)
           for module in ("builtins", "__builtin__")
           for name in ("set", "frozenset", "complex", "bytearray")},
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR-10 batch holds "
                                         "only containers, strings, bytes, numbers and numpy "
                                         "arrays") from None


def _read_cifar_batch(path: str):
    try:
        with open(path, "rb") as handle:
            batch = _CifarUnpickler(handle, encoding="bytes").load()
    except Exception as error:  # a corrupt pickle can raise almost anything
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 python batch: expected a dict with keys b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    row = int(np.prod(CIFAR_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        raise DataError(f"{path}: CIFAR-10 data must be uint8 of shape (N, {row}), "
                        f"got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.shape} labels for {data.shape[0]} images")
    return data.reshape((-1,) + CIFAR_SHAPE), labels


def load_cifar10(directory) -> ImageDataset:
    """CIFAR-10 python batches (50,000 + 10,000 RGB images of 32x32) from DIR or DIR/cifar-10-batches-py."""
    directory = _check_directory(directory, "cifar10")
    nested = os.path.join(directory, CIFAR_SUBDIR)
    names = CIFAR_TRAIN_BATCHES + (CIFAR_TEST_BATCH,)
    for candidate in (directory, nested):
        if all(os.path.isfile(os.path.join(candidate, n)) for n in names):
            break
    else:
        raise DataError(f"cifar10: {directory!r} lacks the CIFAR-10 python batches; looked for "
                        f"{', '.join(names)} in {directory!r} and in {nested!r}")
    parts = [_read_cifar_batch(os.path.join(candidate, n)) for n in CIFAR_TRAIN_BATCHES]
    train = np.concatenate([images for images, _ in parts])
    train_labels = np.concatenate([labels for _, labels in parts])
    test, test_labels = _read_cifar_batch(os.path.join(candidate, CIFAR_TEST_BATCH))
    return _standardised(train, test, 255.0, CIFAR10_CLASSES, "cifar10", train_labels, test_labels)


# ---------------------------------------------------------------------------- MNIST-1D
# MNIST-1D (S. Greydanus, *Scaling down deep learning*, 2020), generated offline.
#
# Ten 1-D digit templates, each padded, dilated, scaled, translated, given correlated and iid
# noise, sheared and resampled to 40 points, by the ``mnist1d`` package's own algorithm
# (``mnist1d.data.make_dataset``) with its published arguments: 5,000 signals (500 per class),
# seed 42, shuffled, standardised over the whole set, the first 80% for training.  No download:
# the package generates the signals.  As an :class:`~hogwild_mts.data.images.ImageDataset` the
# signals are images of shape (C, H, W) = (1, 1, 40).
#
# Spec: ``mnist1d`` or ``mnist1d:n=10000,seed=0`` (``n`` signals in all, a multiple of 10; the
# generator's ``seed``).

MNIST1D_OPTIONS = {"n": "num_samples", "seed": "seed"}   # spec key -> generator argument
# Peak memory per signal while generating: 1.2-1.4 KB measured (tracemalloc, n = 1,000 and
# 4,000), plus the data set's own copies.
MNIST1D_BYTES_PER_SIGNAL = 2048


def _mnist1d_options(text: str) -> dict:
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
    """MNIST-1D from ``spec`` (see the section comment above); 4,000 train + 1,000 test by default.

    The generator seeds numpy's and Python's global random state; both are restored afterwards."""
    kind, _, text = str(spec).strip().partition(":")
    if kind != "mnist1d":
        raise DataError(f"not an mnist1d spec: {spec!r}; expected 'mnist1d' or 'mnist1d:n=..,seed=..'")
    arguments = _mnist1d_options(text)
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError("data 'mnist1d' needs the mnist1d package (a requirement of hogwild-mts): "
                        "pip install mnist1d") from None
    args = get_dataset_args()
    vars(args).update(arguments)
    check_memory(MNIST1D_BYTES_PER_SIGNAL * args.num_samples,
                 f"{spec} ({args.num_samples:,} signals)", "use a smaller n")
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    name = "mnist1d" + (f":{text}" if text else "")
    return ImageDataset(data["x"][:, None, None, :], data["y"], data["x_test"][:, None, None, :],
                        data["y_test"], MNIST_CLASSES, name)


LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}


def load_images(spec) -> ImageDataset:
    """The CLI's ``--data`` for image models: ``digits``, ``mnist1d[:n=..,seed=..]``,
    ``mnist:DIR``, ``fashion-mnist:DIR``, ``cifar10:DIR``."""
    if isinstance(spec, ImageDataset):
        return spec
    text = str(spec).strip()
    if text == "digits":
        return load_digits()
    kind, colon, directory = text.partition(":")
    if kind == "mnist1d":
        return load_mnist1d(text)
    if kind in LOADERS:
        if not colon or not directory:
            raise DataError(f"data {text!r} needs a directory: '{kind}:DIR'")
        return LOADERS[kind](os.path.expanduser(directory))
    raise DataError(f"unknown image data {text!r}; allowed: {IMAGE_SPEC_FORMS}")
