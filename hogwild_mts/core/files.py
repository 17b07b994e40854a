"""The one way the project writes a file: atomically, so that readers see the old file or the
whole new one, with the bytes reserved first so that a full disk fails with its reason; and the
one JSON it writes: strict (RFC 8259), never NaN or infinity."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile

import numpy as np


def writable_directory(path: str, what: str) -> str:
    """``path``, created if needed and checked to accept a file, before any work; ValueError
    naming it as ``what`` (e.g. ``--out 'runs/x'``) and why otherwise."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(f"{what} cannot be written: {error.strerror or error}") from None
    return path


def write_atomic(path: str, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temporary file of the
    same directory, then a rename; on any error the temporary file is removed and ``path`` is
    left as it was."""
    payload = data.encode() if isinstance(data, str) else data
    directory = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "wb") as out:
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
