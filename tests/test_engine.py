"""Engine: exact counting, determinism, multi-worker accuracy, bad input, faults and clean-up."""

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import json

import numpy as np
import pytest
import scipy.sparse

from hogwild_mts.data.tabular import DataError, synthetic_dense, synthetic_sparse
from hogwild_mts.backends.shm import run as shm_run
from hogwild_mts.engines.linear import DivergenceError, Engine, WorkerError
from tests.helpers import (WAIT_SECONDS, default_stop_signals, live_children, shared_blocks,
                           wait_for_updates)

SEPARABLE = dict(n_samples=6000, n_features=2000, nnz_per_row=20, seed=3)


@pytest.fixture(scope="module")
def separable():
    return synthetic_sparse(**SEPARABLE)


@pytest.fixture(autouse=True)
def no_leaks():
    yield
    assert not shared_blocks(), "a run left shared memory behind"
    assert not live_children(), "a run left worker processes behind"


@pytest.mark.parametrize("workers,batch_size", [(1, 1), (2, 1), (3, 4)])
def test_counter_equals_updates_and_histogram_total(separable, workers, batch_size):
    result = Engine("logreg", lr=0.5, workers=workers, epochs=2, batch_size=batch_size,
                    progress=False).fit(separable)
    shard_sizes = [len(range(w, separable.n_samples, workers)) for w in range(workers)]
    expected_updates = 2 * sum(-(-size // batch_size) for size in shard_sizes)
    assert result.updates == expected_updates
    assert result.counter == expected_updates
    assert result.staleness_histogram.sum() == expected_updates
    assert result.samples == 2 * separable.n_samples
    if workers == 1:
        assert result.staleness_histogram[0] == expected_updates  # one worker is never stale
    assert len(result.history["loss"]) >= 1 and np.isfinite(result.final_loss)


def test_one_worker_is_bit_reproducible(separable):
    runs = [Engine("logreg", lr=0.5, workers=1, epochs=2, seed=11, progress=False).fit(separable)
            for _ in range(2)]
    assert np.array_equal(runs[0].params, runs[1].params)
    assert runs[0].intercept == runs[1].intercept
    other_seed = Engine("logreg", lr=0.5, workers=1, epochs=2, seed=12, progress=False).fit(separable)
    assert not np.array_equal(runs[0].params, other_seed.params)


def test_two_workers_reach_the_accuracy_of_one(separable):
    one = Engine("logreg", lr=0.5, workers=1, epochs=5, progress=False).fit(separable)
    two = Engine("logreg", lr=0.5, workers=2, epochs=5, progress=False).fit(separable)
    assert one.final_accuracy > 0.9
    assert two.final_accuracy >= 0.95 * one.final_accuracy
    assert two.history["loss"][-1] < np.log(2)  # better than the zero vector


@pytest.mark.parametrize("model", ["svm", "lsq"])
def test_other_losses_train_on_dense_data(model):
    data = synthetic_dense(2000, 20, seed=1)
    result = Engine(model, lr=0.02, workers=2, epochs=3, progress=False).fit(data)
    zero_loss = 1.0 if model == "svm" else 0.5
    assert result.final_loss < 0.6 * zero_loss
    if model == "svm":
        assert result.final_accuracy > 0.85
    else:
        assert result.final_accuracy is None  # accuracy means nothing for least squares


def test_float32_parameters_and_unstamped_baseline(separable):
    engine = Engine("logreg", lr=0.5, workers=1, epochs=2, dtype="float32", progress=False)
    result = shm_run.fit(dataclasses.replace(engine.job(separable), stamp=False))
    exact = Engine("logreg", lr=0.5, workers=1, epochs=2, progress=False).fit(separable)
    np.testing.assert_allclose(result.params, exact.params, atol=1e-3)  # same path, float32 rounding
    assert abs(result.final_accuracy - exact.final_accuracy) < 0.01
    assert result.counter == 0 and result.staleness_histogram.sum() == 0  # nothing stamped


def test_accepts_scipy_and_numpy_inputs():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y = (X[:, 0] > 0).astype(int)  # 0/1 labels are mapped to -1/+1
    dense = Engine("logreg", lr=0.1, workers=1, epochs=3, progress=False).fit(X, y)
    sparse = Engine("logreg", lr=0.1, workers=1, epochs=3, progress=False).fit(
        scipy.sparse.csr_matrix(X), y)
    np.testing.assert_allclose(dense.params, sparse.params, rtol=1e-12)
    assert dense.final_accuracy > 0.9


X_OK = np.ones((4, 2))
Y_OK = np.array([1.0, -1.0, 1.0, -1.0])
BAD_INPUTS = [
    (dict(model="ridge"), (X_OK, Y_OK), ValueError, "unknown model 'ridge'"),
    (dict(policy="fastest"), (X_OK, Y_OK), ValueError, "unknown policy 'fastest'"),
    (dict(lr=-0.1), (X_OK, Y_OK), ValueError, "lr must be a finite number > 0, got -0.1"),
    (dict(lr=float("nan")), (X_OK, Y_OK), ValueError, "lr must be a finite number > 0"),
    (dict(lr=0.0), (X_OK, Y_OK), ValueError, "lr must be a finite number > 0, got 0.0"),
    (dict(workers=0), (X_OK, Y_OK), ValueError, "workers must be an integer >= 1, got 0"),
    (dict(batch_size=0), (X_OK, Y_OK), ValueError, "batch_size must be an integer >= 1, got 0"),
    (dict(epochs=0), (X_OK, Y_OK), ValueError, "epochs must be an integer >= 1, got 0"),
    (dict(dtype="float16"), (X_OK, Y_OK), ValueError, "dtype must be one of"),
    (dict(), (X_OK, Y_OK[:3]), DataError, "4"),
    (dict(), (X_OK, np.array([0.0, 1.0, 2.0, 1.0])), ValueError, "binary labels"),
    (dict(), (np.array([[1.0, np.nan], [0.0, 1.0]]), Y_OK[:2]), DataError, "NaN"),
    (dict(), (X_OK, np.array([1.0, np.inf, 1.0, -1.0])), DataError, "inf"),
    (dict(), (np.zeros((0, 3)), np.zeros(0)), DataError, "empty"),
    (dict(workers=5), (X_OK, Y_OK), ValueError, "workers (5) exceeds the number of samples (4)"),
    (dict(momentum=1.0), (X_OK, Y_OK), ValueError, "momentum must be"),
    (dict(momentum=-0.5), (X_OK, Y_OK), ValueError, "momentum must be"),
    (dict(momentum=0.5, backend="ray"), (X_OK, Y_OK), ValueError, "momentum=0.5 applies to backend='shm'"),
]


@pytest.mark.parametrize("engine_args,data,error,words", BAD_INPUTS)
def test_bad_input_is_refused_before_any_worker_starts(engine_args, data, error, words):
    settings = dict(progress=False) | engine_args
    with pytest.raises(error) as caught:
        Engine(**settings).fit(*data)
    assert words.lower() in str(caught.value).lower()


@pytest.mark.parametrize("workers", [1, 2])
def test_momentum_trains_and_one_worker_stays_bit_reproducible(separable, workers):
    def fit():
        return Engine("logreg", workers=workers, epochs=2, lr=0.05, momentum=0.9,
                      progress=False).fit(separable)

    result = fit()
    assert result.final_accuracy > 0.8 and result.settings["momentum"] == 0.9
    assert result.counter == result.updates == result.staleness_histogram.sum()
    if workers == 1:  # exact: the same run again, and a lower loss than without momentum here
        assert np.array_equal(result.params, fit().params)
        plain = Engine("logreg", workers=1, epochs=2, lr=0.05, progress=False).fit(separable)
        assert result.final_loss < plain.final_loss


def test_divergence_stops_with_a_clear_error():
    data = synthetic_dense(500, 10, seed=2)
    with pytest.raises(DivergenceError, match="diverged"):
        Engine("lsq", lr=1e3, workers=2, epochs=50, progress=False).fit(data)


def test_killed_worker_raises_quickly_and_cleans_up():
    data = synthetic_sparse(20000, 5000, 30, seed=0)
    engine = Engine("logreg", lr=0.1, workers=2, epochs=100000, progress=False)
    killed = []

    def kill_one_worker():
        wait_for_updates(minimum=1000)  # the workers are training
        killed.append(live_children()[0].pid)
        os.kill(killed[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    with pytest.raises(WorkerError, match="SIGKILL"):
        engine.fit(data)
    killer.join(WAIT_SECONDS)
    assert killed, "the worker was never killed"


def test_ctrl_c_keeps_the_partial_result_and_cleans_up(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "hogwild_mts.app.cli", "train", "--data",
               "synthetic-sparse:n=20000,d=5000,nnz=30", "--epochs", "100000", "--quiet",
               "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True, text=True, preexec_fn=default_stop_signals)
    try:
        wait_for_updates(process.pid, minimum=1000)  # workers started and training
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert "INTERRUPTED" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interrupted"] is True and metrics["updates"] > 0
    assert metrics["counter"] == metrics["updates"]
    assert (out / "params.npy").exists()
    assert _group_gone(process.pid, seconds=10), "a process of the run outlived it"
    assert not shared_blocks(process.pid), "the interrupted run left shared memory behind"


def test_killed_parent_leaves_no_workers_and_no_shared_memory():
    """SIGKILL of the training process itself: its workers notice the parent is gone and exit,
    and multiprocessing's resource tracker unlinks the block once they have."""
    command = [sys.executable, "-m", "hogwild_mts.app.cli", "train", "--data",
               "synthetic-sparse:n=20000,d=5000,nnz=30", "--epochs", "100000", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, preexec_fn=default_stop_signals)
    try:
        wait_for_updates(process.pid, minimum=1000)  # workers started and training
        process.kill()
        process.wait(10)
        assert _group_gone(process.pid, seconds=20), "a worker outlived its killed parent"
        assert not shared_blocks(process.pid), "the killed run left shared memory behind"
    finally:
        if process.poll() is None:
            process.kill()


def _group_gone(group: int, seconds: float) -> bool:
    """True once no process of the group is left (multiprocessing's resource tracker exits
    shortly after its parent, when its pipe closes)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_deferred_evaluation_scores_the_same_snapshots_after_the_run(separable):
    result = Engine("logreg", lr=0.5, workers=2, epochs=200, eval_every_updates=50_000,
                    defer_evaluation=True, progress=False).fit(separable)
    history = result.history
    assert len(history["loss"]) >= 4  # start, snapshots taken during the run, final
    assert history["updates"][0] == 0 and history["updates"][-1] == result.updates
    assert history["updates"] == sorted(history["updates"])
    assert history["time_s"] == sorted(history["time_s"])
    assert history["loss"][-1] == result.final_loss
    assert history["loss"][0] == pytest.approx(np.log(2))  # the zero vector
    assert min(history["loss"][1:-1]) < np.log(2)  # snapshots of real progress, not the start
