"""Simulator: exact against sequential SGD and a pure-Python delayed-gradient reference, the
event-driven schedule's staleness, refits, determinism and bad input."""

import numpy as np
import pytest
import scipy.sparse

from hogwild_mts.backends.sim import simulator as simulate
from hogwild_mts.data.tabular import as_dataset, synthetic_dense, synthetic_sparse
from hogwild_mts.engines.linear import DivergenceError, Engine
from hogwild_mts.kernels.reference import loss_derivative, rows
from hogwild_mts.backends.sim.simulator import event_schedule, straggler_count, worker_slowness
from hogwild_mts.engines.simulated import Simulator
from hogwild_mts.staleness.models import Poisson
from hogwild_mts.models.linear import LinearModel


@pytest.fixture(scope="module")
def sparse():
    return synthetic_sparse(600, 80, 6, seed=2)


def delayed_sgd_reference(dataset, model, batches, taus, lr, n_params):
    """Update t: ``theta_{t+1} = theta_t - lr/|B_t| sum_{i in B_t} grad_i(theta_{t - tau_t})``,
    the rows of a batch applied one after another (L2 on the current value, as the kernels do)."""
    all_rows = list(rows(dataset))
    counts = dataset.feature_counts()
    scale = [dataset.n_samples / c if c > 0 else 0.0 for c in counts]
    history = [[0.0] * n_params]
    d = dataset.n_features
    for batch, tau in zip(batches, taus):
        stale = history[len(history) - 1 - tau]
        derivatives = []
        for i in batch:
            margin = (stale[d] if model.fit_intercept else 0.0) + sum(v * stale[j] for j, v in all_rows[i])
            derivatives.append(loss_derivative(model.name, margin, float(dataset.y[i])))
        theta = list(history[-1])
        step = lr / len(batch)
        for i, derivative in zip(batch, derivatives):
            for j, v in all_rows[i]:
                theta[j] -= step * (derivative * v + model.l2 * scale[j] * theta[j])
            if model.fit_intercept:
                theta[d] -= step * derivative
        history.append(theta)
    return np.array(history[-1])


def round_robin_batches(n, workers, epochs, batch_size, seed):
    """The engine's shards and per-epoch shuffles, workers taking turns (equal shard sizes)."""
    seeds = np.random.SeedSequence(seed).spawn(workers)
    per_worker = []
    for w in range(workers):
        rng = np.random.default_rng(seeds[w])
        shard = np.arange(w, n, workers)
        batches = []
        for _ in range(epochs):
            order = rng.permutation(shard)
            batches += [order[s:s + batch_size].tolist() for s in range(0, order.size, batch_size)]
        per_worker.append(batches)
    return [batch for turn in zip(*per_worker) for batch in turn]


def test_one_worker_equals_the_one_worker_engine_bit_for_bit(sparse):
    for batch_size in (1, 4):
        simulated = Simulator("logreg", lr=0.5, workers=1, epochs=2, batch_size=batch_size,
                              seed=5).fit(sparse)
        real = Engine("logreg", lr=0.5, workers=1, epochs=2, batch_size=batch_size, seed=5,
                      progress=False).fit(sparse)
        assert np.array_equal(simulated.params, real.params)
        assert simulated.intercept == real.intercept
        assert simulated.updates == real.updates == simulated.staleness_histogram[0]
        assert simulated.final_loss == real.final_loss


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("workers,batch_size,l2", [(1, 1, 0.0), (3, 2, 0.01)])
def test_fixed_staleness_equals_sgd_on_gradients_k_steps_old(sparse, k, workers, batch_size, l2):
    small = as_dataset(scipy.sparse.csr_matrix(sparse_to_dense(sparse)[:60]), sparse.y[:60])
    model = LinearModel("logreg", l2=l2)
    histogram = np.zeros(k + 1, np.int64)
    histogram[k] = 1
    result = Simulator(model, "constant", lr=0.3, workers=workers, epochs=2,
                       batch_size=batch_size, seed=1, staleness=histogram).fit(small)
    batches = round_robin_batches(small.n_samples, workers, 2, batch_size, seed=1)
    taus = [min(k, t) for t in range(len(batches))]
    expected = delayed_sgd_reference(small, model, batches, taus, 0.3, small.n_features + 1)
    np.testing.assert_allclose(result.params, expected[:-1], rtol=0, atol=1e-12)
    assert result.intercept == pytest.approx(expected[-1], abs=1e-12)
    assert result.staleness_histogram[k] == len(batches) - min(k, len(batches))


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("batch_size,l2", [(1, 0.0), (4, 0.01)])
def test_one_worker_with_momentum_equals_the_one_worker_engine_bit_for_bit(sparse, dense, batch_size, l2):
    data = synthetic_dense(300, 12, seed=4) if dense else sparse
    model = LinearModel("logreg", l2=l2)
    simulated = Simulator(model, lr=0.1, workers=1, epochs=2, batch_size=batch_size, seed=5,
                          momentum=0.9).fit(data)
    real = Engine(model, lr=0.1, workers=1, epochs=2, batch_size=batch_size, seed=5,
                  momentum=0.9, progress=False).fit(data)
    plain = Simulator(model, lr=0.1, workers=1, epochs=2, batch_size=batch_size, seed=5).fit(data)
    assert np.array_equal(simulated.params, real.params)
    assert simulated.intercept == real.intercept
    assert simulated.final_loss == real.final_loss
    assert not np.array_equal(simulated.params, plain.params)
    assert simulated.settings["momentum"] == 0.9


def delayed_momentum_reference(dataset, model, batches, workers, taus, lr, momentum, n_params):
    """Update t by worker ``t % workers``: margins at ``theta_{t - tau_t}``, then for each
    coordinate j the batch stores ``v_w[j] = momentum v_w[j] + g_j`` (g the batch's mean
    gradient, the L2 term per storing row at the current theta) and ``theta_j -= lr v_w[j]``
    (the intercept likewise), as torch.optim.SGD applied lazily by each worker."""
    all_rows = list(rows(dataset))
    counts = dataset.feature_counts()
    scale = [dataset.n_samples / c if c > 0 else 0.0 for c in counts]
    velocity = [[0.0] * n_params for _ in range(workers)]
    history = [[0.0] * n_params]
    d = dataset.n_features
    for t, (batch, tau) in enumerate(zip(batches, taus)):
        stale, theta, v = history[len(history) - 1 - tau], list(history[-1]), velocity[t % workers]
        derivatives = []
        for i in batch:
            margin = (stale[d] if model.fit_intercept else 0.0) + sum(x * stale[j] for j, x in all_rows[i])
            derivatives.append(loss_derivative(model.name, margin, float(dataset.y[i])))
        gradient = {}
        for i, derivative in zip(batch, derivatives):
            for j, x in all_rows[i]:
                term = (derivative * x + model.l2 * scale[j] * theta[j]) / len(batch)
                gradient[j] = gradient.get(j, 0.0) + term
        if model.fit_intercept:
            gradient[d] = sum(derivatives) / len(batch)
        for j, g in gradient.items():
            v[j] = momentum * v[j] + g
            theta[j] -= lr * v[j]
        history.append(theta)
    return np.array(history[-1])


@pytest.mark.parametrize("reads", ["snapshots", "log"])
@pytest.mark.parametrize("k,workers,batch_size,l2", [(0, 1, 1, 0.0), (2, 3, 2, 0.01), (3, 2, 3, 0.0)])
def test_momentum_with_fixed_staleness_equals_a_delayed_momentum_reference(sparse, reads, k, workers,
                                                                           batch_size, l2):
    small = as_dataset(scipy.sparse.csr_matrix(sparse_to_dense(sparse)[:60]), sparse.y[:60])
    model = LinearModel("logreg", l2=l2)
    histogram = np.zeros(k + 1, np.int64)
    histogram[k] = 1
    result = Simulator(model, "constant", lr=0.3, workers=workers, epochs=2, batch_size=batch_size,
                       seed=1, staleness=histogram, stale_reads=reads, momentum=0.8).fit(small)
    batches = round_robin_batches(small.n_samples, workers, 2, batch_size, seed=1)
    taus = [min(k, t) for t in range(len(batches))]
    expected = delayed_momentum_reference(small, model, batches, workers, taus, 0.3, 0.8,
                                          small.n_features + 1)
    assert result.settings["stale_reads"] == reads
    np.testing.assert_allclose(result.params, expected[:-1], rtol=0, atol=1e-12)
    assert result.intercept == pytest.approx(expected[-1], abs=1e-12)


def test_momentum_zero_is_plain_sgd_bit_for_bit(sparse):
    runs = [Simulator("logreg", "tail", lr=0.5, workers=4, epochs=1, seed=3, **extra).fit(sparse)
            for extra in ({}, {"momentum": 0.0})]
    assert np.array_equal(runs[0].params, runs[1].params) and runs[0].intercept == runs[1].intercept


def test_simulator_binds_the_policy_with_its_momentum(sparse, monkeypatch):
    from hogwild_mts.policies.step_sizes import MindTheStepPolicy

    bound = []
    original = MindTheStepPolicy.bind

    def recording_bind(self, workers, momentum=0.0):
        bound.append((workers, momentum))
        original(self, workers, momentum)

    monkeypatch.setattr(MindTheStepPolicy, "bind", recording_bind)
    policy = MindTheStepPolicy(lr=0.1, target="momentum", mu=0.9, refit_every=50, min_samples=0)
    Simulator("logreg", policy, workers=4, epochs=1, seed=0, staleness=Poisson(3.0), momentum=0.5).fit(sparse)
    assert bound[:4] == [(4, 0.5)] * 4


def sparse_to_dense(dataset):
    out = np.zeros((dataset.n_samples, dataset.n_features))
    for i, row in enumerate(rows(dataset)):
        for j, v in row:
            out[i, j] = v
    return out


def test_snapshot_and_undo_log_reads_agree():
    """Stale reads from parameter snapshots and from the undo log give the same run."""
    dense = synthetic_dense(300, 12, seed=4)
    as_csr = as_dataset(scipy.sparse.csr_matrix(dense.values.reshape(300, 12)), dense.y)
    runs = [Simulator("lsq", lr=0.05, workers=5, epochs=2, batch_size=3, seed=2,
                      stale_reads=reads).fit(data)
            for reads, data in (("auto", dense), ("log", as_csr), ("snapshots", as_csr))]
    assert [run.settings["stale_reads"] for run in runs] == ["snapshots", "log", "snapshots"]
    np.testing.assert_allclose(runs[0].params, runs[2].params, rtol=0, atol=1e-12)
    np.testing.assert_allclose(runs[0].params, runs[1].params, rtol=0, atol=1e-12)
    assert runs[0].staleness_summary()["mean"] > 1


@pytest.mark.parametrize("workers", [1, 4, 16])
def test_equal_compute_times_give_staleness_m_minus_one(workers):
    _, taus, times = event_schedule(np.full(workers, 200), "constant", np.random.default_rng(0))
    assert taus[:workers].tolist() == list(range(workers))  # everyone read version 0
    assert abs(taus.mean() - (workers - 1)) < 0.05 * workers + 1e-9
    assert np.all(np.diff(times) >= 0)


def test_random_compute_times_give_mean_staleness_near_m_minus_one():
    _, taus, _ = event_schedule(np.full(8, 2000), "exponential", np.random.default_rng(1))
    assert 6.0 < taus.mean() < 7.5
    assert taus.max() > 3 * 7  # exponential compute times have a tail


@pytest.mark.parametrize("compute", ["exponential", "lognormal:1.5"])
def test_stragglers_land_proportionally_fewer_updates(compute):
    workers, factor = 16, 10.0
    slowness = worker_slowness(workers, "0.125:10")
    assert slowness == pytest.approx([slowness[0]] * 14 + [factor * slowness[0]] * 2)
    assert np.mean(1 / slowness) == pytest.approx(1.0)  # speeds rescaled to mean 1
    workers_of, _, times = event_schedule(np.full(workers, 3000), compute, np.random.default_rng(2),
                                          slowness=slowness)
    # while every worker still has work (the first half of the landings), the two stragglers land
    # about 1/10 of what a fast worker lands
    early = np.bincount(workers_of[: workers_of.size // 2], minlength=workers)
    share = early[14:].mean() / early[:14].mean()
    assert 0.5 / factor < share < 2.0 / factor
    # the unit is kept: m workers of mean speed 1 land about m updates per time unit
    index = workers_of.size // 2
    assert 0.8 * workers < index / times[index] < 1.25 * workers


def test_worker_speeds_set_each_workers_rate_and_alike_workers_change_nothing(sparse):
    slowness = worker_slowness(4, worker_speeds=[1, 2, 2, 3])
    assert slowness == pytest.approx([2.0, 1.0, 1.0, 2 / 3])
    workers_of, _, _ = event_schedule(np.full(4, 4000), "gamma:4", np.random.default_rng(0),
                                      slowness=slowness)
    early = np.bincount(workers_of[:6000], minlength=4)
    assert early[3] / early[0] == pytest.approx(3.0, rel=0.2)
    assert worker_slowness(4) is None and worker_slowness(4, worker_speeds=[2.5] * 4) is None
    assert worker_slowness(5, "0:10") is None
    default = Simulator("logreg", workers=4, epochs=1, seed=3).fit(sparse)
    alike = Simulator("logreg", workers=4, epochs=1, seed=3, worker_speeds=[7] * 4).fit(sparse)
    assert np.array_equal(default.params, alike.params)
    assert np.array_equal(default.history["time_s"], alike.history["time_s"])
    slow = Simulator("logreg", workers=4, epochs=1, seed=3, stragglers="0.25:8").fit(sparse)
    assert slow.to_dict()["settings"]["stragglers"] == "0.25:8"
    assert "stragglers" not in default.to_dict()["settings"]
    assert slow.staleness_histogram.sum() == default.staleness_histogram.sum()
    assert not np.array_equal(slow.staleness_histogram, default.staleness_histogram)


@pytest.mark.parametrize("workers,share,count", [(10, 0.1, 1), (16, 0.1, 2), (4, 0.1, 1), (4, 0.125, 1),
                                                 (4, 0.375, 2), (8, 0.0, 0), (3, 1.0, 3)])
def test_straggler_count_rounds_to_nearest_and_at_least_one(workers, share, count):
    assert straggler_count(workers, share) == count


def test_ten_percent_of_updates_ten_times_staler_is_a_mixture_histogram(sparse):
    from scipy.stats import poisson

    taus = np.arange(200)
    pmf = 0.9 * poisson.pmf(taus, 3) + 0.1 * poisson.pmf(taus, 30)   # the recipe in docs/policies.md
    result = Simulator("logreg", workers=4, epochs=2, staleness=np.round(pmf * 1e12).astype(np.int64)).fit(sparse)
    counts = result.staleness_histogram
    assert counts[20:].sum() / counts.sum() == pytest.approx(0.1, abs=0.03)


def test_simulator_is_deterministic_and_seeded(sparse):
    runs = [Simulator("logreg", "tail", lr=0.5, workers=8, epochs=2, seed=s, compute="gamma:2").fit(sparse)
            for s in (0, 0, 1)]
    assert np.array_equal(runs[0].params, runs[1].params)
    assert np.array_equal(runs[0].staleness_histogram, runs[1].staleness_histogram)
    assert not np.array_equal(runs[0].params, runs[2].params)


def test_result_matches_a_real_run(sparse):
    from hogwild_mts.policies.step_sizes import make_policy

    policy = make_policy("mindthestep", lr=0.5, target="shrink", r=0.9, refit_every=20, min_samples=50)
    result = Simulator("logreg", policy, workers=4, epochs=3, seed=0, staleness=Poisson(3.0)).fit(sparse)
    assert result.updates == result.counter == result.staleness_histogram.sum() == 3 * sparse.n_samples
    assert result.refits == 4 * ((3 * sparse.n_samples // 4) // 20)
    assert result.policy["name"] == "mindthestep" and result.policy["samples_seen"] > 0
    assert result.staleness_fit["best"] in ("poisson", "cmp", "geometric")
    history = result.history
    assert history["updates"][0] == 0 and history["updates"][-1] == result.updates
    assert history["loss"][-1] < history["loss"][0]
    assert np.all(np.diff(history["time_s"]) >= 0)
    assert result.train_seconds == pytest.approx(result.updates * 1e-6 / 4)
    assert result.to_dict()["settings"]["simulated"] is True


@pytest.mark.parametrize("policy", ["constant", "mindthestep", "auto"])
def test_divergence_is_reported(policy):
    data = synthetic_dense(200, 10, seed=0)
    with pytest.raises(DivergenceError, match=f"diverged.*policy {policy}"):
        Simulator("lsq", policy, lr=50.0, workers=4, epochs=3).fit(data)


@pytest.mark.parametrize("kwargs,message", [
    (dict(workers=0), "workers must be an integer >= 1"),
    (dict(staleness="fixed"), "unknown staleness 'fixed'"),
    (dict(staleness=[0, 0]), "histogram is empty"),
    (dict(staleness=[1, -1]), r"histogram\[1\]"),
    (dict(staleness=3.5), "staleness must be"),
    (dict(compute="weibull"), "unknown compute 'weibull'"),
    (dict(compute="gamma:0"), "finite parameter > 0"),
    (dict(compute="exponential:2"), "takes no parameter"),
    (dict(update_seconds=-1.0), "update_seconds must be"),
    (dict(eval_every=0), "eval_every must be an integer >= 1"),
    (dict(policy="nope"), "unknown policy 'nope'"),
    (dict(stale_reads="copy"), "stale_reads must be one of"),
    (dict(momentum=1.0), r"momentum must be a finite number in \[0, 1\), got 1.0"),
    (dict(momentum=-0.5), "got -0.5"),
    (dict(momentum=float("nan")), "got nan"),
    (dict(stragglers="0.1"), "stragglers must be 'SHARE:FACTOR'"),
    (dict(stragglers="1.5:10"), r"got '1.5:10'"),
    (dict(stragglers="0.1:0.5"), "FACTOR >= 1"),
    (dict(stragglers=0.1), "stragglers must be"),
    (dict(worker_speeds=[1, 2, 3]), r"one speed per worker \(2\), got 3"),
    (dict(worker_speeds=[1, 0]), "finite numbers > 0, got 0"),
    (dict(worker_speeds=[1, float("inf")]), "got inf"),
    (dict(worker_speeds="fast"), "must be a list of 2"),
    (dict(worker_speeds=[1, 2], stragglers="0.5:2"), "not both"),
    (dict(worker_speeds=[1, 2], staleness="poisson"), "event-driven schedule"),
])
def test_bad_input_is_refused_before_running(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Simulator("logreg", **kwargs)


def test_too_many_workers_and_too_large_a_ring(sparse, monkeypatch):
    with pytest.raises(ValueError, match="exceeds the number of samples"):
        Simulator(workers=10_000).fit(sparse)
    monkeypatch.setattr(simulate, "MAX_RING_ENTRIES", 10)
    with pytest.raises(ValueError, match="stale-read ring"):
        Simulator(workers=8, epochs=1).fit(sparse)
