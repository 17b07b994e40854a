"""Image loaders: digits, IDX (MNIST / Fashion-MNIST, plain and gzipped), CIFAR-10 batches, specs,
and every malformed input named in a clear DataError."""

import gzip
import os
import pickle

import numpy as np
import pytest

from hogwild_mts.data.tabular import DataError
from hogwild_mts.data.images import (FASHION_CLASSES, IDX_FILES, ImageDataset, load_images, read_idx)


def write_idx(path, array, gz=False, magic=None):
    """An unsigned-byte IDX file (optionally with a forged 4-byte magic)."""
    array = np.asarray(array, dtype=np.uint8)
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    header += np.array(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    with (gzip.open if gz else open)(path, "wb") as handle:
        handle.write(payload)


def write_mnist(directory, gz, n_train=12, n_test=6, size=6, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"train_images": rng.integers(0, 256, (n_train, size, size)),
              "train_labels": np.arange(n_train) % 10,
              "test_images": rng.integers(0, 256, (n_test, size, size)),
              "test_labels": np.arange(n_test) % 10}
    for key, array in arrays.items():
        write_idx(os.path.join(directory, IDX_FILES[key] + (".gz" if gz else "")), array, gz)
    return arrays


def expected_standardised(train, test):
    """Per-channel standardisation with the training statistics, as the loaders do."""
    train, test = train.astype(np.float32) / 255, test.astype(np.float32) / 255
    mean = train.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
    std = train.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
    return (train - mean) / std, (test - mean) / std


def test_digits_is_a_fixed_standardised_split():
    first, second = load_images("digits"), load_images("digits")
    assert (first.n_train, first.n_test, first.input_shape, first.n_classes) == (1437, 360, (1, 8, 8), 10)
    assert first.train_images.dtype == np.float32 and first.train_labels.dtype == np.int64
    assert abs(float(first.train_images.mean())) < 1e-5 and abs(float(first.train_images.std()) - 1) < 1e-4
    assert np.array_equal(first.test_labels, second.test_labels)
    assert np.array_equal(first.train_images, second.train_images)


def test_digits_are_scikit_learns_split_read_without_importing_it():
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    train, test, train_labels, test_labels = train_test_split(
        bunch.images[:, None], bunch.target, test_size=0.2, random_state=0, stratify=bunch.target)
    expected_train, expected_test = expected_standardised(train, test)  # standardising removes any scale
    digits = load_images("digits")
    assert np.array_equal(digits.train_labels, train_labels) and np.array_equal(digits.test_labels, test_labels)
    np.testing.assert_allclose(digits.train_images, expected_train, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(digits.test_images, expected_test, rtol=1e-5, atol=1e-5)
    code = "import sys; from hogwild_mts import load_images; load_images('digits'); print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("test_fraction", [0.1, 0.2, 0.33])
def test_stratified_split_draws_what_scikit_learn_draws(seed, test_fraction):
    from sklearn.model_selection import train_test_split

    from hogwild_mts.data.images import stratified_split

    labels = np.random.default_rng(seed).integers(0, 7, 503)
    expected = train_test_split(np.arange(503), test_size=test_fraction, random_state=seed, stratify=labels)
    for rows, expected_rows in zip(stratified_split(labels, test_fraction, seed), expected):
        assert np.array_equal(rows, expected_rows)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mnist_idx_files_are_read(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz)
    data = load_images(f"mnist:{tmp_path}")
    assert (data.n_train, data.n_test, data.input_shape, data.name) == (12, 6, (1, 6, 6), "mnist")
    assert np.array_equal(data.train_labels, arrays["train_labels"])
    train, test = expected_standardised(arrays["train_images"][:, None], arrays["test_images"][:, None])
    np.testing.assert_allclose(data.train_images, train, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.test_images, test, rtol=1e-5, atol=1e-5)


def test_fashion_mnist_has_clothing_classes(tmp_path):
    write_mnist(tmp_path, gz=True)
    data = load_images(f"fashion-mnist:{tmp_path}")
    assert data.name == "fashion-mnist" and data.classes == FASHION_CLASSES


def write_cifar(directory, per_batch=3, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
                 b"labels": list(rng.integers(0, 10, per_batch))}
        with open(os.path.join(directory, name), "wb") as handle:
            pickle.dump(batch, handle)
        batches[name] = batch
    return batches


@pytest.mark.parametrize("nested", [False, True], ids=["dir", "dir/cifar-10-batches-py"])
def test_cifar10_batches_are_read(tmp_path, nested):
    batches = write_cifar(tmp_path / "cifar-10-batches-py" if nested else tmp_path)
    data = load_images(f"cifar10:{tmp_path}")
    assert (data.n_train, data.n_test, data.input_shape, data.classes[0]) == (15, 3, (3, 32, 32), "airplane")
    raw_train = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    raw_test = batches["test_batch"][b"data"].reshape(-1, 3, 32, 32)
    train, test = expected_standardised(raw_train, raw_test)
    np.testing.assert_allclose(data.train_images, train, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.test_images, test, rtol=1e-5, atol=1e-5)
    assert data.test_labels.tolist() == [int(v) for v in batches["test_batch"][b"labels"]]


def corrupt_idx(directory, how):
    """Valid MNIST files, then one file broken in the way ``how`` names; returns the expected message."""
    write_mnist(directory, gz=False)
    images = os.path.join(directory, IDX_FILES["train_images"])
    labels = os.path.join(directory, IDX_FILES["train_labels"])
    if how == "magic":
        write_idx(images, np.zeros((2, 6, 6)), magic=b"\x12\x34\x08\x03")
        return "bad IDX magic"
    if how == "type":
        write_idx(images, np.zeros((2, 6, 6)), magic=b"\x00\x00\x0d\x03")
        return "bad IDX magic"
    if how == "dims":
        write_idx(images, np.zeros((12, 36)))
        return "has 2 dimensions, expected 3"
    if how == "size":
        with open(images, "ab") as handle:
            handle.write(b"\x00" * 5)
        return "need 432 data bytes, the file holds 437"
    if how == "truncated":
        with open(images, "wb") as handle:
            handle.write(b"\x00\x00\x08\x03\x00\x00")
        return "header truncated"
    if how == "tiny":
        with open(images, "wb") as handle:
            handle.write(b"\x00")
        return "not an IDX file"
    if how == "label_count":
        write_idx(labels, np.arange(7))
        return "7 labels for 12 train images"
    if how == "gzip":
        with open(images + ".gz", "wb") as handle:
            handle.write(b"not gzip at all")
        os.remove(images)
        return "cannot read IDX file"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["magic", "type", "dims", "size", "truncated", "tiny", "label_count", "gzip"])
def test_corrupt_idx_is_named(tmp_path, how):
    message = corrupt_idx(tmp_path, how)
    with pytest.raises(DataError, match=message):
        load_images(f"mnist:{tmp_path}")


def test_read_idx_direct(tmp_path):
    path = str(tmp_path / "a.idx")
    write_idx(path, np.arange(6).reshape(2, 3))
    assert read_idx(path, 2).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_cifar10_batches_pickled_the_old_way_are_read(tmp_path):
    """The published CIFAR-10 files are protocol-2 pickles that name numpy.core.multiarray; the
    restricted unpickler admits those arrays."""
    write_cifar(tmp_path)
    for name in os.listdir(tmp_path):
        with open(tmp_path / name, "rb") as handle:
            batch = pickle.load(handle)
        old = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"numpy.core.multiarray\n_reconstruct" in old
        (tmp_path / name).write_bytes(old)
    assert load_images(f"cifar10:{tmp_path}").n_train == 15


def bad_cifar(directory, how):
    write_cifar(directory)
    path = os.path.join(directory, "data_batch_3")
    if how == "missing":
        os.remove(path)
        return "looked for data_batch_1, .*data_batch_3.*cifar-10-batches-py"
    if how == "garbage":
        with open(path, "wb") as handle:
            handle.write(b"\x80\x04garbage")
        return "data_batch_3: not a CIFAR-10 python batch"
    if how == "keys":
        with open(path, "wb") as handle:
            pickle.dump({b"images": 1}, handle)
        return "expected a dict with keys"
    if how == "shape":
        with open(path, "wb") as handle:
            pickle.dump({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, handle)
        return r"shape \(N, 3072\)"
    if how == "labels":
        with open(path, "wb") as handle:
            pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, handle)
        return "labels for 3 images"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing", "garbage", "keys", "shape", "labels"])
def test_bad_cifar_is_named(tmp_path, how):
    message = bad_cifar(tmp_path, how)
    with pytest.raises(DataError, match=message):
        load_images(f"cifar10:{tmp_path}")


@pytest.mark.parametrize("spec, message", [
    ("imagenet", "unknown image data 'imagenet'; allowed: 'digits', 'mnist1d\\[:n=..,seed=..\\]', 'mnist:DIR'"),
    ("mnist", "needs a directory: 'mnist:DIR'"),
    ("mnist:/nonexistent/dir", "is not a directory"),
    ("cifar10:", "needs a directory"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DataError, match=message):
        load_images(spec)


def test_directory_without_idx_files_lists_what_was_looked_for(tmp_path):
    with pytest.raises(DataError, match="looked for train-images-idx3-ubyte, train-images-idx3-ubyte.gz"):
        load_images(f"mnist:{tmp_path}")


@pytest.mark.parametrize("change, message", [
    (dict(train_labels=np.array([0, 5])), r"train label 5 at row 1 is outside \[0, 2\)"),
    (dict(train_images=np.full((2, 1, 2, 2), np.nan)), "NaN or infinite"),
    (dict(test_images=np.zeros((1, 1, 3, 3))), "test images are"),
    (dict(train_labels=np.array([0])), "expected \\(2,\\)"),
    (dict(classes=("one",)), "at least 2 classes"),
])
def test_image_dataset_validates(change, message):
    fields = dict(train_images=np.zeros((2, 1, 2, 2)), train_labels=np.array([0, 1]),
                  test_images=np.zeros((1, 1, 2, 2)), test_labels=np.array([1]), classes=("a", "b"), name="toy")
    fields.update(change)
    with pytest.raises(DataError, match=message):
        ImageDataset(**fields)


def test_array_dataset_from_arrays_and_tensors():
    import torch

    from hogwild_mts.data.images import ArrayDataset, array_dataset

    inputs = np.arange(24, dtype=np.float64).reshape(4, 2, 3)
    regression = array_dataset(torch.from_numpy(inputs), np.ones((4, 2, 2)), classification=False)
    assert (regression.input_shape, regression.outputs, regression.classes) == ((2, 3), 4, None)
    assert regression.train_inputs.dtype == np.float32 and regression.train_targets.dtype == np.float32
    assert regression.evaluated_on == "train" and regression.test_inputs is regression.train_inputs
    assert "scored on the training rows" in repr(regression)
    labelled = array_dataset(inputs, [0, 2, 1, 0], test=(inputs[:2], np.array([3, 1])), classification=True)
    assert labelled.classes == ("0", "1", "2", "3") and labelled.outputs == 4 and labelled.evaluated_on == "test"
    digits = load_images("digits")
    assert isinstance(digits, ArrayDataset) and digits.train_images is digits.train_inputs
    with pytest.raises(DataError, match=r"train targets have shape \(3,\), expected 4 rows"):
        array_dataset(inputs, np.zeros(3), classification=False)
    with pytest.raises(DataError, match="test targets contain NaN"):
        array_dataset(inputs, np.zeros(4), test=(inputs, np.full(4, np.nan)), classification=False)
    with pytest.raises(DataError, match="the targets y are missing"):
        array_dataset(inputs, None, classification=True)


def test_an_mnist1d_size_that_cannot_fit_is_refused_before_generating(monkeypatch):
    from hogwild_mts.core import resources
    from hogwild_mts.core.resources import ResourceError

    monkeypatch.setattr(resources, "available_memory", lambda: 2 ** 30)
    with pytest.raises(ResourceError, match=r"mnist1d:n=100000000000 \(100,000,000,000 signals\) needs "
                                            r"186.3 TiB of memory but this machine has 1.0 GiB available"):
        load_images("mnist1d:n=100000000000")
