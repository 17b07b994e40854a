"""Checkpoints and resume (hogwild_mts.checkpoint): a resumed one-worker run equals the run that
was never stopped, bit for bit; Ctrl-C and SIGTERM leave a checkpoint that resumes and no shared
memory; several workers resume loosely; bad resumes are refused before any worker starts; a
checkpoint is a model file, replaced atomically; the command line; Ray."""

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import hogwild_mts.engines.linear as linear_engine
from hogwild_mts import load, make_policy, model_file
from hogwild_mts.app.cli import EXIT_BAD_INPUT, main
from hogwild_mts.kernels.split import total_updates
from hogwild_mts.core import files
from hogwild_mts.data.tabular import synthetic_dense, synthetic_sparse
from hogwild_mts.engines.linear import Engine
from hogwild_mts.estimators import LEGACY_PARAMS
from hogwild_mts.models.linear import LinearModel
from tests.helpers import WAIT_SECONDS, default_stop_signals, live_children, shared_blocks

CLI_DATA = "synthetic-sparse:n=1000,d=100,nnz=10,seed=3"


@pytest.fixture(scope="module")
def data():
    return synthetic_sparse(1200, 150, 10, seed=2)


def engine(**options):
    settings = dict(model="logreg", lr=0.3, workers=1, epochs=8, seed=4, progress=False)
    return Engine(**(settings | options))


@pytest.fixture
def written(monkeypatch, tmp_path):
    """Every checkpoint the engines write during the test, copied as it was: a list of
    (copy's path, RunState)."""
    copies, numbers = [], itertools.count()
    write = linear_engine.write_checkpoint

    def write_and_copy(directory, settings, state, classes=None):
        write(directory, settings, state, classes)
        copy = tmp_path / f"copy-{next(numbers)}"
        shutil.copytree(directory, copy)
        copies.append((str(copy), state))

    monkeypatch.setattr(linear_engine, "write_checkpoint", write_and_copy)
    return copies


def assert_same_run(resumed, uninterrupted):
    np.testing.assert_array_equal(resumed.params, uninterrupted.params)
    assert resumed.intercept == uninterrupted.intercept
    np.testing.assert_array_equal(resumed.staleness_histogram, uninterrupted.staleness_histogram)
    assert (resumed.counter, resumed.updates, resumed.samples, resumed.max_staleness) == (
        uninterrupted.counter, uninterrupted.updates, uninterrupted.samples, uninterrupted.max_staleness)


# The policies whose table does not change during a run: these resume bit for bit.
EXACT_POLICIES = {
    "constant": dict(policy="constant"),
    "inverse": dict(policy=make_policy("inverse", lr=0.3), lr=None),
    "exponential": dict(policy=make_policy("exponential", lr=0.3, beta=0.2), lr=None),
    "function": dict(policy=lambda tau: 0.3 / (1 + tau), lr=None),
    "mindthestep-no-refit": dict(policy=make_policy("mindthestep", lr=0.3, refit_every=0), lr=None),
    "tail-no-refit": dict(policy=make_policy("tail", lr=0.3, refit_every=0), lr=None),
}


@pytest.mark.parametrize("name", sorted(EXACT_POLICIES))
def test_a_resumed_one_worker_run_equals_the_uninterrupted_run(name, data, written, tmp_path):
    options = EXACT_POLICIES[name]
    uninterrupted = engine(**options).fit(data)
    total = total_updates(data.n_samples, 1, 8, 1)
    checkpointed = engine(checkpoint_dir=tmp_path / "ckpt", checkpoint_every_updates=total // 3,
                          **options).fit(data)
    assert_same_run(checkpointed, uninterrupted)  # taking checkpoints changes nothing
    middle = [(path, state) for path, state in written if not state.finished]
    assert middle and written[-1][1].finished  # during the run, then the final state
    path, state = middle[0]
    assert total // 3 <= state.updates == state.counter == state.position < total
    assert_same_run(engine(**options).fit(data, resume=path), uninterrupted)


@pytest.mark.parametrize("options", [
    dict(model="lsq", lr=0.01, batch_size=3, dtype="float32"),
    dict(model=LinearModel("svm", l2=1e-3, fit_intercept=False), batch_size=7, epochs=5),
    dict(model=LinearModel("svm", l2=1e-3), batch_size=2, epochs=4, momentum=0.9, lr=0.01),
], ids=["lsq-float32-batches", "svm-l2-no-intercept", "svm-momentum"])
def test_resume_is_exact_for_other_models_batches_and_dtypes(options, written, tmp_path):
    data = synthetic_dense(700, 12, seed=5) if options["model"] == "lsq" else synthetic_sparse(900, 80, 6, seed=1)
    uninterrupted = engine(**options).fit(data)
    total = total_updates(data.n_samples, 1, options.get("epochs", 8), options["batch_size"])
    engine(checkpoint_dir=tmp_path / "ckpt", checkpoint_every_updates=total // 2, **options).fit(data)
    path, state = written[0]
    assert 0 < state.position < total
    assert (state.velocity is not None and np.any(state.velocity)) == ("momentum" in options)
    assert_same_run(engine(**options).fit(data, resume=path), uninterrupted)


def test_a_resumed_run_checkpoints_on_and_is_still_exact(data, written, tmp_path):
    uninterrupted = engine().fit(data)
    total = total_updates(data.n_samples, 1, 8, 1)
    engine(checkpoint_dir=tmp_path / "first", checkpoint_every_updates=total // 4).fit(data)
    first = written[0][0]
    written.clear()
    resumed = engine(checkpoint_dir=tmp_path / "second", checkpoint_every_updates=total // 4).fit(
        data, resume=first)
    assert_same_run(resumed, uninterrupted)
    second = [path for path, state in written if not state.finished][0]
    assert_same_run(engine().fit(data, resume=second), uninterrupted)


def test_ctrl_c_leaves_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch):
    data = synthetic_sparse(1000, 100, 10, seed=7)
    options = dict(epochs=1500)
    directory = tmp_path / "ckpt"
    write, pressed = linear_engine.write_checkpoint, []

    def write_then_ctrl_c(*arguments, **keywords):
        """Ctrl-C once, when the first checkpoint is written (the run is then surely under way,
        on a busy machine too)."""
        write(*arguments, **keywords)
        if not pressed:
            pressed.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(linear_engine, "write_checkpoint", write_then_ctrl_c)
    stopped = engine(checkpoint_dir=directory, checkpoint_every_updates=20_000, **options).fit(data)
    monkeypatch.setattr(linear_engine, "write_checkpoint", write)
    assert stopped.interrupted and not shared_blocks()
    document, _ = model_file.read(directory)
    assert document["run"]["updates"] == stopped.updates == document["counter"]  # the stop state
    assert not document["run"]["finished"]
    assert_same_run(engine(**options).fit(data, resume=directory), engine(**options).fit(data))


def test_several_workers_resume_hogwild_style(data, written, tmp_path):
    options = dict(workers=2, epochs=40)
    total = total_updates(data.n_samples, 2, 40, 1)
    # Worker 0 snapshots between its pieces: on a busy machine it may hold one claim, descheduled,
    # while worker 1 claims all the rest, and then the run leaves no checkpoint before the end;
    # such a run is tried again (a few times at most), the resume is what is tested.
    for attempt in range(5):
        engine(checkpoint_dir=tmp_path / f"ckpt-{attempt}", checkpoint_every_updates=total // 4,
               **options).fit(data)
        middle = [(path, state) for path, state in written if not state.finished]
        if middle:
            break
    path, state = middle[0]
    # the position is the first batch not surely done: a worker slowed by the OS may still hold
    # an early claim, so it can be anywhere up to the updates counted
    assert 0 <= state.position <= state.updates < total
    assert state.counter == int(state.histogram.sum())
    resumed = engine(**options).fit(data, resume=path)
    # the batches from the position on run once more (pieces in flight at the snapshot again)
    assert resumed.updates == state.updates + total - state.position >= total
    assert resumed.counter == resumed.updates == int(resumed.staleness_histogram.sum())
    assert resumed.history["updates"][0] == state.updates
    assert resumed.final_loss < resumed.history["loss"][0]
    assert not shared_blocks() and not live_children()


def test_checkpoints_every_few_milliseconds_each_resume_exactly(data, written, tmp_path):
    options = dict(epochs=150)
    uninterrupted = engine(**options).fit(data)
    engine(checkpoint_dir=tmp_path / "ckpt", checkpoint_every=0.002, **options).fit(data)
    middle = [path for path, state in written if not state.finished]
    assert middle and written[-1][1].finished
    assert_same_run(engine(**options).fit(data, resume=middle[-1]), uninterrupted)


def test_a_checkpoint_is_a_model_file_that_predicts(data, tmp_path):
    result = engine(checkpoint_dir=tmp_path / "ckpt").fit(data)
    model = load(tmp_path / "ckpt")
    margins = data.to_scipy() @ result.params + result.intercept
    np.testing.assert_array_equal(model.predict(data.to_scipy()), np.where(margins > 0, 1.0, -1.0))
    assert model.get_params()["max_iter"] == 8 and model.classes_.tolist() == [-1.0, 1.0]
    stored = json.loads((tmp_path / "ckpt" / "model.json").read_text())["params"]
    assert not set(LEGACY_PARAMS) & set(stored)  # written in scikit-learn's names
    assert (stored["random_state"], stored["eta0"], stored["loss"], stored["tol"]) == (4, 0.3, "log_loss", None)


def test_a_crash_while_writing_leaves_the_previous_checkpoint_whole(data, tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    first = engine(epochs=1, checkpoint_dir=directory).fit(data)
    real_write = files.write_atomic

    def crash_at_the_commit(path, payload):
        if os.path.basename(path) == model_file.MODEL_JSON:
            raise KeyboardInterrupt  # after the new arrays file, before model.json
        real_write(path, payload)

    monkeypatch.setattr(model_file, "write_atomic", crash_at_the_commit)
    with pytest.raises(KeyboardInterrupt):
        engine(epochs=2, checkpoint_dir=directory).fit(data)
    monkeypatch.undo()
    document, arrays = model_file.read(directory)
    assert document["counter"] == first.counter and document["run"]["finished"]
    np.testing.assert_array_equal(arrays["coef"][0], first.params)
    assert not shared_blocks()


def test_a_snapshot_is_not_written_over_the_last_good_one_when_not_finite_or_the_disk_fails():
    """CheckpointWriter.poll: a snapshot holding NaN is skipped (the last good checkpoint stays);
    a failed write is one RuntimeWarning and training goes on; either way worker 0 may take the
    next snapshot."""
    from types import SimpleNamespace

    from hogwild_mts.backends.shm import worker
    from hogwild_mts.backends.shm.backend import CheckpointWriter
    from hogwild_mts.backends.shm.fields import BlockViews
    from hogwild_mts.core.control import HIST_BINS

    views = BlockViews(snapshot_words=np.zeros(worker.SNAPSHOT_WORDS, np.int64),
                       snapshot_params=np.full(3, np.nan), snapshot_hist=np.zeros(HIST_BINS, np.int64),
                       orders=np.zeros((2, 10), np.int64))
    written = []
    writer = CheckpointWriter(views, SimpleNamespace(workers=1, epochs=1, batch_size=1), written.append)
    views.snapshot_words[worker.SNAP_TAKEN] = 1
    writer.poll()
    assert written == [] and views.snapshot_words[worker.SNAP_WRITTEN] == 1

    def full_disk(state):
        raise OSError(28, "checkpoint ckpt could not be written: No space left on device")

    writer._write = full_disk
    views.snapshot_params[:] = 1.0
    views.snapshot_words[worker.SNAP_TAKEN] = 2
    with pytest.warns(RuntimeWarning, match="No space left on device; training goes on"):
        writer.poll()
    assert views.snapshot_words[worker.SNAP_WRITTEN] == 2
    views.snapshot_words[worker.SNAP_TAKEN] = 3
    writer.poll()  # warned once
    writer._write = written.append
    views.snapshot_words[worker.SNAP_TAKEN] = 4
    writer.poll()
    assert len(written) == 1 and np.array_equal(written[0].params, np.ones(3))


def _saved_model(tmp_path, data):
    from hogwild_mts import HogwildClassifier

    path = tmp_path / "saved"
    HogwildClassifier(max_iter=1, tol=None).fit(data.to_scipy(), data.y).save(path)
    return path


BAD_RESUMES = [
    (lambda tmp, data, ckpt: (dict(), tmp / "nothing"), "is not a directory"),
    (lambda tmp, data, ckpt: (dict(), _saved_model(tmp, data)), "a model file without run state"),
    (lambda tmp, data, ckpt: (dict(epochs=9), ckpt), r"epochs=8 \(this run: 9\)"),
    (lambda tmp, data, ckpt: (dict(model="svm"), ckpt), r"loss='logreg' \(this run: 'svm'\)"),
    (lambda tmp, data, ckpt: (dict(lr=0.5), ckpt), r"policy=.*this run"),
    (lambda tmp, data, ckpt: (dict(batch_size=2, seed=1), ckpt), r"batch_size=1 \(this run: 2\), seed=4 \(this run: 1\)"),
    (lambda tmp, data, ckpt: (dict(data=synthetic_sparse(1200, 151, 10, seed=2)), ckpt), r"n_features=150 \(this run: 151\)"),
    (lambda tmp, data, ckpt: (dict(data=synthetic_sparse(1200, 150, 10, seed=3)), ckpt), r"rows_digest="),
    (lambda tmp, data, ckpt: (dict(init_params=np.zeros(151)), ckpt), "give init_params or resume, not both"),
    (lambda tmp, data, ckpt: (dict(finished=True), ckpt), "that run finished"),
    (lambda tmp, data, ckpt: (dict(momentum=0.5), ckpt), r"momentum=0.0 \(this run: 0.5\)"),
]


@pytest.mark.parametrize("make, words", BAD_RESUMES)
def test_bad_resumes_are_refused_before_any_worker_starts(make, words, data, written, tmp_path):
    total = total_updates(data.n_samples, 1, 8, 1)
    engine(checkpoint_dir=tmp_path / "ckpt", checkpoint_every_updates=total // 2).fit(data)
    middle = next(path for path, state in written if not state.finished)
    options, path = make(tmp_path, data, middle)
    if options.pop("finished", False):
        path = tmp_path / "ckpt"
    fit_data = options.pop("data", data)
    init_params = options.pop("init_params", None)
    blocks_before = shared_blocks()
    with pytest.raises(ValueError, match=words):
        engine(**options).fit(fit_data, init_params=init_params, resume=path)
    assert shared_blocks() == blocks_before and not live_children()


@pytest.mark.parametrize("options, error, words", [
    (dict(checkpoint_every_updates=0, checkpoint_dir="x"), ValueError, "checkpoint_every_updates must be an integer >= 1, got 0"),
    (dict(checkpoint_every=-1.0, checkpoint_dir="x"), ValueError, "checkpoint_every must be a finite number > 0"),
    (dict(checkpoint_every=5.0), ValueError, "need checkpoint_dir"),
    (dict(checkpoint_every_updates=10), ValueError, "need checkpoint_dir"),
    (dict(checkpoint_dir="x", split="static"), ValueError, "checkpoints need split='dynamic'"),
    (dict(checkpoint_dir=""), ValueError, "checkpoint_dir must be a directory path"),
    (dict(checkpoint_dir="x", checkpoint_every_updates=10, backend="ray"), ValueError,
     "checkpoint_every_updates applies to backend='shm'"),
])
def test_bad_checkpoint_options_are_refused(options, error, words):
    with pytest.raises(error, match=words):
        engine(**options)


def test_an_unwritable_checkpoint_dir_is_refused_before_any_worker_starts(data, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        engine(checkpoint_dir=tmp_path / "file").fit(data)
    assert not shared_blocks()


# ------------------------------------------------------------------------------------ CLI
def _train(*arguments):
    return ["train", "--data", CLI_DATA, "--workers", "1", "--quiet", *arguments]


def test_cli_sigterm_leaves_a_checkpoint_that_resumes_exactly(tmp_path, capsys):
    arguments = _train("--epochs", "1500")
    command = [sys.executable, "-m", "hogwild_mts.app.cli", *arguments, "--checkpoint-every",
               "20000u", "--out", str(tmp_path / "stopped")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=default_stop_signals)
    checkpoint = tmp_path / "stopped" / "checkpoint"
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while not (checkpoint / "model.json").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert not shared_blocks(process.pid)
    document, _ = model_file.read(checkpoint)
    assert not document["run"]["finished"]
    assert main(arguments + ["--resume", str(checkpoint), "--out", str(tmp_path / "resumed")]) == 0
    assert main(arguments + ["--out", str(tmp_path / "whole")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "resumed" / "params.npy"),
                                  np.load(tmp_path / "whole" / "params.npy"))
    resumed, whole = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("resumed", "whole"))
    assert resumed["counter"] == whole["counter"] and resumed["staleness_histogram"] == whole["staleness_histogram"]


def test_cli_checkpoint_predicts_and_a_finished_one_is_not_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train("--epochs", "3", "--checkpoint-every", "1000u", "--checkpoint-every", "60s",
                       "--out", str(out))) == 0
    assert f"checkpoint: {out / 'checkpoint'}" in capsys.readouterr().out
    assert main(["predict", str(out / "checkpoint"), "--data", CLI_DATA, "--out", str(tmp_path / "p.csv")]) == 0
    assert (tmp_path / "p.csv").read_text().startswith("prediction,p_-1.0,p_1.0\n")
    assert main(_train("--epochs", "3", "--resume", str(out / "checkpoint"))) == EXIT_BAD_INPUT
    assert "that run finished" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, words", [
    (["--checkpoint-every", "30"], "'30' is not a number of seconds like 30s or of updates like 100000u"),
    (["--checkpoint-every", "0u"], "is not a number of seconds"),
    (["--checkpoint-every", "1.5u"], "is not a number of seconds"),
    (["--checkpoint-every", "30s"], "--checkpoint-every needs --out DIR"),
    (["--checkpoint-every", "30s", "--checkpoint-every", "40s", "--out", "{tmp}"], "at most one number of seconds"),
    (["--resume", "{tmp}/none"], "is not a directory"),
    (["--resume", "{tmp}", "--init", "{tmp}"], "give --init or --resume, not both"),
    (["--model", "mlp", "--data", "digits", "--resume", "{tmp}"], "not a model file"),
    (["--backend", "ray", "--checkpoint-every", "10u", "--out", "{tmp}"], "checkpoint_every_updates applies to backend='shm'"),
])
def test_cli_refuses_bad_checkpoint_flags(arguments, words, tmp_path, capsys):
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    assert main(_train(*arguments)) == EXIT_BAD_INPUT
    assert words in capsys.readouterr().err
    assert not shared_blocks() and not live_children()


# ------------------------------------------------------------------------------------ Ray
@pytest.mark.timeout(300)  # starts its own Ray instance: tens of seconds on a busy 2-core machine
def test_ray_checkpoints_and_resumes_from_the_parameters(tmp_path):
    ray = pytest.importorskip("ray")
    data = synthetic_sparse(2000, 100, 10, seed=0)
    from hogwild_mts.backends.ray.backend import LOCAL_SYSTEM_CONFIG

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _system_config=LOCAL_SYSTEM_CONFIG)
    try:
        options = dict(workers=2, backend="ray", epochs=2)
        first = engine(checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1e-3, **options).fit(data)
        document, _ = model_file.read(tmp_path / "ckpt")
        assert document["counter"] == first.counter and document["run"]["settings"]["backend"] == "ray"
        with pytest.raises(ValueError, match="pushes covered all 2 epochs"):
            engine(**options).fit(data, resume=tmp_path / "ckpt")
        resumed = engine(checkpoint_dir=tmp_path / "again", **(options | dict(epochs=3))).fit(
            data, resume=tmp_path / "ckpt")  # one more epoch
        assert resumed.history["loss"][0] == pytest.approx(first.final_loss)
        assert resumed.updates == total_updates(data.n_samples, 2, 1, 1, "static")
        with pytest.raises(ValueError, match="pushes covered all 3 epochs"):  # it counts both parts
            engine(**(options | dict(epochs=3))).fit(data, resume=tmp_path / "again")
        with pytest.raises(ValueError, match="holds no shared-memory run state"):
            engine().fit(data, resume=tmp_path / "ckpt")
    finally:
        ray.shutdown()
