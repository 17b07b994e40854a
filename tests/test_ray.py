"""The Ray backend on a local Ray instance that this module starts itself (2 CPUs, no outside
cluster): exact version counting at the parameter server, the loss falls, a killed worker actor
is re-created and goes on (and is survived once its restarts are spent), workers read their
parts of a data file, Ctrl-C keeps the partial result, and no actor or actor process outlives a
fit."""

import os
import signal
import threading
import time

import numpy as np
import pytest

try:
    import ray
except ImportError as error:  # the only reason to skip: ray is in the test extra
    pytest.skip(f"ray is not importable: {error}", allow_module_level=True)

from hogwild_mts import Engine
from hogwild_mts.backends.ray.backend import LOCAL_SYSTEM_CONFIG, MAX_WORKER_RESTARTS
from hogwild_mts.kernels.split import total_updates
from hogwild_mts.data.tabular import (DataError, load_data, read_file_part, synthetic_dense,
                                      synthetic_sparse)
from tests.helpers import WAIT_SECONDS

# Ray starts its processes and actors in tens of seconds on a busy 2-core machine: a Ray test
# fails after 300 s instead of the suite's 120 s (still a bound on a hang).
pytestmark = pytest.mark.timeout(300)

RAY_CPUS = 2
ACTOR_CLASSES = ("ParameterServer", "LinearWorker", "TorchWorker")
POLL_SECONDS = 0.01
# A killed actor's process ends in milliseconds on an idle machine; at a load of 15 on 2 cores
# Ray's GCS, raylet and the dying process each wait for a core: a generous bound, within the
# test's timeout.
ACTORS_END_SECONDS = 3 * WAIT_SECONDS


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # address="local": a new instance even when a cluster started by `ray start` runs on this machine
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False,
             configure_logging=False, _system_config=LOCAL_SYSTEM_CONFIG)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def data():
    return synthetic_sparse(4000, 500, 10, seed=0)


def ray_engine(**options):
    settings = dict(model="logreg", policy="constant", lr=0.5, workers=2, epochs=2,
                    progress=False, backend="ray")
    return Engine(**(settings | options))


def our_actors() -> list:
    """(class name, state, pid) of every actor this module's fits created, alive or dead (from
    the GCS: ray.util.state needs the dashboard, which this instance does not run)."""
    return [(actor["ActorClassName"], actor["State"], actor.get("Pid"))
            for actor in ray._private.state.actors().values()
            if actor["ActorClassName"] in ACTOR_CLASSES]


def process_alive(pid) -> bool:
    """Whether process ``pid`` runs (a zombie has exited: only its parent has not reaped it yet)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def assert_nothing_left(seconds: float = ACTORS_END_SECONDS) -> None:
    """Every actor of every fit is dead and its process gone (actors die within milliseconds of
    ray.kill on an idle machine; waited for, with a deadline generous for a heavily loaded
    one)."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [actor for actor in our_actors() if actor[1] != "DEAD" or process_alive(actor[2])]
        named = [name for name in ray.util.list_named_actors() if name.startswith("hogwild-")]
        if not alive and not named:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"actors outlived their fit by {seconds:g} s: {alive} "
                                 f"(class, state, pid); named: {named}")
        time.sleep(POLL_SECONDS)


def wait_for_version(minimum: int) -> str:
    """Wait until a run's server has applied ``minimum`` pushes; return the run's name."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        for name in ray.util.list_named_actors():
            if name.startswith("hogwild-") and name.endswith("-server"):
                try:
                    if ray.get(ray.get_actor(name).version.remote()) >= minimum:
                        return name[:-len("-server")]
                except (ValueError, ray.exceptions.RayActorError):
                    pass  # a run that is just ending
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"no run's server reached version {minimum} within {WAIT_SECONDS} s")


def test_version_counts_every_push_and_the_loss_falls(data):
    result = ray_engine(local_steps=4, eval_every_updates=200).fit(data)
    pushes = total_updates(data.n_samples, 2, 2, 4, "static")
    assert result.counter == result.updates == int(result.staleness_histogram.sum()) == pushes
    assert result.samples == 2 * data.n_samples
    assert result.history["loss"][-1] < 0.7 * result.history["loss"][0]
    assert result.history["updates"][0] == 0 and len(result.history["loss"]) >= 3
    assert result.staleness_histogram[0] < result.updates  # two workers: some pushes are stale
    assert result.settings["backend"] == "ray" and result.settings["lost_workers"] == []
    assert not result.interrupted
    assert_nothing_left()


@pytest.mark.parametrize("shuffle", [True, False])
def test_one_worker_with_one_local_step_is_the_shared_memory_run(shuffle):
    """K = 1 and one worker: every tau is 0 and each push is one shared-memory update, so the
    parameters agree with the shared-memory engine's up to rounding (shuffled or in stored
    order)."""
    data = synthetic_sparse(1500, 500, 10, seed=0)
    options = dict(model="logreg", policy="inverse", lr=0.5, workers=1, epochs=2, seed=3,
                   shuffle=shuffle, progress=False)
    ray_result = Engine(**options, backend="ray").fit(data)
    shm_result = Engine(**options, split="static").fit(data)
    assert ray_result.staleness_histogram[0] == ray_result.updates == shm_result.updates
    np.testing.assert_allclose(ray_result.params, shm_result.params, rtol=0, atol=1e-9)
    assert ray_result.intercept == pytest.approx(shm_result.intercept, abs=1e-9)


def wait_for_actor(name: str):
    """The handle of the named actor, once it exists."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            return ray.get_actor(name)
        except ValueError:
            time.sleep(POLL_SECONDS)
    raise AssertionError(f"no actor {name!r} within {WAIT_SECONDS} s")


def test_a_worker_actor_killed_past_its_restarts_is_reported_and_the_run_finishes_with_the_rest():
    data = synthetic_dense(4000, 20, seed=1)
    killed = []

    def kill_every_worker_one():
        run = wait_for_version(200)  # both workers are pushing
        names = [f"{run}-worker-1"] + [f"{run}-worker-1-restart-{k}"
                                       for k in range(1, MAX_WORKER_RESTARTS + 1)]
        for name in names:  # each re-created actor as soon as it exists
            ray.kill(wait_for_actor(name))
            killed.append(name)

    killer = threading.Thread(target=kill_every_worker_one, daemon=True)
    killer.start()
    with pytest.warns(RuntimeWarning, match="worker actor 1 died"):
        result = ray_engine(model="lsq", lr=0.01, epochs=1).fit(data)
    killer.join(WAIT_SECONDS)
    assert len(killed) == MAX_WORKER_RESTARTS + 1, killed
    assert [lost["worker"] for lost in result.settings["lost_workers"]] == [1]
    assert [entry["restart"] for entry in result.settings["restarted_workers"]] == \
        list(range(1, MAX_WORKER_RESTARTS + 1))
    full = total_updates(data.n_samples, 2, 1, 1, "static")
    assert 200 <= result.updates < full  # worker 0 finished its shard, worker 1 stopped early
    assert result.counter == result.updates == int(result.staleness_histogram.sum())
    assert sum(result.settings["worker_pushes"]) == result.updates
    assert result.final_loss < result.history["loss"][0]
    assert_nothing_left()


def test_a_killed_worker_actor_is_recreated_from_its_file_part_and_finishes_its_shard(tmp_path):
    data = synthetic_dense(4000, 20, seed=1)
    path = tmp_path / "dense.npz"
    np.savez(path, X=data.to_scipy(), y=data.y)
    killed = []

    def kill_worker_one():
        run = wait_for_version(200)
        ray.kill(ray.get_actor(f"{run}-worker-1"))
        killed.append(run)

    threading.Thread(target=kill_worker_one, daemon=True).start()
    with pytest.warns(RuntimeWarning, match=r"worker actor 1 died .*restarting it \(restart 1 of"):
        result = ray_engine(model="lsq", lr=0.01, epochs=1).fit(path)
    assert killed, "the worker was never killed"
    assert result.settings["lost_workers"] == []
    assert [(entry["worker"], entry["restart"]) for entry in result.settings["restarted_workers"]] == [(1, 1)]
    # the new actor went on after the dead one's applied pushes, to the end of its part (a push
    # in flight when the actor died may be applied and then redone: one more at most)
    assert 2000 <= result.settings["worker_pushes"][1] <= 2001
    assert data.n_samples <= result.updates <= data.n_samples + 1
    assert result.counter == result.updates == int(result.staleness_histogram.sum())
    assert result.final_loss < result.history["loss"][0]
    assert_nothing_left()


def test_ctrl_c_returns_the_partial_result():
    data = synthetic_sparse(4000, 500, 10, seed=0)

    def interrupt():
        wait_for_version(100)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    result = ray_engine(epochs=1000).fit(data)
    assert result.interrupted
    assert 100 <= result.updates < total_updates(data.n_samples, 2, 1000, 1, "static")
    assert result.counter == result.updates == int(result.staleness_histogram.sum())
    assert_nothing_left()


def test_the_server_refits_its_policy_and_checkpoints_model_files(data, tmp_path):
    from hogwild_mts import load, make_policy, model_file
    from hogwild_mts.backends.ray.checkpoint import ModelFileCheckpoint, resume_params

    path = str(tmp_path / "checkpoint")
    writer, versions = ModelFileCheckpoint(path), []

    def checkpoint(engine, params, version, histogram):
        assert int(histogram.sum()) == version
        versions.append(version)
        writer(engine, params, version, histogram)

    policy = make_policy("mindthestep", lr=0.5, refit_every=50, min_samples=50)
    result = ray_engine(policy=policy, lr=None, epochs=1, local_steps=4, checkpoint=checkpoint,
                        checkpoint_every=1e-3).fit(data)
    assert result.refits >= 1 and result.policy["samples_seen"] > 0
    assert len(versions) >= 2 and versions[-1] == result.counter  # during the run and after it
    np.testing.assert_array_equal(resume_params(path), np.append(result.params, result.intercept))
    document, arrays = model_file.read(path)
    assert document["counter"] == result.counter
    np.testing.assert_array_equal(arrays["staleness_histogram"], result.staleness_histogram)
    estimator = load(path)
    margins = data.to_scipy() @ result.params + result.intercept
    np.testing.assert_array_equal(estimator.predict(data.to_scipy()), np.where(margins > 0, 1.0, -1.0))


def test_divergence_stops_with_a_clear_error():
    from hogwild_mts.core.result import DivergenceError

    with pytest.raises(DivergenceError, match="diverged"):
        ray_engine(model="lsq", lr=1e3, epochs=50).fit(synthetic_dense(500, 10, seed=2))
    assert_nothing_left()


def test_a_torch_network_trains_on_the_parameter_server():
    from hogwild_mts.data.images import load_images
    from hogwild_mts.engines.networks import TorchEngine

    digits = load_images("digits")
    result = TorchEngine("mlp", workers=2, epochs=1, backend="ray", local_steps=2,
                         progress=False).fit(digits)
    assert result.counter == result.updates == int(result.staleness_histogram.sum())
    assert result.updates == total_updates(digits.n_train, 2, 1, 2 * 16, "static")
    assert result.final_loss < 0.5 * result.history["loss"][0]
    assert_nothing_left()


@pytest.mark.parametrize("options, words", [
    (dict(local_steps=0), "local_steps must be an integer >= 1"),
    (dict(backend="gpu"), "backend must be one of"),
    (dict(backend="shm", local_steps=4), "only apply to backend='ray'"),
    (dict(ray_address=""), "ray_address must be None or a non-empty string"),
    (dict(checkpoint="dir"), "checkpoint must be None or a function"),
    (dict(max_worker_restarts=-1), "max_worker_restarts must be an integer >= 0, got -1"),
    (dict(backend="shm", max_worker_restarts=0), "max_worker_restarts only apply to backend='ray'"),
])
def test_bad_options_are_refused_by_the_constructor(options, words):
    with pytest.raises((ValueError, TypeError), match=words):
        ray_engine(**options)


def test_more_workers_than_cluster_cpus_is_refused_before_any_actor_starts(data):
    before = len(our_actors())
    with pytest.raises(ValueError, match=f"needs 3 CPUs but the Ray cluster has {RAY_CPUS}"):
        ray_engine(workers=3).fit(data)
    assert len(our_actors()) == before


def test_estimators_train_on_the_ray_backend(data):
    from hogwild_mts import HogwildClassifier

    X, y = data.to_scipy(), data.y
    model = HogwildClassifier(backend="ray", workers=2, max_iter=2, tol=None, local_steps=4,
                              loss="log_loss", learning_rate="constant", eta0=0.5).fit(X, y)
    assert model.score(X, y) > 0.7  # two workers, loosely (it scored 0.777 beside two busy processes)
    result = model.fit_result_
    assert result.counter == result.updates == int(result.staleness_histogram.sum())
    assert ray.is_initialized()  # the module's instance: the estimator did not shut it down
    assert_nothing_left()


@pytest.fixture(scope="module")
def data_files(tmp_path_factory, data):
    """The module's sparse data set as a one-based svmlight file and as a CSR .npz, a dense one
    as .npz, and the same svmlight file gzipped."""
    import gzip

    import scipy.sparse as sp
    from sklearn.datasets import dump_svmlight_file

    folder = tmp_path_factory.mktemp("data")
    X = data.to_scipy()
    dump_svmlight_file(X, data.y, str(folder / "sparse.svm"), zero_based=False)
    (folder / "sparse.svm.gz").write_bytes(gzip.compress((folder / "sparse.svm").read_bytes()))
    sp.save_npz(folder / "csr.npz", X.tocsr(), compressed=False)
    with np.load(folder / "csr.npz") as archive:
        np.savez(folder / "csr.npz", **archive, y=data.y)
    dense = synthetic_dense(999, 7, seed=2)
    np.savez_compressed(folder / "dense.npz", X=dense.to_scipy(), y=dense.y)
    return folder


@pytest.mark.parametrize("name", ["sparse.svm", "sparse.svm.gz", "csr.npz", "dense.npz"])
def test_the_parts_of_a_file_hold_its_rows_once(data_files, name):
    """read_file_part: parts 0..m-1 together are the rows load_data reads (svmlight: column
    indices as written, one-based here; .gz parts take every m-th row)."""
    path = str(data_files / name)
    whole = load_data(path)
    parts = [read_file_part(path, part, 3).dataset for part in range(3)]
    order = (np.concatenate([np.arange(part, whole.n_samples, 3) for part in range(3)])
             if name.endswith(".gz") else np.arange(whole.n_samples))
    np.testing.assert_array_equal(np.concatenate([part.y for part in parts]), whole.y[order])
    shift = 1 if name.startswith("sparse") else 0
    assert max(part.n_features for part in parts) - shift == whole.n_features
    rows = [np.asarray(sp_rows(part, shift, whole.n_features)) for part in parts]
    np.testing.assert_array_equal(np.vstack(rows), np.asarray(sp_rows(whole, 0, whole.n_features))[order])


def sp_rows(dataset, shift: int, n_features: int):
    """``dataset``'s rows as a dense array of ``n_features`` columns, indices shifted down."""
    import scipy.sparse as sp

    matrix = sp.csr_matrix(dataset.to_scipy())
    return sp.csr_matrix((matrix.data, matrix.indices - shift, matrix.indptr),
                         shape=(matrix.shape[0], n_features)).toarray()


def test_workers_reading_a_one_based_svmlight_file_train_as_the_shared_memory_engine(data_files):
    """One worker, K = 1: the worker's part is the whole file, so the pushes are the
    shared-memory updates on load_data's rows (one-based indices shifted, labels as read)."""
    path = data_files / "sparse.svm"
    options = dict(model="logreg", policy="inverse", lr=0.5, workers=1, epochs=1, seed=3,
                   progress=False)
    result = Engine(**options, backend="ray").fit(path)
    shm_result = Engine(**options, split="static").fit(load_data(str(path)))
    assert result.staleness_histogram[0] == result.updates == shm_result.updates
    np.testing.assert_allclose(result.params, shm_result.params, rtol=0, atol=1e-9)
    assert result.settings["data_path"] == str(path) and result.settings["data_rows"] == 4000


def test_two_workers_read_their_parts_of_an_npz_and_the_loss_falls(data_files):
    result = ray_engine(local_steps=4, eval_every_updates=100).fit(data_files / "csr.npz")
    assert result.counter == result.updates == int(result.staleness_histogram.sum()) == 2 * 2 * 500
    assert sum(result.settings["worker_pushes"]) == result.updates
    assert result.samples == 2 * 4000
    assert result.history["loss"][-1] < 0.7 * result.history["loss"][0]
    assert "sampled rows" in result.settings["loss"] and result.settings["classes"] == [-1.0, 1.0]
    assert_nothing_left()


def test_the_command_line_trains_on_ray_from_a_file_the_workers_read(data_files, tmp_path, capsys):
    from hogwild_mts import load
    from hogwild_mts.app.cli import main

    out = tmp_path / "out"
    arguments = ["train", "--backend", "ray", "--data", str(data_files / "csr.npz"), "--workers",
                 "2", "--local-steps", "4", "--quiet", "--out", str(out)]
    assert main(arguments + ["--epochs", "1", "--max-worker-restarts", "1",
                             "--checkpoint-every", "60s"]) == 0
    printed = capsys.readouterr()
    assert "each Ray worker reads its own part" in printed.err and "4,000 rows" in printed.err
    model = load(str(out))
    assert model.classes_.tolist() == [-1.0, 1.0] and model.coef_.shape == (1, 500)
    # a resume loads the file here (its rows are checked against the checkpoint): one more epoch
    assert main(arguments + ["--epochs", "2", "--resume", str(out / "checkpoint")]) == 0
    assert "each Ray worker reads its own part" not in capsys.readouterr().err
    assert_nothing_left()


@pytest.mark.parametrize("make, words", [
    (lambda folder: folder / "missing.npz", "worker 0 .*missing.npz: no such file"),
    (lambda folder: folder / "table.csv", r"unknown data file format \(.csv\)"),
    (lambda folder: write_npz(folder / "three.npz", rows=10, labels=[0.0, 1.0, 2.0]),
     r"three.npz: 3 classes, and the Ray workers train a data file they read as one binary "
     r"problem; train it one-vs-rest with --backend shm"),
    (lambda folder: write_npz(folder / "one_row.npz", rows=1, labels=[1.0]),
     "1 rows cannot be split into 2 parts"),
])
def test_bad_data_files_are_refused_before_training_and_leave_nothing(tmp_path, make, words):
    with pytest.raises(DataError, match=words):
        ray_engine().fit(make(tmp_path))
    assert_nothing_left()


def write_npz(path, rows: int, labels: list):
    """A small dense .npz whose labels cycle through ``labels``."""
    np.savez(path, X=np.ones((rows, 3)), y=np.resize(np.array(labels), rows))
    return path
