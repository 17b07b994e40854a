"""Stop signals: SIGINT (Ctrl-C), SIGTERM (``timeout``, ``docker stop``, batch schedulers) and
SIGHUP (a closed terminal) all end a run the way Ctrl-C does.

* :func:`stop_on_signals` (the CLI, or any program that wants it) makes each of them raise
  :class:`Interrupted`, a KeyboardInterrupt, so the run lifecycle stops the workers and returns
  the partial result; the program then exits with ``128 + signal``.
* One stop, however many signals: the first stop signal raises; every later one (a second
  Ctrl-C, SIGTERM after Ctrl-C) is only recorded and joins that stop, so the stop path and the
  writing of the partial result are never cut short.
* :func:`held` wraps work that must not be cut short (finishing a run, writing its results): a
  stop signal that arrives inside is recorded, not raised.  :func:`interruptible` wraps the part
  of a run that a signal should cut short (the workers running), even inside a held section;
  :func:`hold_rest` (the run lifecycle calls it when the workers have stopped) holds every
  signal from then until the end of :func:`stop_on_signals`, so a signal that lands between the
  end of training and the written result only decides the exit status.
* :func:`reinstall` puts the handlers back after a library replaced them (``ray.init`` installs
  its own SIGTERM handlers, in Python and in its C++ core, which end the process at once).
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
    """The state of :func:`stop_on_signals`: the signals received, how deep in :func:`held` and
    :func:`interruptible`, whether :func:`hold_rest` was called, and whether a stop was raised."""

    def __init__(self):
        self.received: list[int] = []
        self.holding = 0
        self.opened = 0  # depth in interruptible()
        self.rest_held = False
        self.raised = False
        self.installed: tuple = ()  # the signals whose handler is handle()

    def may_raise(self) -> bool:
        """A signal raises from the handler now: none was raised yet, no section is
        interruptible (there :func:`check` raises it, at a point of ordinary code), and the
        signal is neither held nor past :func:`hold_rest`."""
        return not self.raised and not self.opened and not self.holding and not self.rest_held

    def raise_stop(self, signum: int) -> None:
        self.raised = True
        raise Interrupted(signum)

    def handle(self, signum, frame) -> None:
        if self.may_raise() and _swallows_exceptions(frame):
            # raised here it would be printed as an ignored exception and lost: deliver it again
            # in a moment, when Python runs ordinary code
            threading.Timer(REDELIVER_SECONDS, os.kill, (os.getpid(), signum)).start()
            return
        self.received.append(int(signum))
        if self.may_raise():
            self.raise_stop(signum)


SWALLOWING_DEPTH = 8  # how many callers of the interrupted frame are looked at


def _swallows_exceptions(frame) -> bool:
    """The interrupted Python frame runs inside a finalizer (``__del__``, say a ``close()`` it
    calls), a weak reference's callback of importlib, or llvmlite code (numba's compiler runs it
    as C callbacks and finalizers), where an exception is printed and dropped."""
    for _ in range(SWALLOWING_DEPTH):
        if frame is None:
            return False
        code = frame.f_code
        if (code.co_name == "__del__" or "llvmlite" in code.co_filename
                or (code.co_name == "cb" and "importlib" in code.co_filename)):
            return True
        frame = frame.f_back
    return False


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
    handling.installed = tuple(previous)
    _active = handling
    try:
        yield handling.received
    finally:
        _active = outer
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def reinstall() -> None:
    """Make the stop signals that :func:`stop_on_signals` handles raise :class:`Interrupted`
    again, after a library installed handlers of its own (``ray.init``: Python's SIGTERM
    handler exits at once, and Ray's C++ core replaces the C-level handler of SIGTERM with one
    that prints a stack and re-raises).  Outside :func:`stop_on_signals` (or outside the main
    thread) this changes nothing: the library's handlers stay."""
    handling = _active
    if handling is None or threading.current_thread() is not threading.main_thread():
        return
    for signum in handling.installed:
        signal.signal(signum, handling.handle)


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
def interruptible():
    """Inside, a stop signal handled by :func:`stop_on_signals` raises :class:`Interrupted` at
    the next :func:`check` (and on entering, for one already recorded), even within
    :func:`held` or after :func:`hold_rest`.  Outside such sections at most one stop is raised
    per :func:`stop_on_signals`, by the handler itself."""
    handling = _active
    if handling is None:
        yield
        return
    handling.opened += 1
    try:
        check()
        yield
    finally:
        handling.opened -= 1


def check() -> None:
    """Inside :func:`interruptible`, raise :class:`Interrupted` if a stop signal was received
    (during the section, or held before it).  The handler does not raise there itself: a
    signal can land in code whose exceptions Python prints and drops (a finalizer, a weak
    reference's callback), so loops in such a section (the run lifecycle's polls) call this,
    at a point of ordinary code, and the stop always happens."""
    handling = _active
    if handling is not None and handling.opened and handling.received:
        handling.raise_stop(handling.received[0])


def hold_rest() -> None:
    """From now until :func:`stop_on_signals` ends, stop signals outside :func:`interruptible`
    are recorded, not raised (what follows a run is making and writing its result)."""
    if _active is not None:
        _active.rest_held = True


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

    multiprocessing's resource tracker is started first (:func:`start_resource_tracker`): its
    own start unblocks SIGINT and SIGTERM afterwards, which would lift the block half-way."""
    start_resource_tracker()
    with blocked():
        yield


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker if it is not running, with SIGHUP ignored: it
    ignores SIGINT and SIGTERM itself, but a SIGHUP to the process group (a closed terminal)
    would kill it with a traceback while the run it serves stops cleanly."""
    from multiprocessing import resource_tracker

    if threading.current_thread() is not threading.main_thread():
        resource_tracker.ensure_running()
        return
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # an ignored signal stays so in the child
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, previous)
