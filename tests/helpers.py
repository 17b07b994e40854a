"""Shared test helpers: shared-memory and child-process leak checks, and waiting for a run's
progress (an event, never a fixed sleep)."""

import multiprocessing
import os
import time

from hogwild_mts.backends.shm.block import block_name_prefix

SHM_DIR = "/dev/shm"
WAIT_SECONDS = 60.0  # generous deadline for an event on a busy machine
POLL_SECONDS = 0.01


def default_stop_signals() -> None:
    """``preexec_fn`` of a child the test will stop with a signal: SIGINT, SIGTERM and SIGHUP at
    their default disposition, whatever this process inherited (a background job of a shell
    script ignores SIGINT, and a child would inherit that and never see the test's Ctrl-C)."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def shared_blocks(pid: int | None = None) -> set:
    """Names of the shared-memory blocks that process ``pid`` (default: this one) created."""
    prefix = block_name_prefix(os.getpid() if pid is None else pid)
    return {name for name in os.listdir(SHM_DIR) if name.startswith(prefix)}


def live_children() -> list:
    return [child for child in multiprocessing.active_children() if child.is_alive()]


def block_counter(name: str) -> int | None:
    """The sequence counter of block ``name`` (the block's first int64), read from the file
    without attaching (attaching would register the block with this process's resource
    tracker); None once the block is gone."""
    try:
        with open(os.path.join(SHM_DIR, name), "rb") as handle:
            word = handle.read(8)
    except FileNotFoundError:
        return None
    return int.from_bytes(word, "little", signed=True) if len(word) == 8 else 0


def wait_for_updates(pid: int | None = None, minimum: int = 1, seconds: float = WAIT_SECONDS) -> str:
    """Wait until a block of process ``pid`` (default: this one) has counted ``minimum``
    updates, i.e. its workers are training; return the block's name.  AssertionError after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name in shared_blocks(pid):
            counter = block_counter(name)
            if counter is not None and counter >= minimum:
                return name
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"no block of process {pid or os.getpid()} reached {minimum} updates "
                         f"within {seconds} s")


def group_alive(group: int) -> bool:
    """Whether a process of process group ``group`` is still there."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def process_table() -> list:
    """(pid, parent pid, session id, state, command line) of every process /proc shows now."""
    table = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table.append((int(entry), int(fields[1]), int(fields[3]), fields[0], command))
    return table


def session_processes(session: int) -> list:
    """(pid, command) of every live (not zombie) process of ``session``."""
    return [(pid, command[:160]) for pid, _, sid, state, command in process_table()
            if sid == session and state != "Z"]


def processes_with_environment(entry: str) -> list:
    """(pid, command) of every live (not zombie) process, other than this one, started with
    ``entry`` (``NAME=VALUE``) in its environment (as /proc shows it: the environment it was
    started with)."""
    wanted = entry.encode()
    found = []
    for pid, _, _, state, command in process_table():
        if state == "Z" or pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environment = handle.read().split(b"\0")
        except OSError:
            continue
        if wanted in environment:
            found.append((pid, command[:160]))
    return found
