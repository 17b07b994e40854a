"""The files a run writes, under hostile conditions: two runs on one --out (an exclusive lock),
readers polling a model file while it is rewritten (a manifest and data files never reused), a
file-size limit (``ulimit -f``) at the final write, the permissions of what is written, and a
resume that would save nothing.

Cases that need an event (the first run holds the lock, a writer is under way) wait for it with a
generous deadline; none sleeps and then acts.
"""

import json
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from hogwild_mts import model_file
from hogwild_mts.app.cli import main
from hogwild_mts.core.files import LOCK_FILE, directory_lock, remove_leftovers, write_atomic
from tests.helpers import WAIT_SECONDS, default_stop_signals, group_alive, wait_for_updates
from tests.test_hostile import (LONG, TINY, _wait_for, owned_entries, signal_self_once_training,
                               temporary_files)


def _train(*arguments, **popen):
    command = [sys.executable, "-m", "hogwild_mts.app.cli", "train", "--quiet", *arguments]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)


def _stop(process) -> tuple[str, str]:
    try:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        return process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


# ----------------------------------------------------------------------------- A: one run per --out
def test_a_second_run_on_the_same_out_is_refused_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    first = _train("--data", TINY, "--workers", "1", "--out", str(out), *LONG,
                   preexec_fn=default_stop_signals)
    try:
        def holds_the_lock():
            text = (out / LOCK_FILE).read_text() if (out / LOCK_FILE).exists() else ""
            return text.strip() == str(first.pid) or first.poll() is not None
        _wait_for(holds_the_lock, "the first run taking the lock of --out")
        assert first.poll() is None, first.communicate()
        wait_for_updates(first.pid, minimum=100)  # training: SIGTERM will leave a partial result
        second = _train("--data", TINY, "--workers", "1", "--out", str(out))
        _, stderr = second.communicate(timeout=WAIT_SECONDS)
        assert second.returncode == 2, stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines == [f"hogwild-mts: error: --out '{out}' is in use by another run (pid "
                         f"{first.pid}); wait for it to end or give another directory"], stderr
        assert not (out / "metrics.json").exists(), "the refused run wrote into the holder's --out"
    finally:
        _, stderr = _stop(first)
    assert first.returncode == 128 + signal.SIGTERM, stderr
    assert json.loads((out / "metrics.json").read_text())["interrupted"] is True
    assert not (out / LOCK_FILE).exists() and not temporary_files(out)
    _wait_for(lambda: not group_alive(first.pid), "the end of every process of the first run")
    assert not owned_entries(first.pid)


def test_a_killed_holders_lock_goes_with_it(tmp_path):
    """SIGKILL leaves the lock file (and its pid) behind, but not the lock: the next run takes it."""
    out = tmp_path / "out"
    first = _train("--data", TINY, "--workers", "1", "--out", str(out), *LONG)
    try:
        _wait_for(lambda: (out / LOCK_FILE).exists() and (out / LOCK_FILE).read_text().strip()
                  or first.poll() is not None, "the first run taking the lock of --out")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=WAIT_SECONDS)
    assert (out / LOCK_FILE).exists()
    assert main(["train", "--quiet", "--data", TINY, "--workers", "1", "--epochs", "1",
                 "--out", str(out)]) == 0
    assert not (out / LOCK_FILE).exists()


def test_the_lock_is_released_on_an_error_and_refuses_within_one_process(tmp_path):
    out = str(tmp_path)
    with pytest.raises(RuntimeError):
        with directory_lock(out, "here"):
            raise RuntimeError("a failing run")
    with directory_lock(out, "here"):
        with pytest.raises(ValueError, match=rf"here is in use by another run \(pid {os.getpid()}\)"):
            with directory_lock(out, "here"):
                pass
    assert os.listdir(out) == []


# ----------------------------------------------------------------------------- B: atomic pairs
WRITES = 300


def _save(path: str, i: int) -> None:
    model_file.save_linear(
        path, kind="HogwildClassifier", coef=np.full((1, 200), float(i)), intercept=np.array([float(i)]),
        classes=np.array([-1.0, 1.0]), estimator_params={"loss": "logreg", "policy": "constant",
                                                         "fit_intercept": True},
        histogram=np.zeros(1), counter=i, metrics={"i": i})


def test_a_reader_polling_a_rewritten_model_file_never_sees_a_mismatched_pair(tmp_path):
    """A writer process rewrites the pair WRITES times; readers here (the package's reader, and
    one that follows the manifest by hand, as a script would) poll all the while: every read
    is a whole pair of one save, and the named file is there."""
    path = str(tmp_path / "model")
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.test_output_files import _save\n"
         f"for i in range({WRITES + 1}): _save(sys.argv[1], i)", path])
    reads, by_hand, missing = 0, 0, 0
    try:
        _wait_for(lambda: os.path.exists(os.path.join(path, "model.json")) or writer.poll() is not None,
                  "the first save")
        while writer.poll() is None or reads == 0:
            document, arrays = model_file.read(path)
            i = document["counter"]
            assert document["metrics"]["i"] == i
            assert np.all(arrays["coef"] == i) and arrays["intercept"][0] == i, "a mismatched pair"
            reads += 1
            manifest = json.loads((tmp_path / "model" / "model.json").read_text())
            try:
                with np.load(tmp_path / "model" / manifest["arrays"]) as archive:
                    assert archive["intercept"][0] == manifest["counter"], "a mismatched pair"
                by_hand += 1
            except FileNotFoundError:
                missing += 1
    finally:
        writer.wait(timeout=WAIT_SECONDS)
    assert writer.returncode == 0
    assert reads > 1 and by_hand > 1
    # a reader by hand misses its file only when two whole saves happened between its two opens
    assert missing < by_hand, (missing, by_hand)
    document, arrays = model_file.read(path)
    assert document["counter"] == WRITES and np.all(arrays["coef"] == WRITES)
    names = sorted(os.listdir(tmp_path / "model"))
    assert len(names) == 3 and "model.json" in names, names  # the current and the previous data file
    assert not temporary_files(tmp_path / "model")


def test_files_of_earlier_versions_still_load_and_are_replaced(tmp_path):
    """The A/B layout of earlier versions (arrays.npz / arrays-b.npz, or no name at all)."""
    path = tmp_path / "old"
    _save(str(path), 5)
    document = json.loads((path / "model.json").read_text())
    os.rename(path / document["arrays"], path / "arrays-b.npz")
    document["arrays"] = "arrays-b.npz"
    (path / "model.json").write_text(json.dumps(document))
    assert model_file.read(str(path))[0]["counter"] == 5
    os.rename(path / "arrays-b.npz", path / "arrays.npz")
    del document["arrays"]
    (path / "model.json").write_text(json.dumps(document))
    assert model_file.read(str(path))[0]["counter"] == 5
    _save(str(path), 6)
    _save(str(path), 7)
    assert "arrays.npz" not in os.listdir(path) and model_file.read(str(path))[0]["counter"] == 7


def test_a_writer_killed_between_data_and_manifest_leaves_nothing_after_the_next_save(tmp_path):
    """A data file a dead writer never committed, and its temporary files, go at the next save;
    a live writer's are kept."""
    path = tmp_path / "model"
    _save(str(path), 1)
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = path / f"arrays-{dead.pid}-0badc0de.npz"
    temporary = path / f".tmp-{dead.pid}-x1y2z3-arrays-{dead.pid}-0badc0de.npz"
    live = path / f".tmp-{os.getppid()}-x1y2z3-model.json"
    for file in (orphan, temporary, live):
        file.write_bytes(b"\0" * 1024)
    _save(str(path), 2)
    assert not orphan.exists() and not temporary.exists() and live.exists()
    assert remove_leftovers(str(path)) == []


# ----------------------------------------------------------------------------- D: ulimit -f
def test_a_file_size_limit_at_the_final_write_is_exit_1_with_the_summary(tmp_path, monkeypatch, capsys):
    """``ulimit -f 2`` (2048 bytes) as the results are written: metrics.json (about 3 KB) and the
    arrays file are too large, params.npy (528 bytes) is not.  Python would die of SIGXFSZ; the
    command ignores it, so each write fails with EFBIG: the summary is printed, every file tried,
    exit 1, no traceback, no temporary file left.  (The limit is set only for the writing: a
    limit below the size of the shared block refuses the run before it starts.)"""
    from hogwild_mts.app import cli

    write_outputs = cli.write_outputs

    def limited(*arguments, **options):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, hard))
        try:
            return write_outputs(*arguments, **options)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    monkeypatch.setattr(cli, "write_outputs", limited)
    out = tmp_path / "out"
    status = main(["train", "--quiet", "--data", TINY, "--workers", "1", "--epochs", "1",
                   "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 1, captured.err
    assert "final loss" in captured.out and "Traceback" not in captured.err
    last = [line for line in captured.err.splitlines() if line.strip()][-1]
    assert last == (f"hogwild-mts: error: could not write metrics.json (File too large), "
                    f"model.json and its arrays-*.npz (File too large) in {out}; params.npy "
                    "written there"), captured.err
    assert np.load(out / "params.npy").shape == (50,)
    assert sorted(os.listdir(out)) == ["params.npy"]


# ----------------------------------------------------------------------------- G: small ones
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_are_created_with_the_umask(tmp_path, umask, mode):
    saved = os.umask(umask)
    try:
        assert main(["train", "--quiet", "--data", TINY, "--workers", "1", "--epochs", "1",
                     "--out", str(tmp_path / "out"), "--checkpoint-every", "100u"]) == 0
        write_atomic(str(tmp_path / "one.txt"), "x")
    finally:
        os.umask(saved)
    files = [tmp_path / "one.txt"] + [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) >= 7
    for file in files:
        assert file.stat().st_mode & 0o777 == mode, file


def test_resume_without_out_warns_that_nothing_is_saved(tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["train", "--quiet", "--data", TINY, "--workers", "1", "--epochs", "100000"]
    helper = signal_self_once_training(signal.SIGTERM)  # a checkpoint of an unfinished run
    assert main(arguments + ["--out", str(out), "--checkpoint-every", "100u"]) == 128 + signal.SIGTERM
    helper.join(WAIT_SECONDS)
    capsys.readouterr()
    helper = signal_self_once_training(signal.SIGTERM)
    assert main(arguments + ["--resume", str(out / "checkpoint")]) == 128 + signal.SIGTERM
    helper.join(WAIT_SECONDS)
    error = capsys.readouterr().err
    assert error.splitlines()[0] == ("hogwild-mts: warning: --resume without --out: the continued "
                                     "run's results and checkpoints are not saved"), error


def test_the_one_line_warnings_do_not_outlive_the_command(tmp_path):
    import warnings

    shown, file_size = warnings.showwarning, signal.getsignal(signal.SIGXFSZ)
    assert main(["train", "--quiet", "--data", TINY, "--workers", "1", "--epochs", "1"]) == 0
    assert warnings.showwarning is shown and signal.getsignal(signal.SIGXFSZ) == file_size
