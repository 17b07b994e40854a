"""One stop however many signals: the first stop signal stops the run, later ones (a second
Ctrl-C, SIGTERM after Ctrl-C, a signal just after training ended) join that stop and never cut
the writing of the result short; a SIGHUP to the whole group leaves no traceback.

The in-process tests use SIGINT and SIGTERM only: a suite started under ``nohup`` ignores
SIGHUP, and a signal the process ignores stays ignored; the subprocess tests reset every stop
signal to its default."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hogwild_mts.core import signals
from tests.helpers import group_alive, WAIT_SECONDS, default_stop_signals, shared_blocks, wait_for_updates
from tests.test_lifecycle import ScriptedBackend, _run

TINY = "synthetic-sparse:n=400,d=50,nnz=5,seed=1"
LONG = ["--epochs", "100000"]  # a run that only ends when it is stopped


def test_the_first_signal_raises_and_later_ones_are_only_recorded():
    with signals.stop_on_signals() as received:
        with pytest.raises(signals.Interrupted):
            signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # a second Ctrl-C: joins the first stop
        signal.raise_signal(signal.SIGTERM)
    assert received == [signal.SIGINT, signal.SIGINT, signal.SIGTERM]


def test_interruptible_raises_inside_held_and_after_hold_rest():
    with signals.stop_on_signals() as received:
        with signals.held():
            with pytest.raises(signals.Interrupted):
                with signals.interruptible():
                    signal.raise_signal(signal.SIGTERM)
                    assert received == [signal.SIGTERM]  # recorded: raised at the next check
                    signals.check()
    assert received == [signal.SIGTERM]
    with signals.stop_on_signals() as received:
        signals.hold_rest()
        signal.raise_signal(signal.SIGINT)  # recorded: the rest is held
        assert received == [signal.SIGINT]
        with pytest.raises(signals.Interrupted):  # a recorded signal raises on entering
            with signals.interruptible():
                pass


class SignalledBackend(ScriptedBackend):
    """A ScriptedBackend that sends this process stop signals at chosen moments of the run:
    ``on``: {backend call: signal}, each sent once."""

    def __init__(self, on: dict, **script):
        super().__init__(**script)
        self.on = dict(on)

    def _send(self, call: str) -> None:
        signum = self.on.pop(call, None)
        if signum is not None:
            signal.raise_signal(signum)

    def poll(self, until_updates=None):
        updates = super().poll(until_updates)
        if updates >= 40:
            self._send("poll")
        return updates

    def join(self):
        super().join()
        self._send("join")

    def close(self):
        super().close()
        self._send("close")


def test_signals_just_after_training_keep_the_complete_result():
    """One while the backend is released, one after the result came back (while a caller
    writes it): both only recorded."""
    backend = SignalledBackend({"close": signal.SIGTERM}, total=100, step=10)
    with signals.stop_on_signals() as received:
        result = _run(backend, eval_every_updates=1000)
        signal.raise_signal(signal.SIGINT)
    assert received == [signal.SIGTERM, signal.SIGINT]
    assert not result.interrupted and result.updates == 100
    assert backend.calls[-1] == "close"


def test_signals_during_the_stop_join_it_and_the_partial_result_is_made():
    backend = SignalledBackend({"poll": signal.SIGINT, "join": signal.SIGINT, "close": signal.SIGTERM},
                               total=100, step=10)
    with signals.stop_on_signals() as received:
        result = _run(backend, eval_every_updates=1000)
    assert received == [signal.SIGINT, signal.SIGINT, signal.SIGTERM]
    assert result.interrupted and result.updates == 40
    assert backend.calls[-1] == "close"


def _cli_train(*arguments):
    command = [sys.executable, "-m", "hogwild_mts.app.cli", "train", "--quiet", *arguments]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_stop_signals)



def _wait_until_gone(group: int) -> None:
    """Wait (deadline WAIT_SECONDS) until no process of the run's group is left."""
    deadline = time.monotonic() + WAIT_SECONDS
    while group_alive(group):
        assert time.monotonic() < deadline, f"processes of group {group} are still running"
        time.sleep(0.01)


def _finish(process):
    """(stdout, stderr) once the run has ended; the whole group is killed if it has not."""
    try:
        return process.communicate(timeout=WAIT_SECONDS)
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.parametrize("burst", [(signal.SIGINT, signal.SIGINT, signal.SIGINT),
                                   (signal.SIGTERM, signal.SIGINT),
                                   (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)],
                         ids=["ctrl-c-three-times", "sigterm-then-ctrl-c", "int-term-hup"])
def test_a_burst_of_signals_writes_the_partial_result_once(tmp_path, burst):
    out = tmp_path / "out"
    process = _cli_train("--data", TINY, "--workers", "2", "--out", str(out), *LONG)
    try:
        wait_for_updates(process.pid, minimum=100)
        for signum in burst:
            os.kill(process.pid, signum)
    finally:
        stdout, stderr = _finish(process)
    # signals pending together are delivered lowest number first: the status names the first received
    assert process.returncode - 128 in burst, stderr
    assert f"stopped by {signal.Signals(process.returncode - 128).name}" in stderr
    assert "Traceback" not in stderr and "INTERRUPTED" in stdout, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interrupted"] is True and metrics["updates"] > 0
    assert np.load(out / "params.npy").shape == (50,)
    _wait_until_gone(process.pid)
    assert not shared_blocks(process.pid)


def test_sighup_to_the_whole_group_ends_cleanly_without_a_traceback(tmp_path):
    """A closed terminal: SIGHUP to every process of the run, the resource tracker included."""
    out = tmp_path / "out"
    process = _cli_train("--data", TINY, "--workers", "2", "--out", str(out), *LONG)
    try:
        wait_for_updates(process.pid, minimum=100)
        os.killpg(process.pid, signal.SIGHUP)
    finally:
        stdout, stderr = _finish(process)
    assert process.returncode == 128 + signal.SIGHUP, stderr
    assert "Traceback" not in stderr and "INTERRUPTED" in stdout, stderr
    assert (out / "metrics.json").exists()
    _wait_until_gone(process.pid)
    assert not shared_blocks(process.pid)


EXPERIMENT = ["experiment", "--no-plots", "--policies", "constant", "--workers", "1,2",
              "--seeds", "0", "--lrs", "0.5,1", "--epochs", "1"]


def test_sigterm_to_an_experiment_stops_it_after_the_cell_with_128_plus_the_signal(tmp_path):
    out = tmp_path / "grid"
    command = [sys.executable, "-m", "hogwild_mts.app.cli", *EXPERIMENT, "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=default_stop_signals)
    lines = []
    try:
        for line in process.stderr:  # each finished cell prints one line "[ k/n] ..."
            lines.append(line)
            if line.lstrip("[ ").startswith("1/"):
                os.kill(process.pid, signal.SIGTERM)
                break
        stdout, stderr = _finish(process)
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGTERM, "".join(lines) + stderr
    assert "stopped by SIGTERM" in stderr
    assert 1 <= len(list((out / "cells").iterdir())) < 4  # the grid did not run to its end


def test_a_signal_while_the_grid_writes_its_tables_is_the_exit_status(tmp_path, monkeypatch):
    from hogwild_mts.app import cli, experiment

    write_tables = experiment.write_tables

    def signalled(*arguments, **keywords):
        signal.raise_signal(signal.SIGTERM)  # held: the tables are still written
        return write_tables(*arguments, **keywords)

    monkeypatch.setattr(experiment, "write_tables", signalled)
    out = tmp_path / "grid"
    assert cli.main([*EXPERIMENT, "--out", str(out)]) == 128 + signal.SIGTERM
    assert (out / "best.csv").exists()


def test_a_stop_whose_raise_was_lost_still_stops_the_run():
    """A signal that lands in a callback whose exceptions Python ignores (here: a weak
    reference's callback) loses its raise; the lifecycle's next poll stops the run anyway."""
    import gc
    import weakref

    class Target:
        pass

    class LosesItsRaise(ScriptedBackend):
        def poll(self, until_updates=None):
            if self.updates == 40:
                target = Target()
                reference = weakref.ref(target, lambda _: signal.raise_signal(signal.SIGTERM))
                del target  # the callback runs (and its exception is printed, then dropped)
                gc.collect()
                assert reference() is None
            return super().poll(until_updates)

    with signals.stop_on_signals() as received:
        result = _run(LosesItsRaise(total=10_000, step=10), eval_every_updates=100_000)
    assert received == [signal.SIGTERM]
    assert result.interrupted and result.updates < 10_000
