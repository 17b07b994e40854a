"""A /dev/shm too small for the run's block (Docker's default is 64 MiB): the run stops before any
worker starts, naming the bytes needed, the bytes free and the fixes -- or, given a directory
(``--shm-dir``, HOGWILD_MTS_SHM_DIR), maps the block from a file there.

Tested for real in a private mount namespace whose /dev/shm is a 1 MiB tmpfs.  The test decides
by trying: it runs ``unshare --user --map-root-user --mount`` (then plain ``unshare --mount``)
with the mount it needs, and skips, quoting the refusal, only where the machine allows neither
(no unshare, or user namespaces disabled for unprivileged users).  The same paths are tested
everywhere by monkeypatching the free-space probe ``block.free_bytes``.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import time

import pytest

from hogwild_mts.app.cli import main
from hogwild_mts.backends.shm import block
from hogwild_mts.core.files import process_alive
from hogwild_mts.core.resources import ResourceError
from hogwild_mts.data.tabular import load_data
from hogwild_mts.engines.linear import Engine
from tests.helpers import SHM_DIR, live_children

WIDE = "synthetic-sparse:n=200,d=200000,nnz=2,seed=1"  # a 3.1 MiB block: parameters, L2 scales
SMALL_SHM = "1m"


def _unshare_prefix(mounts: str) -> list:
    """The unshare command under which ``mounts`` (shell) succeeds, or skip saying why not."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed, so no private /dev/shm can be mounted")
    refusals = []
    for prefix in (["unshare", "--user", "--map-root-user", "--mount"], ["unshare", "--mount"]):
        probe = subprocess.run(prefix + ["sh", "-c", mounts], capture_output=True, text=True)
        if probe.returncode == 0:
            return prefix
        refusals.append(f"{' '.join(prefix)}: {probe.stderr.strip() or probe.returncode}")
    pytest.skip("this machine allows no private mount namespace: " + "; ".join(refusals))


def test_small_dev_shm_for_real(tmp_path):
    """In a namespace with a 1 MiB /dev/shm: refused with the numbers and fixes; with --shm-dir
    the run completes on a file-backed block; a full --out file system (64 KiB) and a read-only
    one are reported as such."""
    spill, out, full, read_only = (tmp_path / name for name in ("spill", "out", "full", "ro"))
    for directory in (spill, full, read_only):
        directory.mkdir()
    mounts = (f"mount -t tmpfs -o size={SMALL_SHM} tmpfs /dev/shm && "
              f"mount -t tmpfs -o size=64k tmpfs {full} && mount -t tmpfs -o ro tmpfs {read_only}")
    prefix = _unshare_prefix(mounts)
    train = f"{sys.executable} -m hogwild_mts.app.cli train --quiet --workers 2 --epochs 1 --data {WIDE}"
    runs = {"short": "", "spilled": f"--shm-dir {spill} --out {out}",
            "full": f"--shm-dir {spill} --out {full}", "read_only": f"--out {read_only}"}
    script = [mounts]
    for name, options in runs.items():
        script.append(f"{train} {options} > {tmp_path}/{name}.out 2> {tmp_path}/{name}.err; "
                      f"echo $? > {tmp_path}/{name}.status")
    script.append(f"ls -A {full} > {tmp_path}/full.listing; ls -A /dev/shm > {tmp_path}/shm.listing")
    subprocess.run(prefix + ["sh", "-c", " ; ".join(script)], check=True, timeout=300,
                   cwd=os.getcwd(), env=dict(os.environ, PYTHONPATH=os.getcwd()))

    def result(name):
        return (int((tmp_path / f"{name}.status").read_text()), (tmp_path / f"{name}.err").read_text())

    status, error = result("short")
    assert status == 2, error
    assert "the shared block of this run needs 3.1 MiB but /dev/shm has 1.0 MiB free" in error
    assert "--shm-dir DIR or HOGWILD_MTS_SHM_DIR=DIR" in error and "--shm-size" in error
    status, error = result("spilled")
    assert status == 0, error
    assert json.loads((out / "metrics.json").read_text())["updates"] == 200
    assert not os.listdir(spill), "the file-backed block was left behind"
    status, error = result("full")
    assert status == 1, error
    assert "could not write params.npy (No space left on device)" in error
    assert "metrics.json written there" in error
    assert (tmp_path / "full.listing").read_text().split() == ["metrics.json"]  # no temporary file
    status, error = result("read_only")
    assert status == 2, error
    assert "cannot be written: Read-only file system" in error
    assert not (tmp_path / "shm.listing").read_text().split(), "the runs left /dev/shm entries"


@pytest.fixture
def short_shm(monkeypatch):
    """/dev/shm reports 1 KiB free; no spill directory in the environment."""
    real = block.free_bytes
    monkeypatch.setattr(block, "free_bytes", lambda d: 1024 if d == block.SHM_DIR else real(d))
    monkeypatch.delenv(block.SPILL_DIR_ENV, raising=False)


def _our_entries() -> set:
    return {name for name in os.listdir(SHM_DIR) if name.startswith(f"hwmts_{os.getpid()}_")}


def test_short_shm_stops_before_any_worker_with_the_numbers_and_fixes(short_shm):
    before = _our_entries()
    with pytest.raises(ResourceError) as caught:
        Engine("logreg", workers=2, epochs=1, progress=False).fit(load_data(WIDE))
    message = str(caught.value)
    assert "needs 3.1 MiB but /dev/shm has 1.0 KiB free" in message
    for fix in ("--shm-dir DIR", "HOGWILD_MTS_SHM_DIR=DIR", "--shm-size", "smaller data set"):
        assert fix in message
    assert not live_children() and _our_entries() == before


def test_short_shm_maps_the_block_from_a_file_that_spawned_workers_attach(short_shm, monkeypatch,
                                                                          tmp_path, caplog):
    monkeypatch.setenv(block.SPILL_DIR_ENV, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger=block.__name__):
        result = Engine("logreg", workers=2, epochs=2, progress=False, start_method="spawn").fit(
            load_data(WIDE))
    assert result.updates == result.counter == 400
    assert f"is a file in {tmp_path}" in caplog.text
    assert not os.listdir(tmp_path) and not live_children()


def test_cli_shm_dir_is_used_for_the_run_only(short_shm, tmp_path, capsys):
    status = main(["train", "--quiet", "--workers", "2", "--epochs", "1", "--data", WIDE,
                   "--shm-dir", str(tmp_path)])
    assert status == 0, capsys.readouterr().err
    assert block.SPILL_DIR_ENV not in os.environ
    assert not os.listdir(tmp_path)


def test_a_zombie_counts_as_gone_for_the_liveness_check():
    """A worker whose parent died but was not yet reaped (a zombie) must stop, and leftovers of
    a zombie owner are orphans: ``process_alive`` tells a zombie from a running process."""
    assert process_alive(os.getpid())
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 60.0
        while process_alive(child) and time.monotonic() < deadline:
            time.sleep(0.01)  # waits for the event "the child has exited", not a fixed time
        assert not process_alive(child)
        assert os.path.exists(f"/proc/{child}")  # still a zombie: not reaped yet
    finally:
        os.waitpid(child, 0)
    assert not process_alive(child)
