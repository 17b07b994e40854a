"""``shuffle`` (scikit-learn's meaning): with ``shuffle=False`` every epoch visits the rows in their
stored order -- one worker is the plain sequential pass (the slow reference), the seed does not
change it, the simulator reproduces it, the static split's workers walk their shards in order, a
checkpointed run resumes exactly, the estimators match scikit-learn's SGD with shuffle=False, and
the command line's --no-shuffle trains."""

import json
import shutil
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

import hogwild_mts.engines.linear as linear_engine
from hogwild_mts import HogwildClassifier, HogwildRegressor, checkpoint
from hogwild_mts.app.cli import EXIT_BAD_INPUT, main
from hogwild_mts.backends.ray.linear import _shard_specs
from hogwild_mts.backends.sim.run import worker_batches
from hogwild_mts.backends.shm import worker
from hogwild_mts.backends.shm.block import Layout
from hogwild_mts.data.tabular import synthetic_dense, synthetic_sparse
from hogwild_mts.engines.linear import Engine, prepare_dataset
from hogwild_mts.engines.simulated import Simulator
from hogwild_mts.kernels import reference
from hogwild_mts.kernels.split import epoch_order, shard_rows, sharded_pieces, total_updates
from hogwild_mts.models.linear import LinearModel
from tests.helpers import live_children, shared_blocks

TOLERANCE = 1e-12
CLI_DATA = "synthetic-sparse:n=600,d=40,nnz=5,seed=3"


@pytest.fixture(scope="module")
def data():
    return synthetic_sparse(400, 30, 5, seed=2)


def engine(**options):
    settings = dict(model="logreg", lr=0.3, workers=1, epochs=2, seed=4, shuffle=False,
                    progress=False)
    return Engine(**(settings | options))


def test_an_epoch_order_is_a_seeded_permutation_or_the_rows_as_stored():
    rows = np.arange(3, 60, 4)
    drawn, same = np.random.default_rng(7), np.random.default_rng(7)
    assert np.array_equal(epoch_order(rows, drawn, True), same.permutation(rows))
    untouched = np.random.default_rng(7)
    state = untouched.bit_generator.state
    stored = epoch_order(rows, untouched, False)
    assert np.array_equal(stored, rows) and stored is not rows and stored.dtype == np.int64
    assert untouched.bit_generator.state == state  # no draws: the seed cannot matter


@pytest.mark.parametrize("batch_size", [1, 3])
def test_one_worker_without_shuffling_is_the_sequential_pass_over_the_stored_rows(data, batch_size):
    """Both splits and the simulator, one worker, two epochs: the slow reference over rows
    0 .. n-1, then 0 .. n-1 again (each epoch's last batch shorter: 400 rows)."""
    model = LinearModel("logreg", l2=1e-3)
    dataset = prepare_dataset(model, data, None, 1, batch_size)  # labels in {-1, +1}
    weights, intercept = [0.0] * data.n_features, 0.0
    for _ in range(2):
        weights, intercept = reference.sequential_sgd(dataset, model, np.arange(data.n_samples),
                                                      batch_size, 0.3, weights, intercept)
    for split in ("dynamic", "static"):
        result = engine(model=model, batch_size=batch_size, split=split).fit(data)
        np.testing.assert_allclose(result.params, weights, rtol=0, atol=TOLERANCE)
        assert abs(result.intercept - intercept) <= TOLERANCE
        assert result.updates == 2 * -(-data.n_samples // batch_size)
    simulated = Simulator(model, lr=0.3, workers=1, epochs=2, batch_size=batch_size, seed=4,
                          shuffle=False).fit(data)
    assert np.array_equal(simulated.params, result.params) and simulated.intercept == result.intercept


def test_the_seed_orders_only_shuffled_runs(data):
    shuffled = engine(shuffle=True).fit(data)
    stored = engine().fit(data)
    assert not np.array_equal(shuffled.params, stored.params)
    other_seed = engine(seed=11).fit(data)
    assert np.array_equal(other_seed.params, stored.params) and other_seed.intercept == stored.intercept
    assert stored.settings["shuffle"] is False and "shuffle" not in shuffled.settings


def test_the_simulator_equals_the_engine_with_one_worker(data):
    options = dict(lr=0.2, workers=1, epochs=3, batch_size=2, seed=9, shuffle=False,
                   learning_rate="invscaling", power_t=0.3)
    model = LinearModel("modified_huber", l2=1e-2, l1=1e-3)
    simulated = Simulator(model, **options).fit(data)
    real = Engine(model, progress=False, **options).fit(data)
    assert np.array_equal(simulated.params, real.params) and simulated.intercept == real.intercept
    assert simulated.updates == real.updates


def test_static_workers_visit_their_shards_in_order_and_the_simulator_draws_the_same():
    n_rows, workers, epochs = 23, 2, 3
    spec = SimpleNamespace(workers=workers, seeds=np.random.SeedSequence(5).spawn(workers),
                           epochs=epochs, batch_size=2, shuffle=False)
    for w in range(workers):
        shard = shard_rows(n_rows, workers, w)
        assert np.array_equal(shard, np.arange(w, n_rows, workers))
        visited = np.concatenate([order[start:stop]
                                  for order, start, stop in sharded_pieces(n_rows, spec, w, 3)])
        assert np.array_equal(visited, np.tile(shard, epochs))
    job = engine(workers=workers, epochs=epochs, batch_size=2, split="static").job(
        synthetic_dense(n_rows, 4, seed=1))
    orders, _ = worker_batches(job, n_rows)
    for w, order in enumerate(orders):
        assert np.array_equal(order, np.tile(np.arange(w, n_rows, workers), epochs))


def test_ray_workers_walk_their_shards_in_stored_order():
    """A Ray worker's shard is its local rows 0 .. size-1 (rows w, w+m, ... of the data)."""
    job = engine(workers=2, epochs=2, batch_size=2, backend="ray").job(synthetic_dense(20, 3, seed=1))
    spec = _shard_specs(job)(1)
    assert spec.shuffle is False
    visited = np.concatenate([order[start:stop] for order, start, stop in spec.pieces(10)])
    assert np.array_equal(visited, np.tile(np.arange(10), 2))
    assert _shard_specs(engine(workers=2, backend="ray", shuffle=True).job(
        synthetic_dense(20, 3, seed=1)))(1).shuffle is True


def test_dynamic_claims_walk_the_stored_order_every_epoch_also_after_a_restore():
    n_rows, epochs, batch_size = 31, 3, 2
    spec = worker.WorkerSpec(block_name="", layout=None, workers=2, epochs=epochs,
                             batch_size=batch_size, chunk_updates=4,
                             seeds=np.random.SeedSequence(3).spawn(2), n_features=0, dense=False,
                             fit_intercept=False, terms=None, stamp=True, policy=None,
                             parent_pid=0, shuffle=False)
    layout = Layout()
    layout.add("flags", np.int64, (8,))
    worker.add_schedule(layout, n_rows, "dynamic")
    views = layout.views(np.zeros(layout.nbytes, np.uint8))
    worker.prepare_schedule(views, spec)
    visits = np.zeros(n_rows, np.int64)
    for order, start, stop in worker.claimed_pieces(views, spec, 4, 1):
        assert np.array_equal(order[start:stop], np.arange(start, stop))
        visits[order[start:stop]] += 1
    assert np.all(visits == epochs)
    per_epoch = -(-n_rows // batch_size)
    views.orders[:] = -1
    generator = np.random.default_rng(spec.seeds[0])
    worker.restore_schedule(views, spec, per_epoch + per_epoch // 2 + 1,
                            worker._generator_words(generator))  # epoch 1, past its middle
    assert np.array_equal(views.orders[0], np.arange(n_rows))
    assert np.array_equal(views.orders[1], np.arange(n_rows))


@pytest.mark.parametrize("split", ["dynamic", "static"])
def test_two_workers_without_shuffling_apply_every_update(data, split):
    result = engine(workers=2, epochs=3, batch_size=4, split=split).fit(data)
    assert result.updates == total_updates(data.n_samples, 2, 3, 4, split)
    assert np.isfinite(result.params).all() and result.final_loss < result.history["loss"][0]
    assert not shared_blocks() and not live_children()


def test_a_checkpointed_run_without_shuffling_resumes_exactly(data, monkeypatch, tmp_path):
    written = []
    write = linear_engine.write_checkpoint

    def write_and_keep(directory, settings, state, classes=None):
        write(directory, settings, state, classes)
        if not state.finished and not written:
            copy = tmp_path / "middle"
            shutil.copytree(directory, copy)
            written.append((str(copy), state))

    monkeypatch.setattr(linear_engine, "write_checkpoint", write_and_keep)
    uninterrupted = engine(epochs=4).fit(data)
    total = total_updates(data.n_samples, 1, 4, 1)
    engine(epochs=4, checkpoint_dir=tmp_path / "ckpt", checkpoint_every_updates=total // 3).fit(data)
    path, state = written[0]
    assert 0 < state.position < total
    resumed = engine(epochs=4).fit(data, resume=path)
    np.testing.assert_array_equal(resumed.params, uninterrupted.params)
    assert resumed.intercept == uninterrupted.intercept
    assert (resumed.counter, resumed.updates, resumed.samples) == (
        uninterrupted.counter, uninterrupted.updates, uninterrupted.samples)
    with pytest.raises(ValueError, match="shuffle=False"):
        engine(epochs=4, shuffle=True).fit(data, resume=path)


def test_checkpoints_written_before_the_option_resume_as_shuffled():
    current = checkpoint.run_settings(Engine(workers=1, progress=False), backend="shm",
                                      n_features=3, n_samples=10, digest="d")
    assert current["shuffle"] is True
    older = {name: value for name, value in current.items() if name != "shuffle"}
    checkpoint.check_resume("older", older, current)
    stored_order = checkpoint.run_settings(Engine(workers=1, progress=False, shuffle=False),
                                           backend="shm", n_features=3, n_samples=10, digest="d")
    with pytest.raises(ValueError, match=r"shuffle=True \(this run: False\)"):
        checkpoint.check_resume("older", older, stored_order)


def _scaled(load):
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, y_test = train_test_split(*load(return_X_y=True), test_size=0.25,
                                                        random_state=0)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_estimators_without_shuffling_match_sgd_without_shuffling(kind):
    """The same get_params() with shuffle=False: scikit-learn's row order on both sides, so the
    scores agree (measured: equal, coefficients within 1e-13) and random_state does not matter."""
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier, SGDRegressor

    sklearn_class, ours, load = {"classifier": (SGDClassifier, HogwildClassifier, load_breast_cancer),
                                 "regressor": (SGDRegressor, HogwildRegressor, load_diabetes)}[kind]
    X_train, X_test, y_train, y_test = _scaled(load)
    params = sklearn_class(shuffle=False, max_iter=15, random_state=0).get_params()
    params.pop("n_jobs", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = sklearn_class(**params).fit(X_train, y_train)
        mine = ours(**params).fit(X_train, y_train)
        other_seed = ours(**(params | {"random_state": 1})).fit(X_train, y_train)
    assert np.array_equal(mine.coef_, other_seed.coef_)
    assert np.array_equal(mine.intercept_, other_seed.intercept_)
    assert abs(mine.score(X_test, y_test) - theirs.score(X_test, y_test)) <= 0.01
    np.testing.assert_allclose(mine.coef_, theirs.coef_, rtol=0, atol=1e-8)


def test_the_command_line_trains_without_shuffling(tmp_path, capsys):
    outputs = {}
    for name, flags in (("stored", ["--no-shuffle"]), ("other-seed", ["--no-shuffle", "--seed", "5"]),
                        ("shuffled", [])):
        out = tmp_path / name
        assert main(["train", "--data", CLI_DATA, "--workers", "1", "--epochs", "2", "--quiet",
                     "--out", str(out)] + flags) == 0
        outputs[name] = (np.load(out / "params.npy"), json.loads((out / "metrics.json").read_text()))
    assert outputs["stored"][1]["settings"]["shuffle"] is False
    assert json.loads((tmp_path / "stored" / "model.json").read_text())["params"]["shuffle"] is False
    assert np.array_equal(outputs["stored"][0], outputs["other-seed"][0])
    assert not np.array_equal(outputs["stored"][0], outputs["shuffled"][0])
    capsys.readouterr()
    assert main(["train", "--model", "mlp", "--no-shuffle", "--quiet"]) == EXIT_BAD_INPUT
    assert "--no-shuffle applies to linear models" in capsys.readouterr().err
