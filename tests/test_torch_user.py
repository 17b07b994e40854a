"""TorchEngine from a PyTorch user's side: the user's own module (instance, class with
arguments, functools.partial), their TensorDataset / DataLoader, a loss function, the trained
module back (result.module()), the default evaluation schedule, the refusals, and a run from
stdin with spawned workers."""

import functools
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset  # noqa: E402

from hogwild_mts import Engine, TorchEngine, load_network  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUIET = dict(progress=False)


class SmallCNN(nn.Module):
    """A user's module: convolution, batch norm, dropout, a linear head."""

    def __init__(self, classes=2, width=4, dropout=0.2):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width * 8 * 8, classes)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _task(rows=512, test_rows=256, seed=0):
    """An easy two-class task on 1x8x8 inputs: is the top half brighter than zero on average?"""
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(rows + test_rows, 1, 8, 8, generator=generator)
    y = (X[:, 0, :4].mean(dim=(1, 2)) > 0).long()
    return TensorDataset(X[:rows], y[:rows]), TensorDataset(X[rows:], y[rows:])


def _accuracy(module, data: TensorDataset) -> float:
    X, y = data.tensors
    with torch.no_grad():
        return float((module(X).argmax(dim=1) == y).float().mean())


def _predictions(module, data: TensorDataset) -> torch.Tensor:
    with torch.no_grad():
        return module(data.tensors[0]).argmax(dim=1)


def test_an_instance_trained_from_a_dataloader_comes_back_as_the_model_file_loads_it(tmp_path):
    train, test = _task()
    torch.manual_seed(1)
    start = SmallCNN()
    engine = TorchEngine(start, workers=2, epochs=6, **QUIET)
    result = engine.fit(DataLoader(train, batch_size=32, shuffle=True), test=test)
    assert result.settings["batch_size"] == 32  # the loader's, the engine was given none
    assert result.settings["evaluated_on"] == "test"

    module = result.module()
    assert isinstance(module, SmallCNN) and module is not start and not module.training
    assert not torch.equal(module.bn.running_mean, torch.zeros(4))  # batch-norm statistics came back
    assert set(module.state_dict()) == set(start.state_dict())
    accuracy = _accuracy(module, test)
    assert accuracy > 0.7, result.history  # chance: 0.5
    assert abs(accuracy - result.final_accuracy) <= 1 / len(test)  # the parent's last evaluation

    loaded = load_network(engine.save(result, tmp_path / "model"), factory=SmallCNN())
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert torch.equal(_predictions(module, test), _predictions(loaded, test))
    assert _accuracy(loaded, test) == accuracy
    assert torch.equal(start.bn.running_mean, torch.zeros(4))  # the caller's instance is untouched


def test_one_worker_matches_a_plain_torch_sgd_loop():
    train, test = _task()
    torch.manual_seed(2)
    start = SmallCNN()
    epochs, batch_size, lr = 4, 32, 0.05
    result = TorchEngine(start, workers=1, epochs=epochs, batch_size=batch_size, lr=lr,
                         **QUIET).fit(train, test=test)

    plain = SmallCNN()
    plain.load_state_dict(start.state_dict())
    optimizer = torch.optim.SGD(plain.parameters(), lr=lr)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    plain.train()
    for _ in range(epochs):
        for X, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(plain(X), y).backward()
            optimizer.step()
    plain.eval()
    assert result.updates == epochs * len(train) // batch_size
    assert abs(_accuracy(result.module(), test) - _accuracy(plain, test)) <= 0.05


def test_a_module_class_with_arguments_or_a_partial_starts_from_the_seed():
    train, test = _task()
    options = dict(workers=1, epochs=1, batch_size=32, seed=3, **QUIET)
    by_kwargs = TorchEngine(SmallCNN, model_kwargs={"width": 3, "dropout": 0.0}, **options).fit(train)
    by_args = TorchEngine(SmallCNN, model_args=(2, 3, 0.0), **options).fit(train)
    by_partial = TorchEngine(functools.partial(SmallCNN, width=3, dropout=0.0), **options).fit(train)
    assert by_kwargs.model == by_partial.model == "SmallCNN"
    np.testing.assert_array_equal(by_kwargs.params, by_args.params)  # one worker: exact
    np.testing.assert_array_equal(by_kwargs.params, by_partial.params)
    module = by_partial.module()
    assert isinstance(module, SmallCNN) and module.conv.out_channels == 3


def test_a_loss_function_trains_classes_and_values(tmp_path):
    train, test = _task()
    engine = TorchEngine(SmallCNN(dropout=0.0), workers=2, epochs=3, batch_size=32,
                         loss=nn.functional.cross_entropy, **QUIET)
    result = engine.fit(train, test=test)
    assert result.final_accuracy > 0.75 and result.settings["loss"] == "test cross_entropy"
    saved = tmp_path / "model"
    engine.save(result, saved)
    loaded = load_network(saved, factory=functools.partial(SmallCNN, dropout=0.0))
    assert torch.equal(_predictions(loaded, test), _predictions(result.module(), test))

    X, labels = train.tensors
    values = labels.float().unsqueeze(1) * 2 - 1  # regression targets: a loss module on floats
    regression = TorchEngine(SmallCNN(classes=1, dropout=0.0), workers=1, epochs=2, batch_size=32,
                             loss=nn.HuberLoss(), **QUIET).fit(TensorDataset(X, values))
    assert regression.final_accuracy is None and regression.settings["loss"] == "train HuberLoss"
    assert regression.final_loss < regression.history["loss"][0]


def test_the_default_schedule_evaluates_a_short_run_often_and_explicit_schedules_stay():
    train, _ = _task()
    X, y = train.tensors
    default = TorchEngine("mlp", workers=2, epochs=1, batch_size=32, **QUIET)
    assert default.eval_every is None and default.eval_every_updates is None
    result = default.fit(X, y)
    assert len(result.history["updates"]) >= 10, result.history["updates"]
    by_seconds = TorchEngine("mlp", workers=2, epochs=1, batch_size=32, eval_every=1000.0, **QUIET).fit(X, y)
    assert len(by_seconds.history["updates"]) == 2  # the start and the end
    by_updates = TorchEngine("mlp", workers=1, epochs=1, batch_size=32, eval_every_updates=8, **QUIET).fit(X, y)
    assert by_updates.history["updates"][:3] == [0, 8, 16]


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 2)

    def forward(self, x, mask):
        return self.linear(x.flatten(1) * mask)


class _NeedsWidth(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.linear = nn.Linear(64, width)

    def forward(self, x):
        return self.linear(x.flatten(1))


class _Stream(IterableDataset):
    def __iter__(self):
        yield from ()


class _Dicts(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {"x": torch.zeros(1, 8, 8), "y": 0}


@pytest.mark.parametrize("make,error,message", [
    (lambda: TorchEngine(_TwoInputs()), TypeError,
     r"model _TwoInputs\(\): its forward\(x, mask\) does not take one input batch"),
    (lambda: TorchEngine(_NeedsWidth), TypeError,
     r"model class _NeedsWidth\(width\) cannot be built from model_args=\(\), model_kwargs=\{\} "
     r".*TorchEngine\(_NeedsWidth, model_args="),
    (lambda: TorchEngine(SmallCNN(), model_args=(2,)), TypeError, "model_args and model_kwargs go with a module class"),
    (lambda: TorchEngine(object()), TypeError, "model must be a name of a bundled network .* an nn.Module instance"),
    (lambda: TorchEngine(loss="hinge"), ValueError,
     r"loss must be one of \['cross_entropy', 'mse'\], got 'hinge' \(or pass a function loss\(outputs, targets\)"),
    (lambda: TorchEngine(loss=nn.CrossEntropyLoss), ValueError, r"pass an instance, e.g. nn.CrossEntropyLoss\(\)"),
    (lambda: TorchEngine(loss=3), ValueError, "loss must be 'cross_entropy', 'mse', or a function"),
])
def test_what_the_engine_does_not_take_is_refused_naming_what_it_takes(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("data,error,message", [
    (_Stream(), TypeError, r"fit\(data\) is an iterable dataset \(_Stream\), which cannot be read by index"),
    (DataLoader(_Stream()), TypeError, "the DataLoader's dataset is an iterable dataset"),
    (DataLoader(TensorDataset(torch.zeros(8, 1, 8, 8)), batch_size=4), ValueError,
     r"the DataLoader's dataset is a TensorDataset of 1 tensors; its items must be \(input, target\) pairs"),
    (_Dicts(), ValueError, r"item 0 is a dict; TorchEngine takes a Dataset whose items are \(input, target\) pairs"),
    ({"x": 1}, TypeError, r"fit\(\) needs a data set .* a DataLoader of one\) or arrays X and y, got dict"),
])
def test_data_the_engine_does_not_take_is_refused_before_any_worker_starts(data, error, message):
    with pytest.raises(error, match=message):
        TorchEngine(SmallCNN(), workers=2, **QUIET).fit(data)


def test_a_wrong_loss_function_or_forward_is_refused_at_fit():
    train, _ = _task(rows=64, test_rows=8)

    def per_row(outputs, targets):
        return outputs.sum(dim=1)

    with pytest.raises(ValueError, match=r"loss 'per_row' cannot score the outputs \(2, 2\).*scalar tensor"):
        TorchEngine(SmallCNN(), loss=per_row, **QUIET).fit(train)

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)  # the inputs have 64 values

        def forward(self, x):
            return self.linear(x.flatten(1))

    with pytest.raises(ValueError, match=r"model 'Broken' cannot run on a batch of arrays: calling it "
                                         r"on inputs of shape \(2, 1, 8, 8\) raised RuntimeError"):
        TorchEngine(Broken(), **QUIET).fit(train)


def test_module_is_for_network_fits():
    X = np.random.default_rng(0).normal(size=(64, 3))
    result = Engine("logreg", workers=1, epochs=1, **QUIET).fit(X, (X[:, 0] > 0).astype(int))
    with pytest.raises(TypeError, match="module\\(\\) gives the network of a TorchEngine fit"):
        result.module()


STDIN_SCRIPT = """
import numpy as np
from torch import nn
from hogwild_mts import TorchEngine

def factory(input_shape, outputs):
    return nn.Sequential(nn.Flatten(), nn.Linear(4, outputs))

X = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
y = (X[:, 0] > 0).astype(np.int64)
result = TorchEngine(factory, workers=2, epochs=1, start_method={method!r}, progress=False).fit(X, y)
print("trained", result.updates)
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawned_workers_from_stdin_are_refused_with_the_cause_and_the_fix(method):
    run = subprocess.run([sys.executable, "-"], input=STDIN_SCRIPT.format(method=method), cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: ") and f"start_method={method!r}" in last, run.stderr
    assert "read from '<stdin>' (python - or a pipe)" in last and "start_method='fork'" in last
    assert "worker 0" not in run.stderr  # refused before any worker started


def test_forked_workers_train_from_stdin():
    run = subprocess.run([sys.executable, "-"], input=STDIN_SCRIPT.format(method="fork"), cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("trained ")
