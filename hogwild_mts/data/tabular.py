"""Data sets in the one row format the engine's kernels read, and the loaders that build them.

Every loader returns a :class:`Dataset`: float64 ``values``, int32 ``indices`` and int64 ``indptr``
in CSR layout.  Dense data uses the same layout with no ``indices``: row ``i`` is
``values[i*d:(i+1)*d]``.  The engine copies these arrays into shared memory once.

All bad input raises :class:`DataError` (a ``ValueError``) naming the value, file or line and what
is allowed, before any training starts.  Nothing is allocated from sizes a file or spec merely
declares before they are checked against the file and the machine's memory
(:class:`hogwild_mts.core.resources.ResourceError`, also a ``ValueError``).
"""

from __future__ import annotations

import bz2
import gzip
import io
import math
import numbers
import os
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from hogwild_mts.core.options import check_int
from hogwild_mts.core.resources import available_memory, check_memory, format_bytes

# Defaults of the ``--data`` specs (keys are the spec's parameter names).
# RCV1 (Lewis et al. 2004) is 804,414 x 47,236 with about 76 nonzeros per row.
SYNTHETIC_SPARSE_DEFAULTS = {"n": 100_000, "d": 47_236, "nnz": 76, "seed": 0, "noise": 0.0}
SYNTHETIC_DENSE_DEFAULTS = {"n": 20_000, "d": 100, "seed": 0, "noise": 0.0}
SYNTHETIC_REGRESSION_DEFAULTS = {"n": 20_000, "d": 100, "cond": 100.0, "seed": 0, "noise": 0.1}
FLOAT_SPEC_KEYS = ("noise", "cond")  # spec parameters read as floats (the others are integers)

DATA_SPEC_FORMS = (
    "'synthetic-sparse' or 'synthetic-sparse:n=..,d=..,nnz=..,seed=..,noise=..'; "
    "'synthetic-dense' or 'synthetic-dense:n=..,d=..,seed=..,noise=..'; "
    "'synthetic-regression' or 'synthetic-regression:n=..,d=..,cond=..,seed=..,noise=..'; "
    "a path to an .npz file (keys X and y, or CSR keys data, indices, indptr, shape and y); "
    "or a path to an existing svmlight/libsvm file (.gz and .bz2 allowed)"
)

INT32_MAX = np.iinfo(np.int32).max
# The most bytes a compressed data file (.gz, .bz2 svmlight; a deflated .npz member) may expand
# to, unless the environment variable says otherwise; never more than the available memory.
MAX_DECOMPRESSED_BYTES = 16 * 2 ** 30
MAX_DECOMPRESSED_ENV = "HOGWILD_MTS_MAX_DECOMPRESSED_BYTES"
# What reading a (possibly compressed) file can raise besides a parse error.
READ_ERRORS = (OSError, EOFError, zlib.error)


class DataError(ValueError):
    """A data set, file or data spec that cannot be used; the message says where and why."""


@dataclass(eq=False, repr=False)
class Dataset:
    """``n`` rows of a design matrix in one row format, plus labels.

    Row ``i`` stores ``values[indptr[i]:indptr[i+1]]`` at columns ``indices[indptr[i]:indptr[i+1]]``
    (CSR: indices sorted and unique within a row).  For dense data ``indices`` is empty and
    ``indptr[i] = i * n_features``.  All values and labels are finite.
    """

    values: np.ndarray  # float64 1-d
    indices: np.ndarray  # int32 1-d; shape (0,) when dense
    indptr: np.ndarray  # int64 1-d, length n + 1
    n_features: int
    y: np.ndarray  # float64 1-d, length n
    name: str
    dense: bool
    _feature_counts: np.ndarray | None = field(default=None, init=False)  # feature_counts()

    def __post_init__(self):
        problems = []
        if self.values.dtype != np.float64 or self.values.ndim != 1:
            problems.append(f"values must be float64 1-d, got {self.values.dtype} {self.values.shape}")
        if self.indices.dtype != np.int32 or self.indices.ndim != 1:
            problems.append(f"indices must be int32 1-d, got {self.indices.dtype} {self.indices.shape}")
        if self.indptr.dtype != np.int64 or self.indptr.ndim != 1 or self.indptr.size < 1:
            problems.append(f"indptr must be int64 1-d and non-empty, "
                            f"got {self.indptr.dtype} {self.indptr.shape}")
        if self.y.dtype != np.float64 or self.y.shape != (self.indptr.size - 1,):
            problems.append(f"y must be float64 of shape ({self.indptr.size - 1},), "
                            f"got {self.y.dtype} {self.y.shape}")
        if problems:
            raise DataError("; ".join(problems))
        n, d = self.n_samples, self.n_features
        if self.dense:
            if self.indices.size != 0 or self.values.size != n * d:
                problems.append(f"dense data needs no indices and n*d = {n * d} values, "
                                f"got {self.indices.size} indices and {self.values.size} values")
            elif not np.array_equal(self.indptr, np.arange(n + 1, dtype=np.int64) * d):
                problems.append("dense data needs indptr[i] = i * n_features")
        else:
            if self.indices.size != self.values.size:
                problems.append(f"CSR needs as many indices as values, "
                                f"got {self.indices.size} and {self.values.size}")
            elif (self.indptr[0] != 0 or self.indptr[-1] != self.values.size
                  or np.any(np.diff(self.indptr) < 0)):
                problems.append(f"CSR indptr must rise from 0 to nnz = {self.values.size}")
            elif self.indices.size and (self.indices.min() < 0 or self.indices.max() >= d):
                problems.append(f"CSR column indices must lie in [0, {d})")
        if problems:
            raise DataError(f"{self.name}: " + "; ".join(problems))

    @property
    def n_samples(self) -> int:
        return self.indptr.size - 1

    @property
    def nnz(self) -> int:
        """Stored entries (dense: n * d)."""
        return self.values.size

    def feature_counts(self) -> np.ndarray:
        """int64 per column: the number of rows that store that column (dense: all n).  Counted
        once per Dataset (its rows do not change; the estimators run one fit per epoch on it)."""
        if self.dense:
            return np.full(self.n_features, self.n_samples, dtype=np.int64)
        if self._feature_counts is None:
            self._feature_counts = np.bincount(self.indices, minlength=self.n_features).astype(np.int64)
        return self._feature_counts

    def with_labels(self, y: np.ndarray) -> "Dataset":
        """The same rows with the labels ``y`` (float64, one per row): the arrays, and the
        feature counts once counted, are shared, not copied."""
        labelled = Dataset(self.values, self.indices, self.indptr, self.n_features, y, self.name,
                           self.dense)
        labelled._feature_counts = self._feature_counts
        return labelled

    def to_scipy(self):
        """The matrix as ``scipy.sparse.csr_matrix``, or (dense) a 2-d ndarray view of ``values``."""
        if self.dense:
            return self.values.reshape(self.n_samples, self.n_features)
        return sp.csr_matrix((self.values, self.indices, self.indptr),
                             shape=(self.n_samples, self.n_features))

    def __repr__(self) -> str:
        layout = "dense" if self.dense else "csr"
        return f"Dataset({self.name}: n={self.n_samples}, d={self.n_features}, nnz={self.nnz}, {layout})"


def as_dataset(X, y, name: str = "arrays") -> Dataset:
    """Validate ``X`` (2-d array or any scipy.sparse matrix/array) and ``y`` (1-d) into a Dataset.

    Dense X becomes float64 C-order (sharing memory with X when it already is); sparse X becomes
    canonical CSR (sorted indices, duplicates summed).  y is copied to float64.
    """
    if sp.issparse(X):
        _check_numeric("X", X.dtype)
        if X.ndim != 2:
            raise DataError(f"X must be 2-d, got shape {X.shape}")
        csr = sp.csr_matrix(X, dtype=np.float64, copy=True)
        try:
            csr.check_format(full_check=True)
        except ValueError as error:
            raise DataError(f"{name}: X is not a valid sparse matrix: {error}") from None
        csr.sum_duplicates()
        dense_X = None
        n, d = csr.shape
    else:
        dense_X = np.asarray(X)
        _check_numeric("X", dense_X.dtype)
        if dense_X.ndim != 2:
            raise DataError(f"X must be 2-d (n_samples, n_features), got shape {dense_X.shape}")
        n, d = dense_X.shape
    labels = np.asarray(y)
    _check_numeric("y", labels.dtype)
    if labels.ndim != 1:
        raise DataError(f"y must be 1-d, got shape {labels.shape} (use y.ravel() for a column)")
    if labels.shape[0] != n:
        raise DataError(f"X and y differ in length: X has {n} rows, y has {labels.shape[0]} entries")
    if n == 0 or d == 0:
        raise DataError(f"{name}: empty data set: X has shape ({n}, {d}); need at least 1 row and 1 feature")
    if d > INT32_MAX:
        raise DataError(f"{name}: {d} features do not fit int32 column indices (at most {INT32_MAX})")
    labels = np.array(labels, dtype=np.float64)
    bad_labels = np.flatnonzero(~np.isfinite(labels))
    if bad_labels.size:
        row = bad_labels[0]
        raise DataError(f"{name}: y has a non-finite value ({labels[row]}) at row {row}; "
                        "all labels must be finite")

    if dense_X is not None:
        matrix = np.ascontiguousarray(dense_X, dtype=np.float64)
        finite = np.isfinite(matrix)
        if not finite.all():
            row, column = np.argwhere(~finite)[0]
            raise DataError(f"{name}: X has a non-finite value ({matrix[row, column]}) at row {row}, "
                            f"column {column}; all values must be finite")
        return Dataset(values=matrix.reshape(-1), indices=np.empty(0, dtype=np.int32),
                       indptr=np.arange(n + 1, dtype=np.int64) * d, n_features=d, y=labels,
                       name=name, dense=True)

    bad_values = np.flatnonzero(~np.isfinite(csr.data))
    if bad_values.size:
        position = bad_values[0]
        row = np.searchsorted(csr.indptr, position, side="right") - 1
        raise DataError(f"{name}: X has a non-finite value ({csr.data[position]}) at row {row}, "
                        f"column {csr.indices[position]}; all values must be finite")
    return Dataset(values=np.ascontiguousarray(csr.data, dtype=np.float64),
                   indices=csr.indices.astype(np.int32), indptr=csr.indptr.astype(np.int64),
                   n_features=d, y=labels, name=name, dense=False)


def _check_numeric(what: str, dtype: np.dtype) -> None:
    if dtype.kind not in "biuf":
        raise DataError(f"{what} must hold real numbers (bool, int or float), got dtype {dtype}")


def load_svmlight(path) -> Dataset:
    """Read an svmlight/libsvm file (``.gz``/``.bz2`` by extension) with scikit-learn's Cython
    parser ``sklearn.datasets.load_svmlight_file``.

    Lines are ``LABEL [qid:Q] INDEX:VALUE ...`` with ``#`` comments; ``qid`` (an integer >= 0) is
    checked and ignored.  Indices use scikit-learn's ``zero_based="auto"``: a file with any index
    0 is zero-based, otherwise one-based (the LIBSVM convention) and shifted down by one.
    ``n_features`` is the largest column seen plus one.  A malformed line is reported as
    ``FILE:LINE: what is wrong``; a compressed file may expand to at most
    :func:`decompressed_limit`.
    """
    from sklearn.datasets import load_svmlight_file

    path = os.fspath(path)
    _check_file(path)
    try:
        with _open_maybe_compressed(path) as stream:
            X, y, query_ids = load_svmlight_file(stream, dtype=np.float64, query_id=True)
    except DataError:
        raise
    except (ValueError, TypeError, IndexError, OverflowError) as error:
        _raise_first_malformed_line(path)
        raise DataError(f"{path}: not a valid svmlight/libsvm file: {error}") from None
    except READ_ERRORS as error:
        raise _unreadable(path, error) from None
    if X.shape[0] == 0:
        raise DataError(f"{path}: no data rows (the file is empty or holds only comments)")
    if not (np.isfinite(X.data).all() and np.isfinite(y).all()) or (query_ids < 0).any():
        _raise_first_malformed_line(path)
    return as_dataset(X, y, name=os.path.basename(path))


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a regular file")


def _unreadable(path: str, error: BaseException) -> DataError:
    """The DataError for a file that cannot be read (I/O error, corrupt compressed stream)."""
    if isinstance(error, zlib.error) or (isinstance(error, OSError) and not error.errno):
        return DataError(f"{path}: the compressed data is corrupt or truncated ({error})")
    if isinstance(error, EOFError):
        return DataError(f"{path}: the compressed data ends early ({error})")
    return DataError(f"{path}: cannot read the file: {error}")


def max_decompressed_bytes() -> int:
    """MAX_DECOMPRESSED_BYTES, or the whole number of bytes in $HOGWILD_MTS_MAX_DECOMPRESSED_BYTES."""
    text = os.environ.get(MAX_DECOMPRESSED_ENV)
    if text is None:
        return MAX_DECOMPRESSED_BYTES
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise DataError(f"{MAX_DECOMPRESSED_ENV}={text!r} must be a whole number of bytes >= 1")
    return limit


def decompressed_limit() -> tuple[int, str]:
    """(bytes, what sets them): the most a compressed data file may expand to, which is
    :func:`max_decompressed_bytes` or the available memory if that is less."""
    limit, available = max_decompressed_bytes(), available_memory()
    if available is not None and available < limit:
        return available, (f"the {format_bytes(available)} of memory available (the limit "
                           f"{MAX_DECOMPRESSED_ENV} is {format_bytes(limit)})")
    return limit, (f"the limit of {format_bytes(limit)} on decompressed data ({MAX_DECOMPRESSED_ENV}="
                   f"{limit}; set it to a larger number of bytes to allow more)")


def check_decompressed_size(path: str, size: int, limit: tuple[int, str] | None = None) -> None:
    """DataError unless ``size`` decompressed bytes of ``path`` are within ``limit`` (default
    :func:`decompressed_limit`)."""
    most, why = limit or decompressed_limit()
    if size > most:
        raise DataError(f"{path}: the compressed data expands to more than {why}; a file that "
                        "expands this much is a decompression bomb or needs a larger machine")


class _BoundedStream(io.RawIOBase):
    """The decompressed bytes of ``stream`` (a gzip or bz2 file of ``path``), refused with
    :func:`check_decompressed_size` as soon as they pass the limit."""

    def __init__(self, path: str, stream):
        super().__init__()
        self._path, self._stream, self._read = path, stream, 0
        self._limit = decompressed_limit()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._stream.readinto(buffer)
        self._read += count
        check_decompressed_size(self._path, self._read, self._limit)
        return count

    def close(self) -> None:
        self._stream.close()
        super().close()


def _open_maybe_compressed(path: str):
    """``path`` opened for binary reading; .gz and .bz2 decompressed, within the size limit."""
    if path.endswith(".gz"):
        return io.BufferedReader(_BoundedStream(path, gzip.open(path, "rb")))
    if path.endswith(".bz2"):
        return io.BufferedReader(_BoundedStream(path, bz2.open(path, "rb")))
    return open(path, "rb")


def _raise_first_malformed_line(path: str) -> None:
    """Scan ``path`` line by line in pure Python; raise DataError at the first bad line, if any."""
    try:
        with _open_maybe_compressed(path) as lines:
            _scan_lines(path, lines)
    except READ_ERRORS as error:
        raise _unreadable(path, error) from None


def _scan_lines(path: str, lines) -> None:
    """DataError at the first line of ``lines`` (bytes) that is not svmlight/libsvm."""
    for line_number, raw in enumerate(lines, start=1):
        line = raw.decode("utf-8", errors="replace")
        problem = _svmlight_line_problem(line.split("#", 1)[0].split())
        if problem:
            text = line.rstrip("\r\n")
            if len(text) > 80:
                text = text[:77] + "..."
            raise DataError(f"{path}:{line_number}: {problem} (line: {text!r})")


def _svmlight_line_problem(tokens: list[str]) -> str | None:
    """What is wrong with one line's whitespace-separated tokens (comment removed), or None."""
    if not tokens:
        return None
    label = _parse_float(tokens[0])
    if label is None:
        return f"label {tokens[0]!r} is not a finite number"
    previous_index = -1
    for position, token in enumerate(tokens[1:], start=1):
        key, colon, value = token.partition(":")
        if not colon:
            return f"expected INDEX:VALUE, got {token!r}"
        if key == "qid" and position == 1:
            if not _is_int(value) or int(value) < 0 or int(value) > np.iinfo(np.int64).max:
                return f"qid {value!r} is not an integer in [0, 2**63)"
            continue
        if not _is_int(key) or int(key) < 0:
            return f"feature index {key!r} is not an integer >= 0"
        if int(key) > INT32_MAX:
            return f"feature index {key} is larger than {INT32_MAX} (column indices are int32)"
        if int(key) <= previous_index:
            return f"feature indices must be strictly increasing, got {key} after {previous_index}"
        previous_index = int(key)
        if _parse_float(value) is None:
            return f"value {value!r} of feature {key} is not a finite number"
    return None


def _parse_float(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


NPZ_DENSE_KEYS = ("X", "y")
NPZ_SPARSE_KEYS = ("data", "indices", "indptr", "shape", "y")


def load_npz(path) -> Dataset:
    """Read an .npz holding either ``X`` (2-d) and ``y``, or ``data``, ``indices``, ``indptr``,
    ``shape`` (as written by ``scipy.sparse.save_npz``, format csr or csc) plus ``y``."""
    path = os.fspath(path)
    _check_file(path)
    _check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = set(archive.files)
            if found.issuperset(NPZ_DENSE_KEYS):
                X, y = archive["X"], archive["y"]
            elif found.issuperset(NPZ_SPARSE_KEYS):
                X = _sparse_from_npz(path, archive)
                y = archive["y"]
            else:
                raise DataError(f"{path}: missing keys: found {sorted(found)}; expected "
                                f"{list(NPZ_DENSE_KEYS)} (dense) or {list(NPZ_SPARSE_KEYS)} (sparse)")
    except DataError:
        raise
    except (ValueError, *READ_ERRORS) as error:
        raise DataError(f"{path}: cannot read as .npz: {error}") from None
    return as_dataset(X, y, name=os.path.basename(path))


def _check_npz_sizes(path: str) -> None:
    """Read only the headers of the arrays in the archive: DataError if one declares more bytes
    than the archive holds for it, ResourceError if together they exceed the available memory."""
    declared, deflated = {}, 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    header = _npy_header(member)
                    if header is None:
                        continue  # np.load reads (and checks) other header versions itself
                    shape, _, dtype = header
                    header_bytes = member.tell()
                nbytes = math.prod(shape) * dtype.itemsize
                name = info.filename[:-4]
                if not dtype.hasobject and nbytes > info.file_size - header_bytes:
                    raise DataError(f"{path}: array {name!r} declares shape {shape} of {dtype} "
                                    f"({format_bytes(nbytes)}) but the archive holds "
                                    f"{format_bytes(info.file_size - header_bytes)} for it; the "
                                    "file is truncated or corrupt")
                declared[name] = nbytes
                if info.compress_type != zipfile.ZIP_STORED:
                    deflated += nbytes
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, *READ_ERRORS) as error:
        raise DataError(f"{path}: cannot read as .npz: {error}") from None
    check_decompressed_size(path, deflated)
    check_memory(sum(declared.values()), f"{path} (arrays {', '.join(declared)})",
                 "use a smaller data set or a machine with more memory")


def _npy_header(member) -> tuple | None:
    """(shape, fortran_order, dtype) from the header of the .npy stream ``member``, left just
    after the header; None for a format version other than 1.0 and 2.0."""
    version = np.lib.format.read_magic(member)
    if version not in ((1, 0), (2, 0)):
        return None
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    return read_header(member)


def _sparse_from_npz(path: str, archive):
    layout = archive["format"].item() if "format" in archive.files else "csr"
    if isinstance(layout, bytes):  # scipy.sparse.save_npz stores the format as ASCII bytes
        layout = layout.decode("ascii", errors="replace")
    constructors = {"csr": sp.csr_matrix, "csc": sp.csc_matrix}
    if layout not in constructors:
        raise DataError(f"{path}: sparse format {layout!r} is not supported; allowed: csr, csc")
    shape = tuple(int(size) for size in archive["shape"])
    try:
        return constructors[layout]((archive["data"], archive["indices"], archive["indptr"]), shape=shape)
    except (ValueError, TypeError) as error:
        raise DataError(f"{path}: inconsistent {layout} components: {error}") from None


def synthetic_sparse(n_samples: int, n_features: int, nnz_per_row: int, seed: int = 0,
                     label_noise: float = 0.0) -> Dataset:
    """RCV1-shaped sparse binary classification: each row has exactly ``nnz_per_row`` distinct
    uniformly drawn columns with positive tf-idf-like values ``(1 + log tf) * idf[column]``
    (tf ~ Geometric(1/2), idf ~ 1 + Exp(1) per column), scaled to unit L2 norm.

    Labels ``y = sign(x . w*)`` in {-1, +1} (ties +1) for a planted ``w* ~ N(0, I)``; each label
    is then flipped with probability ``label_noise``.  The same seed gives the same data; the
    rows and w* do not depend on ``label_noise``.
    """
    n = check_int("n_samples", n_samples, 1, DataError)
    d = check_int("n_features", n_features, 1, DataError)
    k = check_int("nnz_per_row", nnz_per_row, 1, DataError)
    seed = check_int("seed", seed, 0, DataError)
    noise = _check_label_noise(label_noise)
    if d > INT32_MAX:
        raise DataError(f"n_features must be at most {INT32_MAX} (int32 column indices), got {d}")
    if k > d:
        raise DataError(f"nnz_per_row must be at most n_features = {d}, got {k}")
    # Peak: int32 columns, int64 term counts, float64 values, their products (n x k each), the
    # n x d random keys and their argpartition for dense-ish rows; per-row and per-column vectors.
    check_memory(28 * n * k + (16 * n * d if 2 * k > d else 0) + 32 * n + 16 * d,
                 f"synthetic-sparse (n={n:,}, d={d:,}, nnz={k:,})", "use smaller n, d or nnz")
    feature_rng, weight_rng, noise_rng = _independent_streams(seed)

    columns = _distinct_sorted_columns(feature_rng, n, d, k)
    idf = 1.0 + feature_rng.exponential(1.0, size=d)
    term_counts = feature_rng.geometric(0.5, size=(n, k))
    values = (1.0 + np.log(term_counts)) * idf[columns]
    values /= np.sqrt(np.einsum("ij,ij->i", values, values))[:, None]

    planted_weights = weight_rng.standard_normal(d)
    margins = np.einsum("ij,ij->i", values, planted_weights[columns])
    labels = _labels_with_noise(margins, noise, noise_rng)
    return Dataset(values=values.reshape(-1), indices=columns.reshape(-1),
                   indptr=np.arange(n + 1, dtype=np.int64) * k, n_features=d, y=labels,
                   name=f"synthetic-sparse(n={n},d={d},nnz={k},seed={seed},noise={noise:g})", dense=False)


def _distinct_sorted_columns(rng: np.random.Generator, n: int, d: int, k: int) -> np.ndarray:
    """int32 (n, k): each row ``k`` distinct columns of ``range(d)``, drawn uniformly, sorted."""
    if 2 * k > d:
        # Dense-ish rows: the k smallest of d random keys per row (memory n*d < 2*n*k).
        columns = np.argpartition(rng.random((n, d)), k - 1, axis=1)[:, :k].astype(np.int32)
        columns.sort(axis=1)
        return columns
    columns = rng.integers(0, d, size=(n, k), dtype=np.int32)
    columns.sort(axis=1)
    rows = np.flatnonzero((columns[:, 1:] == columns[:, :-1]).any(axis=1))
    # Redraw repeated entries of the few rows that have any; each round repeats with prob <= k/d.
    while rows.size:
        block = columns[rows]
        repeated = np.zeros(block.shape, dtype=bool)
        repeated[:, 1:] = block[:, 1:] == block[:, :-1]
        block[repeated] = rng.integers(0, d, size=int(repeated.sum()), dtype=np.int32)
        block.sort(axis=1)
        columns[rows] = block
        rows = rows[(block[:, 1:] == block[:, :-1]).any(axis=1)]
    return columns


def synthetic_dense(n_samples: int, n_features: int, seed: int = 0, label_noise: float = 0.0) -> Dataset:
    """Dense binary classification: ``X ~ N(0, 1)`` entries, ``y = sign(X w*)`` in {-1, +1}
    (ties +1) for a planted ``w* ~ N(0, I)``, each label flipped with probability ``label_noise``.
    Deterministic per seed; X and w* do not depend on ``label_noise``."""
    n = check_int("n_samples", n_samples, 1, DataError)
    d = check_int("n_features", n_features, 1, DataError)
    seed = check_int("seed", seed, 0, DataError)
    noise = _check_label_noise(label_noise)
    check_memory(8 * n * d + 32 * n + 8 * d, f"synthetic-dense (n={n:,}, d={d:,})", "use smaller n or d")
    feature_rng, weight_rng, noise_rng = _independent_streams(seed)
    matrix = feature_rng.standard_normal((n, d))
    labels = _labels_with_noise(matrix @ weight_rng.standard_normal(d), noise, noise_rng)
    return Dataset(values=matrix.reshape(-1), indices=np.empty(0, dtype=np.int32),
                   indptr=np.arange(n + 1, dtype=np.int64) * d, n_features=d, y=labels,
                   name=f"synthetic-dense(n={n},d={d},seed={seed},noise={noise:g})", dense=True)


def synthetic_regression(n_samples: int, n_features: int, cond: float = 100.0, seed: int = 0,
                         noise: float = 0.1) -> Dataset:
    """Dense ill-conditioned least squares: ``X = Z diag(s) Q`` with ``Z ~ N(0, 1)`` entries,
    ``s_j = cond ** (-j / (2 (d - 1)))`` (so the expected Hessian ``X^T X / n`` has eigenvalues
    from 1 down to ``1 / cond``: condition number ``cond``) and ``Q`` a random rotation;
    ``y = X w* + noise * N(0, 1)`` for a planted ``w* ~ N(0, I / d)``.  Deterministic per seed."""
    n = check_int("n_samples", n_samples, 1, DataError)
    d = check_int("n_features", n_features, 1, DataError)
    seed = check_int("seed", seed, 0, DataError)
    if isinstance(cond, bool) or not isinstance(cond, numbers.Real) or not 1.0 <= cond < 1e12:
        raise DataError(f"cond must be a number in [1, 1e12), got {cond!r}")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0.0 <= noise < 1e6:
        raise DataError(f"noise must be a number in [0, 1e6), got {noise!r}")
    check_memory(8 * n * d + 8 * d * d + 32 * n, f"synthetic-regression (n={n:,}, d={d:,})",
                 "use smaller n or d")
    feature_rng, weight_rng, noise_rng = _independent_streams(seed)
    scales = float(cond) ** (-np.arange(d) / (2.0 * max(d - 1, 1)))
    rotation, _ = np.linalg.qr(feature_rng.standard_normal((d, d)))
    matrix = (feature_rng.standard_normal((n, d)) * scales) @ rotation
    targets = matrix @ (weight_rng.standard_normal(d) / math.sqrt(d)) + noise * noise_rng.standard_normal(n)
    return Dataset(values=matrix.reshape(-1), indices=np.empty(0, dtype=np.int32),
                   indptr=np.arange(n + 1, dtype=np.int64) * d, n_features=d, y=targets,
                   name=f"synthetic-regression(n={n},d={d},cond={cond:g},seed={seed},noise={noise:g})",
                   dense=True)


def _independent_streams(seed: int) -> list[np.random.Generator]:
    """Three generators (features, planted weights, label noise) derived from one seed."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(3)]


def _labels_with_noise(margins: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    labels = np.where(margins >= 0.0, 1.0, -1.0)
    flipped = rng.random(labels.size) < noise
    labels[flipped] = -labels[flipped]
    return labels


def _check_label_noise(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 0.5:
        raise DataError(f"label_noise must be a number in [0, 0.5), got {value!r}")
    return float(value)


def load_data(spec: str) -> Dataset:
    """The CLI's ``--data`` value: a synthetic spec, an .npz path or an svmlight/libsvm path.

    Allowed forms: see ``DATA_SPEC_FORMS``; omitted synthetic parameters take
    ``SYNTHETIC_SPARSE_DEFAULTS`` / ``SYNTHETIC_DENSE_DEFAULTS``.
    """
    spec = str(spec).strip()
    for kind, defaults in (("synthetic-sparse", SYNTHETIC_SPARSE_DEFAULTS),
                           ("synthetic-dense", SYNTHETIC_DENSE_DEFAULTS),
                           ("synthetic-regression", SYNTHETIC_REGRESSION_DEFAULTS)):
        if spec == kind or spec.startswith(kind + ":"):
            params = _parse_spec_params(kind, spec[len(kind) + 1:], defaults)
            if kind == "synthetic-sparse":
                return synthetic_sparse(params["n"], params["d"], params["nnz"], seed=params["seed"],
                                        label_noise=params["noise"])
            if kind == "synthetic-regression":
                return synthetic_regression(params["n"], params["d"], cond=params["cond"],
                                            seed=params["seed"], noise=params["noise"])
            return synthetic_dense(params["n"], params["d"], seed=params["seed"], label_noise=params["noise"])
    if spec.lower().endswith(".npz"):
        return load_npz(spec)
    if os.path.isfile(spec):
        return load_svmlight(spec)
    raise DataError(f"data {spec!r} is neither a known data set nor an existing file; "
                    f"allowed: {DATA_SPEC_FORMS}")


def _parse_spec_params(kind: str, text: str, defaults: dict) -> dict:
    """``"n=10,seed=3"`` -> defaults updated; ints for every key but FLOAT_SPEC_KEYS."""
    params = dict(defaults)
    given = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or key not in defaults:
            raise DataError(f"{kind}: bad parameter {item!r}; expected KEY=VALUE with KEY one of "
                            f"{', '.join(defaults)}")
        if key in given:
            raise DataError(f"{kind}: parameter {key!r} given twice")
        given.add(key)
        try:
            params[key] = float(value) if key in FLOAT_SPEC_KEYS else int(value)
        except ValueError:
            expected = "a number" if key in FLOAT_SPEC_KEYS else "an integer"
            raise DataError(f"{kind}: parameter {key}={value!r} must be {expected}") from None
    return params


# ---------------------------------------------------------------- one part of a data file
# The Ray backend's workers each read their own part of a file (docs/distributed.md): nothing
# here holds more than that part's rows.

DATA_FILE_FORMS = ("an .npz file (keys X and y, or CSR keys data, indices, indptr, shape and y) "
                   "or an svmlight/libsvm text file (.gz and .bz2 allowed)")
# Names that say a format load_data does not read (every other name is read as svmlight text).
OTHER_FORMAT_SUFFIXES = (".npy", ".csv", ".tsv", ".json", ".parquet", ".feather", ".arrow",
                         ".pkl", ".pickle", ".h5", ".hdf5", ".mat", ".zip", ".xlsx")


def data_file_format(path) -> str:
    """``"npz"`` or ``"svmlight"``: the format load_data reads ``path`` in, from its name alone
    (nothing is read); DataError for a name that says another format."""
    name = os.fspath(path).lower()
    if name.endswith(".npz"):
        return "npz"
    bare = name.removesuffix(".gz").removesuffix(".bz2")
    if bare.endswith(OTHER_FORMAT_SUFFIXES):
        raise DataError(f"{os.fspath(path)}: unknown data file format "
                        f"({os.path.splitext(bare)[1]}); allowed: {DATA_FILE_FORMS}")
    return "svmlight"


@dataclass(eq=False)
class FilePart:
    """The rows of one part of a data file (:func:`read_file_part`).

    ``dataset``: those rows.  For an svmlight file its column indices are those written in the
    file (a one-based file is not shifted: only all parts together tell whether any index is 0)
    and its ``n_features`` is the largest index of these rows plus one; for .npz it is the file's.
    ``file_rows``: the rows of the whole file where the part knows them (.npz), else None;
    ``file_bytes``: the file's size, so that readers on several nodes can check they read the
    same file.
    """

    dataset: Dataset
    file_rows: int | None
    file_bytes: int


def read_file_part(path, part: int, parts: int) -> FilePart:
    """Part ``part`` of ``parts`` of the data file at ``path``, reading (and keeping) only its rows:

    * .npz: rows ``[part*n // parts, (part+1)*n // parts)``, read by seeking to them;
    * svmlight text: the lines that start in bytes ``[part*size // parts, (part+1)*size // parts)``
      (scikit-learn's offset/length reader; a part may hold no row);
    * compressed svmlight (.gz, .bz2): every ``parts``-th data line from the ``part``-th (the
      stream is scanned; only those lines are parsed).

    The parts of a file hold every row exactly once.  DataError for a missing or malformed file,
    or an .npz with fewer rows than parts.
    """
    path = os.fspath(path)
    _check_file(path)
    if not (isinstance(part, int) and isinstance(parts, int) and 0 <= part < parts):
        raise ValueError(f"part must be in [0, parts), got part={part!r}, parts={parts!r}")
    file_bytes = os.path.getsize(path)
    if data_file_format(path) == "npz":
        return FilePart(*_npz_part(path, part, parts), file_bytes=file_bytes)
    return FilePart(_svmlight_part(path, part, parts), file_rows=None, file_bytes=file_bytes)


def _npz_part(path: str, part: int, parts: int) -> tuple[Dataset, int]:
    """(rows of part ``part``, rows of the file) of the .npz at ``path``."""
    name = os.path.basename(path)
    try:
        with zipfile.ZipFile(path) as archive:
            found = {member[:-4] for member in archive.namelist() if member.endswith(".npy")}
            dense = found.issuperset(NPZ_DENSE_KEYS)
            if dense:
                n_rows = _npz_header(path, archive, "X")[0][0]
            elif found.issuperset(NPZ_SPARSE_KEYS):
                layout = _npz_whole(archive, "format").item() if "format" in found else "csr"
                if isinstance(layout, bytes):
                    layout = layout.decode("ascii", errors="replace")
                if layout != "csr":
                    raise DataError(f"{path}: sparse format {layout!r} cannot be read by rows; "
                                    "save the matrix as CSR (X.tocsr())")
                shape = tuple(int(size) for size in _npz_whole(archive, "shape"))
                n_rows = shape[0]
            else:
                raise DataError(f"{path}: missing keys: found {sorted(found)}; expected "
                                f"{list(NPZ_DENSE_KEYS)} (dense) or {list(NPZ_SPARSE_KEYS)} (sparse)")
            labels_rows = _npz_header(path, archive, "y")[0][0]
            if labels_rows != n_rows:
                raise DataError(f"{path}: X and y differ in length: X has {n_rows} rows, "
                                f"y has {labels_rows} entries")
            if n_rows < parts:
                raise DataError(f"{path}: {n_rows} rows cannot be split into {parts} parts of "
                                f"at least one row; use at most {n_rows} workers")
            start, stop = part * n_rows // parts, (part + 1) * n_rows // parts
            labels = _npz_rows(path, archive, "y", start, stop)
            if dense:
                return as_dataset(_npz_rows(path, archive, "X", start, stop), labels, name), n_rows
            indptr = _npz_rows(path, archive, "indptr", start, stop + 1).astype(np.int64)
            first, last = int(indptr[0]), int(indptr[-1])
            if not 0 <= first <= last:
                raise DataError(f"{path}: indptr must rise from 0, got {first} .. {last} "
                                f"at rows {start} .. {stop}")
            matrix = sp.csr_matrix((_npz_rows(path, archive, "data", first, last),
                                    _npz_rows(path, archive, "indices", first, last),
                                    indptr - first), shape=(stop - start, shape[1]))
            return as_dataset(matrix, labels, name), n_rows
    except DataError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, *READ_ERRORS) as error:
        raise DataError(f"{path}: cannot read as .npz: {error}") from None


def _npz_header(path: str, archive: zipfile.ZipFile, key: str) -> tuple:
    """(shape, fortran_order, dtype) of the array ``key`` of the archive; DataError for a
    scalar, an object array or an unsupported header version."""
    with archive.open(key + ".npy") as member:
        return _rows_header(path, member, key)


def _rows_header(path: str, member, key: str) -> tuple:
    """:func:`_npy_header` of ``member``, the array ``key``; DataError unless it is a numeric
    array of at least one dimension in format 1.0 or 2.0."""
    header = _npy_header(member)
    if header is None or header[2].hasobject or not header[0]:
        raise DataError(f"{path}: array {key!r} must be a numeric array of rows "
                        "(.npy format 1.0 or 2.0)")
    return header


def _npz_whole(archive: zipfile.ZipFile, key: str) -> np.ndarray:
    """The small array ``key`` of the archive (shape, format), read whole."""
    with archive.open(key + ".npy") as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _npz_rows(path: str, archive: zipfile.ZipFile, key: str, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` (first axis) of the array ``key``: only their bytes are read into
    memory (a Fortran-order array, whose rows are not contiguous, is read whole and sliced)."""
    info = archive.getinfo(key + ".npy")
    with archive.open(info) as member:
        shape, fortran_order, dtype = _rows_header(path, member, key)
        if not 0 <= start <= stop <= shape[0]:
            raise DataError(f"{path}: array {key!r} has {shape[0]} rows; rows {start} .. {stop} "
                            "are needed (the arrays do not agree)")
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        if member.tell() + stop * row_bytes > info.file_size:
            raise DataError(f"{path}: array {key!r} declares shape {shape} of {dtype} but the "
                            "archive holds fewer bytes; the file is truncated or corrupt")
        check_memory((stop - start) * row_bytes, f"{path} (rows {start} .. {stop} of {key!r})",
                     "use more workers or a machine with more memory")
        if fortran_order and len(shape) > 1:
            with np.load(path, allow_pickle=False) as whole:
                return whole[key][start:stop].copy()
        rows = np.empty((stop - start,) + tuple(shape[1:]), dtype=dtype)
        member.seek(member.tell() + start * row_bytes)
        buffer, filled = memoryview(rows.reshape(-1).view(np.uint8)), 0
        while filled < len(buffer):
            count = member.readinto(buffer[filled:])
            if not count:
                raise DataError(f"{path}: array {key!r} ends early; the file is truncated")
            filled += count
        return rows


def _svmlight_part(path: str, part: int, parts: int) -> Dataset:
    """The rows of part ``part`` of the svmlight file at ``path``, column indices as written."""
    from sklearn.datasets import load_svmlight_file

    read = {"n_features": INT32_MAX, "dtype": np.float64, "zero_based": True, "query_id": True}
    try:
        if path.endswith((".gz", ".bz2")):
            with _open_maybe_compressed(path) as lines:
                kept = [line.rstrip(b"\r\n") + b"\n"
                        for number, line in enumerate(filter(_is_data_line, lines))
                        if number % parts == part]
            X, y, query_ids = load_svmlight_file(io.BytesIO(b"".join(kept)), **read)
        else:
            size = os.path.getsize(path)
            first, last = part * size // parts, (part + 1) * size // parts
            if last <= first:  # length 0 would mean "to the end" to scikit-learn
                return _no_rows(path)
            X, y, query_ids = load_svmlight_file(path, offset=first, length=last - first, **read)
    except DataError:
        raise
    except (ValueError, TypeError, IndexError, OverflowError) as error:
        _raise_first_malformed_line(path)
        raise DataError(f"{path}: not a valid svmlight/libsvm file: {error}") from None
    except READ_ERRORS as error:
        raise _unreadable(path, error) from None
    if not (np.isfinite(X.data).all() and np.isfinite(y).all()) or (query_ids < 0).any():
        _raise_first_malformed_line(path)
    if X.shape[0] == 0:
        return _no_rows(path)
    n_features = int(X.indices.max()) + 1 if X.nnz else 1
    return as_dataset(sp.csr_matrix((X.data, X.indices, X.indptr), shape=(X.shape[0], n_features)),
                      y, name=os.path.basename(path))


def _is_data_line(line: bytes) -> bool:
    """True for an svmlight line that holds a row (not blank, not only a comment)."""
    return bool(line.split(b"#", 1)[0].strip())


def _no_rows(path: str) -> Dataset:
    """An empty part of the file at ``path`` (zero rows, zero features)."""
    return Dataset(values=np.empty(0), indices=np.empty(0, np.int32), indptr=np.zeros(1, np.int64),
                   n_features=0, y=np.empty(0), name=os.path.basename(path), dense=False)
