"""Hostile input and faults, across the CLI and the Python API: each case ends with
the exit status or exception it should and a message that names the problem, leaves this
process's /dev/shm entries (blocks and semaphores) as they were and no worker behind.

Cases that need an event (training under way, a stall shown) wait for it with a generous
deadline; none sleeps and then acts.
"""

import errno
import gzip
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from hogwild_mts.app.cli import main
from hogwild_mts.core import lifecycle, resources
from hogwild_mts.core.resources import ResourceError
from hogwild_mts.core.result import DivergenceError, WorkerError
from hogwild_mts.data.images import load_images
from hogwild_mts.data.tabular import DataError, load_data, synthetic_sparse
from hogwild_mts.engines.linear import Engine
from tests.helpers import group_alive, SHM_DIR, WAIT_SECONDS, default_stop_signals, live_children, wait_for_updates

TINY = "synthetic-sparse:n=400,d=50,nnz=5,seed=1"
ROWS_10K = "synthetic-sparse:n=10000,d=50,nnz=2,seed=1"
LONG = ["--epochs", "100000"]  # a run that only ends when it is stopped


def owned_entries(pid=None) -> set:
    """This process's blocks and semaphores in /dev/shm."""
    prefix = f"hwmts_{os.getpid() if pid is None else pid}_"
    return {name for name in os.listdir(SHM_DIR) if name.startswith((prefix, "sem." + prefix))}


# ------------------------------------------------------------------------------------- files
def write(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def corrupt_gzip(tmp_path) -> str:
    packed = bytearray(gzip.compress(b"1 1:0.5 2:1\n-1 2:0.25\n" * 50))
    packed[15:25] = bytes(b ^ 0xFF for b in packed[15:25])
    return write(tmp_path, "corrupt.svm.gz", bytes(packed))


def truncated_gzip(tmp_path) -> str:
    packed = gzip.compress(b"1 1:0.5 2:1\n-1 2:0.25\n" * 500)
    return write(tmp_path, "truncated.svm.gz", packed[: len(packed) // 2])


def npz(tmp_path, name: str, **arrays) -> str:
    """An .npz whose members are ``(header dict, payload bytes)`` or arrays."""
    with zipfile.ZipFile(tmp_path / name, "w") as archive:
        for key, member in arrays.items():
            buffer = io.BytesIO()
            if isinstance(member, tuple):
                np.lib.format.write_array_header_1_0(buffer, member[0])
                buffer.write(member[1])
            else:
                np.lib.format.write_array(buffer, np.asarray(member), allow_pickle=True)
            archive.writestr(key + ".npy", buffer.getvalue())
    return str(tmp_path / name)


class Evil:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_cifar(tmp_path) -> str:
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as handle:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1],
                         b"batch_label": Evil(tmp_path / "PWNED")}, handle)
    return str(tmp_path)


def huge_idx(tmp_path) -> str:
    """MNIST files whose training images declare 60,000 x 10^5 x 10^5 pixels."""
    header = b"\x00\x00\x08\x03" + np.array([60000, 10 ** 5, 10 ** 5], ">u4").tobytes()
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        write(tmp_path, name, header + b"\x00" * 64)
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        write(tmp_path, name, b"\x00\x00\x08\x01" + np.array([2], ">u4").tobytes() + b"\x00\x01")
    return str(tmp_path)


# ------------------------------------------------------------------------------------- policies
class TablePolicy:
    """A user's policy object (not a built-in class) with a fixed table."""

    refit_every = 0

    def __init__(self, table):
        self._table = table

    def bind(self, workers):
        pass

    def table(self):
        return self._table

    def observe(self, histogram):
        pass


class NegativeAfterRefit(TablePolicy):
    """A valid table until the first refit inside a worker, then a negative one."""

    refit_every = 1

    def observe(self, histogram):
        self._table = np.array([0.1, -1.0])


# ------------------------------------------------------------------------------------- events
def in_thread(action) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def signal_self_once_training(signum):
    """From a helper thread: once this process's run counts updates, send it ``signum``."""
    if signal.getsignal(signum) is signal.SIG_IGN:
        pytest.skip(f"this process ignores {signal.Signals(signum).name} (nohup?), so the CLI keeps ignoring it")

    def action():
        wait_for_updates(minimum=100)
        os.kill(os.getpid(), signum)
    return in_thread(action)


def kill_a_worker_once_training():
    def action():
        wait_for_updates(minimum=100)
        os.kill(live_children()[0].pid, signal.SIGKILL)
    return in_thread(action)


# ------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    id: str
    run: Callable  # (tmp_path, monkeypatch) -> exit status (CLI), or raises (API)
    expect: object  # exit status, or exception class
    words: str  # regex the message must contain


def cli(*arguments, before: Callable | None = None, after: Callable | None = None):
    """``hogwild-mts train --quiet ARGUMENTS`` in this process; an argument may be a function of
    tmp_path (a file it writes); ``before(tmp_path, monkeypatch)`` runs first, ``after(tmp_path)``
    checks what was written."""
    def run(tmp_path, monkeypatch):
        if before is not None:
            before(tmp_path, monkeypatch)
        status = main(["train", "--quiet"] + [a(tmp_path) if callable(a) else a for a in arguments])
        if after is not None:
            after(tmp_path)
        return status
    return run


def api(function):
    return lambda tmp_path, monkeypatch: function(tmp_path, monkeypatch)


def memory_of(gib):
    return lambda tmp_path, monkeypatch: monkeypatch.setattr(resources, "available_memory",
                                                             lambda: gib * 2 ** 30)


def out_dir(tmp_path):
    return str(tmp_path / "out")


def strict_metrics(tmp_path) -> dict:
    def refuse(constant):
        raise AssertionError(f"metrics.json holds {constant}, which strict JSON parsers reject")
    return json.loads((tmp_path / "out" / "metrics.json").read_text(), parse_constant=refuse)


def interrupted_and_written(tmp_path):
    metrics = strict_metrics(tmp_path)
    assert metrics["interrupted"] is True and metrics["updates"] > 0
    assert np.load(tmp_path / "out" / "params.npy").shape == (50,)


def previous_outputs(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text('{"previous": true}')
    np.save(tmp_path / "out" / "params.npy", np.arange(3.0))


def disk_fills_up(tmp_path, monkeypatch):
    previous_outputs(tmp_path, monkeypatch)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)


def previous_outputs_intact(tmp_path):
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text()) == {"previous": True}
    assert np.load(out / "params.npy").tolist() == [0.0, 1.0, 2.0]
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]


class ClosedPipe(io.TextIOBase):
    def write(self, text):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def stdout_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdout", ClosedPipe())


def outputs_written(tmp_path):
    assert strict_metrics(tmp_path)["updates"] > 0
    assert (tmp_path / "out" / "params.npy").exists()


def read_only_directory(tmp_path) -> str:
    # /proc takes no new directories, even from root (chmod would not stop root)
    return "/proc/hogwild-mts-out"



# ------------------------------------------------------------------------------------- model files
def temporary_files(directory) -> list:
    return sorted(name for name in os.listdir(directory) if name.startswith(".tmp-")) \
        if os.path.isdir(directory) else []


def nothing_temporary(tmp_path):
    for directory in (tmp_path / "out", tmp_path / "out" / "checkpoint", tmp_path / "m"):
        assert not temporary_files(directory), f"temporary files left in {directory}"


def model(tmp_path, *, json_edit=None, arrays_edit=None, raw_json=None) -> str:
    """A binary logreg model file ``tmp/m`` of 3 features (written by save_linear, no training),
    its model.json edited by ``json_edit(document)`` or replaced by ``raw_json``, its arrays by
    ``arrays_edit(arrays)`` (rewritten in place as the file model.json names)."""
    from hogwild_mts import model_file

    path = model_file.save_linear(
        str(tmp_path / "m"), kind="HogwildClassifier", coef=np.array([[0.5, -0.5, 1.0]]),
        intercept=np.zeros(1), classes=np.array([-1.0, 1.0]),
        estimator_params={"loss": "logreg", "policy": "constant", "fit_intercept": True},
        histogram=np.zeros(2), counter=7, metrics={})
    document_path = tmp_path / "m" / "model.json"
    document = json.loads(document_path.read_text())
    if arrays_edit is not None:
        arrays_path = tmp_path / "m" / document["arrays"]
        with np.load(arrays_path) as archive:
            arrays = {name: archive[name] for name in archive.files}
        arrays_edit(arrays)
        np.savez(arrays_path, **arrays)
    if json_edit is not None:
        json_edit(document)
        document_path.write_text(json.dumps(document))
    if raw_json is not None:
        document_path.write_text(raw_json)
    return path


def rows(tmp_path) -> str:
    return write(tmp_path, "rows.svm", b"1 1:0.5 2:1\n-1 3:0.25\n")


def predict(**edits):
    """``hogwild-mts predict`` of the model file ``model(tmp, **edits)``."""
    def run(tmp_path, monkeypatch):
        return main(["predict", model(tmp_path, **edits), "--data", rows(tmp_path)])
    return run


def init_from(**edits):
    """``hogwild-mts train --init`` of the model file ``model(tmp, **edits)``."""
    def run(tmp_path, monkeypatch):
        return main(["train", "--quiet", "--data", "synthetic-sparse:n=100,d=3,nnz=2,seed=1",
                     "--workers", "1", "--init", model(tmp_path, **edits)])
    return run


def edit(path: str, value):
    """A json_edit setting (value) or deleting (MISSING) the dotted ``path`` of the document."""
    def change(document):
        *parents, last = path.split(".")
        for part in parents:
            document = document[part]
        if value is MISSING:
            del document[last]
        else:
            document[last] = value
    return change


MISSING = object()


def array(name, value):
    def change(arrays):
        if value is MISSING:
            del arrays[name]
        else:
            arrays[name] = value
    return change


def truncated(tmp_path, monkeypatch):
    path = model(tmp_path)
    named = tmp_path / "m" / json.loads((tmp_path / "m" / "model.json").read_text())["arrays"]
    content = named.read_bytes()
    named.write_bytes(content[: len(content) // 2])
    return main(["predict", path, "--data", rows(tmp_path)])


def names_missing_arrays_file(tmp_path, monkeypatch):
    path = model(tmp_path, json_edit=edit("arrays", "arrays-b.npz"))
    np.savez(tmp_path / "m" / "arrays.npz", coef=np.zeros((1, 3)))  # the other file is there
    return main(["predict", path, "--data", rows(tmp_path)])


# ------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_RUN = ["--data", TINY, "--workers", "1", "--epochs", "4", "--batch-size", "1"]


def tampered_checkpoint(*, run_edit=None, json_edit=None, arrays_edit=None):
    """Train TINY for one epoch with checkpoints, make its checkpoint that of a 4-epoch run one
    epoch in (resumable), tamper with it, then ``--resume`` it."""
    def run(tmp_path, monkeypatch):
        from hogwild_mts.checkpoint import read_checkpoint, write_checkpoint

        out = tmp_path / "out"
        assert main(["train", "--quiet", *CHECKPOINT_RUN, "--epochs", "1", "--out", str(out),
                     "--checkpoint-every", "100u"]) == 0
        checkpoint = out / "checkpoint"
        settings, state = read_checkpoint(str(checkpoint))
        settings["epochs"] = 4  # the checkpoint of a 4-epoch run, one epoch done: resumable
        state.finished = False
        state.order_generator = np.arange(1, 7, dtype=np.uint64)  # a state, not a finished run's zeros
        write_checkpoint(str(checkpoint), settings, state)
        document_path = checkpoint / "model.json"
        document = json.loads(document_path.read_text())
        if arrays_edit is not None:
            arrays_path = checkpoint / document["arrays"]
            with np.load(arrays_path) as archive:
                arrays = {name: archive[name] for name in archive.files}
            arrays_edit(arrays)
            np.savez(arrays_path, **arrays)
        if run_edit is not None:
            run_edit(document["run"])
        if json_edit is not None:
            json_edit(document)
        document_path.write_text(json.dumps(document))
        return main(["train", "--quiet", *CHECKPOINT_RUN, "--resume", str(checkpoint),
                     "--out", str(tmp_path / "resumed")])
    return run


# ------------------------------------------------------------------------------------- output dirs
def checkpoints_fail(tmp_path, monkeypatch):
    """Every write under a checkpoint directory fails for a full disk."""
    reserve = os.posix_fallocate

    def fallocate(fd, offset, length):
        if "/checkpoint/" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return reserve(fd, offset, length)
    monkeypatch.setattr(os, "posix_fallocate", fallocate)


def results_written_checkpoint_not(tmp_path):
    out = tmp_path / "out"
    assert strict_metrics(tmp_path)["updates"] > 0 and (out / "params.npy").exists()
    assert not (out / "checkpoint" / "model.json").exists()
    nothing_temporary(tmp_path)


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def plant_leftovers(tmp_path, monkeypatch):
    """What a writer SIGKILLed during its final write and its checkpoint write leaves: its
    temporary files (a dead pid), beside a live writer's (this test's parent)."""
    dead = dead_pid()
    for directory in (tmp_path / "out", tmp_path / "out" / "checkpoint"):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f".tmp-{dead}-abcd1234-arrays-{dead}-0badc0de.npz").write_bytes(b"\0" * 4096)
        (directory / f".tmp-{dead}-abcd1234-model.json").write_text("{")
        (directory / f".tmp-{os.getppid()}-abcd1234-model.json").write_text("{")  # alive


def only_live_leftovers_remain(tmp_path):
    for directory in (tmp_path / "out", tmp_path / "out" / "checkpoint"):
        assert temporary_files(directory) == [f".tmp-{os.getppid()}-abcd1234-model.json"]
    assert strict_metrics(tmp_path)["updates"] > 0


def margin_short(tmp_path, monkeypatch):
    memory_of(24)(tmp_path, monkeypatch)
    resources.check_run(workers=1, parameter_count=10, block_bytes=22 * 2 ** 30, block_in_memory=True)


def engine(**options):
    return Engine(**(dict(progress=False, workers=1, epochs=2) | options))


CASES = [
    # --------------------------------------------------------------- CLI: options
    Case("cli-workers-not-a-number", cli("--workers", "abc"), 2, r"argument --workers: invalid int value: 'abc'"),
    Case("cli-workers-absurd", cli("--data", ROWS_10K, "--workers", "10000"), 2,
         r"workers \(10000\) is more than this machine runs usefully: at most \d+"),
    Case("cli-workers-negative", cli("--workers", "-3"), 2, r"workers must be an integer >= 1, got -3"),
    Case("cli-lr-inf", cli("--lr", "inf"), 2, r"lr must be a finite number > 0, got inf"),
    Case("cli-lr-negative", cli("--lr", "-1"), 2, r"lr must be a finite number > 0, got -1.0"),
    Case("cli-seed-negative", cli("--seed", "-1"), 2, r"seed must be an integer >= 0, got -1"),
    Case("cli-dtype-unknown", cli("--dtype", "float16"), 2, r"invalid choice: 'float16'"),
    Case("cli-refit-every-negative", cli("--policy", "tail", "--refit-every", "-5"), 2,
         r"refit_every must be an integer >= 0, got -5"),
    Case("cli-tail-a-nan", cli("--policy", "tail", "--tail-a", "nan"), 2, r"A must be a finite number in \[0, 1\]"),
    Case("cli-batch-size-absurd", cli("--data", TINY, "--workers", "1", "--batch-size", str(10 ** 12)), 2,
         r"batch_size \(1000000000000\) exceeds the number of samples \(400\)"),
    # --------------------------------------------------------------- CLI: data specs
    Case("cli-synthetic-rows-absurd", cli("--data", "synthetic-sparse:n=1000000000000"), 2,
         r"synthetic-sparse \(n=1,000,000,000,000.*\) needs .* of memory but this machine has"),
    Case("cli-synthetic-dense-absurd", cli("--data", "synthetic-dense:n=1000000,d=1000000"), 2,
         r"synthetic-dense \(n=1,000,000, d=1,000,000\) needs 7.3 TiB of memory"),
    Case("cli-synthetic-not-an-integer", cli("--data", "synthetic-sparse:n=1e6"), 2,
         r"parameter n='1e6' must be an integer"),
    Case("cli-synthetic-unknown-key", cli("--data", "synthetic-dense:rows=5"), 2, r"bad parameter 'rows=5'"),
    Case("cli-synthetic-nnz-above-d", cli("--data", "synthetic-sparse:n=10,d=5,nnz=6"), 2,
         r"nnz_per_row must be at most n_features = 5, got 6"),
    Case("cli-data-is-a-directory", cli("--data", lambda tmp: str(tmp)), 2, r"neither a known data set nor an existing file"),
    # --------------------------------------------------------------- CLI: data files
    Case("cli-svmlight-index-1e10", cli("--data", lambda tmp: write(tmp, "i.svm", b"1 1:0.5 10000000000:1\n")), 2,
         r"i.svm:1: feature index 10000000000 is larger than 2147483647"),
    Case("cli-svmlight-index-2e9-needs-too-much-memory",
         cli("--data", lambda tmp: write(tmp, "w.svm", b"1 1:0.5 2000000000:1\n-1 2:0.25\n"), "--workers", "1",
             before=memory_of(8)),
         2, r"this run \(.*parameter copies 59.6 GiB\) needs .* of memory, plus 819.2 MiB kept free, but this machine has 8.0 GiB available"),
    Case("cli-svmlight-corrupt-gzip", cli("--data", corrupt_gzip), 2, r"corrupt.svm.gz: the compressed data is corrupt"),
    Case("cli-svmlight-truncated-gzip", cli("--data", truncated_gzip), 2, r"truncated.svm.gz: the compressed data ends early"),
    Case("cli-svmlight-bz2-garbage", cli("--data", lambda tmp: write(tmp, "g.svm.bz2", b"BZh9 not bzip2 at all")), 2,
         r"g.svm.bz2: the compressed data is corrupt"),
    Case("cli-svmlight-binary-garbage", cli("--data", lambda tmp: write(tmp, "b.svm", bytes(range(256)) * 4)), 2,
         r"b.svm:1: label .* is not a finite number"),
    Case("cli-svmlight-empty", cli("--data", lambda tmp: write(tmp, "e.svm", b"# nothing\n")), 2, r"e.svm: no data rows"),
    Case("cli-svmlight-nan-value", cli("--data", lambda tmp: write(tmp, "n.svm", b"1 1:0.5\n-1 2:nan\n")), 2,
         r"n.svm:2: value 'nan' of feature 2 is not a finite number"),
    Case("cli-npz-declares-1e7-by-1e6", cli("--data", lambda tmp: npz(
        tmp, "huge.npz", X=({"descr": "<f8", "fortran_order": False, "shape": (10 ** 7, 10 ** 6)}, b"\0" * 64),
        y=np.ones(3))), 2, r"array 'X' declares shape \(10000000, 1000000\) of float64 \(72.8 TiB\)"),
    Case("cli-npz-not-a-zip", cli("--data", lambda tmp: write(tmp, "z.npz", b"PK not really")), 2, r"z.npz: cannot read as .npz"),
    Case("cli-npz-object-array", cli("--data", lambda tmp: npz(tmp, "o.npz", X=np.array([[None]], dtype=object),
                                                               y=np.ones(1))), 2, r"o.npz: cannot read as .npz"),
    Case("cli-npz-nan", cli("--data", lambda tmp: npz(tmp, "nan.npz", X=np.array([[1.0], [np.nan]]), y=np.ones(2))), 2,
         r"X has a non-finite value \(nan\) at row 1"),
    Case("cli-npz-missing-keys", cli("--data", lambda tmp: npz(tmp, "k.npz", A=np.ones(2)))
         , 2, r"missing keys: found \['A'\]"),
    Case("cli-cifar-malicious-pickle", cli("--model", "mlp", "--data", lambda tmp: f"cifar10:{malicious_cifar(tmp)}",
                                           after=lambda tmp: not (tmp / "PWNED").exists() or pytest.fail("code ran")),
         2, r"refused to load posix.system: a CIFAR-10 batch holds only"),
    Case("cli-mnist-declares-huge-images", cli("--model", "mlp", "--data", lambda tmp: f"mnist:{huge_idx(tmp)}"), 2,
         r"IDX dimensions \(60000, 100000, 100000\) need .*|needs .* of memory"),
    # --------------------------------------------------------------- CLI: output
    Case("cli-out-is-a-file", cli("--out", lambda tmp: write(tmp, "taken", b"x")), 2, r"--out '.*taken' is a file"),
    Case("cli-out-under-a-file", cli("--out", lambda tmp: write(tmp, "file", b"x") + "/run"), 2,
         r"--out '.*file/run' cannot be written: Not a directory"),
    Case("cli-out-not-creatable", cli("--out", read_only_directory), 2, r"--out '/proc/hogwild-mts-out' cannot be written"),
    Case("cli-shm-dir-missing", cli("--shm-dir", lambda tmp: str(tmp / "nope")), 2, r"--shm-dir '.*nope' is not an existing"),
    Case("cli-disk-full-keeps-previous-results",
         cli("--data", TINY, "--workers", "1", "--out", out_dir, before=disk_fills_up, after=previous_outputs_intact), 1,
         r"could not write metrics.json \(No space left on device\), params.npy \(No space left on device\), "
         r"model.json and its arrays-\*.npz \(No space left on device\) in "),
    Case("cli-closed-stdout-still-writes",
         cli("--data", TINY, "--workers", "1", "--out", out_dir, before=stdout_closed, after=outputs_written), 0, r""),
    # --------------------------------------------------------------- CLI: faults
    Case("cli-svm-lr-1e300-diverges", cli("--model", "svm", "--lr", "1e300", "--data", TINY, "--workers", "1",
                                             "--out", out_dir,
                                             after=lambda tmp: not os.path.exists(tmp / "out" / "metrics.json")
                                             or pytest.fail("a diverged run wrote metrics")),
         1, r"run failed: training diverged"),
    Case("cli-sigterm-keeps-partial-result",
         cli("--data", TINY, "--workers", "2", "--out", out_dir, *LONG,
             before=lambda tmp, mp: signal_self_once_training(signal.SIGTERM), after=interrupted_and_written),
         128 + signal.SIGTERM, r"stopped by SIGTERM; the result above is partial"),
    Case("cli-sighup-keeps-partial-result",
         cli("--data", TINY, "--workers", "1", "--out", out_dir, *LONG,
             before=lambda tmp, mp: signal_self_once_training(signal.SIGHUP), after=interrupted_and_written),
         128 + signal.SIGHUP, r"stopped by SIGHUP; the result above is partial"),
    # --------------------------------------------------------------- API
    Case("api-workers-absurd", api(lambda tmp, mp: engine(workers=10000).fit(load_data(ROWS_10K))), ResourceError,
         r"workers \(10000\) is more than this machine runs usefully"),
    Case("api-run-memory-short", api(lambda tmp, mp: (memory_of(0.1)(tmp, mp),
                                                      engine(workers=2).fit(load_data(TINY)))), ResourceError,
         r"this run \(.*2 worker processes 400.0 MiB\) needs .* but this machine has 102.4 MiB available"),
    Case("api-synthetic-absurd", api(lambda tmp, mp: synthetic_sparse(10 ** 12, 47236, 76)), ResourceError,
         r"needs .* of memory"),
    Case("api-policy-empty-table", api(lambda tmp, mp: engine(policy=TablePolicy(np.array([]))).fit(load_data(TINY))),
         ValueError, r"policy 'TablePolicy' gave the step-size table array\(\[\], dtype=float64\); a table must be a non-empty"),
    Case("api-policy-negative-table", api(lambda tmp, mp: engine(policy=TablePolicy([0.1, -0.1])).fit(load_data(TINY))),
         ValueError, r"policy 'TablePolicy' gave alpha\(1\) = -0.1; every entry .* must be finite and >= 0"),
    Case("api-policy-nan-table", api(lambda tmp, mp: engine(policy=TablePolicy([np.nan])).fit(load_data(TINY))),
         ValueError, r"gave alpha\(0\) = nan"),
    Case("api-policy-2d-table", api(lambda tmp, mp: engine(policy=TablePolicy(np.ones((2, 2)))).fit(load_data(TINY))),
         ValueError, r"a table must be a non-empty 1-d array"),
    Case("api-policy-turns-negative-on-refit",
         api(lambda tmp, mp: engine(policy=NegativeAfterRefit(np.array([0.1])), epochs=50).fit(load_data(TINY))),
         WorkerError, r"worker 0 failed:(.|\n)*alpha\(1\) = -1.0; every entry"),
    Case("api-function-policy-negative", api(lambda tmp, mp: engine(policy=lambda tau: -1.0).fit(load_data(TINY))),
         ValueError, r"policy function '<lambda>' gave alpha\(0\) = -1.0"),
    Case("api-cifar-malicious-pickle", api(lambda tmp, mp: load_images(f"cifar10:{malicious_cifar(tmp)}")), DataError,
         r"refused to load posix.system"),
    Case("api-npz-truncated-member", api(lambda tmp, mp: load_data(npz(
        tmp, "t.npz", X=({"descr": "<f8", "fortran_order": False, "shape": (1000, 10)}, b"\0" * 80), y=np.ones(3)))),
         DataError, r"declares shape \(1000, 10\) of float64 \(78.1 KiB\) but the archive holds 80 bytes"),
    Case("api-batch-size-absurd", api(lambda tmp, mp: engine(batch_size=10 ** 12).fit(load_data(TINY))),
         ValueError, r"batch_size \(1000000000000\) exceeds the number of samples \(400\)"),
    Case("api-diverges", api(lambda tmp, mp: engine(model="lsq", lr=1e3, workers=2, epochs=50).fit(
        load_data("synthetic-dense:n=500,d=10,seed=2"))), DivergenceError, r"training diverged"),
    Case("api-worker-killed", api(lambda tmp, mp: (kill_a_worker_once_training(),
                                                   engine(workers=2, epochs=100000).fit(load_data(TINY)))),
         WorkerError, r"worker \d \(pid \d+\) was killed by signal SIGKILL"),
    # decompression bombs, impossible sizes, one-class data, bad qids
    Case("cli-svmlight-gzip-bomb", cli("--data", lambda tmp: write(tmp, "bomb.svm.gz", gzip.compress(b"0" * 2 ** 17)),
                                       before=lambda tmp, mp: mp.setenv("HOGWILD_MTS_MAX_DECOMPRESSED_BYTES", "65536")),
         2, r"bomb.svm.gz: the compressed data expands to more than the limit of 64.0 KiB .*"
            r"HOGWILD_MTS_MAX_DECOMPRESSED_BYTES=65536; set it to a larger number of bytes"),
    Case("cli-mnist1d-absurd", cli("--model", "mlp", "--data", "mnist1d:n=100000000000"), 2,
         r"mnist1d:n=100000000000 \(100,000,000,000 signals\) needs 186.3 TiB of memory"),
    Case("cli-svmlight-one-class", cli("--data", lambda tmp: write(tmp, "one.svm", b"1 1:0.5\n1 2:1\n1 1:1\n")), 2,
         r"model 'logreg' needs labels of two classes, but every label is 1"),
    Case("cli-npz-one-class", cli("--model", "svm", "--data", lambda tmp: npz(tmp, "one.npz", X=np.eye(3), y=np.zeros(3))),
         2, r"model 'svm' needs labels of two classes, but every label is 0"),
    Case("cli-svmlight-negative-qid", cli("--data", lambda tmp: write(tmp, "q.svm", b"1 qid:1 1:1\n-1 qid:-7 2:1\n")),
         2, r"q.svm:2: qid '-7' is not an integer in \[0, 2\*\*63\)"),
    # model files (one schema: the file and the field named), through predict and train --init
    Case("model-missing-params", predict(json_edit=edit("params", MISSING)), 2,
         r"m/model.json: field 'params' must be an object of the estimator's settings, got missing"),
    Case("model-missing-classes", predict(arrays_edit=array("classes", MISSING)), 2,
         r"m/arrays-\d+-[0-9a-f]+.npz: array 'classes' is missing"),
    Case("model-missing-policy", predict(json_edit=edit("params.policy", MISSING)), 2,
         r"m/model.json: field 'params.policy' must be an object with a policy 'name', got missing"),
    Case("model-policy-a-string", predict(json_edit=edit("params.policy", "constant")), 2,
         r"m/model.json: field 'params.policy' must be an object .*, got 'constant'"),
    Case("model-policy-a-list", predict(json_edit=edit("params.policy", [0.1, 0.2])), 2,
         r"m/model.json: field 'params.policy' must be an object .*, got \[0.1, 0.2\]"),
    Case("model-policy-bad-options", predict(json_edit=edit("params.policy", {"name": "tail", "options": {"A": 7}})),
         2, r"m/model.json: field params.policy.options is not a valid 'tail' policy"),
    Case("model-deeply-nested-json", predict(raw_json="[" * 100000 + "]" * 100000), 2,
         r"m/model.json: nested too deeply to be a model description"),
    Case("model-counter-negative", predict(json_edit=edit("counter", -1)), 2,
         r"m/model.json: field 'counter' must be an integer in \[0, 2\*\*62\), got -1"),
    Case("model-one-class", predict(arrays_edit=array("classes", np.array([1.0]))), 2,
         r"array 'classes' must hold at least 2 distinct labels, got \[1.0\]"),
    Case("model-2d-classes", predict(arrays_edit=array("classes", np.array([[-1.0, 1.0]]))), 2,
         r"array 'classes' has shape \(1, 2\); expected 1-d"),
    Case("model-duplicate-classes", predict(arrays_edit=array("classes", np.array([1.0, 1.0]))), 2,
         r"array 'classes' must hold at least 2 distinct labels, got \[1.0, 1.0\]"),
    Case("model-3-classes-for-one-row", predict(arrays_edit=array("classes", np.array([0.0, 1.0, 2.0]))), 2,
         r"array 'classes' holds 3 labels but 'coef' has 1 rows"),
    Case("model-truncated-arrays", truncated, 2, r"m/arrays-\d+-[0-9a-f]+.npz: unreadable arrays"),
    Case("model-nan-coef", predict(arrays_edit=array("coef", np.array([[np.nan, 0.0, 1.0]]))), 2,
         r"array 'coef' holds a non-finite value \(nan\)"),
    Case("model-inf-intercept", predict(arrays_edit=array("intercept", np.array([np.inf]))), 2,
         r"array 'intercept' holds a non-finite value \(inf\)"),
    Case("model-complex-coef", predict(arrays_edit=array("coef", np.array([[1j, 0.0, 1.0]]))), 2,
         r"array 'coef' has dtype complex128; expected real numbers"),
    Case("model-names-a-missing-arrays-file", names_missing_arrays_file, 2,
         r"m/model.json: field 'arrays' names arrays-b.npz, which is missing"),
    Case("model-arrays-outside-the-directory", predict(json_edit=edit("arrays", "../../etc/passwd")), 2,
         r"m/model.json: field 'arrays' must be the name of a data file of this directory .*, got '../../etc/passwd'"),
    Case("init-nan-coef", init_from(arrays_edit=array("coef", np.array([[np.nan, 0.0, 1.0]]))), 2,
         r"array 'coef' holds a non-finite value \(nan\)"),
    Case("init-policy-a-string", init_from(json_edit=edit("params.policy", "constant")), 2,
         r"m/model.json: field 'params.policy' must be an object"),
    # checkpoints: the run state's schema, at --resume
    Case("resume-counter-negative", tampered_checkpoint(json_edit=edit("counter", -5)), 2,
         r"checkpoint/model.json: field 'counter' must be an integer in \[0, 2\*\*62\), got -5"),
    Case("resume-counter-maximal", tampered_checkpoint(json_edit=edit("counter", 2 ** 63 - 1)), 2,
         r"checkpoint/model.json: field 'counter' must be an integer in \[0, 2\*\*62\), got 9223372036854775807"),
    Case("resume-counter-overflowing", tampered_checkpoint(json_edit=edit("counter", 2 ** 64)), 2,
         r"checkpoint/model.json: field 'counter' must be an integer .*, got 18446744073709551616"),
    Case("resume-samples-negative", tampered_checkpoint(run_edit=edit("samples", -400)), 2,
         r"checkpoint/model.json: field 'run.samples' must be an integer in \[0, 2\*\*62\), got -400"),
    Case("resume-position-a-string", tampered_checkpoint(run_edit=edit("position", "7")), 2,
         r"checkpoint/model.json: field 'run.position' must be an integer .*, got '7'"),
    Case("resume-order-generator-missing", tampered_checkpoint(arrays_edit=array("order_generator", MISSING)), 2,
         r"checkpoint: the order generator \(order_generator\) is missing"),
    Case("resume-order-generator-zeros",
         tampered_checkpoint(arrays_edit=array("order_generator", np.zeros(6, np.uint64))), 2,
         r"checkpoint: order_generator is all zeros"),
    Case("resume-velocity-bad-shape", tampered_checkpoint(arrays_edit=array("velocity", np.ones(3))), 2,
         r"checkpoint: velocity must hold one finite number per parameter \(51\), got float64 of shape \(3,\)"),
    Case("resume-velocity-nan", tampered_checkpoint(arrays_edit=array("velocity", np.full(51, np.nan))), 2,
         r"checkpoint: velocity must hold one finite number per parameter"),
    # output directories: leftovers, a full disk at checkpoints, torch-only flags, memory margin
    Case("cli-leftovers-of-dead-writers-removed",
         cli("--data", TINY, "--workers", "1", "--out", out_dir, "--checkpoint-every", "100u",
             before=plant_leftovers, after=only_live_leftovers_remain), 0, r""),
    Case("cli-checkpoint-disk-full-training-goes-on",
         cli("--data", TINY, "--workers", "1", "--out", out_dir, "--checkpoint-every", "100u",
             before=checkpoints_fail, after=results_written_checkpoint_not), 1,
         r"could not write checkpoint \(every write failed: there is none\) in .*out; metrics.json, "
         r"params.npy, model.json and its arrays-\*.npz written there"),
    Case("cli-l2-with-a-network", cli("--model", "mlp", "--l2", "0.1"), 2,
         r"--l2 applies to linear models \(logreg, svm, lsq\), not to the torch network 'mlp'; "
         r"its weight decay is --weight-decay"),
    Case("cli-no-intercept-with-a-network", cli("--model", "cnn", "--no-intercept"), 2,
         r"--no-intercept applies to linear models \(logreg, svm, lsq\), not to the torch network 'cnn'"),
    Case("api-run-memory-without-margin", api(margin_short), ResourceError,
         r"this run \(shared block 22.0 GiB.*\) needs 22.0 GiB of memory, plus 2.4 GiB kept free, "
         r"but this machine has 24.0 GiB available"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input_and_faults(case, tmp_path, monkeypatch, capsys):
    before = owned_entries()
    if isinstance(case.expect, int):
        status = case.run(tmp_path, monkeypatch)
        error = capsys.readouterr().err
        assert status == case.expect, error
        assert "Traceback" not in error
        if case.words:
            last = [line for line in error.splitlines() if line.strip()][-1]
            assert re.search(case.words, last), f"{case.words!r} not in the last line {last!r}"
    else:
        with pytest.raises(case.expect, match=case.words):
            case.run(tmp_path, monkeypatch)
    assert owned_entries() == before, "the case left shared memory behind"
    assert not live_children(), "the case left worker processes behind"


def test_the_table_is_large_enough():
    assert len(CASES) >= 90


# ----------------------------------------------------------------------- process-level faults
def _cli_process(*arguments, **popen):
    command = [sys.executable, "-m", "hogwild_mts.app.cli", "train", "--quiet", *arguments]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_stop_signals, **popen)


def _children(pid: int) -> list:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


def _wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} did not happen within {WAIT_SECONDS} s")



def test_sigterm_to_the_process_group_keeps_the_partial_result(tmp_path):
    """What ``timeout`` and a batch scheduler do: SIGTERM to every process of the run."""
    process = _cli_process("--data", TINY, "--workers", "2", "--out", str(tmp_path / "out"), *LONG)
    try:
        wait_for_updates(process.pid, minimum=100)
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "INTERRUPTED" in stdout and "Traceback" not in stderr
    interrupted_and_written(tmp_path)
    _wait_for(lambda: not group_alive(process.pid), "the end of every process of the run")
    assert not owned_entries(process.pid)


def test_ctrl_c_during_start_up_prints_no_traceback(tmp_path):
    """Ctrl-C to the whole group as soon as the run has child processes (the resource tracker,
    then workers starting): one line, exit 130, nothing left behind."""
    process = _cli_process("--data", TINY, "--workers", "2", *LONG)
    try:
        _wait_for(lambda: _children(process.pid) or process.poll() is not None, "a child process")
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    _wait_for(lambda: not group_alive(process.pid), "the end of every process of the run")
    assert not owned_entries(process.pid)


def test_leftovers_of_a_killed_group_are_removed_at_the_next_start():
    """SIGKILL of the whole group (workers, resource tracker and all) leaves its block behind;
    the next block created (here, or by any other run on the machine) removes it, and removes
    only entries whose owner is dead."""
    from hogwild_mts.backends.shm.block import Layout, SharedBlock

    process = _cli_process("--data", TINY, "--workers", "2", *LONG)
    try:
        wait_for_updates(process.pid, minimum=100)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=WAIT_SECONDS)
    _wait_for(lambda: not group_alive(process.pid), "the end of every process of the killed run")
    dead = subprocess.Popen(["true"])
    dead.wait()
    planted = [os.path.join(SHM_DIR, f"hwmts_{dead.pid}_00000000deadbeef"),
               os.path.join(SHM_DIR, f"sem.hwmts_{dead.pid}_sem-deadbeef")]
    live = os.path.join(SHM_DIR, f"hwmts_{os.getppid()}_0000000000000000")  # a live owner's
    for path in planted + [live]:
        open(path, "w").close()
    try:
        layout = Layout()
        layout.add("params", np.float64, (4,))
        SharedBlock.create(layout).release()
        assert not owned_entries(process.pid)
        assert not any(os.path.exists(path) for path in planted)
        assert os.path.exists(live)
    finally:
        os.unlink(live)


def test_a_stalled_worker_is_shown_and_stop_stays_prompt(monkeypatch):
    """SIGSTOP one worker: within STALL_SECONDS the run says which; Ctrl-C then ends the run
    promptly (the stopped worker is resumed to leave), with the partial result."""
    import _thread
    import logging

    monkeypatch.setattr(lifecycle, "STALL_SECONDS", 0.5)
    shown, stopped_at = threading.Event(), []

    class Watch(logging.Handler):
        def emit(self, record):
            if "has made no progress" in record.getMessage():
                shown.set()

    handler = Watch()
    lifecycle.log.addHandler(handler)

    def stall_then_interrupt():
        wait_for_updates(minimum=100)
        os.kill(live_children()[0].pid, signal.SIGSTOP)
        if shown.wait(WAIT_SECONDS):
            stopped_at.append(time.monotonic())
            _thread.interrupt_main()

    helper = in_thread(stall_then_interrupt)
    try:
        result = engine(workers=2, epochs=100000).fit(load_data(TINY))
    finally:
        lifecycle.log.removeHandler(handler)
        helper.join(WAIT_SECONDS)
    assert shown.is_set(), "the stalled worker was never shown"
    assert result.interrupted and result.updates > 0
    assert time.monotonic() - stopped_at[0] < 5.0, "stopping waited for the stopped worker"
    assert not live_children()
