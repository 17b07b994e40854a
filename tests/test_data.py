"""Tests for hogwild_mts.data.tabular: loaders round-trip, bad input raises DataError, synthetic generators."""

import bz2
import gzip
import re
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import dump_svmlight_file

from hogwild_mts.data import tabular
from hogwild_mts.data.tabular import (
    MAX_DECOMPRESSED_ENV,
    SYNTHETIC_DENSE_DEFAULTS,
    DataError,
    Dataset,
    as_dataset,
    load_data,
    load_npz,
    load_svmlight,
    read_file_part,
    synthetic_dense,
    synthetic_sparse,
)


def small_problem(seed=0, n=30, d=7):
    """A dense matrix with about half its entries zero, every column used, and +-1 labels.

    Values have 4 decimals, so sklearn's svmlight writer (``%.16g``) round-trips them exactly.
    """
    rng = np.random.default_rng(seed)
    X = np.round(rng.standard_normal((n, d)), 4) * (rng.random((n, d)) < 0.5)
    X[0, :] = np.arange(1, d + 1)  # every column stored somewhere, so svmlight keeps d
    y = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    return X, y


def assert_same_data(dataset, X, y):
    matrix = dataset.to_scipy()
    dense = matrix if isinstance(matrix, np.ndarray) else matrix.toarray()
    np.testing.assert_array_equal(dense, X)
    np.testing.assert_array_equal(dataset.y, y)
    assert (dataset.n_samples, dataset.n_features) == X.shape


def save_npz_with_labels(path, matrix, y):
    """scipy.sparse.save_npz, then ``y`` appended to the same archive."""
    sp.save_npz(path, matrix, compressed=False)
    with zipfile.ZipFile(path, "a") as archive, archive.open("y.npy", "w") as member:
        np.lib.format.write_array(member, np.asarray(y))


# ---------------------------------------------------------------- as_dataset and the row format

def test_dense_and_csr_give_identical_rows():
    X, y = small_problem()
    dense = as_dataset(X, y)
    sparse = as_dataset(sp.csr_matrix(X), y)
    assert dense.dense and not sparse.dense
    assert dense.indices.shape == (0,)
    assert (dense.values.dtype, sparse.values.dtype) == (np.float64, np.float64)
    assert (sparse.indices.dtype, sparse.indptr.dtype, dense.indptr.dtype) == (np.int32, np.int64, np.int64)
    for i in range(X.shape[0]):
        row = np.zeros(X.shape[1])
        start, stop = sparse.indptr[i], sparse.indptr[i + 1]
        row[sparse.indices[start:stop]] = sparse.values[start:stop]
        dense_row = dense.values[dense.indptr[i]:dense.indptr[i + 1]]
        np.testing.assert_array_equal(row, dense_row)
        np.testing.assert_array_equal(row, X[i])
    np.testing.assert_array_equal(dense.feature_counts(), np.full(X.shape[1], X.shape[0]))
    np.testing.assert_array_equal(sparse.feature_counts(), (X != 0).sum(axis=0))
    assert sparse.nnz == np.count_nonzero(X) and dense.nnz == X.size


def test_sparse_input_is_canonicalised_and_not_modified():
    # Row 0 holds column 2 twice (summed to 3.0) and unsorted columns; COO and CSC inputs too.
    row, col, val = np.array([0, 0, 0, 1]), np.array([2, 0, 2, 1]), np.array([1.0, 5.0, 2.0, 4.0])
    raw = sp.csr_matrix((val, col, np.array([0, 3, 4])), shape=(2, 3))
    for matrix in (raw, sp.coo_matrix((val, (row, col)), shape=(2, 3)), sp.csc_array(raw)):
        dataset = as_dataset(matrix, [1, -1])
        np.testing.assert_array_equal(dataset.indices, [0, 2, 1])
        np.testing.assert_array_equal(dataset.values, [5.0, 3.0, 4.0])
        np.testing.assert_array_equal(dataset.indptr, [0, 2, 3])
    np.testing.assert_array_equal(raw.indices, [2, 0, 2, 1])


def test_integer_and_bool_inputs_become_float64():
    dataset = as_dataset(np.array([[1, 0], [0, 2]], dtype=np.int8), np.array([True, False]))
    assert dataset.values.dtype == np.float64 and dataset.y.tolist() == [1.0, 0.0]
    assert dataset.values.flags.c_contiguous


def test_all_zero_csr_is_sparse_not_dense():
    dataset = as_dataset(sp.csr_matrix((3, 4)), [1, 1, -1])
    assert not dataset.dense and dataset.nnz == 0 and dataset.indices.shape == (0,)
    assert dataset.to_scipy().shape == (3, 4)
    np.testing.assert_array_equal(dataset.feature_counts(), [0, 0, 0, 0])


def test_dataset_rejects_inconsistent_arrays():
    with pytest.raises(DataError, match="indptr"):
        Dataset(values=np.ones(3), indices=np.array([0, 1, 2], dtype=np.int32),
                indptr=np.array([0, 2, 1], dtype=np.int64), n_features=3, y=np.ones(2), name="t", dense=False)
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        Dataset(values=np.ones(2), indices=np.array([0, 5], dtype=np.int32),
                indptr=np.array([0, 2], dtype=np.int64), n_features=2, y=np.ones(1), name="t", dense=False)
    with pytest.raises(DataError, match="int32"):
        Dataset(values=np.ones(2), indices=np.array([0, 1]), indptr=np.array([0, 2], dtype=np.int64),
                n_features=2, y=np.ones(1), name="t", dense=False)


# ---------------------------------------------------------------- file round trips

@pytest.mark.parametrize("suffix, zero_based", [(".svm", False), (".txt", True), (".svm.gz", False),
                                                (".svm.bz2", False)])
def test_svmlight_round_trip(tmp_path, suffix, zero_based):
    X, y = small_problem()
    path = tmp_path / f"data{suffix}"
    plain = tmp_path / "plain"
    dump_svmlight_file(X, y, str(plain), zero_based=zero_based, comment="written by the test")
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "wb") as out:
        out.write(plain.read_bytes())
    dataset = load_svmlight(path)
    assert not dataset.dense and dataset.name == path.name
    assert_same_data(dataset, X, y)


def test_svmlight_comments_qid_and_blank_lines(tmp_path):
    path = tmp_path / "q.libsvm"
    path.write_text("# header\n+1 qid:3 1:0.5 3:2  # tail\n\n-1 qid:3 2:1.5\r\n1\n")
    dataset = load_svmlight(path)
    assert_same_data(dataset, np.array([[0.5, 0, 2], [0, 1.5, 0], [0, 0, 0]]), np.array([1.0, -1.0, 1.0]))


@pytest.mark.parametrize("sparse", [False, True])
def test_npz_round_trip(tmp_path, sparse):
    X, y = small_problem()
    path = tmp_path / "d.npz"
    if sparse:
        save_npz_with_labels(path, sp.csr_matrix(X), y)
    else:
        np.savez(path, X=X, y=y)
    dataset = load_npz(path)
    assert dataset.dense is not sparse
    assert_same_data(dataset, X, y)
    assert_same_data(load_data(str(path)), X, y)


def test_npz_csc_round_trip(tmp_path):
    X, y = small_problem()
    save_npz_with_labels(tmp_path / "c.npz", sp.csc_matrix(X), y)
    assert_same_data(load_npz(tmp_path / "c.npz"), X, y)


def test_load_data_reads_svmlight_path(tmp_path):
    X, y = small_problem()
    dump_svmlight_file(X, y, str(tmp_path / "train.data"))
    assert_same_data(load_data(str(tmp_path / "train.data")), X, y)


# ---------------------------------------------------------------- bad input

def write(path, text):
    path.write_text(text)
    return path


GOOD_LINES = "1 1:0.5 3:1\n# comment line\n-1 2:1.5\n"

BAD_SVMLIGHT = [
    # (file body, line number of the first bad line, words in the message)
    (GOOD_LINES + "+1 2:abc\n", 4, "value 'abc'"),
    (GOOD_LINES + "-1 3:1 2:1\n", 4, "strictly increasing"),
    (GOOD_LINES + "1 2:1 2:4\n", 4, "strictly increasing"),
    ("1 1:1\nfoo 2:1\n", 2, "label 'foo'"),
    (GOOD_LINES + "1 2\n", 4, "expected INDEX:VALUE"),
    (GOOD_LINES + "1 1.5:2\n", 4, "feature index '1.5'"),
    ("1 -1:2\n", 1, "feature index '-1'"),
    ("1 qid:2 1:1\n-1 qid:2 2:1\n1 2:x\n", 3, "value 'x'"),  # qid after the label is fine
    (GOOD_LINES + "1 2:1 qid:3\n", 4, "expected INDEX:VALUE|feature index 'qid'"),
    (GOOD_LINES * 3 + "1 1:nan\n", 10, "value 'nan'"),
    (GOOD_LINES + "inf 1:1\n", 4, "label 'inf'"),
    (GOOD_LINES + "1 1:1e400\n", 4, "value '1e400'"),
]


@pytest.mark.parametrize("body, line_number, words", BAD_SVMLIGHT)
def test_malformed_svmlight_names_file_and_line(tmp_path, body, line_number, words):
    path = write(tmp_path / "bad.svm", body)
    with pytest.raises(DataError, match=rf"bad\.svm:{line_number}: .*({words})"):
        load_svmlight(path)


def test_malformed_gzip_svmlight_line(tmp_path):
    path = tmp_path / "bad.svm.gz"
    with gzip.open(path, "wt") as out:
        out.write(GOOD_LINES + "1 3:x\n")
    with pytest.raises(DataError, match=r"bad\.svm\.gz:4: value 'x'"):
        load_svmlight(path)


def npz_missing_keys(tmp_path):
    path = tmp_path / "k.npz"
    np.savez(path, X=np.ones((2, 2)), labels=np.ones(2))
    return load_npz(path)


def npz_unsupported_format(tmp_path):
    path = tmp_path / "coo.npz"
    np.savez(path, data=np.ones(2), indices=np.arange(2), indptr=np.arange(3), shape=(2, 2),
             format=b"bsr", y=np.ones(2))
    return load_npz(path)


def npz_not_an_archive(tmp_path):
    return load_npz(write(tmp_path / "junk.npz", "not a zip"))


def npz_bad_indices(tmp_path):
    path = tmp_path / "idx.npz"
    np.savez(path, data=np.ones(2), indices=np.array([0, 9]), indptr=np.array([0, 1, 2]), shape=(2, 3),
             y=np.ones(2))
    return load_npz(path)


X_OK, Y_OK = np.ones((3, 2)), np.array([1.0, -1.0, 1.0])
X_NAN = X_OK.copy()
X_NAN[2, 1] = np.nan

BAD_INPUTS = {
    "missing svmlight file": (lambda p: load_svmlight(p / "nope.svm"), r"nope\.svm: no such file"),
    "svmlight directory": (lambda p: load_svmlight(p), "not a regular file"),
    "empty svmlight file": (lambda p: load_svmlight(write(p / "e.svm", "")), r"e\.svm: no data rows"),
    "comments only": (lambda p: load_svmlight(write(p / "c.svm", "# x\n\n")), "no data rows"),
    "missing npz": (lambda p: load_npz(p / "none.npz"), r"none\.npz: no such file"),
    "npz missing keys": (npz_missing_keys, r"found \['X', 'labels'\]; expected \['X', 'y'\].*'indptr'"),
    "npz unsupported format": (npz_unsupported_format, "format 'bsr' is not supported; allowed: csr, csc"),
    "npz not an archive": (npz_not_an_archive, r"junk\.npz: cannot read"),
    "npz index out of range": (npz_bad_indices, "not a valid sparse matrix"),
    "NaN in X": (lambda p: as_dataset(X_NAN, Y_OK), r"X has a non-finite value \(nan\) at row 2, column 1"),
    "NaN in sparse X": (lambda p: as_dataset(sp.csr_matrix(X_NAN), Y_OK), r"non-finite value \(nan\) at row 2"),
    "inf in y": (lambda p: as_dataset(X_OK, [1, 1, np.inf]), r"y has a non-finite value \(inf\) at row 2"),
    "length mismatch": (lambda p: as_dataset(X_OK, [1, 1]), "X has 3 rows, y has 2 entries"),
    "no rows": (lambda p: as_dataset(np.ones((0, 2)), []), r"empty data set: X has shape \(0, 2\)"),
    "no features": (lambda p: as_dataset(sp.csr_matrix((3, 0)), Y_OK), r"empty data set: X has shape \(3, 0\)"),
    "X 1-d": (lambda p: as_dataset(np.ones(3), Y_OK), r"X must be 2-d .* got shape \(3,\)"),
    "y 2-d": (lambda p: as_dataset(X_OK, Y_OK[:, None]), r"y must be 1-d, got shape \(3, 1\)"),
    "X strings": (lambda p: as_dataset(np.array([["a", "b"]]), [1]), "X must hold real numbers"),
    "y complex": (lambda p: as_dataset(X_OK, Y_OK + 1j), "y must hold real numbers"),
    "n_samples zero": (lambda p: synthetic_sparse(0, 10, 2), "n_samples must be an integer >= 1, got 0"),
    "n_features float": (lambda p: synthetic_dense(5, 2.5), "n_features must be an integer >= 1, got 2.5"),
    "nnz above d": (lambda p: synthetic_sparse(5, 10, 11), "nnz_per_row must be at most n_features = 10, got 11"),
    "negative seed": (lambda p: synthetic_dense(5, 2, seed=-1), "seed must be an integer >= 0"),
    "noise 0.5": (lambda p: synthetic_sparse(5, 10, 2, label_noise=0.5), r"label_noise must be .*\[0, 0\.5\)"),
    "noise nan": (lambda p: synthetic_dense(5, 2, label_noise=float("nan")), "label_noise"),
    "unknown spec": (lambda p: load_data("rcv1"), "'rcv1' is neither .* allowed: 'synthetic-sparse'.*svmlight"),
    "unknown spec key": (lambda p: load_data("synthetic-dense:n=5,nnz=3"), "bad parameter 'nnz=3'.*n, d, seed, noise"),
    "spec item without =": (lambda p: load_data("synthetic-sparse:n"), "expected KEY=VALUE"),
    "spec bad int": (lambda p: load_data("synthetic-sparse:n=2e5"), r"n='2e5' must be an integer"),
    "spec bad float": (lambda p: load_data("synthetic-dense:noise=lots"), "noise='lots' must be a number"),
    "spec repeated key": (lambda p: load_data("synthetic-dense:n=5,n=6"), "'n' given twice"),
    "spec value out of range": (lambda p: load_data("synthetic-dense:noise=0.7"), "label_noise"),
    "cond below 1": (lambda p: load_data("synthetic-regression:n=5,d=2,cond=0.5"), r"cond must be .*\[1, 1e12\), got 0.5"),
    "cond not a number": (lambda p: load_data("synthetic-regression:cond=big"), "cond='big' must be a number"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_raises_data_error(tmp_path, case):
    call, words = BAD_INPUTS[case]
    with pytest.raises(DataError, match=words):
        call(tmp_path)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# ---------------------------------------------------------------- synthetic generators

def test_synthetic_sparse_shape_nnz_and_unit_rows():
    n, d, k = 2000, 500, 20
    data = synthetic_sparse(n, d, k, seed=3)
    assert (data.n_samples, data.n_features, data.nnz) == (n, d, n * k)
    np.testing.assert_array_equal(np.diff(data.indptr), k)
    rows = data.indices.reshape(n, k)
    assert (np.diff(rows, axis=1) > 0).all()  # sorted and distinct per row
    assert (data.values > 0).all()
    np.testing.assert_allclose(np.sqrt((data.values.reshape(n, k) ** 2).sum(axis=1)), 1.0, rtol=1e-12)
    assert set(np.unique(data.y)) == {-1.0, 1.0}
    assert 0.4 < (data.y > 0).mean() < 0.6
    assert data.name == "synthetic-sparse(n=2000,d=500,nnz=20,seed=3,noise=0)"
    # Uniform columns: every column is used about n*k/d = 80 times.
    counts = data.feature_counts()
    assert counts.sum() == n * k and counts.min() > 40 and counts.max() < 130


def test_synthetic_sparse_full_rows_take_every_column():
    data = synthetic_sparse(50, 6, 6, seed=1)
    np.testing.assert_array_equal(data.indices.reshape(50, 6), np.tile(np.arange(6), (50, 1)))
    dense_ish = synthetic_sparse(200, 10, 7, seed=1)
    assert (np.diff(dense_ish.indices.reshape(200, 7), axis=1) > 0).all()


def test_synthetic_labels_are_planted_linear_separator():
    # A linear model fitted to noiseless planted labels separates them almost perfectly.
    from sklearn.linear_model import LogisticRegression

    for data in (synthetic_sparse(3000, 50, 10, seed=2), synthetic_dense(3000, 10, seed=2)):
        fit = LogisticRegression(C=1e4, max_iter=2000).fit(data.to_scipy(), data.y)
        assert fit.score(data.to_scipy(), data.y) > 0.97, data.name


@pytest.mark.parametrize("make", [lambda seed, noise: synthetic_sparse(3000, 300, 8, seed=seed, label_noise=noise),
                                  lambda seed, noise: synthetic_dense(3000, 20, seed=seed, label_noise=noise)])
def test_synthetic_deterministic_per_seed_and_noise_flips(make):
    first, again, other = make(5, 0.0), make(5, 0.0), make(6, 0.0)
    for field in ("values", "indices", "indptr", "y"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    assert not np.array_equal(first.values, other.values)
    assert not np.array_equal(first.y, other.y)
    noisy = make(5, 0.2)
    np.testing.assert_array_equal(noisy.values, first.values)
    flipped = (noisy.y != first.y).mean()
    assert 0.17 < flipped < 0.23  # 3000 draws of p = 0.2: standard deviation 0.0073
    assert "noise=0.2" in noisy.name


def test_synthetic_sparse_default_size_is_fast_enough_to_use():
    # Not a timing assertion: a smoke test that the RCV1-like width and density work.
    data = synthetic_sparse(5000, 47_236, 76)
    assert data.nnz == 5000 * 76 and data.indices.max() < 47_236


def test_load_data_synthetic_specs():
    dense = load_data("synthetic-dense:n=300,seed=4,noise=0.1")
    assert dense.dense and (dense.n_samples, dense.n_features) == (300, SYNTHETIC_DENSE_DEFAULTS["d"])
    np.testing.assert_array_equal(dense.y, synthetic_dense(300, 100, seed=4, label_noise=0.1).y)
    sparse = load_data(" synthetic-sparse:n=400, d=1000, nnz=5 ,")
    assert (sparse.n_samples, sparse.n_features, sparse.nnz) == (400, 1000, 2000)
    np.testing.assert_array_equal(sparse.indices, synthetic_sparse(400, 1000, 5).indices)
    assert load_data("synthetic-dense").n_samples == SYNTHETIC_DENSE_DEFAULTS["n"]


# ------------------------------------------------------------------ decompression bombs, qid
SMALL_LIMIT = 2 ** 16  # the tests' limit on decompressed data: 64 KiB


@pytest.fixture
def small_decompression_limit(monkeypatch):
    monkeypatch.setenv(MAX_DECOMPRESSED_ENV, str(SMALL_LIMIT))


@pytest.mark.parametrize("name,pack", [("bomb.svm.gz", gzip.compress), ("bomb.svm.bz2", bz2.compress)])
@pytest.mark.parametrize("read", [load_data, lambda path: read_file_part(path, 0, 2)], ids=["whole", "part"])
def test_a_compressed_file_expanding_past_the_limit_is_refused(tmp_path, small_decompression_limit,
                                                               name, pack, read):
    path = tmp_path / name
    path.write_bytes(pack(b"1 1:1\n" * (SMALL_LIMIT // 3)))  # 128 KiB of text
    with pytest.raises(DataError, match=rf"{name}: the compressed data expands to more than the limit "
                                        rf"of 64.0 KiB on decompressed data \({MAX_DECOMPRESSED_ENV}=65536; "
                                        "set it to a larger number"):
        read(str(path))


def test_a_compressed_file_within_the_limit_loads(tmp_path, small_decompression_limit):
    path = tmp_path / "ok.svm.gz"
    path.write_bytes(gzip.compress(b"1 1:1\n-1 2:1\n" * 1000))
    assert load_data(str(path)).n_samples == 2000


def test_the_decompression_limit_is_the_available_memory_when_that_is_less(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_DECOMPRESSED_ENV, raising=False)
    monkeypatch.setattr(tabular, "available_memory", lambda: SMALL_LIMIT)
    path = tmp_path / "bomb.svm.gz"
    path.write_bytes(gzip.compress(b"0" * 2 * SMALL_LIMIT))
    with pytest.raises(DataError, match=r"bomb.svm.gz: the compressed data expands to more than the "
                                        r"64.0 KiB of memory available \(the limit .* is 16.0 GiB\)"):
        load_data(str(path))


def test_a_deflated_npz_expanding_past_the_limit_is_refused(tmp_path, small_decompression_limit):
    path = tmp_path / "z.npz"
    np.savez_compressed(path, X=np.zeros((2000, 100)), y=np.ones(2000))
    with pytest.raises(DataError, match="z.npz: the compressed data expands to more than the limit"):
        load_data(str(path))


def test_a_bad_decompression_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_DECOMPRESSED_ENV, "lots")
    path = tmp_path / "ok.svm.gz"
    path.write_bytes(gzip.compress(b"1 1:1\n"))
    with pytest.raises(DataError, match=f"{MAX_DECOMPRESSED_ENV}='lots' must be a whole number of bytes"):
        load_data(str(path))


@pytest.mark.parametrize("qid", ["-3", "abc", "1.5", "99999999999999999999"])
@pytest.mark.parametrize("read", [load_data, lambda path: read_file_part(path, 0, 1)], ids=["whole", "part"])
def test_a_bad_qid_is_refused_with_its_line(tmp_path, qid, read):
    path = tmp_path / "q.svm"
    path.write_text(f"1 qid:2 1:1\n-1 qid:{qid} 2:1\n")
    with pytest.raises(DataError, match=rf"q.svm:2: qid '{re.escape(qid)}' is not an integer in \[0, 2\*\*63\)"):
        read(str(path))


def test_a_good_qid_is_read_and_ignored(tmp_path):
    path = tmp_path / "q.svm"
    path.write_text("1 qid:2 1:1\n-1 qid:0 2:1\n")
    assert load_data(str(path)).n_samples == 2


def test_synthetic_regression_has_the_condition_number_it_names_and_a_fitting_planted_model():
    data = load_data("synthetic-regression:n=4000,d=20,cond=50,seed=3,noise=0.05")
    X = data.values.reshape(4000, 20)
    eigenvalues = np.linalg.eigvalsh(X.T @ X / 4000)
    assert 35 < eigenvalues.max() / eigenvalues.min() < 70
    assert data.dense and data.n_features == 20
    coefficients, residuals, *_ = np.linalg.lstsq(X, data.y, rcond=None)
    assert np.sqrt(residuals[0] / 4000) == pytest.approx(0.05, rel=0.1)
    again = load_data("synthetic-regression:n=4000,d=20,cond=50,seed=3,noise=0.05")
    np.testing.assert_array_equal(again.y, data.y)
