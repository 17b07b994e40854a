"""The one way the project writes a file: atomically, so that readers see the old file or the
whole new one, with the bytes reserved first so that a full disk fails with its reason; the one
JSON it writes: strict (RFC 8259), never NaN or infinity; and the exclusive lock a run holds on
its output directory.

Every temporary file is named ``.tmp-<pid>-<random>-<name>`` after the process writing it, so
that the leftovers of a writer that was killed (SIGKILL, a power cut) can be told from the files
of a writer still at work: any write into a directory, and the check of an output directory
before a run, first removes the ``.tmp-<pid>-*`` files whose process no longer exists -- only
those.  Files are created with the permissions the umask allows (``0o666 & ~umask``), as
``open()`` would create them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import math
import os
import re
import tempfile
import time

import numpy as np

TEMPORARY_PREFIX = ".tmp-"
_TEMPORARY = re.compile(r"^\.tmp-(\d+)-")
LOCK_FILE = ".hogwild-mts.lock"  # inside a directory a run writes into (see :func:`directory_lock`)


class DirectoryBusyError(ValueError):
    """Another live process holds the lock of a directory (see :func:`directory_lock`)."""


def process_alive(pid: int) -> bool:
    """Whether ``pid`` names a running process in this pid namespace: one that exists and has
    not exited (a zombie, exited but not yet reaped by its parent, counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:  # no procfs: existence is all we can tell
        return True
    return stat[stat.rindex(b")") + 2:][:1] != b"Z"  # the state follows "(command) "


def remove_of_dead_owners(directory: str, owner_of) -> list[str]:
    """Remove the entries of ``directory`` whose owner process no longer exists; return their
    names.  ``owner_of(name)``: the pid a name says owns it, or None for an entry that is not
    one of these (kept, as are the entries of live owners)."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        owner = owner_of(name)
        if owner is None or process_alive(owner):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:  # gone already, or not ours to remove
            continue
        removed.append(name)
    return removed


def remove_leftovers(directory: str) -> list[str]:
    """Remove the temporary files (``.tmp-<pid>-*``) in ``directory`` whose writer process no
    longer exists; return their names.  Files of live writers, and every other file, are kept."""
    def writer(name: str) -> int | None:
        match = _TEMPORARY.match(name)
        return None if match is None else int(match.group(1))

    return remove_of_dead_owners(directory, writer)


def file_mode() -> int:
    """The permissions a new file gets here: ``0o666`` less this process's umask."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return 0o666 & ~mask


def _temporary(directory: str, name: str) -> tuple[int, str]:
    """A new temporary file in ``directory`` named after this process and ``name``: (fd, path)."""
    return tempfile.mkstemp(dir=directory, prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-",
                            suffix=f"-{name}")


def writable_directory(path: str, what: str) -> str:
    """``path``, created if needed and checked to accept a file, before any work; ValueError
    naming it as ``what`` (e.g. ``--out 'runs/x'``) and why otherwise.  The leftovers of dead
    writers in it are removed (:func:`remove_leftovers`)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        handle, probe = _temporary(path, "write-test")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(f"{what} cannot be written: {error.strerror or error}") from None
    remove_leftovers(path)
    return path


def fsync_directory(directory: str) -> None:
    """Make the renames in ``directory`` durable (a no-op where directories cannot be synced)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temporary file of the
    same directory (first removing dead writers' leftovers there), then a rename; on any error
    the temporary file is removed and ``path`` is left as it was.  A file larger than
    ``ulimit -f`` fails with EFBIG like any other OSError (the CLI ignores SIGXFSZ)."""
    payload = data.encode() if isinstance(data, str) else data
    directory = os.path.dirname(path) or "."
    remove_leftovers(directory)
    handle, temporary = _temporary(directory, os.path.basename(path))
    try:
        with os.fdopen(handle, "wb") as out:
            os.fchmod(out.fileno(), file_mode())
            if payload:
                os.posix_fallocate(out.fileno(), 0, len(payload))
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(directory)


@contextlib.contextmanager
def directory_lock(directory: str, what: str):
    """Hold an exclusive lock on ``directory`` while inside (``fcntl.flock`` on its
    :data:`LOCK_FILE`, which records the holder's pid).  DirectoryBusyError (a ValueError) at
    once, naming ``what`` and the holder's pid, when another process holds it.  The lock goes
    with the process: released when the block is left by any path, and by the kernel when the
    holder is killed; the lock file is removed on leaving."""
    path = os.path.join(directory, LOCK_FILE)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = _lock_holder(path)
            raise DirectoryBusyError(
                f"{what} is in use by another run (pid {holder if holder else 'unknown'}); wait "
                "for it to end or give another directory") from None
        try:  # the holder before us may have removed the file after we opened it: open again
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it: a waiting opener sees the inode change
        os.close(fd)


def _lock_holder(path: str) -> int | None:
    """The pid the lock file at ``path`` records (its holder writes it just after locking: a
    short wait for it)."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            with open(path) as handle:
                text = handle.read().strip()
        except OSError:
            text = ""
        if text.isdigit() or time.monotonic() > deadline:
            return int(text) if text.isdigit() else None
        time.sleep(0.01)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in the .npy format (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(arrays: dict) -> bytes:
    """``arrays`` (name -> array) in the .npz format (no pickle)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def strict_json(value, indent: int | None = 2) -> str:
    """``value`` as strict JSON (RFC 8259): NaN and infinities, which strict parsers reject,
    become null; numpy scalars and arrays become numbers and lists."""
    return json.dumps(_strict(value), indent=indent, allow_nan=False)


def _strict(value):
    if isinstance(value, dict):
        return {str(key): _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    if isinstance(value, np.ndarray):
        return _strict(value.tolist())
    if isinstance(value, np.generic):
        return _strict(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
