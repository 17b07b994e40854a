"""The hogwild-mts command line: a real run with outputs, and every bad input refused with a
clear message and exit status 2 before any worker starts."""

import json

import numpy as np
import pytest

from hogwild_mts.app.cli import EXIT_BAD_INPUT, main
from hogwild_mts.core.files import strict_json
from tests.helpers import live_children, shared_blocks

SMALL = "synthetic-sparse:n=3000,d=500,nnz=10,seed=1"


def test_train_writes_metrics_and_parameters(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["train", "--data", SMALL, "--workers", "2", "--epochs", "2", "--quiet",
                   "--policy", "mindthestep", "--target", "shrink", "--r", "0.5", "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    for words in ("final loss", "train accuracy", "updates/s", "staleness tau", "median", "p99",
                  "staleness fit", "policy          mindthestep"):
        assert words in printed
    metrics = json.loads((out / "metrics.json").read_text())
    params = np.load(out / "params.npy")
    assert params.shape == (500,) and np.all(np.isfinite(params))
    assert metrics["counter"] == metrics["updates"] == sum(metrics["staleness_histogram"])
    assert metrics["policy"]["parameters"]["target"] == "shrink"
    assert metrics["staleness_fit"]["best"] in ("geometric", "poisson", "cmp", "empirical")
    assert not shared_blocks() and not live_children()


def _malformed_svmlight(tmp_path):
    path = tmp_path / "broken.svm"
    path.write_text("1 1:0.5 3:1.0\n-1 2:0.25\n+1 4:abc\n")
    return str(path)


BAD_ARGUMENTS = [
    (["--model", "ridge"], "unknown model 'ridge'"),
    (["--policy", "fastest"], "unknown policy 'fastest'"),
    (["--policy", "mindthestep", "--target", "faster"], "unknown mindthestep target 'faster'"),
    (["--lr", "0"], "lr must be a finite number > 0, got 0.0"),
    (["--lr", "nan"], "lr must be a finite number > 0"),
    (["--workers", "0"], "workers must be an integer >= 1, got 0"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["--epochs", "0"], "epochs must be an integer >= 1, got 0"),
    (["--data", "no/such/file.svm"], "'no/such/file.svm' is neither a known data set nor an existing file"),
    (["--data", "synthetic-sparse:n=-5"], "n_samples must be an integer >= 1, got -5"),
    (["--policy", "tail", "--tail-a", "2"], "A must be a finite number in [0, 1], got 2.0"),
    (["--policy", "mindthestep", "--mu", "1.5"], "mu must be a finite number in [0, 1), got 1.5"),
    (["--momentum", "1.5"], "momentum must be a finite number in [0, 1), got 1.5"),
    (["--weight-decay", "0.1"], "a linear model's weight decay is --l2"),
    (["--model", "mlp", "--momentum", "-0.1"], "momentum must be a finite number in [0, 1), got -0.1"),
    (["--max-worker-restarts", "1"], "--max-worker-restarts only applies to --backend ray"),
]


@pytest.mark.parametrize("arguments,words", BAD_ARGUMENTS)
def test_bad_input_exits_2_with_a_clear_message(arguments, words, capsys):
    status = main(["train", "--quiet"] + arguments)
    error = capsys.readouterr().err
    assert status == EXIT_BAD_INPUT
    assert words in error
    assert not shared_blocks() and not live_children()


def test_malformed_svmlight_names_file_and_line(tmp_path, capsys):
    path = _malformed_svmlight(tmp_path)
    assert main(["train", "--quiet", "--data", path]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert f"{path}:3" in error


def test_no_command_prints_help(capsys):
    assert main([]) == EXIT_BAD_INPUT
    assert "train" in capsys.readouterr().out


def test_usage_errors_are_one_line(capsys):
    assert main(["train", "--epochs", "many"]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert error.splitlines() == ["hogwild-mts train: error: argument --epochs: invalid int value: "
                                  "'many' (see hogwild-mts train --help)"]


def test_json_outputs_are_strict():
    text = strict_json({"loss": float("nan"), "tail": [np.float64(np.inf), np.int64(3)], "ok": np.bool_(True)})
    assert json.loads(text, parse_constant=lambda constant: pytest.fail(constant)) == {
        "loss": None, "tail": [None, 3], "ok": True}


def test_train_out_predict_and_init_round_trip(tmp_path, capsys):
    out, predictions = tmp_path / "run", tmp_path / "predictions.csv"
    assert main(["train", "--data", SMALL, "--workers", "1", "--epochs", "2", "--quiet",
                 "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    arrays = json.loads((out / "model.json").read_text())["arrays"]
    assert {"metrics.json", "params.npy", "model.json", arrays} == names and arrays.startswith("arrays-")
    stored = json.loads((out / "model.json").read_text())["params"]
    assert (stored["max_iter"], stored["eta0"], stored["loss"], stored["shuffle"]) == (2, 0.5, "log_loss", True)
    capsys.readouterr()
    assert main(["predict", str(out), "--data", SMALL, "--out", str(predictions)]) == 0
    assert "score on" in capsys.readouterr().err
    rows = predictions.read_text().splitlines()
    assert rows[0] == "prediction,p_-1.0,p_1.0" and len(rows) == 3001
    probabilities = np.array([[float(v) for v in row.split(",")[1:]] for row in rows[1:]])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    final_loss = json.loads((out / "metrics.json").read_text())["final_loss"]
    again = tmp_path / "again"
    assert main(["train", "--data", SMALL, "--workers", "1", "--epochs", "1", "--quiet",
                 "--init", str(out), "--out", str(again)]) == 0
    history = json.loads((again / "metrics.json").read_text())["history"]
    assert history["loss"][0] == pytest.approx(final_loss)  # started where the first run ended


@pytest.mark.parametrize("arguments,words", [
    (["predict", "nowhere", "--data", SMALL], "not a model file"),
    (["train", "--init", "nowhere", "--data", SMALL], "not a model file"),
    (["train", "--address", "auto", "--data", SMALL], "only apply to --backend ray"),
    (["train", "--backend", "spark"], "invalid choice: 'spark'"),
])
def test_model_file_and_backend_flags_refuse_bad_input(arguments, words, capsys):
    assert main(arguments) == EXIT_BAD_INPUT
    assert words in capsys.readouterr().err
    assert not shared_blocks() and not live_children()


def test_momentum_flag_reaches_the_linear_engine(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--data", "synthetic-sparse:n=2000,d=500", "--workers", "1",
                 "--epochs", "1", "--lr", "0.05", "--momentum", "0.9", "--quiet",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["momentum"] == 0.9 and metrics["final_accuracy"] > 0.7


def test_predict_refuses_more_features_than_the_model_has(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", SMALL, "--workers", "1", "--epochs", "1", "--quiet",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    wider = "synthetic-sparse:n=100,d=900,nnz=10,seed=1"
    assert main(["predict", str(out), "--data", wider]) == EXIT_BAD_INPUT
    assert "has 900 features; the model was trained on 500" in capsys.readouterr().err
