"""The Ray backend on a real cluster: two Ray nodes on this machine (a head and a node that joins
it, 1 CPU each, started with ``ray start`` in temp dirs and on ports of their own, with token
authentication), started once for the module.  A run of two workers puts one worker actor on
each node.  On it:

* a sparse linear model pulls and pushes only its coordinates, a dense one whole vectors, and
  evaluations by update count land at the due counts (runs of the engine in a driver process);
* a relative ``--data`` path is read by the workers on both nodes; a wrong address, a missing
  or a wrong token fail at once in one line naming the address (and the token);
* SIGTERM or SIGINT to ``train --backend ray --address`` mid-run: exit 128 + N, the partial
  result and the final checkpoint written;
* the joining node's raylet killed during a run: its worker is re-created, cannot be placed (no
  CPU is left), is reported stalled, then lost after ``placement_timeout``; with
  ``on_lost_worker="continue"`` the run ends normally with the other worker's whole shard
  trained, with ``"stop"`` it stops on its own; the result names the lost worker (the joining
  node is started again for the next test that needs it).

Every process a test started is gone afterwards: a run's driver and its actors' processes after
each run, and every process of the cluster (by session, and any that left its session) at the
end.  Every wait is for an event (a file, a line, the end of a process), with a deadline.

Also, without a cluster: the backend's lost-worker rules (placement deadline, stop or continue)
on a stand-in for Ray."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import pytest

from hogwild_mts.kernels.split import total_updates
from tests.helpers import (WAIT_SECONDS, default_stop_signals, processes_with_environment,
                           session_processes)

pytestmark = pytest.mark.timeout(300)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
RAY_CLI = os.path.join(os.path.dirname(PYTHON), "ray")
PLACEMENT_SECONDS = 5  # the stop run's placement_timeout
# The head's GCS declares a node dead after about 1.5 s without heartbeats (Ray's default: ~15 s).
FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                      "health_check_timeout_ms": 1000, "health_check_initial_delay_ms": 1000}
START_SECONDS = 180.0  # `ray start` of one node on a busy 2-core machine (seen: 30 s)
START_ATTEMPTS = 2
DEFAULT_ADDRESS_FILE = "/tmp/ray/ray_current_cluster"  # what a bare ray.init() would join
CONNECT_SECONDS = 60.0  # four refused connections are reported within this (seen: 2-7 s)
ACTOR_PROCESSES = ("ray::LinearWorker", "ray::ParameterServer")
# A run that would train for hours on the cluster: only a signal or a lost worker ends it.
LONG = ("--data", "synthetic-sparse:n=4000,d=200,nnz=10", "--workers", "2", "--epochs", "100000",
        "--quiet")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_sessions(sessions) -> None:
    """SIGKILL, by pid, every process of ``sessions``; wait until none is left."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        left = [pid for session in sessions for pid, _ in session_processes(session)]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes outlived the test: {left}")
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def wait_for(condition, what: str, seconds: float = WAIT_SECONDS, process=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {seconds:g} s")


class Cluster:
    """Two Ray nodes started with ``ray start``, each in a session of its own (the session id
    is the pid of its ``ray start``)."""

    def __init__(self):
        self.token = uuid.uuid4().hex
        self.environment = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            self.environment.pop(name, None)
        # short: Ray's socket paths under it must fit a unix socket name
        self.root = tempfile.mkdtemp(prefix="hw-nodes-", dir="/tmp")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.sessions: dict = {}  # node name -> session id

    def start(self, name: str, head: bool) -> None:
        """``ray start`` of node ``name``; tried again on fresh ports once (a port picked free
        may be taken meanwhile by another program's Ray); the test fails if Ray cannot start a
        node here."""
        for attempt in range(START_ATTEMPTS):
            if head and attempt:
                self.port = _free_port()
                self.address = f"127.0.0.1:{self.port}"
            output = self._start_once(name, head)
            if output is None:
                return
            kill_sessions([self.sessions[name]])
        self.stop()
        pytest.fail(f"`ray start` of the {name} node cannot run here ({START_ATTEMPTS} tries): {output}")

    def _start_once(self, name: str, head: bool) -> str | None:
        """None once node ``name`` runs, else the last line ``ray start`` printed."""
        # the joining node on another loopback address, so that the driver (127.0.0.1) attaches
        # to the head's raylet and its server is placed there (the driver's node)
        command = [RAY_CLI, "start", "--num-cpus", "1", "--temp-dir", os.path.join(self.root, name),
                   "--node-ip-address", "127.0.0.1" if head else "127.0.0.2", "--disable-usage-stats",
                   "--object-store-memory", str(100 * 2**20)]
        for flag in ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                     "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                     "--metrics-export-port"):
            command += [flag, str(_free_port())]
        if head:
            command += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                        "--dashboard-port", str(_free_port()),
                        "--system-config", json.dumps(FAST_HEALTH_CHECKS)]
        else:
            command += ["--address", self.address]
        process = subprocess.Popen(command, env=self.environment, start_new_session=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.sessions[name] = process.pid
        try:
            output, _ = process.communicate(timeout=START_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return f"`ray start` took more than {START_SECONDS:g} s"
        if process.returncode == 0:
            return None
        return output.strip().splitlines()[-1] if output.strip() else f"exit {process.returncode}"

    def raylets(self, name: str) -> list:
        return [pid for pid, command in session_processes(self.sessions[name])
                if "raylet/raylet " in command]

    def raylet(self, name: str) -> int:
        pids = self.raylets(name)
        assert len(pids) == 1, session_processes(self.sessions[name])
        return pids[0]

    def ensure_node(self) -> None:
        """The joining node runs: started again (its old processes killed) if a test killed
        its raylet."""
        if self.raylets("node"):
            return
        kill_sessions([self.sessions["node"]])
        self.start("node", head=False)

    def workers(self, name: str) -> list:
        """Pids of the LinearWorker actor processes running on node ``name``."""
        return [pid for pid, command in session_processes(self.sessions[name])
                if command.startswith("ray::LinearWorker")]

    def actor_processes(self, *names: str) -> list:
        """(pid, command) of every actor process of a run (worker or server) on the nodes
        ``names`` (default: both)."""
        return [(pid, command) for name in names or self.sessions
                for pid, command in session_processes(self.sessions[name])
                if command.startswith(ACTOR_PROCESSES)]

    def wait_until_no_run_is_left(self, driver: int) -> None:
        """Wait until the run of ``driver`` (a session) left nothing: no process of its
        session, no actor process on the nodes."""
        wait_for(lambda: not session_processes(driver), "the end of the driver's processes")
        wait_for(lambda: not self.actor_processes(), "the end of the run's actor processes")

    def stop(self) -> None:
        try:
            kill_sessions(self.sessions.values())
            # nothing the tests started on the cluster left its session: every such process
            # (Ray's, and the drivers given the cluster's environment) has the cluster's token
            escaped = processes_with_environment(f"RAY_AUTH_TOKEN={self.token}")
            assert not escaped, f"cluster processes outside its sessions: {escaped}"
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    if not os.path.exists(RAY_CLI):
        pytest.fail(f"no ray command beside {PYTHON} (ray is in the test extra)")
    try:
        with open(DEFAULT_ADDRESS_FILE) as handle:
            address_before = handle.read()
    except OSError:
        address_before = None
    nodes = Cluster()
    try:
        nodes.start("head", head=True)
        nodes.start("node", head=False)
        yield nodes
    finally:
        nodes.stop()
        try:
            with open(DEFAULT_ADDRESS_FILE) as handle:
                address_after = handle.read()
        except OSError:
            address_after = None
        # other tests' bare ray.init() must never find this cluster
        assert address_after == address_before or nodes.address.split(":")[1] not in (address_after or "")


@pytest.fixture
def two_nodes(cluster):
    """The cluster with both nodes running (the joining node started again if a test killed
    it)."""
    cluster.ensure_node()
    return cluster


def _with_repo(environment: dict) -> dict:
    """``environment`` with the repository first on the import path."""
    path = environment.get("PYTHONPATH")
    return {**environment, "PYTHONPATH": REPO + (os.pathsep + path if path else "")}


def train(cluster, out, *arguments, cwd=REPO, environment=None):
    """The command line's run on the cluster, in a session of its own (stop signals at their
    default disposition), its stderr in a file beside ``out``; ``environment``: instead of the
    cluster's (its token)."""
    stderr = open(os.path.join(cwd, f"{out}.stderr"), "w+")
    command = [PYTHON, "-m", "hogwild_mts.app.cli", "train", "--backend", "ray", "--address",
               cluster.address, "--out", str(out), *arguments]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                               cwd=cwd, env=_with_repo(environment or cluster.environment),
                               start_new_session=True, preexec_fn=default_stop_signals)
    return process, stderr


def finish(process, stderr, seconds: float = WAIT_SECONDS) -> tuple[str, str]:
    """(stdout, stderr) of ``process`` once it has ended (AssertionError after ``seconds``)."""
    try:
        stdout, _ = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the run did not end within {seconds:g} s") from None
    stderr.seek(0)
    return stdout, stderr.read()


def stop_run(process, stderr) -> None:
    """After a test: whatever of its run is left is killed."""
    stderr.close()
    if process.poll() is None:
        process.kill()
        process.wait()
    kill_sessions([process.pid])


def checkpoint_counter(out) -> int:
    try:
        with open(os.path.join(out, "checkpoint", "model.json")) as handle:
            return json.load(handle)["counter"]
    except (OSError, ValueError, KeyError):
        return 0


# ----------------------------------------------------------------------------------------------
# runs of the engine on the cluster (one driver process)

# The driver: two fits on the cluster, each reporting its result and, from the backend just
# before the run's totals are collected, the server's traffic and the nodes its worker actors ran
# on (from the GCS); one JSON line on stdout.
DRIVER = """
import json, sys
import ray
from hogwild_mts import Engine
from hogwild_mts.backends.ray import backend
from hogwild_mts.data.tabular import synthetic_dense, synthetic_sparse

seen = []
collect = backend.RayBackend.collect

def collect_and_look(self):
    nodes = {ray._private.state.actors(actor._actor_id.hex())["Address"]["NodeID"]
             for actor in self.actors}
    seen.append({"traffic": self.server_call("traffic"), "worker_nodes": len(nodes),
                 "alive_nodes": sum(node["Alive"] for node in ray.nodes())})
    return collect(self)

backend.RayBackend.collect = collect_and_look
address, runs = sys.argv[1], {}
for name, data, options in [
        ("sparse", synthetic_sparse(4000, 20000, 5, seed=1),
         dict(epochs=2, batch_size=4, local_steps=2, eval_every_updates=97)),
        ("dense", synthetic_dense(2000, 30, seed=2), dict(epochs=1, batch_size=10))]:
    result = Engine(model="logreg", policy="constant", lr=0.5, workers=2, seed=3,
                    progress=False, backend="ray", ray_address=address, **options).fit(data)
    runs[name] = {**seen.pop(), "updates": result.updates, "counter": result.counter,
                  "histogram": int(result.staleness_histogram.sum()),
                  "worker_pushes": result.settings["worker_pushes"],
                  "history_updates": result.history["updates"], "loss": result.history["loss"],
                  "n_features": data.n_features, "n_samples": data.n_samples}
print(json.dumps(runs))
"""


@pytest.fixture(scope="module")
def engine_runs(cluster):
    """The driver's two runs on the cluster (the sparse run with evaluations every 97 pushes)."""
    cluster.ensure_node()
    started = time.monotonic()
    process = subprocess.Popen([PYTHON, "-c", DRIVER, cluster.address], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env=_with_repo(cluster.environment), start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=4 * WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    print(f"the driver's two runs took {time.monotonic() - started:.1f} s")
    assert process.returncode == 0, stderr[-3000:]
    cluster.wait_until_no_run_is_left(process.pid)
    return json.loads(stdout.strip().splitlines()[-1])


def test_a_sparse_model_pulls_and_pushes_only_its_coordinates_across_the_nodes(engine_runs):
    run = engine_runs["sparse"]
    pushes = total_updates(run["n_samples"], 2, 2, 4 * 2, "static")
    assert run["worker_nodes"] == 2 and run["alive_nodes"] == 2  # one worker on each node
    assert run["updates"] == run["counter"] == run["histogram"] == sum(run["worker_pushes"]) == pushes
    assert all(count == pushes // 2 for count in run["worker_pushes"])
    traffic = run["traffic"]
    # each push sends its piece's coordinates and is answered with the next piece's: the sums
    # agree, and no push carries more than its K x batch x nnz columns and the intercept
    assert traffic["received"] == traffic["sent"] > 0
    assert traffic["received"] <= pushes * (2 * 4 * 5 + 1)
    assert traffic["received"] * 100 < pushes * (run["n_features"] + 1)
    assert run["loss"][-1] < run["loss"][0]


def test_a_dense_model_pulls_and_pushes_whole_vectors_across_the_nodes(engine_runs):
    run = engine_runs["dense"]
    pushes = total_updates(run["n_samples"], 2, 1, 10, "static")
    assert run["worker_nodes"] == 2 and run["alive_nodes"] == 2
    assert run["updates"] == run["counter"] == run["histogram"] == sum(run["worker_pushes"]) == pushes
    width = run["n_features"] + 1
    # every push the whole vector; every answer, and each worker's first pull, the whole vector
    assert run["traffic"] == {"received": pushes * width, "sent": (pushes + 2) * width}


def test_evaluations_by_update_count_land_at_the_due_counts_on_the_cluster(engine_runs):
    run = engine_runs["sparse"]
    updates = run["history_updates"]
    assert updates == [0, *range(97, run["updates"], 97), run["updates"]]
    assert len(run["loss"]) == len(updates)


# ----------------------------------------------------------------------------------------------
# the command line on the cluster


def test_a_relative_data_path_is_read_by_the_workers_on_both_nodes(two_nodes, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5))
    np.savez(tmp_path / "mydata.npz", X=X, y=np.where(X[:, 0] > 0, 1.0, -1.0))
    process, stderr = train(two_nodes, "out", "--data", "mydata.npz", "--workers", "2",
                            "--epochs", "1", "--quiet", cwd=str(tmp_path))
    try:
        _, text = finish(process, stderr)
        assert process.returncode == 0, text[-3000:]
        metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
        settings = metrics["settings"]
        assert os.path.isabs(settings["data_path"])  # what the workers were sent
        assert os.path.realpath(settings["data_path"]) == os.path.realpath(tmp_path / "mydata.npz")
        assert settings["data_rows"] == 600 and metrics["updates"] == 600
        assert settings["worker_pushes"] == [300, 300]
        two_nodes.wait_until_no_run_is_left(process.pid)
    finally:
        stop_run(process, stderr)


def _without_token(tmp_path, **extra) -> dict:
    """The environment with no token anywhere (HOME without ~/.ray/auth_token), and ``extra``."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    return {**environment, "HOME": str(tmp_path), **extra}


def test_a_wrong_address_or_token_fails_at_once_naming_the_address_and_the_token(two_nodes, tmp_path):
    wrong_port = f"127.0.0.1:{_free_port()}"
    cases = [  # (environment, address, words of the one line)
        (_without_token(tmp_path), two_nodes.address, "refused this process's credentials"),
        (_without_token(tmp_path, RAY_AUTH_MODE="token"), two_nodes.address,
         "token authentication is on here (RAY_AUTH_MODE=token) but no token was found"),
        (_without_token(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32), two_nodes.address,
         "refused this process's credentials"),
        (two_nodes.environment, wrong_port, "ray start --head"),
    ]
    started = time.monotonic()
    processes = [subprocess.Popen([PYTHON, "-m", "hogwild_mts.app.cli", "train", "--backend", "ray",
                                   "--address", address, "--quiet", "--epochs", "1"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                  env=_with_repo(environment), start_new_session=True)
                 for environment, address, _ in cases]  # side by side: each waits for Python
    try:
        for process, (_, address, words) in zip(processes, cases):
            _, stderr = process.communicate(timeout=max(0.0, started + CONNECT_SECONDS - time.monotonic()))
            print(f"{words!r}: exit {process.returncode} after {time.monotonic() - started:.1f} s")
            lines = stderr.strip().splitlines()
            assert process.returncode == 2 and len(lines) == 1, stderr[-3000:]
            assert f"'{address}'" in lines[0] and words in lines[0]
            if address == two_nodes.address:
                assert "RAY_AUTH_TOKEN" in lines[0]  # how to give the token
    except subprocess.TimeoutExpired:
        raise AssertionError(f"a refused connection was not reported within {CONNECT_SECONDS:g} s") from None
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process in processes:
        wait_for(lambda: not session_processes(process.pid), "the end of the driver's processes")
    assert not two_nodes.actor_processes()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT],
                         ids=lambda signum: signal.Signals(signum).name)
def test_a_stop_signal_to_a_run_on_the_cluster_keeps_the_partial_result_and_the_final_checkpoint(
        two_nodes, tmp_path, signum):
    out = tmp_path / "out"
    process, stderr = train(two_nodes, out, *LONG, "--checkpoint-every", "1s")
    try:
        # the first checkpoint is written a second after the workers started: they train
        wait_for(lambda: checkpoint_counter(out) > 0, "the first checkpoint", START_SECONDS, process)
        assert len(two_nodes.workers("head")) == 1 and len(two_nodes.workers("node")) == 1
        os.killpg(process.pid, signum)
        stdout, text = finish(process, stderr)
        assert process.returncode == 128 + signum, text[-3000:]
        assert "INTERRUPTED" in stdout and "Traceback" not in text
        assert f"stopped by {signal.Signals(signum).name}" in text
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["interrupted"] is True and metrics["updates"] > 0
        assert metrics["updates"] == sum(metrics["settings"]["worker_pushes"])
        assert all(pushes > 0 for pushes in metrics["settings"]["worker_pushes"])
        assert (out / "params.npy").exists() and (out / "model.json").exists()
        # the final checkpoint: written after the workers stopped, at the result's count
        assert checkpoint_counter(out) == metrics["counter"]
        two_nodes.wait_until_no_run_is_left(process.pid)
    finally:
        stop_run(process, stderr)


# ----------------------------------------------------------------------------------------------
# a lost node (the joining node is started again by the next test that needs it)


def test_a_killed_node_in_continue_mode_loses_its_worker_and_the_run_ends_with_the_other(
        two_nodes, tmp_path):
    """The worker on the killed node is re-created, waits to be placed (reported stalled on the
    progress line and in one log line naming it), is lost after placement_timeout, and the other
    worker trains its whole shard: the run ends normally, exit 0."""
    out, epochs, placement = tmp_path / "out", 2, 12
    process, stderr = train(two_nodes, out, "--data", "synthetic-sparse:n=4000,d=200,nnz=10",
                            "--workers", "2", "--epochs", str(epochs), "--checkpoint-every", "1s",
                            "--placement-timeout", str(placement), "--on-lost-worker", "continue")
    try:
        wait_for(lambda: checkpoint_counter(out) > 0, "the first checkpoint", START_SECONDS, process)
        assert len(two_nodes.workers("head")) == 1 and len(two_nodes.workers("node")) == 1
        os.kill(two_nodes.raylet("node"), signal.SIGKILL)
        killed = time.monotonic()
        stdout, text = finish(process, stderr, placement + 2 * WAIT_SECONDS)
        print(f"the run ended {time.monotonic() - killed:.1f} s after the node's raylet was killed")
        assert process.returncode == 0, text[-3000:]
        metrics = json.loads((out / "metrics.json").read_text())
        settings = metrics["settings"]
        assert [entry["worker"] for entry in settings["restarted_workers"]] == \
            [entry["worker"] for entry in settings["lost_workers"]]
        [lost] = [entry["worker"] for entry in settings["lost_workers"]]
        assert f"could not place its actor on a node within {placement} s" in \
            settings["lost_workers"][0]["error"]
        assert f"Ray worker actor {lost} died" in text and "restarting it (restart 1 of 2" in text
        assert f"worker {lost} has made no progress for" in text  # the stall, named
        assert f"Ray worker actor {lost} was lost" in text and "goes on with 1 worker" in text
        assert metrics["stopped_by"] is None and metrics["interrupted"] is False
        shard = total_updates(4000, 2, epochs, 1, "static") // 2
        pushes = settings["worker_pushes"]
        assert pushes[1 - lost] == shard and 0 < pushes[lost] < shard  # the other trained it all
        assert metrics["updates"] == metrics["counter"] == sum(pushes)
        assert checkpoint_counter(out) == metrics["counter"]
        wait_for(lambda: not session_processes(process.pid), "the end of the driver's processes")
        wait_for(lambda: not two_nodes.actor_processes("head"),
                 "the end of the run's actor processes on the head")
    finally:
        stop_run(process, stderr)


def test_a_killed_node_loses_its_worker_and_the_run_stops_within_the_deadline(two_nodes, tmp_path):
    cluster = two_nodes
    out = tmp_path / "out"
    process, stderr = train(cluster, out, *LONG, "--checkpoint-every", "1s",
                            "--placement-timeout", str(PLACEMENT_SECONDS),
                            "--on-lost-worker", "stop")
    try:
        wait_for(lambda: checkpoint_counter(out) >= 200, "200 pushes", START_SECONDS, process)
        # one worker actor on each node: both nodes train
        assert len(cluster.workers("head")) == 1 and len(cluster.workers("node")) == 1
        os.kill(cluster.raylet("node"), signal.SIGKILL)
        killed = time.monotonic()
        _, text = finish(process, stderr)
        ended = time.monotonic() - killed
        print(f"the run ended {ended:.1f} s after the node's raylet was killed")
        assert process.returncode == 1, text[-3000:]
        # detected (~2 s), re-created, not placed within the deadline, stopped
        assert ended < PLACEMENT_SECONDS + 40, ended
        assert "restarting it (restart 1 of 2" in text
        assert f"could not place its actor on a node within {PLACEMENT_SECONDS} s" in text
        assert "run failed: Ray worker actor" in text and "on_lost_worker='stop'" in text
        metrics = json.loads((out / "metrics.json").read_text())
        settings = metrics["settings"]
        lost = [entry["worker"] for entry in settings["lost_workers"]]
        assert len(lost) == 1 and "could not place" in settings["lost_workers"][0]["error"]
        assert [entry["worker"] for entry in settings["restarted_workers"]] == lost
        assert "node" in settings["restarted_workers"][0]["error"]
        assert metrics["stopped_by"] and "was lost" in metrics["stopped_by"]
        assert all(pushes > 0 for pushes in settings["worker_pushes"])  # both trained
        assert metrics["updates"] == sum(settings["worker_pushes"])
        wait_for(lambda: not session_processes(process.pid), "the end of the run's processes")
        # the killed node's processes (its log monitor outlives its raylet) are killed by the
        # fixture; the head still runs
        assert cluster.raylet("head")
    finally:
        stop_run(process, stderr)


# ----------------------------------------------------------------------------------------------
# the backend's rules on a stand-in for Ray (no cluster)


class StandInRay:
    """What RayBackend asks of ``ray`` while a re-created actor waits to be placed."""

    class exceptions:
        RayError = RuntimeError
        RayActorError = RuntimeError

    def __init__(self):
        self.killed = []

    def wait(self, refs, num_returns, timeout):
        return [], list(refs)  # nothing becomes ready

    def kill(self, actor):
        self.killed.append(actor)

    def available_resources(self):
        return {"CPU": 0.0}


def waiting_backend(monkeypatch, on_lost_worker: str):
    from hogwild_mts.backends.ray import backend as ray_backend

    monkeypatch.setattr(ray_backend, "actor_placed", lambda actor: False)
    backend = ray_backend.RayBackend(2, None, None, placement_timeout=0.05,
                                     on_lost_worker=on_lost_worker)
    backend._ray = StandInRay()
    backend.actors = ["actor-0", "actor-1-restart-1"]
    backend._restarting = {"ready-ref": 1}
    backend._waiting_since = {1: time.monotonic()}
    return backend


def test_a_recreated_worker_not_placed_in_time_is_lost_and_the_run_goes_on(monkeypatch):
    backend = waiting_backend(monkeypatch, "continue")
    backend._collect_restarted()
    assert backend.lost == [] and backend.stalled(0.0).keys() == {1}
    time.sleep(0.1)
    with pytest.warns(RuntimeWarning, match=r"worker actor 1 was lost: Ray could not place its "
                                            r"actor on a node within 0.05 s .*goes on with 1 worker"):
        backend._collect_restarted()
    assert [entry["worker"] for entry in backend.lost] == [1]
    assert backend._ray.killed == ["actor-1-restart-1"]  # its pending placement is dropped
    assert not backend._restarting and backend.stalled(0.0) == {}
    assert backend._failure is None


def test_on_lost_worker_stop_stops_the_run(monkeypatch):
    from hogwild_mts.core.result import WorkerError

    backend = waiting_backend(monkeypatch, "stop")
    time.sleep(0.1)
    backend._collect_restarted()
    assert [entry["worker"] for entry in backend.lost] == [1]
    with pytest.raises(WorkerError, match=r"worker actor 1 was lost: .*the run was stopped "
                                          r"\(on_lost_worker='stop'"):
        backend.poll()


@pytest.mark.parametrize("options, words", [
    (dict(placement_timeout=0), "placement_timeout must be"),
    (dict(on_lost_worker="wait"), "on_lost_worker must be one of"),
    (dict(backend="shm", placement_timeout=5), "placement_timeout only apply to backend='ray'"),
])
def test_bad_fault_options_are_refused_by_the_constructor(options, words):
    from hogwild_mts import Engine

    with pytest.raises((ValueError, TypeError), match=words):
        Engine(**({"backend": "ray"} | options))
