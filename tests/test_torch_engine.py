"""TorchEngine: exact flattening, parameters as live shared views (across processes), a real
2-worker run on digits, bad input before any worker starts, and clean exits on worker death,
divergence and Ctrl-C (no /dev/shm block, no live child)."""

import _thread
import math
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hogwild_mts.engines import networks as torch_engine
from hogwild_mts.core.result import DivergenceError, WorkerError
from hogwild_mts.data.images import load_images
from hogwild_mts.backends.shm.block import Layout, SharedBlock
from hogwild_mts.backends.shm.torch_worker import (bind_gradients, bind_parameters, flatten_parameters,
                                      parameter_count)
from hogwild_mts.models.nets import NETWORKS, build_network
from tests.helpers import WAIT_SECONDS, wait_for_updates

SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "lenet": (1, 12, 12)}


@pytest.fixture(scope="module")
def digits():
    return load_images("digits")


@pytest.fixture
def recorded_blocks(monkeypatch):
    """Names of the shared blocks TorchEngine creates during the test."""
    names = []
    create = SharedBlock.create.__func__

    def recording(cls, layout):
        block = create(cls, layout)
        names.append(block.name)
        return block

    monkeypatch.setattr(torch_engine.SharedBlock, "create", classmethod(recording))
    return names


def assert_cleaned_up(names):
    assert names, "the engine created no shared block"
    for name in names:
        assert not os.path.exists(f"/dev/shm/{name}"), f"shared block {name} was left behind"
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("hogwild-torch")]


# ------------------------------------------------------------------------------------ flattening
def bits(tensor):
    return tensor.detach().contiguous().view(torch.int32).numpy().copy()


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_flattening_is_exact_for_parameters_and_gradients(name):
    torch.manual_seed(1)
    reference = build_network(name, SHAPES[name], 10)
    bound = build_network(name, SHAPES[name], 10)
    bound.load_state_dict(reference.state_dict())
    flat = np.empty(parameter_count(bound), np.float32)
    flatten_parameters(bound, flat)
    bind_parameters(bound, flat)
    gradient = np.zeros_like(flat)
    bind_gradients(bound, gradient)
    for mine, theirs in zip(bound.parameters(), reference.parameters()):
        assert np.array_equal(bits(mine), bits(theirs))
    images, labels = torch.randn(5, *SHAPES[name]), torch.arange(5)
    for model in (reference, bound):
        F.cross_entropy(model(images), labels).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    assert np.array_equal(gradient.view(np.int32), bits(expected))
    flat_tensor = torch.from_numpy(flat)
    assert all(p.data.untyped_storage().data_ptr() == flat_tensor.untyped_storage().data_ptr()
               for p in bound.parameters())


def test_binding_rejects_a_buffer_of_the_wrong_size():
    model = build_network("mlp", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="the model has 9610 parameters"):
        bind_parameters(model, np.zeros(10, np.float32))


def outputs_from_shared_parameters(block_name, layout, images, written, results):
    """Child process: bind an MLP to the shared block, report its output before and after the
    parent writes into the block."""
    block = SharedBlock.attach(block_name, layout)
    model = build_network("mlp", (1, 8, 8), 10)
    bind_parameters(model, block.views["params"])
    with torch.no_grad():
        results.put(model(images).numpy())
        written.wait(30)
        results.put(model(images).numpy())
    del model
    block.close()


def test_a_write_into_the_shared_block_changes_another_process_output():
    torch.manual_seed(0)
    model = build_network("mlp", (1, 8, 8), 10)
    layout = Layout()
    layout.add("params", np.float32, (parameter_count(model),))
    block = SharedBlock.create(layout)
    context = multiprocessing.get_context("spawn")
    try:
        flatten_parameters(model, block.views["params"])
        images = torch.randn(3, 1, 8, 8)
        written, results = context.Event(), context.SimpleQueue()
        child = context.Process(target=outputs_from_shared_parameters,
                                args=(block.name, layout, images, written, results))
        child.start()
        before = results.get()
        with torch.no_grad():
            np.testing.assert_array_equal(before, model(images).numpy())
        block.views["params"][-10:] += 1.0  # the output layer's biases
        written.set()
        after = results.get()
        child.join(30)
        np.testing.assert_allclose(after, before + 1.0, rtol=1e-6, atol=1e-6)
        assert child.exitcode == 0
    finally:
        block.release()


# ------------------------------------------------------------------------------------ training
def test_two_worker_mlp_learns_digits_with_the_defaults(digits, recorded_blocks):
    result = torch_engine.TorchEngine("mlp", workers=2, progress=False).fit(digits)
    assert result.final_accuracy >= 0.90, result.history
    assert result.counter == result.updates == int(result.staleness_histogram.sum())
    assert result.updates == 2 * torch_engine.DEFAULT_EPOCHS * math.ceil(
        math.ceil(digits.n_train / 2) / torch_engine.DEFAULT_BATCH_SIZE)
    assert result.samples == torch_engine.DEFAULT_EPOCHS * digits.n_train
    assert result.history["accuracy"][-1] == result.final_accuracy
    assert result.history["loss"][0] > result.final_loss  # test loss goes down
    assert result.params.shape == (parameter_count(build_network("mlp", (1, 8, 8), 10)),)
    assert result.samples_per_second > 0 and not result.interrupted
    assert result.settings["loss"] == "test cross-entropy"
    assert_cleaned_up(recorded_blocks)


# ------------------------------------------------------------------------------------ bad input
class WithBatchNorm(torch.nn.Module):
    def __init__(self, input_shape, classes):
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(input_shape[0])
        self.out = torch.nn.Linear(int(np.prod(input_shape)), classes)

    def forward(self, images):
        return self.out(self.norm(images).flatten(1))


@pytest.mark.parametrize("options, message", [
    (dict(model="resnet"), "unknown model 'resnet'; choose one of \\['cnn', 'lenet', 'mlp'\\]"),
    (dict(model=3), "model must be a name"),
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(workers=0), "workers must be an integer >= 1, got 0"),
    (dict(epochs=0), "epochs must be an integer >= 1, got 0"),
    (dict(alpha=0.0), "alpha must be a finite number > 0, got 0.0"),
    (dict(alpha=-0.1), "alpha must be a finite number > 0, got -0.1"),
    (dict(alpha=float("nan")), "alpha must be a finite number > 0, got nan"),
    (dict(alpha=float("inf")), "alpha must be a finite number > 0, got inf"),
    (dict(policy="fastest"), "unknown policy 'fastest'"),
    (dict(dtype="float16"), "dtype must be one of"),
    (dict(model=lambda shape, classes: _LOCK), "cannot be serialized for the workers"),
])
def test_bad_settings_are_rejected_by_the_constructor(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        torch_engine.TorchEngine(**options)


_LOCK = threading.Lock()  # a factory that captures it cannot be serialized


@pytest.mark.parametrize("options, message", [
    (dict(model="lenet"), r"'lenet' needs images of at least 12x12 pixels .* \(1, 8, 8\)"),
    (dict(batch_size=1438), "batch_size \\(1438\\) exceeds the 1437 training images of digits"),
    (dict(workers=1438), "workers \\(1438\\) exceeds the 1437 training images"),
])
def test_bad_input_for_the_data_fails_before_any_worker_starts(digits, recorded_blocks, options, message):
    with pytest.raises(ValueError, match=message):
        torch_engine.TorchEngine(progress=False, **options).fit(digits)
    assert recorded_blocks == [] and not multiprocessing.active_children()


def test_fit_needs_a_data_set_or_arrays_with_targets():
    with pytest.raises(TypeError, match="needs a data set .* or arrays X and y, got ndarray without y"):
        torch_engine.TorchEngine(progress=False).fit(np.zeros((3, 4)))


# ------------------------------------------------------------------------------------ exits
def run_in_background(action, after_updates=50):
    """Call ``action(worker_processes)`` on a thread once this process's run has counted
    ``after_updates`` updates (its workers are training); the caller joins the thread."""
    def watch():
        wait_for_updates(minimum=after_updates)
        action([p for p in multiprocessing.active_children() if p.name.startswith("hogwild-torch")])

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_killed_worker_raises_worker_error_quickly_and_cleans_up(digits, recorded_blocks):
    killed_at = []

    def kill(workers):
        killed_at.append(time.time())
        os.kill(workers[0].pid, signal.SIGKILL)

    watcher = run_in_background(kill)
    engine = torch_engine.TorchEngine("mlp", workers=2, epochs=10_000, batch_size=1, progress=False)
    with pytest.raises(WorkerError, match="killed by signal SIGKILL"):
        engine.fit(digits)
    watcher.join(WAIT_SECONDS)
    assert time.time() - killed_at[0] < 30.0  # reported within polls, not after 10,000 epochs
    assert_cleaned_up(recorded_blocks)


def test_ctrl_c_returns_a_partial_result(digits, recorded_blocks):
    watcher = run_in_background(lambda workers: _thread.interrupt_main())
    engine = torch_engine.TorchEngine("mlp", workers=2, epochs=10_000, batch_size=1, progress=False)
    result = engine.fit(digits)
    watcher.join(WAIT_SECONDS)
    assert result.interrupted
    assert 0 < result.updates < 10_000 * digits.n_train
    assert result.counter == result.updates == int(result.staleness_histogram.sum())
    assert_cleaned_up(recorded_blocks)


def test_divergence_stops_with_a_clear_message(digits, recorded_blocks):
    engine = torch_engine.TorchEngine("mlp", workers=2, epochs=50, alpha=1e6, progress=False)
    with pytest.raises(DivergenceError, match="diverged.*lower the step size"):
        engine.fit(digits)
    assert_cleaned_up(recorded_blocks)


# ------------------------------------------------------------------------------------ CLI hook, policies
def test_train_images_cli_hook_uses_image_defaults_for_unset_options(capsys):
    import argparse

    args = argparse.Namespace(model="mlp", data="digits", workers=1, policy="inverse", alpha=None,
                              epochs=2, batch_size=None, seed=3, quiet=True, dtype="float64")
    result = torch_engine.train_images(args)
    assert result.settings["dtype"] == "float64" and result.settings["batch_size"] == torch_engine.DEFAULT_BATCH_SIZE
    assert result.policy["name"] == "inverse" and result.policy["alpha_c"] == torch_engine.DEFAULT_ALPHA
    assert result.final_accuracy > 0.5 and result.data == "digits"
    assert "loading images digits" in capsys.readouterr().err


def test_an_adaptive_policy_refits_inside_the_workers(digits):
    from hogwild_mts.policies.step_sizes import make_policy

    policy = make_policy("mindthestep", alpha=0.05, target="shrink", r=0.8, refit_every=20, min_samples=20)
    result = torch_engine.TorchEngine("mlp", policy, workers=2, epochs=3, progress=False).fit(digits)
    assert result.counter == result.updates == int(result.staleness_histogram.sum())
    assert result.refits >= 1 and result.policy["samples_seen"] == result.updates
    assert result.final_accuracy > 0.8


def test_deferred_evaluation_scores_each_snapshot_not_the_final_parameters():
    from hogwild_mts.data.images import load_images
    from hogwild_mts.engines.networks import TorchEngine

    result = TorchEngine("mlp", workers=2, epochs=6, eval_every_updates=60, defer_evaluation=True,
                         progress=False).fit(load_images("digits"))
    losses = result.history["loss"]
    assert len(losses) >= 4
    assert losses[0] > 2.0  # the untrained network: about log(10)
    assert losses[-1] == result.final_loss
    updates = result.history["updates"]
    # every snapshot scored on its own parameters: rows differ in loss exactly when the shared
    # parameters had changed between them (a different update count)
    assert len(set(zip(updates, losses))) == len(set(updates)) == len(set(losses))


def test_a_factory_from_python_dash_c_trains_in_spawned_workers(tmp_path):
    """A lambda defined in ``python -c`` reaches spawned workers (cloudpickle, by value)."""
    import subprocess
    import sys

    code = ("import torch\n"
            "from hogwild_mts import TorchEngine, load_images\n"
            "factory = lambda shape, classes: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, classes))\n"
            "result = TorchEngine(factory, workers=2, epochs=3, start_method='spawn', progress=False).fit(load_images('digits'))\n"
            "print(result.final_accuracy > 0.8, result.counter == result.updates)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=WAIT_SECONDS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


def test_a_worker_failure_carries_the_workers_own_traceback(digits, recorded_blocks):
    parent = os.getpid()

    def fails_in_workers(shape, classes):
        if os.getpid() != parent:
            raise RuntimeError("the factory failed inside a worker")
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, classes))

    engine = torch_engine.TorchEngine(fails_in_workers, workers=2, epochs=2, progress=False)
    with pytest.raises(WorkerError) as caught:
        engine.fit(digits)
    assert "Traceback" in str(caught.value)
    assert "RuntimeError: the factory failed inside a worker" in str(caught.value)
    assert_cleaned_up(recorded_blocks)
