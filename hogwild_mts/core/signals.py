"""Stop signals: SIGINT (Ctrl-C), SIGTERM (``timeout``, ``docker stop``, batch schedulers) and
SIGHUP (a closed terminal) all end a run the way Ctrl-C does.

* :func:`stop_on_signals` (the CLI, or any program that wants it) makes each of them raise
  :class:`Interrupted`, a KeyboardInterrupt, so the run lifecycle stops the workers and returns
  the partial result; the program then exits with ``128 + signal``.
* :func:`held` wraps work that must not be cut short (finishing a run, writing its results): a
  stop signal that arrives inside is recorded, not raised.
* :func:`blocked_for_children` wraps the start of worker processes: they inherit the blocked
  signals, so a signal sent to the whole process group reaches only the parent, which stops them
  through the shared stop flag (no child dies half-way or prints a KeyboardInterrupt traceback).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` says which, ``exit_status`` is ``128 + signum``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


REDELIVER_SECONDS = 0.01  # a stop signal that landed in a finalizer comes again this much later


class _Handling:
    """The state of :func:`stop_on_signals`: the signals received, and how deep in :func:`held`."""

    def __init__(self):
        self.received: list[int] = []
        self.holding = 0

    def handle(self, signum, frame) -> None:
        if not self.holding and _swallows_exceptions(frame):
            # raised here it would be printed as an ignored exception and lost: deliver it again
            # in a moment, when Python runs ordinary code
            threading.Timer(REDELIVER_SECONDS, os.kill, (os.getpid(), signum)).start()
            return
        self.received.append(int(signum))
        if not self.holding:
            raise Interrupted(signum)


def _swallows_exceptions(frame) -> bool:
    """The interrupted Python frame is a finalizer (``__del__``) or llvmlite code (numba's
    compiler runs it as C callbacks and finalizers), where an exception is printed and dropped."""
    return frame is not None and (frame.f_code.co_name == "__del__"
                                  or "llvmlite" in frame.f_code.co_filename)


_active: _Handling | None = None


@contextlib.contextmanager
def stop_on_signals():
    """Inside, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (held: recorded only).
    Yields the list of signal numbers received, in order.  A signal the process ignores
    (``nohup`` ignores SIGHUP, a shell's background job SIGINT) stays ignored; outside the main
    thread (where Python cannot set handlers) nothing is installed and the list stays empty."""
    global _active
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    handling, outer = _Handling(), _active
    previous = {signum: signal.signal(signum, handling.handle) for signum in STOP_SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN}
    _active = handling
    try:
        yield handling.received
    finally:
        _active = outer
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def held():
    """Inside, a stop signal handled by :func:`stop_on_signals` is recorded instead of raised (it
    still decides the exit status).  Without :func:`stop_on_signals` this changes nothing."""
    handling = _active
    if handling is None:
        yield
        return
    handling.holding += 1
    try:
        yield
    finally:
        handling.holding -= 1


@contextlib.contextmanager
def blocked():
    """Block the stop signals in this thread inside (a critical section, such as creating a
    shared block and recording it for release); on leaving, those that arrived meanwhile are
    delivered."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def blocked_for_children():
    """Block the stop signals in this thread while worker processes are started, so that they
    inherit the block; on leaving, signals that arrived meanwhile are delivered here.

    multiprocessing's resource tracker is started first: its own start unblocks SIGINT and
    SIGTERM afterwards, which would lift the block half-way."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    with blocked():
        yield
