"""RayBackend: :class:`hogwild_mts.core.lifecycle.Backend` over a parameter-server actor and
worker actors, so that :func:`hogwild_mts.core.lifecycle.run` drives a Ray run unchanged.

Faults: a worker actor that dies (killed, out of memory, its node lost) is re-created from the
same shard spec, up to ``max_worker_restarts`` times per worker -- a RuntimeWarning and an entry
in ``restarts`` each time -- and the new actor goes on after the pushes the server applied from
the dead one.  Past that limit the worker is reported lost -- a RuntimeWarning and an entry in
``lost`` -- and the run goes on with the others; its shard is not trained for the rest of the
run.  A worker actor that Ray cannot place on a node (no node has a free CPU for it, say after
a node was lost) within ``placement_timeout`` seconds is killed and the worker lost the same
way.  ``on_lost_worker="stop"`` makes a lost worker stop the run with WorkerError instead.  A
worker that raises, or the death of every worker or of the server, stops the run with
WorkerError.  Workers that wait to be placed, or whose pushes have not moved, are reported by
:meth:`RayBackend.stalled` (the progress line shows them).  Every actor is killed by
:meth:`close`.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
import warnings

import numpy as np

from hogwild_mts.backends.ray.options import (DEFAULT_CHECKPOINT_SECONDS, MAX_WORKER_RESTARTS, ON_LOST_WORKER,
                                              PLACEMENT_TIMEOUT, RAY_EXTRA, RayNotInstalled)
from hogwild_mts.core import control
from hogwild_mts.core.lifecycle import POLL_SECONDS
from hogwild_mts.core.result import Diverged, RunTotals, WorkerError

RUN_NAME_PREFIX = "hogwild-"  # actors are named hogwild-<run>-server, hogwild-<run>-worker-<w>
JOIN_SECONDS = 10.0  # how long stopping workers may take before they are killed
WORKER_CPUS = 1  # CPUs each worker actor reserves; the server reserves none (it mostly waits)
PUSH_COUNT_SECONDS = 1.0  # stalled() asks the server for the pushes of each worker at most this often


def require_ray():
    """The ``ray`` module, or :class:`RayNotInstalled` (an ImportError) saying how to install
    it."""
    try:
        import ray
    except ImportError as error:
        raise RayNotInstalled(f"backend 'ray' needs the ray package, which cannot be imported "
                              f"here ({error}); install it with {RAY_EXTRA} "
                              "(or pip install 'ray>=2.40')") from None
    return ray


# Ray starts worker processes at niceness 15, so any other busy process on the machine starves
# the actors, which here do the training; a local instance keeps them at the normal priority.
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}
PROBE_SECONDS = 5.0  # the TCP connect, then the GCS handshake, of a cluster address each take at most this
START_CLUSTER_HINT = ("is a Ray cluster running there? start one with `ray start --head` and give "
                      "the address it prints (HOST:6379), or 'auto' on one of its nodes")
TOKEN_HINT = ("the cluster uses token authentication: set RAY_AUTH_MODE=token and give this "
              "machine the cluster's token (~/.ray/auth_token from the head node, or "
              "RAY_AUTH_TOKEN)")


class RayConnectionError(ConnectionError):
    """The Ray cluster of an address could not be reached or joined; the message is one line
    naming the address as given and the likely fix."""


def connect(address: str | None) -> bool:
    """Use the Ray instance this process is connected to, else connect to ``address`` (a
    cluster started with ``ray start --head``; ``"auto"``: the one this node belongs to), else
    start a new local instance (never a cluster found on the machine: that takes ``"auto"``).
    Returns True when this call started or connected Ray (the caller then shuts it down).  A
    local instance runs its actors at the normal CPU priority (LOCAL_SYSTEM_CONFIG).

    Stop signals: ``ray.init`` replaces the handlers of SIGTERM (Ray exits at once) with its
    own; they are put back (:func:`hogwild_mts.core.signals.reinstall`) so that SIGTERM and
    SIGHUP stop the run like Ctrl-C under :func:`~hogwild_mts.core.signals.stop_on_signals`.
    A signal that arrives while Ray starts waits until then.  The processes of a local instance
    (GCS, raylet, its agents) run in process groups of their own, so a signal sent to the
    driver's process group (``timeout``, a batch scheduler, a closed terminal) reaches only the
    driver, which stops the run and shuts them down (:func:`disconnect`).  A driver killed
    outright (SIGKILL) cannot: a small reaper process, in a session of its own, kills those
    process groups when the driver is gone (Ray's own fate sharing leaves its agents running).
    A cluster address is checked first, within PROBE_SECONDS each: a TCP
    connect, then Ray's handshake; a failure is :class:`RayConnectionError`, one line."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    from hogwild_mts.core import signals

    if address is not None:
        probe_cluster(address)
    try:
        with signals.blocked():  # a stop signal while Ray starts is delivered after reinstall()
            groups = _init(ray, address)
            _start_reaper(groups)
            signals.reinstall()
    except BaseException:  # ray.init failed, or a stop signal came while Ray started
        disconnect()
        raise
    return True


def disconnect() -> None:
    """Shut down the Ray instance :func:`connect` started or joined, then stop the reaper of
    its local processes (if it started one)."""
    import ray

    ray.shutdown()
    global _reaper
    reaper, _reaper = _reaper, None
    if reaper is not None:
        reaper.kill()
        reaper.wait()


_reaper = None  # the reaper process of the local Ray instance this process started, if any

# The reaper's code: wait until the driver (its parent) is gone, then SIGKILL every process of
# the driver's session whose process group is one the local Ray instance's processes lead.
_REAPER_CODE = """
import os, signal, sys, time
driver, session, groups = int(sys.argv[1]), int(sys.argv[2]), {int(g) for g in sys.argv[3:]}
while os.getppid() == driver:
    time.sleep(0.2)
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[2]) in groups and int(fields[3]) == session:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass
"""


def _start_reaper(groups: list) -> None:
    """Start the reaper of ``groups`` (the process groups of a local Ray instance), in a session
    of its own so that no signal to the driver's group reaches it; nothing for none."""
    global _reaper
    if not groups or not os.path.isdir("/proc"):
        return
    import subprocess
    import sys

    _reaper = subprocess.Popen(
        [sys.executable, "-c", _REAPER_CODE, str(os.getpid()), str(os.getsid(0)), *map(str, groups)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)


def _init(ray, address: str | None) -> list:
    """``ray.init`` of a new local instance (its processes in their own process groups), or of
    the cluster at ``address`` (a failure as RayConnectionError); return the process groups the
    local instance's processes lead (none for a cluster)."""
    if address is None:
        with _own_process_groups() as groups:
            ray.init(address="local", include_dashboard=False, _system_config=LOCAL_SYSTEM_CONFIG)
        return groups
    try:
        ray.init(address=address)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as error:
        raise RayConnectionError(f"cannot join the Ray cluster at {address!r}: "
                                 f"{_first_line(error)}; {_hint(error)}") from None
    return []


def _first_line(error) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _hint(error) -> str:
    text = str(error)
    if "auth" in text.lower() or "token" in text.lower():
        return TOKEN_HINT
    return START_CLUSTER_HINT


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of an address ``HOST:PORT`` (or ``ray://HOST:PORT``), None for others
    (``auto``, ``local``)."""
    bare = address.strip()
    if "://" in bare:
        bare = bare.split("://", 1)[1]
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def probe_cluster(address: str) -> None:
    """RayConnectionError unless ``address`` answers: a TCP connect to HOST:PORT within
    PROBE_SECONDS (refused, unknown host, no answer), then, for a GCS address, Ray's own
    handshake within PROBE_SECONDS more (not Ray, or a token is needed).  An address that is
    not HOST:PORT (``auto``) is left to ``ray.init``."""
    import socket

    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=PROBE_SECONDS):
            pass
    except socket.gaierror as error:
        raise RayConnectionError(f"cannot reach a Ray cluster at {address!r}: unknown host "
                                 f"{target[0]!r} ({error.strerror}); {START_CLUSTER_HINT}") from None
    except (socket.timeout, TimeoutError):
        raise RayConnectionError(f"cannot reach a Ray cluster at {address!r}: no answer within "
                                 f"{PROBE_SECONDS:g} s; {START_CLUSTER_HINT}") from None
    except OSError as error:
        raise RayConnectionError(f"cannot reach a Ray cluster at {address!r}: "
                                 f"{error.strerror or error}; {START_CLUSTER_HINT}") from None
    if "://" not in address:
        _probe_gcs(address, f"{target[0]}:{target[1]}")


def _probe_gcs(address: str, host_port: str) -> None:
    """Ray's handshake with the GCS at ``host_port`` within PROBE_SECONDS (Ray's own messages
    on stderr silenced meanwhile): RayConnectionError for a missing or wrong token, or for a
    port that does not speak Ray.  Skipped where this Ray has no such client (its internals
    changed): ``ray.init`` then reports the failure."""
    import ray

    _check_token_found(address)
    try:
        from ray._raylet import InnerGcsClient
    except ImportError:
        return
    standalone = getattr(InnerGcsClient, "standalone", None)
    if standalone is None:
        return
    try:
        with _quiet_stderr():
            standalone(host_port, None, int(PROBE_SECONDS * 1000))
    except TypeError:  # another signature: leave it to ray.init
        return
    except ray.exceptions.AuthenticationError:
        raise RayConnectionError(f"cannot join the Ray cluster at {address!r}: it refused this "
                                 f"process's credentials; {TOKEN_HINT}") from None
    except ray.exceptions.RayError as error:
        raise RayConnectionError(f"cannot join a Ray cluster at {address!r}: something answers "
                                 f"there but not Ray's GCS ({_first_line(error)}); "
                                 f"{START_CLUSTER_HINT}") from None


def _check_token_found(address: str) -> None:
    """RayConnectionError when token authentication is on in this process (RAY_AUTH_MODE=token)
    and no token is found (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token): Ray's client
    would abort the process without a word (its C++ core checks for a token).  Ray's own check
    (what ``ray.init`` asks before it joins a cluster); skipped where this Ray has none."""
    import ray

    try:
        from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
    except ImportError:
        return
    try:
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    except ray.exceptions.AuthenticationError:
        raise RayConnectionError(f"cannot join the Ray cluster at {address!r}: token "
                                 "authentication is on here (RAY_AUTH_MODE=token) but no token "
                                 f"was found; {TOKEN_HINT}") from None
    except TypeError:  # another signature: leave it to ray.init
        return


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 points at /dev/null inside (Ray's C++ core logs its retries there)."""
    import os
    import sys

    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def _own_process_groups():
    """Inside, every process ``ray.init`` starts (the GCS, the raylet, and so what the raylet
    starts) leads a process group of its own, with SIGTERM and SIGHUP not blocked (the caller
    blocks them while Ray starts); SIGINT stays blocked there as Ray does.  Yields the list of
    those groups (their leaders' pids), filled as Ray starts them.  Ray starts them all through
    ``ray._private.services.ConsolePopen``; without it (Ray's internals changed) nothing is
    changed and the list stays empty."""
    import signal

    groups = []
    try:
        from ray._private import services
    except ImportError:
        yield groups
        return
    popen = getattr(services, "ConsolePopen", None)
    if popen is None:
        yield groups
        return

    class OwnGroupPopen(popen):
        def __init__(self, *arguments, preexec_fn=None, **keywords):
            def own_group():
                if preexec_fn is not None:
                    preexec_fn()
                os.setpgid(0, 0)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGHUP})

            super().__init__(*arguments, preexec_fn=own_group, **keywords)
            groups.append(self.pid)

    services.ConsolePopen = OwnGroupPopen
    try:
        yield groups
    finally:
        services.ConsolePopen = popen


def check_cluster(workers: int) -> None:
    """ValueError unless the cluster has a CPU for every worker actor (else they would wait for
    one forever)."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0.0)
    if workers * WORKER_CPUS > cpus:
        raise ValueError(f"workers ({workers}) needs {workers * WORKER_CPUS} CPUs but the Ray "
                         f"cluster has {cpus:g}; use fewer workers or add nodes")


def server_placement() -> dict:
    """The actor options that put the parameter server on the driver's node (the node whose
    raylet the driver is attached to; the server reserves no CPU, so that node can always take
    it): the one node whose loss ends the run anyway, so that losing any other node loses
    workers, never the server.  (Ray's soft affinity placed it on other nodes at times.)"""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(
        node_id=ray.get_runtime_context().get_node_id(), soft=False)}


def fault_options(options) -> dict:
    """RayBackend's keywords for worker faults, from a :class:`RayOptions`."""
    return {"max_worker_restarts": options.max_worker_restarts,
            "placement_timeout": options.placement_timeout,
            "on_lost_worker": options.on_lost_worker}


def actor_placed(actor) -> bool | None:
    """Whether Ray has placed ``actor`` on a node (a worker process runs it, maybe still in its
    constructor), from the GCS's actor table; None if that cannot be told (Ray's internals
    changed)."""
    try:
        import ray

        info = ray._private.state.actors(actor._actor_id.hex())
        return bool(info.get("Pid")) or bool(info.get("Address", {}).get("Port"))
    except Exception:  # a private API: without it the deadline alone decides
        return None


def death_reason(error) -> str:
    """One line saying why an actor died: the first and the last line of Ray's message (the
    last names the cause: ``ray.kill``, the exception its creation task raised, ...), without
    terminal colours."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines()
             if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


class RayBackend:
    """One run's actors.  ``make_server(name) -> actor handle`` starts the parameter server,
    ``make_worker(worker_id, name) -> actor handle`` one worker, under the given actor names
    (``run_name`` + ``-server`` / ``-worker-<w>``: visible in ``ray list actors`` and the
    dashboard); ``checkpoint``, if given, is called with the server's (params, version,
    histogram) every ``checkpoint_every`` seconds and once after the run.  A worker actor that
    dies is re-created with ``make_worker`` (named ``-worker-<w>-restart-<k>``) up to
    ``max_worker_restarts`` times; a worker actor not placed on a node within
    ``placement_timeout`` seconds is lost; ``on_lost_worker``: "continue" or "stop" (see the
    module docstring)."""

    def __init__(self, workers: int, make_server, make_worker, *, checkpoint=None,
                 checkpoint_every: float = DEFAULT_CHECKPOINT_SECONDS,
                 max_worker_restarts: int = MAX_WORKER_RESTARTS,
                 placement_timeout: float = PLACEMENT_TIMEOUT,
                 on_lost_worker: str = ON_LOST_WORKER[0]):
        import ray

        self._ray = ray
        self.workers, self._make_server, self._make_worker = workers, make_server, make_worker
        self.run_name = f"{RUN_NAME_PREFIX}{uuid.uuid4().hex[:8]}"
        self._checkpoint, self._checkpoint_every = checkpoint, checkpoint_every
        self.server = None
        self.actors: list = []
        self.max_worker_restarts = max_worker_restarts
        if on_lost_worker not in ON_LOST_WORKER:
            raise ValueError(f"on_lost_worker must be one of {ON_LOST_WORKER}, got {on_lost_worker!r}")
        self.placement_timeout, self.on_lost_worker = placement_timeout, on_lost_worker
        self.lost: list[dict] = []  # {"worker", "error"} per worker given up
        self.restarts: list[dict] = []  # {"worker", "error", "restart"} per re-created actor
        self.worker_pushes: list[int] = []  # pushes applied by worker id, filled by collect()
        self._ready_refs: list = []
        self._runs: dict = {}  # ObjectRef of run() -> worker id, while it runs
        self._restarting: dict = {}  # ObjectRef of a re-created actor's ready() -> worker id
        self._waiting_since: dict = {}  # worker id -> time.monotonic() its actor was (re-)created
        self._placed: set = set()  # worker ids whose waiting actor Ray has placed on a node
        self._pushes: list | None = None  # pushes per worker at the last count, for stalled()
        self._moved_at: list | None = None  # per worker, time.monotonic() its pushes last moved
        self._counted_at = 0.0
        self._stopping = False
        self._failure: Exception | None = None  # the first worker exception or divergence
        self._go_time = 0.0
        self._next_checkpoint = 0.0

    def start(self) -> None:
        self.server = self._make_server(f"{self.run_name}-server")
        for worker_id in range(self.workers):
            self.actors.append(self._make_worker(worker_id, f"{self.run_name}-worker-{worker_id}"))
        self._ready_refs = [actor.ready.remote() for actor in self.actors]
        now = time.monotonic()
        self._waiting_since = {worker_id: now for worker_id in range(self.workers)}

    def ready(self) -> bool:
        """True once every worker actor is ready; WorkerError for one that failed to start or
        that Ray did not place on a node within ``placement_timeout`` seconds."""
        ray = self._ray
        done, _ = ray.wait(self._ready_refs, num_returns=len(self._ready_refs), timeout=0)
        for ref in done:
            worker_id = self._ready_refs.index(ref)
            self._waiting_since.pop(worker_id, None)
            try:
                ray.get(ref)
            except ray.exceptions.RayError as error:
                raise WorkerError(f"worker {worker_id} failed to start:\n{error}") from None
        for worker_id in self._unplaced():
            raise WorkerError(f"worker {worker_id}: {self._unplaced_reason()}; the run was not "
                              "started") from None
        return len(done) == len(self._ready_refs)

    def _unplaced(self) -> list:
        """The waiting workers whose actor Ray has not placed on a node within
        ``placement_timeout`` seconds (asked of the GCS only once the deadline has passed; if it
        cannot tell, the deadline alone decides)."""
        now, late = time.monotonic(), []
        for worker_id, since in list(self._waiting_since.items()):
            if worker_id in self._placed or now - since < self.placement_timeout:
                continue
            if actor_placed(self.actors[worker_id]):
                self._placed.add(worker_id)  # placed: its constructor (loading data) is slow
            else:
                late.append(worker_id)
        return late

    def _unplaced_reason(self) -> str:
        cpus = self._ray.available_resources().get("CPU", 0.0)
        return (f"Ray could not place its actor on a node within {self.placement_timeout:g} s "
                f"(it needs {WORKER_CPUS} CPU; {cpus:g} free in the cluster: a node was lost?)")

    def go(self) -> None:
        self.server_call("go")
        self._go_time = time.time()
        self._next_checkpoint = self._go_time + self._checkpoint_every
        self._runs = {actor.run.remote(self.server, worker_id): worker_id
                      for worker_id, actor in enumerate(self.actors)}

    def server_call(self, method: str):
        """``server.method()``, waited for; WorkerError if the server died."""
        ray = self._ray
        try:
            return ray.get(getattr(self.server, method).remote())
        except ray.exceptions.RayActorError as error:
            raise WorkerError(f"the parameter server died; the run was stopped:\n{error}") from None

    def _collect_ended(self, timeout: float = 0.0) -> None:
        """Take the workers whose run() ended out of the running set: a death is handled at
        once (:meth:`_restart_or_lose`; the run goes on); an exception or a divergence is kept
        for :meth:`poll` to raise.  Re-created actors that are ready start their run()."""
        ray = self._ray
        self._collect_restarted()
        if not self._runs:
            return
        done, _ = ray.wait(list(self._runs), num_returns=len(self._runs), timeout=timeout)
        for ref in done:
            worker_id = self._runs.pop(ref)
            try:
                state = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                self._restart_or_lose(worker_id, error)
                continue
            except ray.exceptions.RayError as error:
                self._failure = self._failure or WorkerError(f"worker {worker_id} failed:\n{error}")
                continue
            if state == control.STATE_DIVERGED:
                self._failure = self._failure or Diverged("a worker's loss")

    def _collect_restarted(self) -> None:
        """Start run() on every re-created actor that is ready; one that died again is
        restarted again or lost."""
        ray = self._ray
        if not self._restarting:
            return
        done, _ = ray.wait(list(self._restarting), num_returns=len(self._restarting), timeout=0)
        for ref in done:
            worker_id = self._restarting.pop(ref)
            self._waiting_since.pop(worker_id, None)
            self._placed.discard(worker_id)
            try:
                ray.get(ref)
            except ray.exceptions.RayError as error:
                self._restart_or_lose(worker_id, error)
                continue
            if not self._stopping:
                self._runs[self.actors[worker_id].run.remote(self.server, worker_id)] = worker_id
                if self._moved_at is not None:  # its stall is counted from now
                    self._moved_at[worker_id] = time.monotonic()
        late = set(self._unplaced())
        for ref, worker_id in list(self._restarting.items()):
            if worker_id in late:
                reason = self._unplaced_reason()
                del self._restarting[ref]
                self._waiting_since.pop(worker_id, None)
                self._ray.kill(self.actors[worker_id])  # its pending placement is dropped
                self._report_lost(worker_id, reason, f"Ray worker actor {worker_id} was lost: {reason}")

    def _restart_or_lose(self, worker_id: int, error) -> None:
        """Re-create the dead actor of ``worker_id`` (its ready() is then awaited by
        :meth:`_collect_restarted`), or report the worker lost once its restarts are spent or
        the run is stopping."""
        reason = death_reason(error)
        restart = 1 + sum(entry["worker"] == worker_id for entry in self.restarts)
        if self._stopping or restart > self.max_worker_restarts:
            self._report_lost(worker_id, reason)
            return
        self._ray.kill(self.actors[worker_id])  # a dead actor stays dead (no Ray restart)
        self.actors[worker_id] = self._make_worker(
            worker_id, f"{self.run_name}-worker-{worker_id}-restart-{restart}")
        self._restarting[self.actors[worker_id].ready.remote()] = worker_id
        self._waiting_since[worker_id] = time.monotonic()
        self._placed.discard(worker_id)
        self.restarts.append({"worker": worker_id, "error": reason, "restart": restart})
        warnings.warn(f"Ray worker actor {worker_id} died ({reason}); restarting it (restart "
                      f"{restart} of {self.max_worker_restarts}; lost unless Ray places it "
                      f"within {self.placement_timeout:g} s)", RuntimeWarning, stacklevel=2)

    def _report_lost(self, worker_id: int, reason: str, what: str | None = None) -> None:
        """Record ``worker_id`` as lost (``reason``: one line) and warn (``what``: how it was
        lost; default: the actor died); under on_lost_worker="stop" the run stops (the next
        :meth:`poll` raises WorkerError)."""
        self.lost.append({"worker": worker_id, "error": reason})
        what = what or f"Ray worker actor {worker_id} died ({reason})"
        if self.on_lost_worker == "stop" and not self._stopping:
            self._failure = self._failure or WorkerError(
                f"{what}; the run was stopped (on_lost_worker='stop'; 'continue' goes on without "
                "the worker)")
            return
        remaining = self.workers - len(self.lost)
        goes_on = "the run is stopping" if self._stopping else \
            f"the run goes on with {remaining} worker{'s' if remaining != 1 else ''}"
        warnings.warn(f"{what}; {goes_on}", RuntimeWarning, stacklevel=2)

    def poll(self, until_updates=None) -> int:
        self._collect_ended()
        if self._failure is not None:
            raise self._failure
        if len(self.lost) == self.workers:
            raise WorkerError(f"all {self.workers} worker actors were lost; the run was stopped")
        version = self.server_call("version")
        if self._checkpoint is not None and time.time() >= self._next_checkpoint:
            self.write_checkpoint()
            self._next_checkpoint = time.time() + self._checkpoint_every
        return version

    def write_checkpoint(self) -> None:
        params, version, histogram = self.server_call("state")
        self._checkpoint(np.array(params), version, np.array(histogram))

    def finished(self) -> bool:
        self._collect_ended()
        return not self._runs and not self._restarting

    def elapsed(self) -> float:
        return time.time() - self._go_time

    def stalled(self, seconds: float) -> dict:
        """{worker id: seconds} of the workers not lost or done that have waited at least
        ``seconds``: for Ray to place (and start) their re-created actor, or for their next
        push to be applied (the server's counts, asked at most every PUSH_COUNT_SECONDS)."""
        now = time.monotonic()
        idle = {worker_id: now - since for worker_id, since in self._waiting_since.items()
                if now - since >= seconds}
        running = set(self._runs.values())
        if running and now - self._counted_at >= PUSH_COUNT_SECONDS:
            self._counted_at = now
            pushes = self.server_call("pushes_by_worker")
            if self._moved_at is None:
                self._pushes, self._moved_at = pushes, [now] * len(pushes)
            for worker_id, count in enumerate(pushes):
                if count != self._pushes[worker_id] or worker_id not in running:
                    self._moved_at[worker_id] = now
            self._pushes = pushes
        if self._moved_at is not None:
            for worker_id in running:
                if worker_id not in idle and now - self._moved_at[worker_id] >= seconds:
                    idle[worker_id] = now - self._moved_at[worker_id]
        return idle

    def snapshot(self) -> np.ndarray:
        return np.array(self.server_call("snapshot"))

    def wait(self) -> None:
        time.sleep(POLL_SECONDS)

    def request_stop(self) -> None:
        self._stopping = True
        if self.server is not None:
            self.server.request_stop.remote()

    def join(self) -> None:
        """Wait up to JOIN_SECONDS for the workers to leave their loops; kill the rest, and
        the re-created actors that had not started yet."""
        for worker_id in self._restarting.values():
            self._ray.kill(self.actors[worker_id])
        self._restarting, self._waiting_since = {}, {}
        deadline = time.time() + JOIN_SECONDS
        while self._runs and time.time() < deadline:
            self._collect_ended(timeout=max(0.0, min(POLL_SECONDS * 10, deadline - time.time())))
        for worker_id in list(self._runs.values()):
            self._ray.kill(self.actors[worker_id])
        self._runs = {}

    def collect(self) -> RunTotals:
        totals = self.server_call("totals")
        self.worker_pushes = self.server_call("pushes_by_worker")
        if self._checkpoint is not None:
            self.write_checkpoint()
        return RunTotals(**totals)

    def close(self) -> None:
        """Kill every actor of the run (idempotent)."""
        for actor in self.actors + ([self.server] if self.server is not None else []):
            self._ray.kill(actor)
        self.actors, self.server, self._ready_refs, self._runs = [], None, [], {}
        self._restarting, self._waiting_since = {}, {}
