"""What the command line, the model files and the reports say: one-vs-rest from the command
line, model files of function policies, string labels and feature names, the best staleness
model and the tail, and runs that went badly."""

import json
import types
import warnings

import numpy as np
import pytest
from sklearn.datasets import dump_svmlight_file
from sklearn.exceptions import ConvergenceWarning

from hogwild_mts.app.cli import EXIT_BAD_INPUT, main
from hogwild_mts.app.experiment import staleness_fits
from hogwild_mts.core.result import TrainingWarning, divergence_message, training_trouble
from hogwild_mts.engines.linear import Engine
from hogwild_mts.estimators import HogwildClassifier, load
from hogwild_mts.model_file import storable_labels
from hogwild_mts.models.linear import LinearModel
from hogwild_mts.policies.step_sizes import FunctionPolicy, policy_table
from hogwild_mts.staleness.models import Empirical, best_of, fit_model
from hogwild_mts.staleness.summary import fit_staleness_models, staleness_summary, tail_note


def _three_classes(n=240, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    y = np.arange(n) % 3
    return centres[y] + 0.5 * rng.normal(size=(n, 3)), y


@pytest.fixture
def three_class_file(tmp_path):
    X, y = _three_classes()
    path = tmp_path / "three.svm"
    dump_svmlight_file(X, y, str(path))
    return str(path)


# ---------------------------------------------------------------------------- one-vs-rest CLI
def test_train_on_three_classes_trains_one_vs_rest_and_predict_reads_it(tmp_path, three_class_file, capsys):
    out, predictions = tmp_path / "run", tmp_path / "predictions.csv"
    assert main(["train", "--data", three_class_file, "--workers", "1", "--epochs", "3",
                 "--lr", "0.05", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "one-vs-rest" in printed.out and "over the 3 classes" in printed.out
    assert printed.out.count("\nclass ") == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["one_vs_rest"] and metrics["classes"] == [0.0, 1.0, 2.0]
    assert len(metrics["per_class"]) == 3 and metrics["final_accuracy"] > 0.9
    assert metrics["updates"] == sum(run["updates"] for run in metrics["per_class"])
    assert np.load(out / "params.npy").shape == (3, 3) and len(metrics["intercept"]) == 3
    assert load(str(out)).coef_.shape == (3, 3)
    assert main(["predict", str(out), "--data", three_class_file, "--out", str(predictions)]) == 0
    rows = predictions.read_text().splitlines()
    assert rows[0] == "prediction,p_0.0,p_1.0,p_2.0" and len(rows) == 241
    assert "score on three.svm" in capsys.readouterr().err


def test_one_vs_rest_hinge_predictions_carry_a_margin_per_class(tmp_path, three_class_file, capsys):
    out = tmp_path / "svm"
    assert main(["train", "--model", "svm", "--data", three_class_file, "--workers", "1",
                 "--epochs", "2", "--lr", "0.05", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), "--data", three_class_file]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "prediction,score_0.0,score_1.0,score_2.0"


def test_one_vs_rest_refuses_what_only_a_binary_run_takes(three_class_file, capsys):
    assert main(["train", "--data", three_class_file, "--momentum", "0.5", "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "3 classes" in err and "--momentum" in err and len(err.strip().splitlines()[-1]) > 0


# ---------------------------------------------------------------------------- model files
def test_a_function_policy_is_saved_as_its_table(tmp_path):
    X, y = _three_classes(90)
    fitted = HogwildClassifier(policy=lambda tau: 0.05 / (1 + tau), max_iter=1, tol=None).fit(X, y)
    loaded = load(fitted.save(str(tmp_path / "m")))
    assert isinstance(loaded.policy, FunctionPolicy)
    np.testing.assert_allclose(policy_table(loaded.policy), policy_table(FunctionPolicy(lambda tau: 0.05 / (1 + tau))))
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))


def test_object_string_labels_and_feature_names_survive_a_model_file(tmp_path):
    X, y = _three_classes(90)
    labels = np.array(["setosa", "versicolor", "virginica"], dtype=object)[y]
    fitted = HogwildClassifier(max_iter=1, tol=None).fit(X, labels)
    fitted.feature_names_in_ = np.array(["a", "b", "c"], dtype=object)  # as a DataFrame's columns set it
    loaded = load(fitted.save(str(tmp_path / "m")))
    assert loaded.classes_.tolist() == ["setosa", "versicolor", "virginica"]
    assert loaded.feature_names_in_.tolist() == ["a", "b", "c"] and loaded.feature_names_in_.dtype == object
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # X without names, the model with them
        assert loaded.predict(X).tolist() == fitted.predict(X).tolist()


def test_boolean_labels_load_back_and_mixed_labels_are_refused(tmp_path):
    X, y = _three_classes(60)
    fitted = HogwildClassifier(max_iter=1, tol=None).fit(X, y == 0)
    assert load(fitted.save(str(tmp_path / "m"))).classes_.tolist() == [False, True]
    with pytest.raises(ValueError, match="numbers, booleans or strings"):
        storable_labels(np.array([1, "a"], dtype=object))
    assert storable_labels(np.array(["x", "y"], dtype=object)).dtype.kind == "U"


# ---------------------------------------------------------------------------- staleness
def test_the_best_model_is_never_the_empirical_reference():
    histogram = np.array([900, 60, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 5])
    fits = fit_staleness_models(histogram)
    assert fits["best"] in ("geometric", "poisson", "cmp") and "empirical" in fits["models"]
    fitted = {name: fit_model(name, histogram) for name in ("geometric", "poisson", "cmp", "empirical")}
    assert fitted["empirical"].fit_report.aic < min(m.fit_report.aic for n, m in fitted.items() if n != "empirical")
    assert best_of(fitted).name == fits["best"] == fit_model("auto", histogram).name
    with pytest.raises(ValueError, match="no parametric"):
        best_of({"empirical": Empirical.fit(histogram)})


def test_the_tail_is_the_share_above_ten_times_the_median_and_max_is_preemption():
    histogram = np.zeros(60, dtype=np.int64)
    histogram[0], histogram[1], histogram[50] = 900, 95, 5
    summary = staleness_summary(histogram, 50_000)
    assert summary["median"] == 0 and summary["tail_above"] == 10
    assert summary["tail_share"] == pytest.approx(0.005)
    assert "preemption" in tail_note(summary) and "max 50,000" in tail_note(summary)
    histogram = np.zeros(60, dtype=np.int64)
    histogram[4:7] = 100
    summary = staleness_summary(histogram, 6)
    assert summary["tail_above"] == 50 and summary["tail_share"] == 0.0
    assert "preemption" not in tail_note(summary)


def test_train_summary_names_a_parametric_best_and_the_reference(capsys):
    assert main(["train", "--data", "synthetic-sparse:n=600,d=50,nnz=5,seed=1", "--workers", "2",
                 "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "best by AIC: empirical" not in out and "staleness tail" in out
    assert "a reference" in out or "staleness fit" not in out


def test_experiment_staleness_table_uses_the_same_best():
    histogram = [900, 60, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 5]
    rows = staleness_fits([{"workers": 2, "staleness": {"max": 13}, "staleness_histogram": histogram}])
    assert rows[0]["best_by_aic"] == fit_staleness_models(np.array(histogram))["best"]
    assert rows[0]["tail_above"] == 10 and rows[0]["tail_share"] == pytest.approx(20 / 1000)


# ---------------------------------------------------------------------------- bad runs
def _run(losses, final=None, workers=1, momentum=0.0, interrupted=False):
    return types.SimpleNamespace(history={"loss": list(losses)}, final_loss=losses[-1] if final is None else final,
                                 interrupted=interrupted, workers=workers,
                                 settings={"momentum": momentum}, policy={"name": "constant", "lr": 0.5})


def test_training_trouble_flags_a_rise_and_fits_its_advice_to_the_run():
    assert training_trouble(_run([0.69, 0.4, 0.3])) is None
    assert training_trouble(_run([0.69, 1e-9, 3e-9])) is None  # noise near 0 is not a rise
    assert training_trouble(_run([0.69, 0.4, 0.9], interrupted=True)) is None
    above = training_trouble(_run([0.69, 0.4, 1.10]), max_abs_x=4254.0)
    assert "above the starting loss" in above and "scale the features" in above
    assert "lr is 0.5" in above and "stale" not in above
    risen = training_trouble(_run([0.69, 0.1, 0.3], workers=2, momentum=0.9), max_abs_x=1.0)
    assert "2x the best" in risen and "scale" not in risen
    assert "momentum" in risen and "damps stale updates" in risen


def test_divergence_advice_speaks_of_staleness_only_with_several_workers():
    assert "stale" not in divergence_message("constant", "the loss", workers=1)
    assert "damps stale updates" in divergence_message("constant", "the loss", workers=2)


def _unscaled(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * 300.0
    return X, (X[:, 0] + 0.3 * X[:, 1] > 0).astype(int)


def test_engine_estimator_and_cli_warn_of_a_run_that_went_badly(tmp_path, capsys):
    X, y = _unscaled()
    engine = Engine(LinearModel("logreg"), "constant", lr=0.5, workers=1, epochs=2, progress=False)
    with pytest.warns(TrainingWarning, match="scale the features"):
        engine.fit(X, y)
    with pytest.warns(ConvergenceWarning, match="HogwildClassifier: training went badly"):
        HogwildClassifier(loss="log_loss", learning_rate="constant", eta0=0.5, max_iter=2, tol=None,
                          random_state=0).fit(X, y)
    with pytest.warns(ConvergenceWarning, match="class 2 against the rest: training went badly"):
        HogwildClassifier(loss="log_loss", learning_rate="constant", eta0=0.5, max_iter=2,
                          tol=None, random_state=0).fit(X, np.digitize(X[:, 0], [-100, 100]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HogwildClassifier(loss="log_loss", learning_rate="constant", eta0=0.05, max_iter=2,
                          tol=None, random_state=0).fit(X / 300.0, y)  # a good run is quiet
    data = tmp_path / "unscaled.npz"
    np.savez(data, X=X, y=y)
    main(["train", "--data", str(data), "--workers", "1", "--epochs", "2", "--quiet"])
    lines = [line for line in capsys.readouterr().err.splitlines() if "training went badly" in line]
    assert len(lines) == 1 and lines[0].startswith("hogwild-mts: warning: ")
    assert "scale the features" in lines[0] and "stale" not in lines[0]
