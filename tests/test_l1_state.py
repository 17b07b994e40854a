"""The cumulative L1 penalty as the state of a whole fit (``Engine.fit(init_l1=...)``,
``FitResult.l1_state``; the estimators carry it over a call's epochs, as scikit-learn's
``_plain_sgd`` does), and scikit-learn's intercept decay (``LinearModel.intercept_decay``): one
worker against the slow reference, exact; bad values refused."""

import numpy as np
import pytest
import scipy.sparse

from hogwild_mts import HogwildClassifier, HogwildRegressor
from hogwild_mts.core.result import L1State
from hogwild_mts.engines.linear import Engine, prepare_dataset
from hogwild_mts.engines.simulated import Simulator
from hogwild_mts.kernels import reference
from hogwild_mts.models.linear import SPARSE_INTERCEPT_DECAY, LinearModel

TOLERANCE = 1e-12
N_ROWS, N_FEATURES = 40, 8


def _data(dense: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N_ROWS, N_FEATURES))
    y = np.where(X @ rng.normal(size=N_FEATURES) + 0.5 * rng.normal(size=N_ROWS) > 0.3, 1.0, -1.0)
    if not dense:
        X[rng.random(X.shape) < 0.6] = 0.0
        X = scipy.sparse.csr_matrix(X)
    return X, y


def _order(seed: int) -> np.ndarray:
    """The row order of a one-epoch, one-worker Engine run with ``seed`` (the generator its one
    worker spawns from the run's seed)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0]).permutation(N_ROWS)


def _engine(model, seed, start_update=0, batch_size=1, **options):
    return Engine(model, lr=0.2, workers=1, epochs=1, batch_size=batch_size, seed=seed,
                  learning_rate="invscaling", power_t=0.5, start_update=start_update,
                  progress=False, **options)


@pytest.mark.parametrize("dense,batch_size,decay", [(True, 1, 1.0), (False, 4, SPARSE_INTERCEPT_DECAY)],
                         ids=["dense", "sparse-decayed"])
def test_two_runs_continuing_the_l1_state_are_one_reference_pass(dense, batch_size, decay):
    """Run 2 continues run 1's parameters, schedule and L1 state: together they are the
    reference's pass over both orders with one cumulative penalty (``batch_size`` divides the
    rows, so no batch of that pass straddles the two); without the state, not."""
    X, y = _data(dense)
    model = LinearModel("log_loss", l2=0.01, l1=0.02, intercept_decay=decay)
    first = _engine(model, 3, batch_size=batch_size).fit(X, y)
    start = dict(init_params=np.append(first.params, first.intercept))
    second = _engine(model, 4, first.updates, batch_size).fit(X, y, init_l1=first.l1_state, **start)
    dataset = prepare_dataset(model, X, y, 1, batch_size)
    applied, total = [0.0] * N_FEATURES, [0.0]
    weights, intercept = reference.sequential_sgd(
        dataset, model, np.concatenate([_order(3), _order(4)]), batch_size, 0.2,
        [0.0] * N_FEATURES, 0.0, schedule=(1.0, 0.5), applied=applied, l1_total=total)
    np.testing.assert_allclose(second.params, weights, rtol=0, atol=TOLERANCE)
    assert abs(second.intercept - intercept) <= TOLERANCE
    np.testing.assert_allclose(second.l1_state.applied, applied, rtol=0, atol=TOLERANCE)
    assert abs(second.l1_state.total - total[0]) <= TOLERANCE
    assert np.count_nonzero(second.params == 0.0) > 0  # the penalty clipped some weight to 0
    restarted = _engine(model, 4, first.updates, batch_size).fit(X, y, **start)
    assert np.abs(restarted.params - weights).max() > 1e-6  # a fresh penalty is another model


def test_the_l1_state_is_what_the_run_added_to_the_one_it_continues():
    X, y = _data(True)
    model = LinearModel("hinge", l1=0.05)
    constant = dict(learning_rate="constant")
    fresh = Engine(model, lr=0.1, workers=1, epochs=2, progress=False, **constant).fit(X, y)
    assert fresh.l1_state.total == pytest.approx(0.05 * 0.1 * 2 * N_ROWS, rel=1e-12)
    zeros = L1State(0.0, np.zeros(N_FEATURES))
    same = Engine(model, lr=0.1, workers=1, epochs=2, progress=False, **constant).fit(X, y, init_l1=zeros)
    assert np.array_equal(same.params, fresh.params) and same.intercept == fresh.intercept
    continued = Engine(model, lr=0.1, workers=1, epochs=1, progress=False, **constant).fit(
        X, y, init_l1=(1.0, np.zeros(N_FEATURES)))
    assert continued.l1_state.total == pytest.approx(1.0 + 0.05 * 0.1 * N_ROWS, rel=1e-12)
    assert np.count_nonzero(continued.params) < np.count_nonzero(fresh.params)  # more penalty owed
    assert Engine("hinge", workers=1, epochs=1, progress=False).fit(X, y).l1_state is None


@pytest.mark.parametrize("momentum", [0.0, 0.6])
def test_sparse_intercept_decay_is_the_reference_s_and_the_simulator_s(momentum):
    X, y = _data(False, seed=1)
    model = LinearModel("log_loss", l2=0.01, intercept_decay=SPARSE_INTERCEPT_DECAY)
    options = dict(lr=0.1, workers=1, epochs=1, seed=5, momentum=momentum, progress=False)
    engine = Engine(model, **options).fit(X, y)
    weights, intercept = reference.sequential_sgd(prepare_dataset(model, X, y, 1, 1), model,
                                                  _order(5), 1, 0.1, [0.0] * N_FEATURES, 0.0,
                                                  momentum=momentum)
    np.testing.assert_allclose(engine.params, weights, rtol=0, atol=TOLERANCE)
    assert abs(engine.intercept - intercept) <= TOLERANCE
    simulated = Simulator(model, **options).fit(X, y)
    assert np.array_equal(engine.params, simulated.params) and engine.intercept == simulated.intercept
    plain = Engine(LinearModel("log_loss", l2=0.01), **options).fit(X, y)
    assert abs(plain.intercept) > 5 * abs(engine.intercept) > 0  # the decay slowed it down
    assert engine.settings["intercept_decay"] == SPARSE_INTERCEPT_DECAY
    assert "intercept_decay" not in plain.settings


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # 40 rows, 3 epochs
def test_estimators_carry_the_l1_state_over_a_call_s_epochs_and_start_it_at_each_call():
    """scikit-learn's u and q live for one _plain_sgd call: every epoch of a fit, or one
    partial_fit (a warm start too begins a new one)."""
    X, y = _data(True)
    params = dict(penalty="l1", alpha=0.01, learning_rate="constant", eta0=0.05, max_iter=3,
                  tol=None, random_state=0)
    per_epoch = 0.01 * 0.05 * N_ROWS  # l1 times the steps of one epoch
    model = HogwildRegressor(**params).fit(X, y)
    totals = [run.l1_state.total for run in model.fit_results_]
    np.testing.assert_allclose(totals, [per_epoch, 2 * per_epoch, 3 * per_epoch], rtol=1e-12)
    model.partial_fit(X, y)
    assert model.fit_results_[-1].l1_state.total == pytest.approx(per_epoch, rel=1e-12)
    model.set_params(warm_start=True).fit(X, y)
    assert model.fit_results_[-1].l1_state.total == pytest.approx(3 * per_epoch, rel=1e-12)


def test_estimators_decay_the_intercept_on_sparse_rows_only():
    X, y = _data(True)
    sparse = HogwildClassifier(max_iter=2, tol=None, random_state=0).fit(scipy.sparse.csr_matrix(X), y)
    dense = HogwildClassifier(max_iter=2, tol=None, random_state=0).fit(X, y)
    assert sparse.fit_result_.settings["intercept_decay"] == SPARSE_INTERCEPT_DECAY
    assert "intercept_decay" not in dense.fit_result_.settings


@pytest.mark.parametrize("init_l1,named", [
    (3.0, "3.0"),
    ((-1.0, np.zeros(N_FEATURES)), "-1.0"),
    ((float("nan"), np.zeros(N_FEATURES)), "nan"),
    ((True, np.zeros(N_FEATURES)), "True"),
    ((0.5, np.zeros(N_FEATURES + 1)), f"({N_FEATURES + 1},)"),
    ((0.5, np.full(N_FEATURES, np.inf)), "inf"),
])
def test_bad_init_l1_is_refused_with_the_value(init_l1, named):
    X, y = _data(True)
    engine = Engine(LinearModel("hinge", l1=0.01), workers=1, epochs=1, progress=False)
    with pytest.raises(ValueError, match="init_l1") as error:
        engine.fit(X, y, init_l1=init_l1)
    assert named in str(error.value)


def test_init_l1_needs_an_l1_penalty():
    X, y = _data(True)
    with pytest.raises(ValueError, match=r"no L1 penalty \(l1=0\)"):
        Engine("hinge", workers=1, epochs=1, progress=False).fit(
            X, y, init_l1=(0.0, np.zeros(N_FEATURES)))


@pytest.mark.parametrize("decay", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.01"])
def test_bad_intercept_decay_is_refused_with_the_value(decay):
    with pytest.raises(ValueError, match="intercept_decay must be a number in") as error:
        LinearModel("hinge", intercept_decay=decay)
    assert repr(decay) in str(error.value)


def test_intercept_decay_is_not_checkpointed(tmp_path):
    with pytest.raises(ValueError, match="intercept_decay=0.01 cannot be checkpointed"):
        Engine(LinearModel("hinge", intercept_decay=0.01), checkpoint_dir=str(tmp_path / "run"))


def test_ray_workers_take_the_model_s_intercept_decay():
    """Ray's workers run the same kernels on the terms of their model spec."""
    from hogwild_mts.backends.ray.linear import _model_spec
    from hogwild_mts.job import LinearProblem

    model = LinearModel("hinge", intercept_decay=SPARSE_INTERCEPT_DECAY)
    spec = _model_spec(LinearProblem(model, "float64"), N_FEATURES, dense=False)
    assert spec.terms.intercept_decay == SPARSE_INTERCEPT_DECAY
