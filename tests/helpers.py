"""Shared test helpers: shared-memory and child-process leak checks."""

import multiprocessing
import os

from hogwild_mts.backends.shm.block import block_name_prefix

SHM_DIR = "/dev/shm"


def shared_blocks(pid: int | None = None) -> set:
    """Names of the shared-memory blocks that process ``pid`` (default: this one) created."""
    prefix = block_name_prefix(os.getpid() if pid is None else pid)
    return {name for name in os.listdir(SHM_DIR) if name.startswith(prefix)}


def live_children() -> list:
    return [child for child in multiprocessing.active_children() if child.is_alive()]
