"""A lost Ray node does not hang a run: a cluster of two Ray nodes on this machine (a head and a
node that joins it, 1 CPU each, started with ``ray start`` in temp dirs and on ports of their
own, with the token authentication this Ray needs), a training whose two worker actors run one
on each node, and the joining node's raylet killed during it: the worker it ran is re-created,
cannot be placed (no CPU is left), is lost after ``placement_timeout`` and the run stops on its
own with ``on_lost_worker="stop"``, its result naming the lost worker.  Every process the test
started is gone afterwards (by session).  Every wait is for an event, with a deadline.

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

import pytest

from tests.helpers import WAIT_SECONDS, session_processes

pytestmark = pytest.mark.timeout(300)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
RAY_CLI = os.path.join(os.path.dirname(PYTHON), "ray")
PLACEMENT_SECONDS = 5  # the run's placement_timeout
# The head's GCS declares a node dead after about 1.5 s without heartbeats (Ray's default: ~15 s).
FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                      "health_check_timeout_ms": 1000, "health_check_initial_delay_ms": 1000}
START_SECONDS = 180.0  # `ray start` of one node on a busy 2-core machine (seen: 30 s)
DEFAULT_ADDRESS_FILE = "/tmp/ray/ray_current_cluster"  # what a bare ray.init() would join


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
        self.environment.pop("RAY_ADDRESS", None)
        # short: Ray's socket paths under it must fit a unix socket name
        self.root = tempfile.mkdtemp(prefix="hw-nodes-", dir="/tmp")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.sessions: dict = {}  # node name -> session id

    def start(self, name: str, head: bool) -> None:
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
            output = f"`ray start` took more than {START_SECONDS:g} s"
        if process.returncode != 0:
            self.stop()
            pytest.skip(f"`ray start` of the {name} node cannot run here: "
                        f"{output.strip().splitlines()[-1] if output.strip() else process.returncode}")

    def raylet(self, name: str) -> int:
        pids = [pid for pid, command in session_processes(self.sessions[name])
                if "raylet/raylet " in command]
        assert len(pids) == 1, session_processes(self.sessions[name])
        return pids[0]

    def workers(self, name: str) -> list:
        """Pids of the LinearWorker actor processes running on node ``name``."""
        return [pid for pid, command in session_processes(self.sessions[name])
                if command.startswith("ray::LinearWorker")]

    def stop(self) -> None:
        try:
            kill_sessions(self.sessions.values())
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    if not os.path.exists(RAY_CLI):
        pytest.skip(f"no ray command beside {PYTHON} (ray is in the test extra)")
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


def train(cluster, out, *arguments):
    """The command line's run on the cluster, in a session of its own, its stderr in a file."""
    path = os.environ.get("PYTHONPATH")
    environment = {**cluster.environment, "PYTHONPATH": REPO + (os.pathsep + path if path else "")}
    stderr = open(out.parent / f"{out.name}.stderr", "w+")
    command = [PYTHON, "-m", "hogwild_mts.app.cli", "train", "--backend", "ray", "--address",
               cluster.address, "--out", str(out), *arguments]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                               cwd=REPO, env=environment, start_new_session=True)
    return process, stderr


def checkpoint_counter(out) -> int:
    try:
        with open(out / "checkpoint" / "model.json") as handle:
            return json.load(handle)["counter"]
    except (OSError, ValueError, KeyError):
        return 0


def test_a_killed_node_loses_its_worker_and_the_run_stops_within_the_deadline(cluster, tmp_path):
    out = tmp_path / "out"
    process, stderr = train(cluster, out, "--data", "synthetic-sparse:n=4000,d=200,nnz=10",
                            "--workers", "2", "--epochs", "100000", "--checkpoint-every", "1s",
                            "--placement-timeout", str(PLACEMENT_SECONDS),
                            "--on-lost-worker", "stop")
    try:
        wait_for(lambda: checkpoint_counter(out) >= 200, "200 pushes", START_SECONDS, process)
        # one worker actor on each node: both nodes train
        assert len(cluster.workers("head")) == 1 and len(cluster.workers("node")) == 1
        os.kill(cluster.raylet("node"), signal.SIGKILL)
        killed = time.monotonic()
        process.wait(timeout=WAIT_SECONDS)
        ended = time.monotonic() - killed
        print(f"the run ended {ended:.1f} s after the node's raylet was killed")
        stderr.seek(0)
        text = stderr.read()
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
        stderr.close()
        if process.poll() is None:
            process.kill()
        kill_sessions([process.pid])


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
    pytest.importorskip("ray")
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
