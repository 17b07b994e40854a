"""The command line on the Ray backend, as a process: SIGTERM and SIGHUP to the process group of
a ``train --backend ray`` that started its own local Ray instance stop it like Ctrl-C (exit
128 + N, the partial result written, no Ray process of the run left), a cluster address that
answers nothing (or not Ray) fails in one line within a bound, a relative data path reaches the
workers, and ``--backend ray`` without ray is one line.  Every wait is for an event (a file, the
process's end) with a generous deadline, never a fixed sleep."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hogwild_mts.core import signals
from tests.helpers import WAIT_SECONDS, default_stop_signals, session_processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
# A run that would train for hours: only a signal ends it.
LONG = ("--data", "synthetic-sparse:n=4000,d=200,nnz=10", "--workers", "1", "--epochs", "100000",
        "--quiet")
CONNECT_BOUND_SECONDS = 60.0  # a failed --address must be reported well within this

needs_ray = pytest.mark.skipif(
    subprocess.run([PYTHON, "-c", "import ray"], capture_output=True).returncode != 0,
    reason="ray is not importable (it is in the test extra)")


def _environment(**extra) -> dict:
    """This interpreter's environment with the repository first on the import path."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": REPO + (os.pathsep + path if path else ""), **extra}


def _train(*arguments, cwd=REPO, **popen):
    command = [PYTHON, "-m", "hogwild_mts.app.cli", "train", "--backend", "ray", *arguments]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env=_environment(), start_new_session=True,
                            preexec_fn=default_stop_signals, **popen)


def _wait_for(condition, what: str, process=None):
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before {what}:\n"
                                 + process.stderr.read())
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {WAIT_SECONDS} s")


def _ended(process, seconds: float = WAIT_SECONDS):
    """(stdout, stderr) of ``process`` once it has ended (within ``seconds``); what is left of
    its run is killed if it has not."""
    try:
        return process.communicate(timeout=seconds)
    finally:
        if process.poll() is None:
            _kill_session(process.pid)


def _kill_session(session: int) -> None:
    """SIGKILL to whatever of a failed test's run is left (its driver's group, then each Ray
    process of its session by pid)."""
    try:
        os.killpg(session, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid, _ in session_processes(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@needs_ray
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_to_the_process_group_keeps_the_partial_result_and_leaves_no_ray_process(
        tmp_path, signum):
    """What ``timeout``, a batch scheduler (SIGTERM) and a closed terminal (SIGHUP) do: the
    signal goes to every process of the driver's group.  The local Ray instance's processes are
    in groups of their own, so only the driver gets it; it stops the workers, writes the partial
    result and the final checkpoint, shuts Ray down and exits 128 + N."""
    out = tmp_path / "out"
    process = _train(*LONG, "--out", str(out), "--checkpoint-every", "1s")
    try:
        # the first checkpoint is written a second after the workers started: it is training
        _wait_for(lambda: (out / "checkpoint" / "model.json").exists(), "the first checkpoint",
                  process)
        ray_processes = [entry for entry in session_processes(process.pid) if entry[0] != process.pid]
        assert ray_processes, "the run started no Ray process of its own"
        os.killpg(process.pid, signum)
        stdout, stderr = process.communicate(timeout=WAIT_SECONDS)
        assert process.returncode == 128 + signum, stderr
        assert "INTERRUPTED" in stdout and "Traceback" not in stderr and "SIGTERM received" not in stderr
        assert f"stopped by {signal.Signals(signum).name}" in stderr
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["interrupted"] is True and metrics["updates"] > 0
        assert (out / "params.npy").exists() and (out / "model.json").exists()
        assert (out / "checkpoint" / "model.json").exists()
        _wait_for(lambda: not session_processes(process.pid), "the end of every Ray process of the run")
    finally:
        if process.poll() is None or session_processes(process.pid):
            _kill_session(process.pid)


@needs_ray
def test_a_killed_driver_leaves_no_ray_process_behind(tmp_path):
    """SIGKILL of the driver alone: nothing of it runs any more, so the local instance's
    processes (Ray's agents included, which Ray's own fate sharing leaves running) are ended by
    the reaper the driver started beside them."""
    out = tmp_path / "out"
    process = _train(*LONG, "--out", str(out), "--checkpoint-every", "1s")
    try:
        _wait_for(lambda: (out / "checkpoint" / "model.json").exists(), "the first checkpoint",
                  process)
        assert [entry for entry in session_processes(process.pid) if entry[0] != process.pid]
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=WAIT_SECONDS)
        _wait_for(lambda: not session_processes(process.pid), "the end of every Ray process of the run")
    finally:
        if process.poll() is None or session_processes(process.pid):
            _kill_session(process.pid)


@needs_ray
def test_an_address_where_no_cluster_runs_fails_in_one_line_naming_it():
    started = time.monotonic()
    process = _train("--address", "127.0.0.1:1", "--quiet", "--epochs", "1")
    stdout, stderr = _ended(process, CONNECT_BOUND_SECONDS)
    assert process.returncode == 2, stderr
    assert time.monotonic() - started < CONNECT_BOUND_SECONDS
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "'127.0.0.1:1'" in lines[0] and "ray start --head" in lines[0]
    assert not session_processes(process.pid)


@needs_ray
def test_an_address_where_something_else_answers_fails_in_one_line_within_the_bound():
    """A port that accepts connections but does not speak Ray (here: one that accepts and says
    nothing) is refused by Ray's handshake, bounded by PROBE_SECONDS, not ray.init's retries."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    started = time.monotonic()
    process = _train("--address", address, "--quiet", "--epochs", "1")
    try:
        _, stderr = process.communicate(timeout=CONNECT_BOUND_SECONDS)
    finally:
        if process.poll() is None:
            _kill_session(process.pid)
        server.close()
        for connection in accepted:
            connection.close()
    assert process.returncode == 2, stderr
    assert time.monotonic() - started < CONNECT_BOUND_SECONDS
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert f"'{address}'" in lines[0] and "not Ray's GCS" in lines[0]


@needs_ray
def test_token_mode_without_a_token_fails_in_one_line_naming_the_address(tmp_path):
    """RAY_AUTH_MODE=token and no token anywhere (Ray's client would abort the process without a
    word): one line naming the address and how to give the token, checked before Ray's
    handshake (here against a port that only accepts)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    address = f"127.0.0.1:{server.getsockname()[1]}"
    environment = {name: value for name, value in _environment().items()
                   if name not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    command = [PYTHON, "-m", "hogwild_mts.app.cli", "train", "--backend", "ray", "--address",
               address, "--quiet", "--epochs", "1"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                              env={**environment, "RAY_AUTH_MODE": "token", "HOME": str(tmp_path)},
                              timeout=CONNECT_BOUND_SECONDS)
    finally:
        server.close()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"'{address}'" in lines[0] and "no token was found" in lines[0]
    assert "RAY_AUTH_TOKEN" in lines[0]


@needs_ray
def test_a_relative_data_path_is_read_by_the_workers(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    np.savez(tmp_path / "mydata.npz", X=X, y=np.where(X[:, 0] > 0, 1.0, -1.0))
    process = _train("--data", "mydata.npz", "--workers", "1", "--epochs", "1", "--quiet",
                     "--out", "out", cwd=str(tmp_path))
    stdout, stderr = _ended(process)
    assert process.returncode == 0, stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    data_path = metrics["settings"]["data_path"]  # what the workers were sent
    assert os.path.isabs(data_path)
    assert os.path.realpath(data_path) == os.path.realpath(tmp_path / "mydata.npz")
    assert metrics["settings"]["data_rows"] == 400
    _wait_for(lambda: not session_processes(process.pid), "the end of every Ray process of the run")


def test_the_ray_backend_without_ray_is_one_line_and_exit_2():
    shim = ("import sys; sys.modules['ray'] = None; from hogwild_mts.app.cli import main; "
            "sys.exit(main(['train', '--backend', 'ray', '--quiet', '--epochs', '1']))")
    done = subprocess.run([PYTHON, "-c", shim], capture_output=True, text=True, cwd=REPO,
                          env=_environment(), timeout=WAIT_SECONDS)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "needs the ray package" in lines[0] and "hogwild-mts[ray]" in lines[0]


def test_reinstall_puts_the_stop_handlers_back_after_a_library_replaced_them():
    """What ray.init does to SIGTERM, and what connect() undoes."""
    def foreign(signum, frame):
        raise AssertionError("the library's handler ran")

    with signals.stop_on_signals() as received:
        ours = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, foreign)
        signals.reinstall()
        assert signal.getsignal(signal.SIGTERM) == ours
        with pytest.raises(signals.Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises long before (a signal is delivered at once)
        assert received == [signal.SIGTERM]
    previous = signal.getsignal(signal.SIGTERM)
    signals.reinstall()  # outside stop_on_signals: nothing changes
    assert signal.getsignal(signal.SIGTERM) is previous


@needs_ray
def test_a_stop_signal_while_the_local_instance_starts_ends_the_run_and_leaves_nothing(tmp_path):
    """SIGTERM to the group as soon as Ray's GCS process exists (ray.init is under way): held
    until Ray has started, then it ends the run: exit 143, no traceback, and the instance is shut
    down."""
    process = _train(*LONG, "--out", str(tmp_path / "out"))
    try:
        _wait_for(lambda: any("gcs_server" in command for _, command in session_processes(process.pid)),
                  "the start of Ray's GCS", process)
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=WAIT_SECONDS)
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert "Traceback" not in stderr and "SIGTERM received" not in stderr
        assert "stopped by SIGTERM" in stderr
        _wait_for(lambda: not session_processes(process.pid), "the end of every Ray process of the run")
    finally:
        if process.poll() is None or session_processes(process.pid):
            _kill_session(process.pid)
