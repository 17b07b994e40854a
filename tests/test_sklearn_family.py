"""scikit-learn's SGD model family: its losses bit for bit, the cumulative L1 penalty and the
step schedules against the slow reference (one worker, exact), loose properties with two
workers, bad values, and one worker against SGDClassifier itself."""

import numpy as np
import pytest
import scipy.sparse

from hogwild_mts.data.tabular import as_dataset, synthetic_dense
from hogwild_mts.engines.linear import Engine, prepare_dataset, step_schedule
from hogwild_mts.engines.simulated import Simulator
from hogwild_mts.kernels import linear as kernels
from hogwild_mts.kernels import reference
from hogwild_mts.models.linear import (CLASSIFIER_LOSSES, LOSS_IDS, REGRESSOR_LOSSES, LinearModel,
                                       loss_derivative, loss_value)

TOLERANCE = 1e-12
EPSILON = 0.3


def _sklearn_losses():
    """scikit-learn's own loss objects: ``name -> (value(p, y), derivative(p, y))``, y in
    {-1, +1} for the classifiers (its log loss takes y in {0, 1})."""
    sgd_fast = pytest.importorskip("sklearn.linear_model._sgd_fast")
    losses = pytest.importorskip("sklearn._loss._loss")

    def pointwise(loss):
        return (lambda p, y: loss.py_loss(p, y)), (lambda p, y: loss.py_dloss(p, y))

    def arrays(loss, encode):
        def call(method, p, y):
            out = np.empty(1)
            getattr(loss, method)(np.array([encode(y)]), np.array([p]), None, out, 1)
            return out[0]
        return (lambda p, y: call("loss", p, y)), (lambda p, y: call("gradient", p, y))

    same = (lambda y: y)
    return {"hinge": pointwise(sgd_fast.Hinge(1.0)), "perceptron": pointwise(sgd_fast.Hinge(0.0)),
            "squared_hinge": pointwise(sgd_fast.SquaredHinge(1.0)),
            "modified_huber": pointwise(sgd_fast.ModifiedHuber()),
            "epsilon_insensitive": pointwise(sgd_fast.EpsilonInsensitive(EPSILON)),
            "squared_epsilon_insensitive": pointwise(sgd_fast.SquaredEpsilonInsensitive(EPSILON)),
            "log_loss": arrays(losses.CyHalfBinomialLoss(), lambda y: (y + 1.0) / 2.0),
            "squared_error": arrays(losses.CyHalfSquaredError(), same),
            "huber": arrays(losses.CyHuberLoss(EPSILON), same)}


def test_every_loss_is_sklearns_bit_for_bit_and_the_reference_agrees():
    rng = np.random.default_rng(0)
    margins = np.concatenate([rng.normal(scale=4.0, size=60), [-40.0, -37.0, -2.0, -1.0, -0.3, 0.0,
                                                              0.3, 1.0, 1.3, 18.0, 33.3, 40.0]])
    sklearn = _sklearn_losses()
    assert set(sklearn) == set(CLASSIFIER_LOSSES) | set(REGRESSOR_LOSSES)
    for name, (value, derivative) in sklearn.items():
        labels = [-1.0, 1.0] if name in CLASSIFIER_LOSSES else [-1.7, 0.0, 0.25, 2.0]
        for p in margins:
            for y in labels:
                expected = (value(p, y), derivative(p, y))
                assert (loss_value(LOSS_IDS[name], p, y, EPSILON),
                        loss_derivative(LOSS_IDS[name], p, y, EPSILON)) == expected, (name, p, y)
                assert (reference.loss_value(name, p, y, EPSILON),
                        reference.loss_derivative(name, p, y, EPSILON)) == expected, (name, p, y)


def test_aliases_are_the_same_losses():
    for alias, name in (("logreg", "log_loss"), ("svm", "hinge"), ("lsq", "squared_error")):
        assert LinearModel(alias).loss_id == LinearModel(name).loss_id
        assert LinearModel(alias).classifier == LinearModel(name).classifier
    assert LinearModel("svm").loss == "hinge"
    assert [LinearModel(n).probabilistic for n in ("log_loss", "modified_huber", "hinge")] == [True, True, False]


def _problem(rng, dense, regression=False, n=23, d=9):
    matrix = rng.normal(size=(n, d))
    if not dense:
        matrix[rng.random((n, d)) < 0.6] = 0.0
        matrix = scipy.sparse.csr_matrix(matrix)
    labels = rng.normal(size=n) if regression else rng.choice([-1.0, 1.0], size=n)
    return as_dataset(matrix, labels)


def _rows(dataset):
    counts = dataset.feature_counts()
    scale = np.divide(dataset.n_samples, counts, out=np.zeros(dataset.n_features), where=counts > 0)
    return kernels.Rows(dataset.values, dataset.indices, dataset.indptr, dataset.y,
                        kernels.UNIT_WEIGHTS, scale)


def _kernel_run(dataset, model, order, batch_size, alpha, params, schedule=(1.0, 0.0),
                momentum=0.0, first_update=0):
    """One worker's kernel over ``order``; the counter starts at ``first_update``."""
    n_params = params.shape[0]
    l1 = model.l1 != 0.0
    buffers = kernels.WorkerBuffers(
        np.zeros(8, np.int64), np.zeros(16, np.int64), np.zeros(batch_size), np.zeros(n_params),
        np.full(n_params, -1, np.int64),
        np.zeros(dataset.n_features) if l1 else kernels.NO_APPLIED,
        np.zeros((1, kernels.TOTALS_COLUMNS)) if l1 else kernels.NO_TOTALS, 0)
    kernel = kernels.sgd_kernel(dataset.dense, model.fit_intercept, model.l2, True)
    counter = np.array([first_update], np.int64)
    status = kernel(_rows(dataset), order, 0, order.shape[0], batch_size, params, dataset.n_features,
                    kernels.model_terms(model), momentum, np.array([alpha]), *schedule, counter,
                    buffers)
    assert status == kernels.STATUS_OK
    return buffers


LOSS_CASES = [("hinge", False), ("modified_huber", False), ("squared_hinge", False),
              ("perceptron", False), ("log_loss", False), ("huber", True),
              ("epsilon_insensitive", True), ("squared_epsilon_insensitive", True)]


@pytest.mark.parametrize("name,regression", LOSS_CASES)
@pytest.mark.parametrize("dense", [False, True])
def test_each_loss_trains_as_the_reference(name, regression, dense):
    rng = np.random.default_rng(abs(hash((name, dense))) % 2**32)
    model = LinearModel(name, l2=0.05, epsilon=EPSILON)
    dataset = _problem(rng, dense, regression)
    order = np.concatenate([rng.permutation(dataset.n_samples)] * 2)
    start = rng.normal(scale=0.3, size=model.n_params(dataset.n_features))
    params = start.copy()
    _kernel_run(dataset, model, order, 2, 0.05, params)
    weights, intercept = reference.sequential_sgd(dataset, model, order, 2, 0.05,
                                                  start[:-1], start[-1])
    np.testing.assert_allclose(params[:-1], weights, rtol=0, atol=TOLERANCE)
    assert abs(params[-1] - intercept) <= TOLERANCE
    loss, _ = kernels.objective(_rows(dataset), dense, params, dataset.n_features, True,
                                kernels.model_terms(model))
    assert abs(loss - reference.objective(dataset, model, params[:-1], params[-1])[0]) <= TOLERANCE


SCHEDULES = [(1.0, 0.0), (1.0, 0.5), (37.5, 1.0)]  # constant, invscaling, optimal's shape


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("l1,l2", [(0.1, 0.0), (0.1, 0.05)])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_l1_and_schedules_match_the_reference(dense, batch_size, l1, l2, schedule):
    """The cumulative L1 penalty (lazy on sparse rows) and the step schedules, exact with one
    worker; the counter starts at 5, so t counts from there."""
    rng = np.random.default_rng(abs(hash((dense, batch_size, l1, l2, schedule))) % 2**32)
    model = LinearModel("log_loss", l2=l2, l1=l1)
    dataset = _problem(rng, dense)
    order = np.concatenate([rng.permutation(dataset.n_samples)] * 3)
    start = rng.normal(scale=0.3, size=model.n_params(dataset.n_features))
    params = start.copy()
    buffers = _kernel_run(dataset, model, order, batch_size, 0.3, params, schedule, first_update=5)
    applied = [0.0] * dataset.n_features
    weights, intercept = reference.sequential_sgd(dataset, model, order, batch_size, 0.3,
                                                  start[:-1], start[-1], schedule=schedule,
                                                  first_update=5, applied=applied)
    np.testing.assert_allclose(params[:-1], weights, rtol=0, atol=TOLERANCE)
    assert abs(params[-1] - intercept) <= TOLERANCE
    np.testing.assert_allclose(buffers.l1_applied, applied, rtol=0, atol=TOLERANCE)
    assert np.count_nonzero(params[:-1] == 0.0) > 0  # the penalty clipped some weight to 0


@pytest.mark.parametrize("schedule", SCHEDULES[1:])
def test_momentum_follows_the_schedule(schedule):
    rng = np.random.default_rng(3)
    model = LinearModel("hinge", l2=0.01)
    dataset = _problem(rng, False)
    order = np.concatenate([rng.permutation(dataset.n_samples)] * 2)
    start = rng.normal(scale=0.3, size=model.n_params(dataset.n_features))
    params = start.copy()
    _kernel_run(dataset, model, order, 2, 0.1, params, schedule, momentum=0.8)
    weights, intercept = reference.sequential_sgd(dataset, model, order, 2, 0.1, start[:-1],
                                                  start[-1], momentum=0.8, schedule=schedule)
    np.testing.assert_allclose(params, np.append(weights, intercept), rtol=0, atol=TOLERANCE)


def test_l1_without_clipping_room_changes_nothing_and_with_it_sparsifies():
    data = synthetic_dense(400, 30, seed=4)
    plain = Engine(LinearModel("hinge"), lr=0.05, workers=1, epochs=3, progress=False).fit(data)
    sparse = Engine(LinearModel("hinge", l1=0.01), lr=0.05, workers=1, epochs=3,
                    progress=False).fit(data)
    assert np.count_nonzero(sparse.params == 0.0) > np.count_nonzero(plain.params == 0.0)


def test_optimal_schedule_is_sklearns_formula():
    model = LinearModel("hinge", l2=1e-4)
    schedule = step_schedule(model, "optimal", 0.5)
    typw = np.sqrt(1.0 / np.sqrt(1e-4))
    optimal_init = 1.0 / (typw / max(1.0, 1.0) * 1e-4)  # hinge: dloss(-typw, 1) = -1
    assert schedule.t0 == pytest.approx(optimal_init, rel=1e-15) and schedule.power == 1.0
    for t in (0, 1, 10, 10_000):
        step = schedule.base_step * (schedule.t0 / (schedule.t0 + t)) ** schedule.power
        assert step == pytest.approx(1.0 / (1e-4 * (optimal_init + t)), rel=1e-14)
    # the policy gives only the shape: its own base step is replaced
    shaped = schedule.shaped(np.array([0.5, 0.25]))
    assert shaped[0] == schedule.base_step and shaped[1] == schedule.base_step / 2


@pytest.mark.parametrize("learning_rate", ["optimal", "invscaling"])
def test_one_worker_engine_equals_simulator_and_reference(learning_rate):
    """Shared memory and the simulator share the step code: one worker, bit for bit; and the
    engine's steps are the reference's."""
    data = synthetic_dense(60, 5, seed=2)
    model = LinearModel("modified_huber", l2=1e-2, l1=1e-2)
    options = dict(lr=0.05, workers=1, epochs=2, learning_rate=learning_rate, power_t=0.3,
                   progress=False, seed=4)
    engine = Engine(model, **options).fit(data)
    simulated = Simulator(model, **options).fit(data)
    assert np.array_equal(engine.params, simulated.params)
    assert engine.intercept == simulated.intercept
    schedule = step_schedule(model, learning_rate, 0.3)
    rng = np.random.default_rng(np.random.SeedSequence(4).spawn(1)[0])  # the engine's orders
    order = np.concatenate([rng.permutation(60) for _ in range(2)])
    base = schedule.base_step or 0.05
    dataset = prepare_dataset(model, data, None, 1, 1)  # labels in {-1, +1}
    weights, intercept = reference.sequential_sgd(dataset, model, order, 1, base, [0.0] * 5, 0.0,
                                                  schedule=(schedule.t0, schedule.power))
    np.testing.assert_allclose(engine.params, weights, rtol=0, atol=TOLERANCE)
    assert abs(engine.intercept - intercept) <= TOLERANCE


def test_the_derivative_bound_is_the_engines_the_simulators_and_the_references():
    """max_derivative clips each row's loss derivative in the SGD loop, the simulator and the
    reference alike: one worker, bit for bit against the simulator and to TOLERANCE against the
    reference; a bound the derivatives reach changes the run."""
    data = synthetic_dense(60, 5, seed=2)
    options = dict(lr=0.05, workers=1, epochs=2, progress=False, seed=4)
    bounded, free = LinearModel("squared_hinge", max_derivative=0.5), LinearModel("squared_hinge")
    engine = Engine(bounded, **options).fit(data)
    simulated = Simulator(bounded, **options).fit(data)
    assert np.array_equal(engine.params, simulated.params) and engine.intercept == simulated.intercept
    assert not np.array_equal(engine.params, Engine(free, **options).fit(data).params)
    rng = np.random.default_rng(np.random.SeedSequence(4).spawn(1)[0])  # the engine's orders
    order = np.concatenate([rng.permutation(60) for _ in range(2)])
    dataset = prepare_dataset(bounded, data, None, 1, 1)
    weights, intercept = reference.sequential_sgd(dataset, bounded, order, 1, 0.05, [0.0] * 5, 0.0)
    np.testing.assert_allclose(engine.params, weights, rtol=0, atol=TOLERANCE)
    assert abs(engine.intercept - intercept) <= TOLERANCE


@pytest.mark.parametrize("learning_rate", ["constant", "optimal", "invscaling"])
def test_two_workers_train_every_new_path(learning_rate):
    """Two workers (Hogwild!: loose properties only): finite, and the objective decreases."""
    data = synthetic_dense(3000, 20, seed=1)
    model = LinearModel("log_loss", l2=1e-3, l1=1e-3)
    result = Engine(model, lr=0.01, workers=2, epochs=3, learning_rate=learning_rate,
                    progress=False, eval_every_updates=1000).fit(data)
    assert np.isfinite(result.params).all() and np.isfinite(result.intercept)
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.final_accuracy > 0.8


@pytest.mark.parametrize("arguments,named", [
    (dict(model="nonsense"), "nonsense"),
    (dict(learning_rate="adaptive"), "adaptive"),
    (dict(power_t=-0.5), "-0.5"),
    (dict(learning_rate="optimal"), "optimal"),
    (dict(model=LinearModel("hinge", l1=0.1), backend="ray"), "l1"),
])
def test_bad_values_are_refused_before_any_worker_starts(arguments, named):
    """Refused when the engine is made, so before any worker starts."""
    arguments = dict(arguments)
    model = arguments.pop("model", LinearModel("hinge"))
    with pytest.raises(ValueError, match=named):
        Engine(model, workers=1, progress=False, **arguments)
    with pytest.raises(ValueError, match=named):
        if "backend" not in arguments:
            Simulator(model, workers=1, **arguments)
        else:
            raise ValueError(named)


def test_bad_model_values_name_the_value():
    for bad in (dict(l1=-0.1), dict(l2=float("nan")), dict(epsilon=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LinearModel("huber", **bad)


def test_one_worker_optimal_hinge_is_close_to_sklearn():
    """learning_rate='optimal', hinge, l2=1e-4, 5 epochs without shuffling: on dense
    standardized data our per-sample L2 split is sklearn's decay, so the coefficients agree."""
    datasets = pytest.importorskip("sklearn.datasets")
    linear_model = pytest.importorskip("sklearn.linear_model")
    X, y = datasets.load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    labels = np.where(y > 0, 1.0, -1.0)
    sklearn = linear_model.SGDClassifier(loss="hinge", alpha=1e-4, shuffle=False, max_iter=5,
                                         tol=None, learning_rate="optimal").fit(X, y)
    engine = Engine(LinearModel("hinge", l2=1e-4), learning_rate="optimal", workers=1, epochs=5,
                    progress=False)
    # no shuffle: every epoch visits the rows in order, as sklearn with shuffle=False
    dataset = as_dataset(X, labels)
    schedule = engine.schedule
    params = np.zeros(X.shape[1] + 1)
    order = np.tile(np.arange(X.shape[0]), 5)
    _kernel_run(dataset, engine.model, order, 1, schedule.base_step, params,
                (schedule.t0, schedule.power))
    ours, theirs = np.append(params[:-1], params[-1]), np.append(sklearn.coef_[0], sklearn.intercept_)
    correlation = np.corrcoef(ours, theirs)[0, 1]
    assert correlation > 0.999, correlation
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)  # measured: 2.2e-13


def _averaged_kernel_run(dataset, model, order, batch_size, alpha, params, average_start,
                         schedule=(1.0, 0.0)):
    """One worker's averaging kernel over ``order``; returns the averaged parameters."""
    n_params = params.shape[0]
    buffers = kernels.WorkerBuffers(
        np.zeros(8, np.int64), np.zeros(16, np.int64), np.zeros(batch_size), kernels.NO_VELOCITY,
        kernels.NO_MARKS, np.zeros(dataset.n_features), np.zeros((1, kernels.TOTALS_COLUMNS)), 0,
        np.zeros(n_params), np.zeros(n_params, np.int64), average_start)
    kernel = kernels.sgd_kernel(dataset.dense, model.fit_intercept, model.l2, True)
    counter = np.zeros(1, np.int64)
    status = kernel(_rows(dataset), order, 0, order.shape[0], batch_size, params, dataset.n_features,
                    kernels.model_terms(model), 0.0, np.array([alpha]), *schedule, counter, buffers)
    assert status == kernels.STATUS_OK
    return kernels.finish_average(buffers.averaged, buffers.averaged_marks, params,
                                  int(counter[0]) - average_start)


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("average_start", [0, 20, 10_000])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_lazy_averaging_is_the_mean_of_the_iterates(dense, batch_size, average_start, fit_intercept):
    """Averaged SGD, lazy on sparse rows, against the reference's eager mean over every
    coordinate (with L1, L2 and a schedule); start 10_000 is never reached: the last iterate."""
    rng = np.random.default_rng(abs(hash((dense, batch_size, average_start, fit_intercept))) % 2**32)
    model = LinearModel("hinge", l2=0.01, l1=0.01, fit_intercept=fit_intercept)
    dataset = _problem(rng, dense)
    order = np.concatenate([rng.permutation(dataset.n_samples)] * 4)
    start = rng.normal(scale=0.3, size=model.n_params(dataset.n_features))
    params = start.copy()
    averaged = _averaged_kernel_run(dataset, model, order, batch_size, 0.2, params, average_start,
                                    (1.0, 0.5))
    expected = []
    weights, intercept = reference.sequential_sgd(
        dataset, model, order, batch_size, 0.2, start[:dataset.n_features],
        start[dataset.n_features] if fit_intercept else 0.0, schedule=(1.0, 0.5),
        average_start=average_start, averaged=expected)
    np.testing.assert_allclose(params[:dataset.n_features], weights, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(averaged, expected, rtol=0, atol=TOLERANCE)
    if average_start < 10_000:
        assert not np.allclose(averaged, params)


def test_engine_keeps_the_averaged_and_the_last_iterate():
    data = synthetic_dense(300, 8, seed=5)
    options = dict(lr=0.05, workers=1, epochs=2, progress=False, seed=1)
    plain = Engine(LinearModel("log_loss", l2=1e-3), **options).fit(data)
    averaged = Engine(LinearModel("log_loss", l2=1e-3), average=True, **options).fit(data)
    assert np.array_equal(averaged.last_params, plain.params)  # the same iterates
    assert averaged.last_intercept == plain.intercept
    assert not np.allclose(averaged.params, plain.params)
    assert plain.last_params is None
    late = Engine(LinearModel("log_loss", l2=1e-3), average=10**6, **options).fit(data)
    assert np.array_equal(late.params, plain.params)  # never reached: the last iterate


def test_two_workers_average_loosely():
    data = synthetic_dense(3000, 20, seed=1)
    result = Engine(LinearModel("hinge", l2=1e-3), lr=0.01, workers=2, epochs=3, average=100,
                    progress=False).fit(data)
    assert np.isfinite(result.params).all() and np.isfinite(result.intercept)
    X = data.values.reshape(data.n_samples, -1)
    labels = np.where(data.y > 0, 1.0, -1.0)
    accuracy = np.mean(np.sign(X @ result.params + result.intercept) == labels)
    assert accuracy > 0.8


@pytest.mark.parametrize("average", [-1, 1.5, "yes"])
def test_bad_average_is_refused(average):
    with pytest.raises(ValueError, match="average"):
        Engine(LinearModel("hinge"), average=average, workers=1, progress=False)


def test_model_files_of_the_new_losses_load_and_old_checkpoint_settings_still_resume(tmp_path):
    from hogwild_mts import checkpoint, model_file

    model_file.save_linear(str(tmp_path / "huber"), kind="HogwildRegressor", coef=np.ones((1, 3)),
                           intercept=np.zeros(1), classes=None,
                           estimator_params={"loss": "huber", "epsilon": 0.2, "l1": 0.01,
                                             "fit_intercept": True},
                           histogram=np.ones(2, np.int64), counter=2, metrics={})
    document, arrays = model_file.read(str(tmp_path / "huber"))
    assert document["params"]["loss"] == "huber" and document["params"]["epsilon"] == 0.2
    with pytest.raises(model_file.ModelFileError, match="hinge"):  # a classifier takes huber, as SGDClassifier
        model_file.save_linear(str(tmp_path / "wrong"), kind="HogwildRegressor",
                               coef=np.ones((1, 3)), intercept=np.zeros(1), classes=None,
                               estimator_params={"loss": "hinge", "fit_intercept": True},
                               histogram=np.ones(2, np.int64), counter=2, metrics={})
        model_file.read(str(tmp_path / "wrong"))
    engine = Engine(LinearModel("svm", l2=1e-3), workers=1, progress=False)
    current = checkpoint.run_settings(engine, backend="shm", n_features=3, n_samples=10, digest="d")
    old = {name: value for name, value in current.items() if name not in checkpoint.SETTING_DEFAULTS}
    checkpoint.check_resume("old", old, current)  # written before the new settings existed
    with pytest.raises(ValueError, match="learning_rate='constant'"):
        changed = Engine(LinearModel("svm", l2=1e-3), workers=1, progress=False,
                         learning_rate="invscaling")
        checkpoint.check_resume("old", old, checkpoint.run_settings(
            changed, backend="shm", n_features=3, n_samples=10, digest="d"))


def test_a_run_continues_the_schedule_and_the_average_of_an_earlier_one():
    data = synthetic_dense(300, 8, seed=5)
    model = LinearModel("hinge", l2=1e-3)

    def run(**options):
        return Engine(model, lr=0.05, learning_rate="invscaling", power_t=0.5, workers=1,
                      epochs=1, seed=3, progress=False, **options)

    first = run(average=True).fit(data)
    n = first.updates
    start = np.append(first.last_params, first.last_intercept)
    averaged_first = np.append(first.params, first.intercept)
    continued = run(average=True, start_update=n).fit(data, init_params=start,
                                                      init_average=averaged_first)
    alone = run(average=n + 1, start_update=n).fit(data, init_params=start)  # averages only its own
    assert np.array_equal(continued.last_params, alone.last_params)  # the same steps at t = n, n + 1, ...
    np.testing.assert_allclose(continued.params, (first.params + alone.params) / 2, rtol=1e-9, atol=1e-12)
    restarted = run(start_update=0).fit(data, init_params=start)
    assert not np.array_equal(restarted.params, alone.last_params)  # larger steps from t = 0
    with pytest.raises(ValueError, match="give their averaged parameters as init_average"):
        run(average=True, start_update=n).fit(data, init_params=start)
    with pytest.raises(ValueError, match="init_average applies to a run that continues"):
        run().fit(data, init_average=averaged_first)


def test_optimal_steps_follow_optimal_alpha_without_a_penalty():
    unpenalised = step_schedule(LinearModel("hinge"), "optimal", 0.5, penalty=1e-4)
    assert unpenalised == step_schedule(LinearModel("hinge", l2=1e-4), "optimal", 0.5)
    with pytest.raises(ValueError, match="needs a penalty"):
        Engine(LinearModel("hinge"), learning_rate="optimal", workers=1, progress=False)
    engine = Engine(LinearModel("hinge"), learning_rate="optimal", optimal_alpha=1e-4, workers=1,
                    progress=False)
    assert engine.schedule == unpenalised
