"""Soak test: alternate fits, worker kills, SIGTERM and Ctrl-C for ``--minutes`` (default 10)
with ``--workers`` (default 8), then report the resident-memory drift of this long-lived
process, blocks and semaphores left in /dev/shm, and processes left behind.

    .venv/bin/python scripts/soak.py [--minutes 10] [--workers 8]

Cycles, in turn:

* ``fit``: ``Engine(...).fit`` in this process, to the end;
* ``worker kill``: the same, SIGKILL to one worker once training -> WorkerError;
* ``SIGTERM``: ``hogwild-mts train --out DIR`` in its own process group, SIGTERM to the whole
  group once training (what ``timeout`` and batch schedulers do) -> exit 143, partial metrics;
* ``Ctrl-C``: the same with SIGINT (a terminal's Ctrl-C) -> exit 130, partial metrics.

"Training" is an event, never a sleep: the run's block in /dev/shm has counted updates.  Prints
a Markdown table (docs/reliability.md holds the latest).
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

SHM_DIR = "/dev/shm"
DATA = "synthetic-sparse:n=20000,d=2000,nnz=20,seed=1"
EVENT_SECONDS = 120.0  # deadline for any awaited event
MIN_UPDATES = 20_000  # "training" = the run's counter reached this
KINDS = ("fit", "worker kill", "SIGTERM", "Ctrl-C")


def owned(pid: int) -> list:
    """/dev/shm entries (blocks and semaphores) whose names say process ``pid`` made them."""
    prefix = f"hwmts_{pid}_"
    return [name for name in os.listdir(SHM_DIR) if name.startswith((prefix, "sem." + prefix))]


def counter(pid: int) -> int:
    """The largest sequence counter among ``pid``'s blocks (the first int64 of a block)."""
    best = 0
    for name in owned(pid):
        if name.startswith("hwmts_"):
            try:
                with open(os.path.join(SHM_DIR, name), "rb") as handle:
                    best = max(best, int.from_bytes(handle.read(8) or b"\0", "little", signed=True))
            except OSError:
                continue
    return best


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + EVENT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {EVENT_SECONDS:.0f} s")
        time.sleep(0.01)


def resident_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def group_members(group: int) -> list:
    """Pids whose process group is ``group``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(entry))
    return members


def in_process(kind: str, workers: int, dataset) -> tuple[bool, str]:
    """A fit in this process (``fit`` or ``worker kill``): (as expected, what happened)."""
    from hogwild_mts.engines.linear import Engine, WorkerError

    engine = Engine("logreg", lr=0.5, workers=workers, epochs=20 if kind == "fit" else 100_000,
                    progress=False)
    if kind == "fit":
        result = engine.fit(dataset)
        return result.counter == result.updates > 0 and not result.interrupted, f"{result.updates} updates"

    def kill_one():
        try:
            wait_until(lambda: counter(os.getpid()) >= MIN_UPDATES, "training")
        except TimeoutError:
            _thread.interrupt_main()  # the fit returns its partial result
            return
        os.kill(random.choice(multiprocessing.active_children()).pid, signal.SIGKILL)

    threading.Thread(target=kill_one, daemon=True).start()
    try:
        result = engine.fit(dataset)
    except WorkerError as error:
        return "SIGKILL" in str(error), str(error).splitlines()[0]
    return False, f"the run ended without a WorkerError ({result.updates} updates)"


def _default_stop_signals() -> None:
    """In the child: SIGINT and SIGTERM at their defaults, also when this soak runs as a
    background job (which ignores SIGINT, and its children would inherit that)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def by_signal(kind: str, workers: int, out_dir: str) -> tuple[bool, str, int]:
    """The CLI in its own process group, stopped by SIGTERM or SIGINT to the whole group:
    (as expected, what happened, the CLI's pid).  Its stderr goes to ``out_dir + ".stderr"``
    (kept for an unexpected outcome); a CLI that does not exit in time gets SIGABRT, so that
    faulthandler writes every thread's stack there."""
    signum = signal.SIGTERM if kind == "SIGTERM" else signal.SIGINT
    command = [sys.executable, "-X", "faulthandler", "-m", "hogwild_mts.app.cli", "train", "--quiet",
               "--data", DATA, "--workers", str(workers), "--epochs", "100000", "--out", out_dir]
    stderr_path = out_dir + ".stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True, preexec_fn=_default_stop_signals)
    hung = False
    try:
        try:
            wait_until(lambda: counter(process.pid) >= MIN_UPDATES or process.poll() is not None,
                       "training")
        except TimeoutError:
            pass  # signalled anyway: the outcome shows what it was doing
        with contextlib.suppress(ProcessLookupError):  # the run may have ended on its own
            os.killpg(process.pid, signum)
        try:
            process.wait(timeout=EVENT_SECONDS)
        except subprocess.TimeoutExpired:
            hung = True
            os.kill(process.pid, signal.SIGABRT)
            process.wait(timeout=EVENT_SECONDS)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with open(stderr_path) as handle:
        errors = handle.read()
    try:
        with open(os.path.join(out_dir, "metrics.json")) as handle:
            metrics = json.load(handle, parse_constant=lambda c: float("nan"))
    except (OSError, ValueError):
        metrics = {}
    expected = (not hung and process.returncode == 128 + signum and metrics.get("interrupted") is True
                and metrics.get("updates", 0) > 0 and "Traceback" not in errors)
    what = (f"no exit {EVENT_SECONDS:.0f} s after the signal" if hung else f"exit {process.returncode}")
    return expected, f"{what}, {metrics.get('updates', 0)} updates written", process.pid


def soak(minutes: float, workers: int) -> dict:
    from hogwild_mts.data.tabular import load_data

    dataset = load_data(DATA)
    stats = {kind: {"cycles": 0, "expected": 0, "leaked": 0, "orphans": 0, "seconds": 0.0,
                    "examples": []} for kind in KINDS}
    rss = []
    deadline = time.monotonic() + 60 * minutes
    cycle = 0
    scratch = tempfile.mkdtemp(prefix="hogwild-soak-")  # kept if it holds an unexpected run's stderr
    while time.monotonic() < deadline:
        kind = KINDS[cycle % len(KINDS)]
        started = time.monotonic()
        if kind in ("fit", "worker kill"):
            expected, what = in_process(kind, workers, dataset)
            owners = [os.getpid()]
            orphans = len(multiprocessing.active_children())
        else:
            expected, what, pid = by_signal(kind, workers, os.path.join(scratch, f"run{cycle}"))
            owners = [pid]
            settle_until = time.monotonic() + 10
            while group_members(pid) and time.monotonic() < settle_until:
                time.sleep(0.05)  # the resource tracker exits once its pipe closes
            orphans = len(group_members(pid))
            if orphans:  # counted; ended so that they do not load the next cycles
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                what += f"; {orphans} process(es) outlived the run"
            if expected and not orphans:
                os.unlink(os.path.join(scratch, f"run{cycle}.stderr"))
            else:
                what += f" (stderr: {os.path.join(scratch, f'run{cycle}.stderr')})"
        entry = stats[kind]
        entry["cycles"] += 1
        entry["expected"] += bool(expected)
        entry["leaked"] += sum(len(owned(owner)) for owner in owners)
        entry["orphans"] += orphans
        entry["seconds"] += time.monotonic() - started
        if not expected and len(entry["examples"]) < 3:
            entry["examples"].append(what)
        rss.append(resident_mib())
        cycle += 1
        print(f"[{cycle:4d}] {kind:<11} {'ok ' if expected else 'BAD'} {what}  rss {rss[-1]:.0f} MiB",
              flush=True)
    if not any(name.endswith(".stderr") for name in os.listdir(scratch)):
        shutil.rmtree(scratch)
    return {"minutes": minutes, "workers": workers, "cycles": cycle, "kinds": stats, "rss": rss}


def markdown(report: dict) -> str:
    rss = report["rss"]
    settled = rss[len(KINDS) - 1] if len(rss) >= len(KINDS) else rss[0]  # after one cycle of each kind
    lines = [f"{report['cycles']} cycles in {report['minutes']:g} min, {report['workers']} workers, "
             f"data `{DATA}`",
             "",
             "| cycle | runs | as expected | leaked /dev/shm entries | orphan processes | mean s/run |",
             "|---|---|---|---|---|---|"]
    for kind, entry in report["kinds"].items():
        runs = max(entry["cycles"], 1)
        lines.append(f"| {kind} | {entry['cycles']} | {entry['expected']} | {entry['leaked']} | "
                     f"{entry['orphans']} | {entry['seconds'] / runs:.1f} |")
    lines += ["", "| resident memory of the soak process | MiB |", "|---|---|",
              f"| after the first cycle of each kind | {settled:.0f} |",
              f"| at the end | {rss[-1]:.0f} |",
              f"| drift (end - first full round) | {rss[-1] - settled:+.0f} |",
              f"| peak | {max(rss):.0f} |"]
    problems = [f"{kind}: {example}" for kind, entry in report["kinds"].items() for example in entry["examples"]]
    if problems:
        lines += ["", "Unexpected outcomes: " + "; ".join(problems)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to soak (default 10)")
    parser.add_argument("--workers", type=int, default=8, help="workers per run (default 8)")
    args = parser.parse_args()
    report = soak(args.minutes, args.workers)
    print()
    print(markdown(report))
    bad = sum(entry["cycles"] - entry["expected"] + entry["leaked"] + entry["orphans"]
              for entry in report["kinds"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
