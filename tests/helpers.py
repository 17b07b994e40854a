"""Shared test helpers: shared-memory and child-process leak checks."""

import multiprocessing
import os

from hogwild_mts.shared import BLOCK_NAME_PREFIX

SHM_DIR = "/dev/shm"


def shared_blocks() -> set:
    """Names of this project's shared-memory blocks that exist now."""
    return {name for name in os.listdir(SHM_DIR) if name.startswith(BLOCK_NAME_PREFIX)}


def live_children() -> list:
    return [child for child in multiprocessing.active_children() if child.is_alive()]
