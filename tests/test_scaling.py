"""Dynamic claims (every row once per epoch, exact counts, one worker unchanged), the reported
start-up and finish spread, and clean-up on every exit path of the fork-server start."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hogwild_mts.kernels import linear as kernels
from hogwild_mts.backends.shm import run as shm_run, worker
from hogwild_mts.backends.shm.backend import start_processes
from hogwild_mts.backends.shm.block import Layout
from hogwild_mts.core.result import WorkerError
from hogwild_mts.data.tabular import synthetic_sparse
from hogwild_mts.engines.linear import Engine
from hogwild_mts.job import LinearProblem
from tests.helpers import group_alive, WAIT_SECONDS, live_children, shared_blocks, wait_for_updates


@pytest.fixture(scope="module")
def data():
    return synthetic_sparse(1001, 400, 10, seed=4)


@pytest.fixture(autouse=True)
def no_leaks():
    yield
    assert not shared_blocks(), "a run left shared memory behind"
    assert not live_children(), "a run left worker processes behind"


def schedule_views(n_rows: int, workers: int):
    """The fields claimed_pieces uses, in private memory (threads share them)."""
    layout = Layout()
    layout.add("flags", np.int64, (8,))
    worker.add_schedule(layout, n_rows, "dynamic")
    return layout.views(np.zeros(layout.nbytes, np.uint8))


@pytest.mark.parametrize("workers,batch_size,epochs", [(3, 2, 4), (2, 7, 3), (4, 1, 1)])
def test_claims_visit_every_row_once_per_epoch_in_the_seeded_orders(workers, batch_size, epochs):
    n_rows = 101
    spec = worker.WorkerSpec(block_name="", layout=None, workers=workers, epochs=epochs,
                             batch_size=batch_size, chunk_updates=5,
                             seeds=np.random.SeedSequence(9).spawn(workers), n_features=0,
                             dense=False, fit_intercept=False, terms=None, stamp=True,
                             policy=None, parent_pid=0)
    views = schedule_views(n_rows, workers)
    worker.prepare_schedule(views, spec)
    generator = np.random.default_rng(spec.seeds[0])
    expected = [generator.permutation(n_rows) for _ in range(epochs)]
    pieces = [[] for _ in range(workers)]

    def consume(w):
        for order, start, stop in worker.claimed_pieces(views, spec, spec.chunk_updates, 1):
            slot = 0 if np.shares_memory(order, views.orders[0]) else 1
            pieces[w].append((slot, start, stop, order[start:stop].copy()))

    threads = [threading.Thread(target=consume, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_SECONDS)
    visits = np.zeros(n_rows, np.int64)
    for slot, start, stop, rows in (piece for mine in pieces for piece in mine):
        assert start % batch_size == 0 and (stop % batch_size == 0 or stop == n_rows)
        assert any(np.array_equal(rows, expected[e][start:stop]) for e in range(slot, epochs, 2))
        np.add.at(visits, rows, 1)
    assert np.all(visits == epochs)
    per_epoch = -(-n_rows // batch_size)
    assert views.schedule[worker.SCHED_DONE:worker.SCHED_DONE + 2].sum() == epochs * per_epoch


def test_concurrent_claims_cover_every_batch_exactly_once():
    words = np.zeros(worker.SCHEDULE_WORDS, np.int64)
    total, workers = 20_000, 2
    marks = np.zeros(total, np.int64)

    def claim_all():
        while True:
            first, end = kernels.claim_batches(words, worker.SCHED_CURSOR, total, workers, total,
                                               50, 1)
            if first >= total:
                return
            marks[first:end] += 1  # disjoint claims: no two threads write one slot

    threads = [threading.Thread(target=claim_all) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_SECONDS)
    assert np.all(marks == 1)


@pytest.mark.parametrize("workers,batch_size", [(2, 3), (3, 1)])
def test_counter_equals_updates_and_the_histogram_totals_it(data, workers, batch_size):
    result = Engine("logreg", lr=0.5, workers=workers, epochs=3, batch_size=batch_size,
                    progress=False).fit(data)
    expected = 3 * -(-data.n_samples // batch_size)
    assert result.updates == result.counter == result.staleness_histogram.sum() == expected
    assert result.samples == 3 * data.n_samples
    assert result.settings["split"] == "dynamic"
    assert 0.0 <= result.finish_spread_seconds <= result.train_seconds
    assert 0.0 < result.startup_seconds < result.wall_seconds


def test_one_worker_is_the_same_under_both_splits(data):
    runs = [Engine("logreg", lr=0.5, workers=1, epochs=3, batch_size=2, seed=7, split=split,
                   progress=False).fit(data) for split in ("dynamic", "dynamic", "static")]
    for run in runs[1:]:
        assert np.array_equal(run.params, runs[0].params)
    assert runs[0].finish_spread_seconds == 0.0


def test_static_split_counts_each_shard_in_batches(data):
    result = Engine("logreg", lr=0.5, workers=2, epochs=2, batch_size=4, split="static",
                    progress=False).fit(data)
    assert result.updates == result.counter == 2 * (-(-501 // 4) + -(-500 // 4))


def test_forked_workers_read_the_data_in_place_and_only_fork_may_carry_views(data):
    def layout(start_method):
        engine = Engine(workers=2, start_method=start_method)
        problem = LinearProblem(engine.model, engine.dtype, data, kernels.UNIT_WEIGHTS)
        return shm_run.layout(engine._job(problem, 0.0, None))

    forked, spawned = layout("fork"), layout("spawn")
    assert "values" not in forked.fields and "values" in spawned.fields
    spec = type("Spec", (), {"views": {}})()
    with pytest.raises(ValueError, match="only 'fork' may pass them"):
        start_processes(worker.worker_main, spec, 1, [], "spawn")


def test_bad_split_and_start_method_are_refused():
    with pytest.raises(ValueError, match="split must be one of"):
        Engine(split="round-robin")
    with pytest.raises(ValueError, match="start_method must be one of"):
        Engine(start_method="thread")


# ------------------------------------------------------------------------------ fork server exits
def test_fork_server_run_and_killed_worker_clean_up(data):
    result = Engine("logreg", lr=0.5, workers=2, epochs=2, start_method="forkserver",
                    progress=False).fit(data)
    assert result.counter == result.updates == 2 * data.n_samples
    engine = Engine("logreg", lr=0.1, workers=2, epochs=100_000, start_method="forkserver",
                    progress=False)

    def kill_one_worker():
        wait_for_updates(minimum=1000)
        os.kill(live_children()[0].pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    with pytest.raises(WorkerError, match="SIGKILL"):
        engine.fit(data)
    killer.join(WAIT_SECONDS)


KILLED_PARENT = """
from hogwild_mts.data.tabular import synthetic_sparse
from hogwild_mts.engines.linear import Engine
from hogwild_mts.job import LinearProblem
if __name__ == "__main__":
    Engine("logreg", lr=0.1, workers=2, epochs=100_000, start_method="forkserver",
           progress=False).fit(synthetic_sparse(2000, 500, 10, seed=0))
"""


def test_fork_server_workers_and_block_go_with_a_killed_parent(tmp_path):
    script = tmp_path / "killed_parent.py"
    script.write_text(KILLED_PARENT)
    process = subprocess.Popen([sys.executable, str(script)], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_updates(process.pid, minimum=1000)
        process.kill()
        process.wait(WAIT_SECONDS)
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline and group_alive(process.pid):
            time.sleep(0.05)
        assert not group_alive(process.pid), "a worker or the fork server outlived the parent"
        assert not shared_blocks(process.pid), "the killed run left shared memory behind"
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)

