"""One shared-memory block per run: parameters, counter, histograms, flags and the data set.

The parent creates the block from a :class:`Layout`, workers attach to it by name and get numpy
views of the same bytes.  Every field starts on its own 64-byte cache line; histogram and worker
statistic rows are padded to whole cache lines so no two workers write the same line.  The block is
unlinked by :meth:`SharedBlock.unlink` on every exit path of the parent.

Where the block lives: in /dev/shm, its pages reserved when it is created (so a full /dev/shm is
an error before any worker starts, never a "Bus error" later).  When /dev/shm has too little free
space, in a file of the directory given by ``spill_dir`` or the HOGWILD_MTS_SHM_DIR environment
variable (the CLI's ``--shm-dir``), mapped shared the same way; without one, creation stops with a
:class:`ResourceError` naming the bytes needed, the bytes free and the fixes.

Names say their owner: blocks are ``hwmts_<pid>_<hex>``, and the semaphores multiprocessing
creates while workers start are ``sem.hwmts_<pid>_sem-...``.  Creating a block first removes
those whose owner process no longer exists (left by a SIGKILL of the whole process group), and
only those.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import mmap
import multiprocessing
import os
import re
import secrets
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from hogwild_mts.backends.shm.fields import FIELD_NAMES, BlockViews
from hogwild_mts.core import signals
from hogwild_mts.core.files import remove_of_dead_owners
from hogwild_mts.core.resources import ResourceError, check_run, format_bytes, free_bytes

CACHE_LINE_BYTES = 64
BLOCK_NAME_PREFIX = "hwmts_"
SHM_DIR = "/dev/shm"
SPILL_DIR_ENV = "HOGWILD_MTS_SHM_DIR"
# Names of the blocks and semaphores this project makes; group 1 or 2 is the owner's pid.
OWNED_NAME = re.compile(BLOCK_NAME_PREFIX + r"(\d+)_[0-9a-f]{16}"
                        r"|sem\." + BLOCK_NAME_PREFIX + r"(\d+)_sem-\w+")

log = logging.getLogger(__name__)


def block_name_prefix(pid: int) -> str:
    """Names of the blocks a process creates start with this (so leftovers name their owner)."""
    return f"{BLOCK_NAME_PREFIX}{pid}_"


def remove_orphans(directory: str = SHM_DIR) -> list[str]:
    """Remove the blocks and semaphores of this project in ``directory`` whose owner process no
    longer exists; return their names.  Owners are told apart by pid in this process's pid
    namespace (a container that shares /dev/shm with another pid namespace should not share it
    with a running hogwild_mts there)."""
    def owner(name: str) -> int | None:
        match = OWNED_NAME.fullmatch(name)
        return None if match is None else int(match.group(1) or match.group(2))

    removed = remove_of_dead_owners(directory, owner)
    if removed:
        log.info("removed %d block(s) left by dead processes in %s", len(removed), directory)
    return removed


@contextlib.contextmanager
def owner_named_semaphores():
    """Inside, the semaphores multiprocessing creates (a worker queue's locks) are named
    ``hwmts_<pid>_sem-...`` instead of ``mp-...``, so :func:`remove_orphans` can tell whose
    they are.  (multiprocessing keeps the prefix in the process's ``_config``.)"""
    config = multiprocessing.current_process()._config
    previous = config.get("semprefix")
    config["semprefix"] = "/" + block_name_prefix(os.getpid()) + "sem"
    try:
        yield
    finally:
        if previous is None:
            config.pop("semprefix", None)
        else:
            config["semprefix"] = previous


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Field:
    """A typed array at a byte offset (a multiple of the cache line) inside the block."""

    name: str
    dtype: str
    shape: tuple
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class Layout:
    """An ordered set of fields, each named after a field of
    :class:`~hogwild_mts.backends.shm.fields.BlockViews`; picklable, so workers can rebuild the
    same views."""

    def __init__(self):
        self.fields: dict[str, Field] = {}
        self.nbytes = 0

    def add(self, name: str, dtype, shape) -> None:
        """Append a field on a fresh cache line; ``shape`` is a tuple of ints (may contain 0).
        ValueError for a name BlockViews has no field for, or one already in the layout."""
        if name not in FIELD_NAMES:
            raise ValueError(f"{name!r} is not a field of a shared block; BlockViews has: "
                             + ", ".join(sorted(FIELD_NAMES)))
        if name in self.fields:
            raise ValueError(f"field {name!r} is already in the layout")
        field = Field(name, np.dtype(dtype).str, tuple(int(s) for s in shape), self.nbytes)
        self.fields[name] = field
        self.nbytes = _round_up(field.offset + field.nbytes, CACHE_LINE_BYTES) or CACHE_LINE_BYTES

    def add_rows(self, name: str, dtype, rows: int, columns: int) -> int:
        """Add a (rows, padded columns) field whose rows each fill whole cache lines.

        Returns the padded column count; only the first ``columns`` of a row are meant to be used.
        """
        per_line = CACHE_LINE_BYTES // np.dtype(dtype).itemsize
        padded = _round_up(max(columns, 1), per_line)
        self.add(name, dtype, (rows, padded))
        return padded

    def views(self, buffer) -> BlockViews:
        """The fields as numpy arrays on ``buffer`` (the block's bytes); None for those of
        BlockViews this layout lacks."""
        return BlockViews(**{
            f.name: np.ndarray(f.shape, dtype=np.dtype(f.dtype), buffer=buffer, offset=f.offset)
            for f in self.fields.values()
        })


class _FileMapping:
    """A block as a file of a directory on disk, mapped shared: the parts of SharedMemory a
    block uses (``name`` is the file's absolute path, ``buf``, ``close``, ``unlink``)."""

    def __init__(self, path: str, size: int | None = None):
        """Attach to ``path``, or create it with ``size`` bytes reserved (OSError ENOSPC if the
        file system lacks them; no file is left then)."""
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if size is not None else 0), 0o600)
        try:
            if size is not None:
                _reserve(fd, size, path)
            self._mmap = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        self.name = path
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        self.buf.release()  # BufferError while a view of it lives
        self._mmap.close()

    def unlink(self) -> None:
        os.unlink(self.name)


def _reserve(fd: int, size: int, path: str) -> None:
    """Allocate ``size`` bytes of the file now; on failure remove the file and raise."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.unlink(path)
        raise


def _create_in_shm(name: str, size: int) -> shared_memory.SharedMemory:
    """A /dev/shm block with its pages reserved (OSError ENOSPC, and no block, if they are not
    there: touching an unreserved page of a full /dev/shm would kill the process with SIGBUS)."""
    shm = shared_memory.SharedMemory(name=name, create=True, size=size)
    try:
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError:
        shm.close()
        shm.unlink()
        raise
    return shm


def _shm_short_message(size: int, free: int) -> str:
    return (f"the shared block of this run needs {format_bytes(size)} but {SHM_DIR} has "
            f"{format_bytes(free)} free (Docker's default is 64 MiB); fixes: map it from a file "
            f"on disk with --shm-dir DIR or {SPILL_DIR_ENV}=DIR, enlarge {SHM_DIR} (e.g. docker "
            "run --shm-size=2g), or use a smaller data set")


def _run_shape(layout: "Layout") -> tuple[int, int]:
    """(workers, parameters) of a run's layout (backend.control_layout: one stats row per
    worker, a params field); (1, 0) for a layout without them."""
    workers = layout.fields["stats"].shape[0] if "stats" in layout.fields else 1
    params = layout.fields["params"].shape[0] if "params" in layout.fields else 0
    return workers, params


_unreleased: dict[str, tuple] = {}  # name -> (creating pid, mapping) of blocks not yet released


@atexit.register
def _unlink_unreleased() -> None:
    """At exit, remove the blocks this process created and never released (e.g. a signal landed
    between creating one and the code that releases it); a forked child leaves them alone."""
    for pid, mapping in list(_unreleased.values()):
        if pid == os.getpid():
            with contextlib.suppress(OSError):
                mapping.unlink()
    _unreleased.clear()


class SharedBlock:
    """A created or attached shared-memory block with the typed numpy views of its layout
    (``views``, a :class:`~hogwild_mts.backends.shm.fields.BlockViews`)."""

    def __init__(self, mapping, layout: Layout, owner: bool):
        self._mapping = mapping
        self.layout = layout
        self.owner = owner
        self.views = layout.views(mapping.buf)

    @property
    def name(self) -> str:
        """What :meth:`attach` takes: a /dev/shm name, or the path of a file-backed block."""
        return self._mapping.name

    @classmethod
    def create(cls, layout: Layout, spill_dir: str | None = None) -> "SharedBlock":
        """Create a zero-filled block, in /dev/shm or, when that is short, in a file of
        ``spill_dir`` (default: the HOGWILD_MTS_SHM_DIR environment variable).  Before anything
        is allocated: removes orphans (see :func:`remove_orphans`) and checks the run's workers
        and memory (:func:`hogwild_mts.core.resources.check_run`); ResourceError if it does not
        fit."""
        size = max(layout.nbytes, 1)
        name = block_name_prefix(os.getpid()) + secrets.token_hex(8)
        spill_dir = spill_dir or os.environ.get(SPILL_DIR_ENV) or None
        workers, params = _run_shape(layout)
        remove_orphans(SHM_DIR)
        free = free_bytes(SHM_DIR)
        check_run(workers=workers, parameter_count=params, block_bytes=size, block_in_memory=free >= size)
        if free < size and spill_dir is None:
            raise ResourceError(_shm_short_message(size, free))
        signals.start_resource_tracker()  # its start (a new process) is not in the section below
        with signals.blocked():  # a stop signal waits until the block is recorded for release
            mapping = None
            if free >= size:
                try:
                    mapping = _create_in_shm(name, size)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    if spill_dir is None:  # another run took the space since free_bytes
                        raise ResourceError(_shm_short_message(size, free_bytes(SHM_DIR))) from None
            if mapping is None:
                mapping = _create_in_file(os.path.join(_spill_directory(spill_dir), name), size, free)
            _unreleased[mapping.name] = (os.getpid(), mapping)
        return cls(mapping, layout, owner=True)

    @classmethod
    def attach(cls, name: str, layout: Layout) -> "SharedBlock":
        mapping = (_FileMapping(name) if os.sep in name
                   else shared_memory.SharedMemory(name=name, create=False))
        return cls(mapping, layout, owner=False)

    def close(self) -> None:
        """Drop the views and unmap; arrays still referenced elsewhere keep the mapping alive."""
        self.views = BlockViews()
        try:
            self._mapping.close()
        except BufferError:
            # Someone still holds a view: the mapping goes when that view is garbage-collected.
            pass

    def unlink(self) -> None:
        """Remove the block's name from the system (parent only); safe to call twice."""
        _unreleased.pop(self._mapping.name, None)
        try:
            self._mapping.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """close() then, if this process created the block, unlink()."""
        self.close()
        if self.owner:
            self.unlink()


def _spill_directory(spill_dir: str) -> str:
    """``spill_dir`` as an absolute path of an existing directory (orphans there removed)."""
    path = os.path.abspath(os.path.expanduser(spill_dir))
    if not os.path.isdir(path):
        raise ResourceError(f"shared-memory directory {spill_dir!r} (--shm-dir or {SPILL_DIR_ENV}) "
                            "is not an existing directory")
    remove_orphans(path)
    return path


def _create_in_file(path: str, size: int, shm_free: int) -> _FileMapping:
    """A file-backed block at ``path``; ResourceError if its file system is short too."""
    directory = os.path.dirname(path)
    try:
        mapping = _FileMapping(path, size)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise ResourceError(f"cannot create the shared block in {directory} (--shm-dir or "
                                f"{SPILL_DIR_ENV}): {error.strerror}") from None
        raise ResourceError(f"the shared block of this run needs {format_bytes(size)}; neither "
                            f"{SHM_DIR} ({format_bytes(shm_free)} free) nor {directory} "
                            f"({format_bytes(free_bytes(directory))} free) has that much; free "
                            "space there or use a smaller data set") from None
    log.warning("the shared block (%s) is a file in %s: %s has only %s free", format_bytes(size),
                directory, SHM_DIR, format_bytes(shm_free))
    return mapping
