"""Network model files, init, checkpoints and resume (TorchEngine.save, load_network,
fit(init=, init_params=, resume=), checkpoint_dir): a saved network predicts as the fitted one; a
file of another kind, version or network is refused; a fit from a file starts at its loss; a
checkpoint taken during a run resumes the remaining batches with the counter going on; bad
resumes are refused before any worker starts; the command line trains, saves, predicts, resumes."""

import csv
import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hogwild_mts
from hogwild_mts import TorchEngine, load_network, model_file
from hogwild_mts.app.cli import EXIT_BAD_INPUT, main
from hogwild_mts.backends.shm.block import SharedBlock
from hogwild_mts.kernels.flat import bind_parameters, parameter_count
from hogwild_mts.kernels.split import total_updates
from hogwild_mts.data.images import load_images
from hogwild_mts.engines import networks
from hogwild_mts.model_file import ModelFileError
from hogwild_mts.models.nets import build_network
from tests.helpers import WAIT_SECONDS, live_children, shared_blocks

OPTIONS = dict(workers=1, epochs=3, progress=False, eval_every=100)


@pytest.fixture(scope="module")
def digits():
    return load_images("digits")


@pytest.fixture(scope="module")
def fitted(digits, tmp_path_factory):
    """(engine, result, saved model file) of a one-worker fit."""
    engine = TorchEngine("mlp", **OPTIONS)
    result = engine.fit(digits)
    path = str(tmp_path_factory.mktemp("model"))
    engine.save(result, path)
    return engine, result, path


def record_checkpoints(monkeypatch, directory):
    """Every checkpoint the engines write, copied under ``directory`` as it was: a list of
    (copy's path, RunState)."""
    copies = []
    write = networks._NetworkRun.write

    def write_and_copy(self, network, state):
        write(self, network, state)
        copy = os.path.join(directory, f"copy-{len(copies)}")
        shutil.copytree(self.engine.checkpoints.directory, copy)
        copies.append((copy, state))

    monkeypatch.setattr(networks._NetworkRun, "write", write_and_copy)
    return copies


@pytest.fixture(scope="module")
def checkpointed(digits, tmp_path_factory):
    """(result, the copies of its checkpoints) of the fitted run, checkpointed every 100 updates."""
    directory = tmp_path_factory.mktemp("checkpoints")
    with pytest.MonkeyPatch.context() as monkeypatch:
        copies = record_checkpoints(monkeypatch, str(directory))
        result = TorchEngine("mlp", checkpoint_dir=directory / "ckpt", checkpoint_every_updates=100,
                             **OPTIONS).fit(digits)
    return result, copies


def cross_entropy_on_test(network, digits) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(network(torch.from_numpy(digits.test_inputs)),
                                     torch.from_numpy(digits.test_targets)))


# ------------------------------------------------------------------------------------ save, load
def test_a_saved_network_predicts_as_the_fitted_one(digits, fitted, tmp_path):
    engine, result, path = fitted
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    engine.save(result, tmp_path)
    assert torch.equal(torch.rand(3), expected)  # saving left the caller's random state alone
    loaded = load_network(path)
    assert not loaded.training and next(loaded.parameters()).dtype == torch.float32
    reference = build_network("mlp", digits.input_shape, digits.outputs).eval()
    bind_parameters(reference, result.params.astype(np.float32))  # the fitted network
    inputs = torch.from_numpy(digits.test_inputs)
    with torch.no_grad():
        assert torch.equal(loaded(inputs), reference(inputs))
    assert cross_entropy_on_test(loaded, digits) == pytest.approx(result.final_loss, rel=1e-6)
    # the weights are a plain state_dict: torch alone loads them
    document = json.loads(open(os.path.join(path, "model.json")).read())
    assert document["kind"] == "TorchNetwork" and document["network"]["name"] == "mlp"
    assert document["classes"] == list(digits.classes) and document["counter"] == result.counter
    assert sum(document["staleness_histogram"]) == result.updates
    plain = build_network("mlp", digits.input_shape, digits.outputs)
    plain.load_state_dict(torch.load(os.path.join(path, document["weights"]), weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), loaded.parameters()))


def batch_norm_net(input_shape, outputs):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 16),
                         nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, outputs))


def test_a_network_of_ones_own_factory_loads_with_it_buffers_included(digits, tmp_path):
    engine = TorchEngine(batch_norm_net, workers=1, epochs=1, progress=False)
    result = engine.fit(digits)
    engine.save(result, tmp_path)
    with pytest.raises(ModelFileError, match="factory 'batch_norm_net'.*load_network"):
        load_network(tmp_path)
    loaded = load_network(tmp_path, factory=batch_norm_net)
    n_params = parameter_count(loaded)
    running = torch.cat([loaded[2].running_mean, loaded[2].running_var]).numpy()
    np.testing.assert_array_equal(running, result.params[n_params:].astype(np.float32))
    assert cross_entropy_on_test(loaded, digits) == pytest.approx(result.final_loss, rel=1e-6)
    module = batch_norm_net(digits.input_shape, digits.outputs)
    assert load_network(tmp_path, factory=module) is module and not module.training


def test_files_of_another_kind_version_or_content_are_refused(fitted, tmp_path):
    _, _, path = fitted
    with pytest.raises(ModelFileError, match="kind 'TorchNetwork'.*hogwild_mts.load_network"):
        hogwild_mts.load(path)
    linear = model_file.save_linear(
        str(tmp_path / "linear"), kind="HogwildClassifier", coef=np.zeros((1, 3)),
        intercept=np.zeros(1), classes=np.array([0, 1]), estimator_params={}, histogram=np.zeros(1),
        counter=0, metrics={})
    with pytest.raises(ModelFileError, match="kind 'HogwildClassifier'.*hogwild_mts.load\\)"):
        load_network(linear)
    for change, message in ((dict(version=99), "format version 99"),
                            (dict(weights="../elsewhere.pt"), "field 'weights' .*got '../elsewhere.pt'"),
                            (dict(loss="hinge"), "field 'loss' must be one of .*got 'hinge'")):
        copy = tmp_path / f"changed-{len(os.listdir(tmp_path))}"
        shutil.copytree(path, copy)
        document = json.loads((copy / "model.json").read_text())
        (copy / "model.json").write_text(json.dumps(document | change))
        with pytest.raises(ModelFileError, match=message):
            load_network(copy)
    pickled = tmp_path / "pickled"
    shutil.copytree(path, pickled)
    named = json.loads((pickled / "model.json").read_text())["weights"]
    torch.save({"weight": nn.Linear(2, 2)}, pickled / named)  # a module: pickled code
    with pytest.raises(ModelFileError, match="unreadable weights"):
        load_network(pickled)


# ------------------------------------------------------------------------------------ init
def test_a_fit_from_a_file_starts_at_the_saved_models_loss(digits, fitted):
    engine, result, path = fitted
    for start in (dict(init=path), dict(init=load_network(path).state_dict()),
                  dict(init_params=result.params)):
        again = TorchEngine("mlp", **(OPTIONS | dict(epochs=1))).fit(digits, **start)
        assert again.history["loss"][0] == pytest.approx(result.final_loss, rel=1e-6)
        assert again.history["updates"][0] == 0 and again.final_loss < again.history["loss"][0]


@pytest.mark.parametrize("model, start, message", [
    ("cnn", "file", "another network: name='mlp' \\(this run: 'cnn'\\)"),
    ("mlp", "wrong-params", "init_params must have shape"),
    ("mlp", "both", "give one of init, init_params and resume"),
])
def test_a_start_that_does_not_fit_is_refused(digits, fitted, model, start, message):
    _, result, path = fitted
    options = {"file": dict(init=path), "wrong-params": dict(init_params=result.params[:-1]),
               "both": dict(init=path, resume=path)}[start]
    with pytest.raises(ValueError, match=message):
        TorchEngine(model, **OPTIONS).fit(digits, **options)


# ------------------------------------------------------------------------------------ checkpoints, resume
def test_a_checkpoint_resumes_the_remaining_batches_with_the_counter_going_on(digits, fitted, checkpointed):
    _, uninterrupted, _ = fitted
    result, copies = checkpointed
    total = total_updates(digits.n_train, 1, OPTIONS["epochs"], networks.DEFAULT_BATCH_SIZE)
    np.testing.assert_array_equal(result.params, uninterrupted.params)  # checkpoints change nothing
    middle = [(path, state) for path, state in copies if not state.finished]
    assert middle and copies[-1][1].finished and copies[-1][1].updates == total
    path, state = middle[0]
    assert 100 <= state.updates == state.counter == state.position < total
    assert load_network(path).training is False  # a checkpoint is a model file
    resumed = TorchEngine("mlp", **OPTIONS).fit(digits, resume=path)
    assert resumed.history["updates"][0] == state.updates
    assert resumed.updates == resumed.counter == total == int(resumed.staleness_histogram.sum())
    assert resumed.samples == uninterrupted.samples
    # one worker, no momentum: the same batches in the same order, bit for bit
    np.testing.assert_array_equal(resumed.params, uninterrupted.params)


def test_several_workers_with_momentum_and_buffers_resume_hogwild_style(digits, monkeypatch, tmp_path):
    copies = record_checkpoints(monkeypatch, str(tmp_path))
    options = dict(workers=2, epochs=2, momentum=0.5, progress=False)
    TorchEngine(batch_norm_net, checkpoint_dir=tmp_path / "ckpt", checkpoint_every_updates=40,
                **options).fit(digits)
    path, state = next((path, state) for path, state in copies if not state.finished)
    assert state.counter == int(state.histogram.sum()) and 0 < state.position
    resumed = TorchEngine(batch_norm_net, **options).fit(digits, resume=path)
    total = total_updates(digits.n_train, 2, 2, networks.DEFAULT_BATCH_SIZE)
    assert resumed.counter == resumed.updates >= total  # pieces running at the snapshot run again
    assert resumed.final_accuracy > 0.5 and not shared_blocks()


def test_ctrl_c_leaves_a_checkpoint_that_resumes(digits, tmp_path):
    directory = tmp_path / "ckpt"

    def interrupt_once_a_checkpoint_is_written():
        deadline = time.monotonic() + WAIT_SECONDS
        while not (directory / "model.json").exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_a_checkpoint_is_written, daemon=True).start()
    options = dict(OPTIONS, epochs=60)
    stopped = TorchEngine("mlp", checkpoint_dir=directory, checkpoint_every_updates=50,
                          **options).fit(digits)
    assert stopped.interrupted and not shared_blocks() and not live_children()
    document = json.loads((directory / "model.json").read_text())
    assert document["run"]["updates"] == document["counter"] == stopped.updates  # the stop state
    assert not document["run"]["finished"]
    resumed = TorchEngine("mlp", **options).fit(digits, resume=directory)
    assert resumed.history["updates"][0] == stopped.updates
    assert resumed.updates == resumed.counter == total_updates(digits.n_train, 1, 60, 16)
    assert resumed.samples == 60 * digits.n_train  # no batch twice, none left out


@pytest.fixture
def no_workers(monkeypatch):
    """Fail the test if a fit gets as far as creating its shared block."""
    def refuse(layout):
        raise AssertionError("the fit created its shared block before refusing")

    monkeypatch.setattr(SharedBlock, "create", refuse)


@pytest.mark.parametrize("case, message", [
    ("other epochs", "epochs=3 \\(this run: 4\\)"),
    ("other network", "network='mlp' \\(this run: 'cnn'\\)"),
    ("other batch size", "batch_size=16 \\(this run: 8\\)"),
    ("finished run", "that run finished \\(all 270 updates done\\).*load_network"),
    ("not a checkpoint", "without run state, not a checkpoint"),
    ("linear checkpoint", "kind 'HogwildRegressor'"),
    ("missing", "is not a directory"),
])
def test_bad_resumes_are_refused_before_any_worker_starts(case, message, digits, fitted, checkpointed,
                                                          tmp_path, no_workers):
    middle = next(path for path, state in checkpointed[1] if not state.finished)
    options = dict(OPTIONS)
    if case == "other epochs":
        options["epochs"] = 4
    elif case == "other batch size":
        options["batch_size"] = 8
    path = {"finished run": checkpointed[1][-1][0], "not a checkpoint": fitted[2],
            "missing": str(tmp_path / "nowhere")}.get(case, middle)
    if case == "linear checkpoint":
        path = model_file.save_linear(
            str(tmp_path / "linear"), kind="HogwildRegressor", coef=np.zeros((1, 3)),
            intercept=np.zeros(1), classes=None, estimator_params={}, histogram=np.zeros(1),
            counter=0, metrics={}, run={"settings": {}})
    model = "cnn" if case == "other network" else "mlp"
    with pytest.raises(ValueError, match=message):
        TorchEngine(model, **options).fit(digits, resume=path)


@pytest.mark.parametrize("options, message", [
    (dict(checkpoint_every=5), "need checkpoint_dir"),
    (dict(checkpoint_dir="x", split="static"), "checkpoints need split='dynamic'"),
    (dict(checkpoint_dir="x", backend="ray"), "checkpoint_dir applies to backend='shm'"),
    (dict(checkpoint_dir="x", checkpoint_every_updates=0), "checkpoint_every_updates"),
])
def test_bad_checkpoint_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        TorchEngine("mlp", **options)


# ------------------------------------------------------------------------------------ command line
TRAIN = ["train", "--model", "mlp", "--data", "digits", "--workers", "1", "--epochs", "2", "--quiet"]


def test_cli_train_out_then_predict(digits, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out)]) == 0
    assert "model.json and its weights-*.pt" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = tmp_path / "predictions.csv"
    assert main(["predict", str(out), "--data", "digits", "--out", str(predictions)]) == 0
    assert f"score on digits (test): {metrics['final_accuracy']:.4f} (accuracy)" in capsys.readouterr().err
    rows = list(csv.reader(predictions.open()))
    assert rows[0] == ["prediction"] + [f"p_{label}" for label in digits.classes]
    with torch.no_grad():
        expected = load_network(out)(torch.from_numpy(digits.test_inputs)).argmax(dim=1).numpy()
    assert [row[0] for row in rows[1:]] == [digits.classes[k] for k in expected]
    assert all(sum(map(float, row[1:])) == pytest.approx(1.0) for row in rows[1:])
    np.savez(tmp_path / "rows.npz", X=digits.test_inputs[:7])
    assert main(["predict", str(out), "--data", str(tmp_path / "rows.npz")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 8
    np.savez(tmp_path / "flat.npz", X=digits.test_inputs[:7].reshape(7, -1))
    assert main(["predict", str(out), "--data", str(tmp_path / "flat.npz")]) == EXIT_BAD_INPUT
    assert "rows of shape (64,); the network takes rows of shape (1, 8, 8)" in capsys.readouterr().err


def test_cli_checkpoints_init_and_resume(digits, tmp_path, monkeypatch, capsys):
    copies = record_checkpoints(monkeypatch, str(tmp_path))
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out), "--checkpoint-every", "50u"]) == 0
    assert f"checkpoint: {out / 'checkpoint'}" in capsys.readouterr().out
    middle = next(path for path, state in copies if not state.finished)
    resumed = tmp_path / "resumed"
    assert main(TRAIN + ["--resume", middle, "--out", str(resumed)]) == 0
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["updates"] == metrics["counter"] == total_updates(digits.n_train, 1, 2, 16)
    assert main(TRAIN + ["--resume", str(out / "checkpoint")]) == EXIT_BAD_INPUT
    assert "that run finished" in capsys.readouterr().err
    assert main(TRAIN + ["--init", str(out), "--epochs", "1"]) == 0
    assert main(TRAIN + ["--init", str(out), "--resume", middle]) == EXIT_BAD_INPUT
    assert "give --init or --resume, not both" in capsys.readouterr().err


def test_cli_predicts_the_values_of_a_regression_network(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6)).astype(np.float32)
    y = np.stack([X[:, 0] - X[:, 1], X[:, 2]], axis=1).astype(np.float32)
    engine = TorchEngine("mlp", loss="mse", workers=1, epochs=2, progress=False)
    result = engine.fit(X, y)
    engine.save(result, tmp_path / "model")
    np.savez(tmp_path / "rows.npz", X=X, y=y)
    assert main(["predict", str(tmp_path / "model"), "--data", str(tmp_path / "rows.npz")]) == 0
    captured = capsys.readouterr()
    rows = list(csv.reader(captured.out.splitlines()))
    assert rows[0] == ["prediction_0", "prediction_1"] and len(rows) == 201
    with torch.no_grad():
        expected = load_network(tmp_path / "model")(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(np.array(rows[1:], dtype=np.float64), expected, rtol=1e-6)
    error = float(captured.err.split("score on rows.npz: ")[1].split()[0])
    assert error == pytest.approx(result.final_loss, rel=1e-4)  # evaluated on the training rows
