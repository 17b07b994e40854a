"""One shared-memory block per run: parameters, counter, histograms, flags and the data set.

The parent creates the block from a :class:`Layout`, workers attach to it by name and get numpy
views of the same bytes.  Every field starts on its own 64-byte cache line; histogram and worker
statistic rows are padded to whole cache lines so no two workers write the same line.  The block is
unlinked by :meth:`SharedBlock.unlink` on every exit path of the parent.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

CACHE_LINE_BYTES = 64
BLOCK_NAME_PREFIX = "hwmts_"


def block_name_prefix(pid: int) -> str:
    """Names of the blocks a process creates start with this (so leftovers name their owner)."""
    return f"{BLOCK_NAME_PREFIX}{pid}_"


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
    """An ordered set of fields; picklable, so workers can rebuild the same views."""

    def __init__(self):
        self.fields: dict[str, Field] = {}
        self.nbytes = 0

    def add(self, name: str, dtype, shape) -> None:
        """Append a field on a fresh cache line; ``shape`` is a tuple of ints (may contain 0)."""
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

    def views(self, buffer) -> dict[str, np.ndarray]:
        return {
            f.name: np.ndarray(f.shape, dtype=np.dtype(f.dtype), buffer=buffer, offset=f.offset)
            for f in self.fields.values()
        }


class SharedBlock:
    """A created or attached shared-memory block with numpy views named by its layout."""

    def __init__(self, shm: shared_memory.SharedMemory, layout: Layout, owner: bool):
        self._shm = shm
        self.layout = layout
        self.owner = owner
        self.views = layout.views(shm.buf)

    @property
    def name(self) -> str:
        return self._shm.name

    @classmethod
    def create(cls, layout: Layout) -> "SharedBlock":
        """Create a zero-filled block (the OS zero-fills new shared memory)."""
        name = block_name_prefix(os.getpid()) + secrets.token_hex(8)
        shm = shared_memory.SharedMemory(name=name, create=True, size=max(layout.nbytes, 1))
        return cls(shm, layout, owner=True)

    @classmethod
    def attach(cls, name: str, layout: Layout) -> "SharedBlock":
        shm = shared_memory.SharedMemory(name=name, create=False)
        return cls(shm, layout, owner=False)

    def close(self) -> None:
        """Drop the views and unmap; arrays still referenced elsewhere keep the mapping alive."""
        self.views = {}
        try:
            self._shm.close()
        except BufferError:
            # Someone still holds a view: the mapping goes when that view is garbage-collected.
            pass

    def unlink(self) -> None:
        """Remove the block's name from the system (parent only); safe to call twice."""
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """close() then, if this process created the block, unlink()."""
        self.close()
        if self.owner:
            self.unlink()
