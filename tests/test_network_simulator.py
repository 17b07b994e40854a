"""NetworkSimulator: one emulated worker is TorchEngine's one-worker run bit for bit; with many
workers the recorded staleness is the schedule's and the run trains; a stale gradient checked by
hand on a tiny linear module; bad options refused before anything trains; the experiment's
torch task in simulated mode."""

import json

import numpy as np
import pytest
import torch

from hogwild_mts.app import experiment
from hogwild_mts.backends.sim import networks as network_sim
from hogwild_mts.backends.sim.run import EVENT_SCHEDULE_SEED
from hogwild_mts.backends.sim.simulator import event_schedule
from hogwild_mts.core.control import HIST_BINS
from hogwild_mts.core.result import DivergenceError
from hogwild_mts.data.images import load_images
from hogwild_mts.engines.networks import TorchEngine
from hogwild_mts.engines.simulated import NetworkSimulator
from hogwild_mts.kernels.split import shard_rows


@pytest.fixture(scope="module")
def signals():
    return load_images("mnist1d:n=500,seed=0")  # 400 training, 100 test signals


def _by_updates(history: dict) -> dict:
    """History losses keyed by their update count (a real run may record the last count twice:
    the workers' copy at a due count that is also the end, and the final row)."""
    return dict(zip(history["updates"], history["loss"]))


def test_one_worker_is_torch_engine_with_one_worker_bit_for_bit(signals):
    options = dict(workers=1, epochs=2, batch_size=16, lr=0.05, momentum=0.9,
                   weight_decay=1e-3, seed=3, eval_every_updates=10, progress=False)
    real = TorchEngine("mlp", **options).fit(signals)
    simulated = NetworkSimulator("mlp", **options).fit(signals)
    assert simulated.updates == real.updates == 50
    assert np.array_equal(simulated.params, real.params)
    assert _by_updates(simulated.history) == _by_updates(real.history)
    assert simulated.final_loss == real.final_loss
    assert np.array_equal(simulated.staleness_histogram, real.staleness_histogram)
    assert simulated.settings["simulated"] and simulated.settings["stale_reads"] == "held gradients"


def _batch_norm_network(input_shape, outputs):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 16), torch.nn.BatchNorm1d(16),
                               torch.nn.ReLU(), torch.nn.Linear(16, outputs))


def test_batch_norm_statistics_are_shared_and_updated_as_by_a_real_worker(signals):
    options = dict(workers=1, epochs=1, batch_size=16, momentum=0.5, seed=2,
                   eval_every_updates=5, progress=False)
    real = TorchEngine(_batch_norm_network, **options).fit(signals)
    simulated = NetworkSimulator(_batch_norm_network, **options).fit(signals)
    assert simulated.settings["buffers"] == 32
    assert np.array_equal(simulated.params, real.params)
    many = NetworkSimulator(_batch_norm_network, **{**options, "workers": 4}).fit(signals)
    running_mean, running_var = many.params[-32:-16], many.params[-16:]  # start: zeros, ones
    assert np.all(running_mean != 0) and np.all(running_var != 1) and np.all(running_var > 0)


def test_many_workers_record_the_schedules_staleness_and_train(signals):
    workers, batch, epochs, seed = 8, 16, 3, 5
    result = NetworkSimulator("mlp", workers=workers, epochs=epochs, batch_size=batch, seed=seed,
                              lr=0.1, progress=False).fit(signals)
    per_worker = [epochs * -(-shard_rows(400, workers, w).size // batch) for w in range(workers)]
    rng = np.random.default_rng(np.random.SeedSequence([seed, EVENT_SCHEDULE_SEED]))
    _, taus, _ = event_schedule(np.array(per_worker), "exponential", rng)
    assert result.updates == taus.size == sum(per_worker)
    expected = np.bincount(np.minimum(taus, HIST_BINS - 1), minlength=HIST_BINS)
    assert np.array_equal(result.staleness_histogram, expected)
    assert result.max_staleness == taus.max() > 0
    assert result.history["loss"][-1] < result.history["loss"][0]
    again = NetworkSimulator("mlp", workers=workers, epochs=epochs, batch_size=batch, seed=seed,
                             lr=0.1, progress=False).fit(signals)
    assert np.array_equal(again.params, result.params)  # deterministic


def _hand_run(X, y, weights, taus, lr, momentum, weight_decay):
    """Full-batch gradient descent on mean squared error with update t's gradient taken at
    theta_{t - tau_t}: v = momentum * v + (g + weight_decay * theta_t), theta -= lr * v."""
    thetas, velocity = [np.array(weights, dtype=np.float64)], np.zeros(len(weights))
    for t, tau in enumerate(taus):
        stale = thetas[t - tau]
        gradient = 2.0 / len(y) * X.T @ (X @ stale - y)
        velocity = momentum * velocity + (gradient + weight_decay * thetas[t])
        thetas.append(thetas[t] - lr * velocity)
    return thetas[-1]


def test_a_stale_gradient_is_the_gradient_at_the_version_it_read():
    X = np.array([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.25], [2.0, 1.0]])
    y = np.array([1.0, -0.5, 0.75, 2.0])
    module = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[0.5, -0.25]]))
    epochs, lr, momentum, weight_decay = 6, 0.05, 0.5, 0.01
    result = NetworkSimulator(module, "constant", workers=1, epochs=epochs, batch_size=4,
                              lr=lr, momentum=momentum, weight_decay=weight_decay,
                              loss="mse", dtype="float64", staleness=[0, 0, 1],
                              progress=False).fit(X, y[:, None])
    taus = [min(2, t) for t in range(epochs)]  # every draw is 2, capped at t
    assert result.staleness_histogram[:3].tolist() == [1, 1, epochs - 2]
    expected = _hand_run(X, y, [0.5, -0.25], taus, lr, momentum, weight_decay)
    np.testing.assert_allclose(result.params, expected, rtol=0, atol=1e-12)
    fresh = _hand_run(X, y, [0.5, -0.25], [0] * epochs, lr, momentum, weight_decay)
    assert np.abs(result.params - fresh).max() > 1e-4  # the delay matters here


@pytest.mark.parametrize("options,error,message", [
    ({"staleness": "uniform"}, ValueError, "unknown staleness 'uniform'"),
    ({"compute": "gamma:-1"}, ValueError, "needs a finite parameter > 0"),
    ({"workers": 0}, ValueError, "workers must be"),
    ({"weight_decay": -1.0}, ValueError, "weight_decay must be"),
    ({"eval_every": 2.0}, TypeError, "unexpected keyword argument 'eval_every'"),
    ({"split": "dynamic"}, TypeError, "unexpected keyword argument 'split'"),
])
def test_bad_options_are_refused_at_construction(options, error, message):
    with pytest.raises(error, match=message):
        NetworkSimulator("mlp", **options)


def test_bad_fits_are_refused_before_training(signals, monkeypatch):
    trained = []
    monkeypatch.setattr(network_sim.NetworkSimBackend, "poll",
                        lambda self, until=None: trained.append(1))
    with pytest.raises(ValueError, match="keeps no checkpoints to resume"):
        NetworkSimulator("mlp", progress=False).fit(signals, resume="somewhere")
    with pytest.raises(ValueError, match="workers \\(401\\) exceeds the 400 training"):
        NetworkSimulator("mlp", workers=401, progress=False).fit(signals)
    monkeypatch.setattr(network_sim, "MAX_HELD_BYTES", 10_000)
    with pytest.raises(ValueError, match="would hold 64 gradients in flight .* lower the workers"):
        NetworkSimulator("mlp", workers=64, epochs=1, progress=False).fit(signals)
    assert trained == []


def test_a_diverging_simulation_raises_divergence_error(signals):
    with pytest.raises(DivergenceError, match="training diverged"):
        NetworkSimulator("mlp", workers=4, epochs=2, lr=1e4, progress=False).fit(signals)


def test_the_experiment_runs_the_torch_task_simulated(tmp_path):
    config = experiment.load_config(None, {
        "task": "torch", "mode": "simulated", "model": "mlp", "data": "mnist1d:n=200,seed=0",
        "policies": ["constant"], "lrs": [0.1], "workers": [1, 4], "seeds": [0], "epochs": 1,
        "staleness": "event", "eval_updates": 5, "targets": [5.0]})
    assert isinstance(experiment.make_engine(config, {"policy": "constant", "lr": 0.1,
                                                      "momentum": 0.0, "workers": 4, "seed": 0}), NetworkSimulator)
    assert experiment.run_grid(config, str(tmp_path), log=open("/dev/null", "w"),
                               plots=False)["ran"] == 2
    cell = json.loads((tmp_path / "cells" / "constant-a0.1-m4-s0.json").read_text())
    assert cell["time_unit"] == "simulated seconds"


def test_stragglers_and_the_auto_policy_reach_the_network_simulator(signals):
    options = dict(workers=4, epochs=2, batch_size=16, seed=1, lr=0.1, progress=False)
    alike = NetworkSimulator("mlp", **options).fit(signals)
    slow = NetworkSimulator("mlp", stragglers="0.25:10", **options).fit(signals)
    assert slow.settings.simulation.stragglers == "0.25:10"
    assert slow.updates == alike.updates and slow.max_staleness > alike.max_staleness
    auto = NetworkSimulator("mlp", policy="auto", **{**options, "workers": 16}).fit(signals)
    assert auto.settings["momentum"] == experiment.make_policy("auto", lr=0.1).worker_momentum(16) > 0
