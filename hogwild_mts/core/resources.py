"""What a run may take from the machine: memory, shared-memory space, worker processes.

Every check here runs before anything large is allocated and before any worker starts, and
refuses with :class:`ResourceError`, whose message names the bytes (or processes) needed, what the
machine has, and the fixes.  Sizes are bytes; "available memory" is the kernel's MemAvailable,
lowered to what the process's cgroup (a container's memory limit) still allows.
"""

from __future__ import annotations

import os

MIB = 2 ** 20
# Private memory of one spawned worker process (interpreter, numpy, numba, the loaded kernels):
# about 190 MB measured for the linear and the torch worker alike.
WORKER_BYTES = 200 * MIB
# Parameter-sized float64 arrays the parent holds besides the block: the warm-up scratch vector,
# an evaluation snapshot, the result's copy and the L2 column counts.
PARENT_PARAMETER_COPIES = 4
MAX_WORKERS_PER_CPU = 8  # more processes than this per core only queue for the same cores
# What a run leaves free of the available memory: the larger of 10 % of it and 512 MiB (page
# cache, the interpreter's own growth, other processes); a run that would leave less is refused.
MARGIN_FRACTION = 0.10
MARGIN_BYTES = 512 * MIB
MEMINFO = "/proc/meminfo"
CGROUP_ROOT = "/sys/fs/cgroup"


class ResourceError(ValueError):
    """A run (or data set) needs more than this machine has; the message says how much of what,
    what is there, and how to fix it."""


def format_bytes(count: float) -> str:
    """``count`` bytes as a short human text (binary units: 1 KiB = 1024 bytes)."""
    if count < 1024:
        return f"{count:,.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            break
    return f"{count:,.1f} {unit}"


def free_bytes(directory: str) -> int:
    """Bytes an unprivileged process may still write in ``directory``'s file system (statvfs)."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def _meminfo_available() -> int | None:
    try:
        with open(MEMINFO) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _read_int(path: str) -> int | None:
    """The integer in a cgroup file, or None (missing file, or "max": no limit)."""
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_files() -> list[tuple[str, str]]:
    """(limit file, usage file) pairs of the process's memory cgroup, v2 and v1, each at the
    process's own cgroup path and at the root (a container often sees its cgroup as the root)."""
    paths = {"v2": "", "v1": ""}
    try:
        with open("/proc/self/cgroup") as handle:
            for line in handle:
                hierarchy, controllers, path = line.rstrip("\n").split(":", 2)
                if hierarchy == "0":
                    paths["v2"] = path.lstrip("/")
                elif "memory" in controllers.split(","):
                    paths["v1"] = path.lstrip("/")
    except (OSError, ValueError):
        pass
    v1 = os.path.join(CGROUP_ROOT, "memory")
    return [(os.path.join(CGROUP_ROOT, paths["v2"], "memory.max"),
             os.path.join(CGROUP_ROOT, paths["v2"], "memory.current")),
            (os.path.join(CGROUP_ROOT, "memory.max"), os.path.join(CGROUP_ROOT, "memory.current")),
            (os.path.join(v1, paths["v1"], "memory.limit_in_bytes"),
             os.path.join(v1, paths["v1"], "memory.usage_in_bytes")),
            (os.path.join(v1, "memory.limit_in_bytes"), os.path.join(v1, "memory.usage_in_bytes"))]


def _cgroup_room() -> int | None:
    """Bytes the process's memory cgroup still allows, or None without a limit."""
    for limit_path, usage_path in _cgroup_files():
        limit, usage = _read_int(limit_path), _read_int(usage_path)
        if limit is not None and usage is not None and limit < 2 ** 60:  # v1: huge = no limit
            return max(0, limit - usage)
    return None


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get without swapping or an OOM kill, or None where
    the system does not say (then no memory check is made)."""
    known = [value for value in (_meminfo_available(), _cgroup_room()) if value is not None]
    return min(known) if known else None


def memory_margin(available: int) -> int:
    """Bytes a run leaves free of ``available``: MARGIN_FRACTION of it, at least MARGIN_BYTES."""
    return max(int(MARGIN_FRACTION * available), MARGIN_BYTES)


def check_memory(needed: int, what: str, fixes: str, *, margin: bool = False) -> None:
    """ResourceError unless ``needed`` bytes fit the available memory (with ``margin``, and
    :func:`memory_margin` left free besides); ``what`` says what needs them (e.g. "the array X
    of data.npz"), ``fixes`` what the user can do."""
    available = available_memory()
    if available is None:
        return
    kept = memory_margin(available) if margin else 0
    if needed + kept > available:
        plus = f", plus {format_bytes(kept)} kept free," if kept else ""
        raise ResourceError(f"{what} needs {format_bytes(needed)} of memory{plus} but this machine "
                            f"has {format_bytes(available)} available; {fixes}")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's cpuset counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_workers() -> int:
    """The most worker processes one run may start here."""
    return MAX_WORKERS_PER_CPU * usable_cpus()


def check_run(*, workers: int, parameter_count: int, block_bytes: int, block_in_memory: bool) -> None:
    """ResourceError unless a run of ``workers`` processes fits: at most :func:`max_workers`, and
    memory for the block (when it lives in memory, i.e. /dev/shm), the parent's parameter copies
    and every worker process (a single worker is a thread and costs none), with a margin left
    free (:func:`memory_margin`)."""
    if workers > max_workers():
        raise ResourceError(f"workers ({workers}) is more than this machine runs usefully: at most "
                            f"{max_workers()} ({MAX_WORKERS_PER_CPU} per CPU, {usable_cpus()} CPUs); "
                            "more processes only queue for the same cores")
    parts = {"shared block": block_bytes if block_in_memory else 0,
             "parameter copies": PARENT_PARAMETER_COPIES * 8 * parameter_count,
             f"{workers} worker processes": WORKER_BYTES * workers if workers > 1 else 0}
    detail = ", ".join(f"{name} {format_bytes(size)}" for name, size in parts.items() if size)
    check_memory(sum(parts.values()), f"this run ({detail})",
                 "use fewer workers, fewer features (columns) or a machine with more memory",
                 margin=True)
