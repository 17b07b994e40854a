"""Sparse pulls and pushes on the Ray backend, and evaluations by update count taken by the
parameter server (a local 2-CPU Ray instance this module starts itself)."""

import numpy as np
import pytest

try:
    import ray
except ImportError as error:  # the only reason to skip: ray is in the test extra
    pytest.skip(f"ray is not importable: {error}", allow_module_level=True)

from hogwild_mts import Engine
from hogwild_mts.backends.ray import linear as ray_linear
from hogwild_mts.backends.ray.backend import LOCAL_SYSTEM_CONFIG
from hogwild_mts.backends.ray.server import ParameterServer
from hogwild_mts.backends.ray.workers import (LinearModelSpec, LinearSetup, LinearWorker, ShardSpec,
                                              piece_columns, shard_arrays)
from hogwild_mts.data.tabular import synthetic_dense, synthetic_sparse
from hogwild_mts.kernels import linear as kernels
from hogwild_mts.kernels.split import shard_rows, total_updates
from hogwild_mts.models.linear import LinearModel
from hogwild_mts.policies.step_sizes import make_policy

pytestmark = pytest.mark.timeout(300)  # Ray starts slowly on a busy machine (as tests/test_ray.py)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, _system_config=LOCAL_SYSTEM_CONFIG)
    try:
        yield
    finally:
        ray.shutdown()


class DenseTransferWorker(LinearWorker):
    """The whole-vector transport for a sparse model (what the benchmark compares against)."""

    sparse_transfer = False


def test_sparse_pushes_end_bit_for_bit_where_dense_pushes_end(monkeypatch):
    """One worker, K = 4 local steps of 3-row batches, an L2 penalty and an intercept: the
    sparse transport applies the same step sums coordinate by coordinate."""
    data = synthetic_sparse(1200, 3000, 8, seed=4)
    options = dict(model=LinearModel("logreg", l2=1e-3), policy="inverse", lr=0.5, workers=1,
                   epochs=2, batch_size=3, seed=5, progress=False, backend="ray", local_steps=4)
    sparse = Engine(**options).fit(data)
    monkeypatch.setattr(ray_linear, "LinearWorker", DenseTransferWorker)
    dense = Engine(**options).fit(data)
    assert sparse.updates == dense.updates == total_updates(1200, 1, 2, 12, "static")
    np.testing.assert_array_equal(sparse.params, dense.params)
    assert sparse.intercept == dense.intercept
    assert sparse.final_loss < sparse.history["loss"][0]


def direct_run(worker_class, data, local_steps: int, batch_size: int):
    """One server and one worker actor run a logreg over ``data``; returns (the server's
    traffic, its version, the pushes' (order, start, stop) pieces, the worker's shard)."""
    model = LinearModel("logreg")
    spec = LinearModelSpec(n_features=data.n_features, dense=data.dense, fit_intercept=True,
                           loss_id=model.loss_id, l2=0.0)
    arrays = {"values": data.values, "indices": data.indices, "indptr": data.indptr,
              "labels": data.y, "sample_weight": kernels.UNIT_WEIGHTS}
    shard = shard_arrays(arrays, shard_rows(data.n_samples, 1, 0), data.n_features, data.dense)
    shard_spec = ShardSpec(epochs=1, batch_size=batch_size, local_steps=local_steps,
                           seed=np.random.SeedSequence(1), local_step=0.5)
    server = ray.remote(num_cpus=0)(ParameterServer).remote(
        np.zeros(data.n_features + 1), make_policy("constant", lr=0.5), 1)
    worker = ray.remote(num_cpus=1)(worker_class).remote(
        shard_spec, shard, "float64", LinearSetup(model=spec, feature_scale=np.zeros(data.n_features)))
    try:
        ray.get(worker.run.remote(server, 0))
        traffic, version = ray.get([server.traffic.remote(), server.version.remote()])
    finally:
        for actor in (worker, server):
            ray.kill(actor)
    return traffic, version, list(shard_spec.pieces(data.n_samples)), shard


def test_pushes_and_pulls_carry_only_the_coordinates_of_their_rows():
    data = synthetic_sparse(600, 20_000, 5, seed=6)
    traffic, version, pieces, shard = direct_run(LinearWorker, data, local_steps=4, batch_size=2)
    sizes = [piece_columns(shard["indices"], shard["indptr"], order[start:stop], data.n_features).size
             for order, start, stop in pieces]
    assert version == len(pieces) == 75
    assert max(sizes) <= 4 * 2 * 5 + 1  # K x batch x nnz columns, and the intercept
    # every push sends its piece's coordinates; every pull (the first, then each push's answer)
    # fetches the next piece's: the sums agree exactly, and nothing else travels
    assert traffic == {"received": sum(sizes), "sent": sum(sizes)}
    dense_traffic, _, _, _ = direct_run(DenseTransferWorker, data, local_steps=4, batch_size=2)
    assert dense_traffic["received"] == 75 * (data.n_features + 1)
    assert traffic["received"] * 400 < dense_traffic["received"]


def test_a_dense_model_still_travels_whole():
    data = synthetic_dense(400, 6, seed=2)
    traffic, version, pieces, _ = direct_run(LinearWorker, data, local_steps=4, batch_size=2)
    assert version == len(pieces) == 50
    assert traffic == {"received": 50 * 7, "sent": 51 * 7}  # the first pull, then every answer


@pytest.mark.parametrize("local_steps", [1, 3])
def test_evaluations_land_at_the_multiples_of_eval_every_updates(local_steps):
    data = synthetic_sparse(2000, 800, 10, seed=1)
    every = 97
    result = Engine(model="logreg", policy="constant", lr=0.5, workers=2, epochs=2, seed=2,
                    local_steps=local_steps, eval_every_updates=every, progress=False,
                    backend="ray").fit(data)
    pushes = total_updates(2000, 2, 2, local_steps, "static")
    assert result.updates == result.counter == pushes
    updates = result.history["updates"]
    assert updates[0] == 0 and updates[-1] == pushes
    assert updates[1:-1] == list(range(every, pushes, every))  # exact: copied by the server
    times = result.history["time_s"]
    assert times == sorted(times)
    assert result.history["loss"][-1] < result.history["loss"][0]
