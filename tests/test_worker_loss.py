"""A worker that dies or fails once the run has started: the others are stopped and their
updates kept as the partial result (``interrupted``, ``stopped_by`` the cause), carried by the
WorkerError (Python) and written by ``train --out`` (exit 1); no process or block is left."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hogwild_mts.core.result import WorkerError
from tests.helpers import WAIT_SECONDS, default_stop_signals, process_table, shared_blocks, wait_for_updates
from tests.test_lifecycle import ScriptedBackend, _run


def test_a_failure_after_the_start_carries_the_partial_result():
    backend = ScriptedBackend(total=100, step=10, fail_at=30, failure=WorkerError("worker 1 died"))
    with pytest.raises(WorkerError, match="worker 1 died") as caught:
        _run(backend, eval_every_updates=1000)
    partial = caught.value.result
    assert partial.interrupted and partial.updates == 30 and partial.stopped_by == "worker 1 died"
    assert partial.to_dict()["stopped_by"] == "worker 1 died"
    assert backend.calls[-3:] == ["stop", "join", "close"]


def test_a_failure_before_the_start_carries_no_result():
    class FailsAtStart(ScriptedBackend):
        def ready(self):
            raise WorkerError("worker 0 exited with code 1")

    with pytest.raises(WorkerError) as caught:
        _run(FailsAtStart(), eval_every_updates=1000)
    assert caught.value.result is None


def _workers_of(pid: int) -> list:
    """The run's worker processes: children of ``pid`` but multiprocessing's resource tracker."""
    return [child for child, parent, _, _, command in process_table()
            if parent == pid and "resource_tracker" not in command]


def test_sigkill_of_one_worker_keeps_the_others_updates(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hogwild_mts.app.cli", "train", "--quiet", "--data",
               "synthetic-sparse:n=400,d=50,nnz=5,seed=1", "--workers", "2", "--epochs", "100000",
               "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=default_stop_signals)
    try:
        wait_for_updates(process.pid, minimum=1000)
        workers = _workers_of(process.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1, stderr
    assert "was killed by signal SIGKILL" in stderr and "partial result above was written" in stderr
    assert "Traceback" not in stderr and "INTERRUPTED" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interrupted"] is True and metrics["updates"] >= 1000
    assert "SIGKILL" in metrics["stopped_by"]
    assert np.isfinite(np.load(out / "params.npy")).all()
    assert (out / "model.json").exists()
    deadline = time.monotonic() + WAIT_SECONDS
    while True:  # every process of the run is gone (no zombie: the parent reaped its workers)
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "processes of the run are still there"
        time.sleep(0.01)
    assert not shared_blocks(process.pid)


def _boom(tau):
    raise RuntimeError("boom")


class FailsToRefit:
    """A user policy whose refit raises once the workers call it."""

    refit_every = 10

    def bind(self, workers, momentum=0.0):
        pass

    def table(self):
        return np.full(8, 0.1)

    def observe(self, histogram):
        raise RuntimeError("observe boom")


def test_a_policy_function_that_raises_is_named_before_any_worker_starts():
    from hogwild_mts import Engine
    from hogwild_mts.data.tabular import synthetic_sparse
    from hogwild_mts.policies.step_sizes import PolicyError

    data = synthetic_sparse(400, 50, 5, seed=1)
    with pytest.raises(PolicyError, match=r"policy function '_boom' raised RuntimeError at tau = 0: boom"):
        Engine("logreg", policy=_boom, workers=2, epochs=1, progress=False).fit(data)
    assert not shared_blocks()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_policy_that_raises_in_a_worker_fails_the_run_naming_it_and_keeps_the_updates(workers):
    from hogwild_mts import Engine
    from hogwild_mts.data.tabular import synthetic_sparse

    data = synthetic_sparse(400, 50, 5, seed=1)
    engine = Engine("logreg", policy=FailsToRefit(), workers=workers, epochs=50, progress=False)
    with pytest.raises(WorkerError, match=r"worker \d failed: \S*PolicyError: policy 'FailsToRefit' "
                                          r"raised RuntimeError in observe\(\): observe boom") as caught:
        engine.fit(data)
    assert caught.value.result is not None and caught.value.result.interrupted
    assert not shared_blocks()
