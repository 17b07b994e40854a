"""Each numba kernel against the slow pure-Python reference on random small problems."""

import threading
import time

import numpy as np
import pytest
import scipy.sparse

from hogwild_mts.kernels import linear as kernels
from hogwild_mts.kernels import reference
from hogwild_mts.data.tabular import as_dataset
from hogwild_mts.models.linear import LinearModel

TOLERANCE = 1e-12


def _random_problem(rng, dense: bool, model: LinearModel):
    n, d = 23, 9
    matrix = rng.normal(size=(n, d))
    if not dense:
        matrix[rng.random((n, d)) < 0.6] = 0.0
        matrix = scipy.sparse.csr_matrix(matrix)
    labels = rng.normal(size=n) if model.name == "lsq" else rng.choice([-1.0, 1.0], size=n)
    return as_dataset(matrix, labels)


def _rows(dataset, sample_weight=kernels.UNIT_WEIGHTS):
    counts = dataset.feature_counts()
    feature_scale = np.divide(dataset.n_samples, counts, out=np.zeros(dataset.n_features),
                              where=counts > 0)
    return kernels.Rows(dataset.values, dataset.indices, dataset.indptr, dataset.y, sample_weight,
                        feature_scale)


def _run_kernel(dataset, model, order, batch_size, lr, params, sample_weight=kernels.UNIT_WEIGHTS,
                momentum=0.0, stamped=True):
    counter = np.zeros(1, dtype=np.int64)
    hist = np.zeros(16, dtype=np.int64)
    stats = np.zeros(8, dtype=np.int64)
    buffers = kernels.WorkerBuffers(stats, hist, np.zeros(batch_size), np.zeros(params.shape[0]),
                                    np.full(params.shape[0], -1, dtype=np.int64))
    kernel = kernels.sgd_kernel(dataset.dense, model.fit_intercept, model.l2, stamped)
    status = kernel(_rows(dataset, sample_weight), order, 0, order.shape[0], batch_size, params,
                    dataset.n_features, kernels.model_terms(model), momentum,
                    np.array([lr, lr / 2]), *kernels.CONSTANT_SCHEDULE, counter, buffers)
    return status, counter[0], hist, stats


@pytest.mark.parametrize("name", ["logreg", "svm", "lsq"])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("l2,fit_intercept", [(0.0, True), (0.05, False)])
def test_sgd_chunk_matches_reference(name, dense, batch_size, l2, fit_intercept):
    rng = np.random.default_rng(abs(hash((name, dense, batch_size, l2))) % 2**32)
    model = LinearModel(name, l2=l2, fit_intercept=fit_intercept)
    dataset = _random_problem(rng, dense, model)
    order = np.concatenate([rng.permutation(dataset.n_samples), rng.permutation(dataset.n_samples)])
    start = rng.normal(scale=0.3, size=model.n_params(dataset.n_features))
    lr = 0.05

    params = start.copy()
    status, counter, hist, stats = _run_kernel(dataset, model, order, batch_size, lr, params)

    weights, intercept = reference.sequential_sgd(
        dataset, model, order, batch_size, lr, start[: dataset.n_features],
        start[dataset.n_features] if fit_intercept else 0.0)
    updates = -(-order.shape[0] // batch_size)
    assert status == kernels.STATUS_OK
    np.testing.assert_allclose(params[: dataset.n_features], weights, rtol=0, atol=TOLERANCE)
    if fit_intercept:
        assert abs(params[dataset.n_features] - intercept) <= TOLERANCE
    assert counter == updates  # one tick per applied update
    assert hist[0] == updates and hist.sum() == updates  # one worker: every tau is 0
    assert stats[kernels.STAT_UPDATES] == updates and stats[kernels.STAT_SAMPLES] == order.shape[0]


@pytest.mark.parametrize("name", ["logreg", "svm", "lsq"])
@pytest.mark.parametrize("dense", [False, True])
def test_objective_matches_reference(name, dense):
    rng = np.random.default_rng(7)
    model = LinearModel(name, l2=0.1)
    dataset = _random_problem(rng, dense, model)
    params = rng.normal(size=model.n_params(dataset.n_features))
    loss, accuracy = kernels.objective(_rows(dataset), dataset.dense, params, dataset.n_features,
                                       True, kernels.model_terms(model))
    expected_loss, expected_accuracy = reference.objective(
        dataset, model, params[: dataset.n_features], params[dataset.n_features])
    assert abs(loss - expected_loss) <= TOLERANCE
    assert accuracy == expected_accuracy


@pytest.mark.parametrize("name", ["logreg", "svm", "lsq"])
@pytest.mark.parametrize("dense", [False, True])
def test_weighted_sgd_chunk_and_objective_match_reference(name, dense):
    rng = np.random.default_rng(11)
    model = LinearModel(name, l2=0.05)
    dataset = _random_problem(rng, dense, model)
    sample_weight = rng.uniform(0.0, 3.0, size=dataset.n_samples)
    order = rng.permutation(dataset.n_samples)
    start = rng.normal(scale=0.3, size=model.n_params(dataset.n_features))
    params = start.copy()
    status, *_ = _run_kernel(dataset, model, order, 3, 0.05, params, sample_weight)
    weights, intercept = reference.sequential_sgd(
        dataset, model, order, 3, 0.05, start[: dataset.n_features], start[dataset.n_features],
        sample_weight)
    assert status == kernels.STATUS_OK
    np.testing.assert_allclose(params[: dataset.n_features], weights, rtol=0, atol=TOLERANCE)
    assert abs(params[dataset.n_features] - intercept) <= TOLERANCE
    unweighted = start.copy()
    _run_kernel(dataset, model, order, 3, 0.05, unweighted)
    assert not np.allclose(unweighted, params)  # the weights changed the steps

    loss, accuracy = kernels.objective(_rows(dataset, sample_weight), dataset.dense, params,
                                       dataset.n_features, True, kernels.model_terms(model))
    expected_loss, expected_accuracy = reference.objective(
        dataset, model, params[: dataset.n_features], params[dataset.n_features], sample_weight)
    assert abs(loss - expected_loss) <= TOLERANCE and abs(accuracy - expected_accuracy) <= TOLERANCE


def test_unit_weights_give_the_unweighted_run_bit_for_bit():
    rng = np.random.default_rng(5)
    model = LinearModel("logreg", l2=0.01)
    dataset = _random_problem(rng, False, model)
    order = np.concatenate([rng.permutation(dataset.n_samples)] * 3)
    ones, empty = np.zeros(model.n_params(dataset.n_features)), np.zeros(model.n_params(dataset.n_features))
    _run_kernel(dataset, model, order, 2, 0.1, ones, np.ones(dataset.n_samples))
    _run_kernel(dataset, model, order, 2, 0.1, empty)
    assert np.array_equal(ones, empty)


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("l2,fit_intercept", [(0.0, True), (0.05, False), (0.05, True)])
def test_momentum_sgd_chunk_matches_reference(dense, batch_size, l2, fit_intercept):
    rng = np.random.default_rng(abs(hash((dense, batch_size, l2, fit_intercept))) % 2**32)
    model = LinearModel("logreg", l2=l2, fit_intercept=fit_intercept)
    dataset = _random_problem(rng, dense, model)
    order = np.concatenate([rng.permutation(dataset.n_samples), rng.permutation(dataset.n_samples)])
    start = rng.normal(scale=0.3, size=model.n_params(dataset.n_features))
    params = start.copy()
    status, counter, hist, stats = _run_kernel(dataset, model, order, batch_size, 0.05, params,
                                               momentum=0.9)
    weights, intercept = reference.sequential_sgd(
        dataset, model, order, batch_size, 0.05, start[: dataset.n_features],
        start[dataset.n_features] if fit_intercept else 0.0, momentum=0.9)
    assert status == kernels.STATUS_OK and counter == -(-order.shape[0] // batch_size)
    np.testing.assert_allclose(params[: dataset.n_features], weights, rtol=0, atol=TOLERANCE)
    if fit_intercept:
        assert abs(params[dataset.n_features] - intercept) <= TOLERANCE
    plain = start.copy()
    _run_kernel(dataset, model, order, batch_size, 0.05, plain)
    assert not np.allclose(plain, params)  # the velocity changed the steps


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("l2", [0.0, 0.05])
@pytest.mark.parametrize("stamped", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_every_kernel_variant_matches_reference(dense, fit_intercept, l2, stamped, momentum):
    """Each variant :func:`kernels.sgd_kernel` compiles (32 flag sets) against the reference;
    unstamped it steps with alpha_table[0] and leaves the counter and histogram alone."""
    rng = np.random.default_rng(abs(hash((dense, fit_intercept, l2, stamped, momentum))) % 2**32)
    model = LinearModel("logreg", l2=l2, fit_intercept=fit_intercept)
    dataset = _random_problem(rng, dense, model)
    order = np.concatenate([rng.permutation(dataset.n_samples), rng.permutation(dataset.n_samples)])
    start = rng.normal(scale=0.3, size=model.n_params(dataset.n_features))
    params = start.copy()
    status, counter, hist, stats = _run_kernel(dataset, model, order, 3, 0.05, params,
                                               momentum=momentum, stamped=stamped)
    weights, intercept = reference.sequential_sgd(
        dataset, model, order, 3, 0.05, start[: dataset.n_features],
        start[dataset.n_features] if fit_intercept else 0.0, momentum=momentum)
    updates = -(-order.shape[0] // 3)
    assert status == kernels.STATUS_OK
    np.testing.assert_allclose(params[: dataset.n_features], weights, rtol=0, atol=TOLERANCE)
    if fit_intercept:
        assert abs(params[dataset.n_features] - intercept) <= TOLERANCE
    assert (counter, hist.sum()) == ((updates, updates) if stamped else (0, 0))
    assert stats[kernels.STAT_UPDATES] == updates and stats[kernels.STAT_SAMPLES] == order.shape[0]


def test_dense_momentum_is_torch_sgd_momentum():
    """On dense data every coordinate is stored, so the lazy velocity is torch.optim.SGD's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    model = LinearModel("lsq", fit_intercept=True)
    dataset = _random_problem(rng, True, model)
    order = rng.permutation(dataset.n_samples)
    params = np.zeros(model.n_params(dataset.n_features))
    _run_kernel(dataset, model, order, 1, 0.05, params, momentum=0.8)
    X = torch.tensor(dataset.values.reshape(dataset.n_samples, -1))
    y = torch.tensor(dataset.y)
    w = torch.zeros(dataset.n_features, dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([w, b], lr=0.05, momentum=0.8)
    for row in order:
        optimizer.zero_grad()
        (0.5 * (X[row] @ w + b - y[row]) ** 2).backward()
        optimizer.step()
    np.testing.assert_allclose(params, np.append(w.detach().numpy(), b.item()), rtol=0, atol=1e-12)


def test_sgd_chunk_reports_divergence():
    model = LinearModel("lsq")
    dataset = as_dataset(np.array([[1e200, 1e200]]), np.array([1.0]))
    params = np.zeros(3)
    status, *_ = _run_kernel(dataset, model, np.zeros(4, dtype=np.int64), 1, 1e200, params)
    assert status == kernels.STATUS_DIVERGED


def test_two_threads_record_their_largest_tau():
    """Two threads on one counter (the kernel releases the GIL): every update is counted once,
    and each thread's stats row holds the largest tau of its own histogram row (kept in a
    local during the chunk and written on the way out).  Runs until some tau > 0 is seen."""
    rng = np.random.default_rng(5)
    model = LinearModel("logreg")
    matrix = scipy.sparse.random(2000, 300, density=0.05, format="csr", random_state=5)
    dataset = as_dataset(matrix, rng.choice([-1.0, 1.0], size=2000))
    bins = 1 << 16
    deadline = time.monotonic() + 60.0
    while True:
        counter = np.zeros(1, dtype=np.int64)
        params = np.zeros(dataset.n_features)
        hists = np.zeros((2, bins), dtype=np.int64)
        stats = np.zeros((2, 8), dtype=np.int64)
        orders = [rng.integers(0, dataset.n_samples, 20_000) for _ in range(2)]

        def train(slot):
            kernel = kernels.sgd_kernel(False, False, 0.0, True)
            buffers = kernels.WorkerBuffers(stats[slot], hists[slot], np.zeros(1),
                                            kernels.NO_VELOCITY, kernels.NO_MARKS)
            kernel(_rows(dataset), orders[slot], 0, orders[slot].shape[0], 1, params,
                   dataset.n_features, kernels.model_terms(model), 0.0, np.array([0.01]),
                   *kernels.CONSTANT_SCHEDULE, counter, buffers)

        threads = [threading.Thread(target=train, args=(slot,)) for slot in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert counter[0] == 40_000 and hists.sum() == 40_000
        for slot in range(2):
            assert hists[slot, -1] == 0  # every tau fits the row, so its largest bin is exact
            assert stats[slot, kernels.STAT_MAX_TAU] == np.flatnonzero(hists[slot]).max()
        if stats[:, kernels.STAT_MAX_TAU].max() > 0 or time.monotonic() > deadline:
            break
    assert stats[:, kernels.STAT_MAX_TAU].max() > 0, "the two threads never overlapped in 60 s"


def test_claims_are_guided_capped_and_clipped_at_the_end():
    words = np.zeros(8, dtype=np.int64)

    def claim(total, workers, per_epoch, max_claim=100, min_claim=5):
        return kernels.claim_batches(words, 0, total, workers, per_epoch, max_claim, min_claim)

    assert claim(1000, 2, 1000) == (0, 100)  # remaining / (2 workers) = 250, capped at 100
    words[0] = 980
    assert claim(1000, 2, 1000) == (980, 985)  # 20 / 4 = 5
    assert claim(1000, 2, 1000) == (985, 990)  # 15 / 4 = 3, raised to the smallest claim
    words[0] = 998
    assert claim(1000, 2, 1000) == (998, 1000)  # clipped at the end
    first, _ = claim(1000, 2, 1000)
    assert first >= 1000  # nothing left
    words[0] = 0
    assert claim(1000, 2, 8) == (0, 2)  # at most per_epoch / (2 workers): every epoch splits
    words[0] = 0
    assert claim(1000, 4, 1) == (0, 1)  # never fewer than one batch
