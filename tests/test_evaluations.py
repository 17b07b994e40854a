"""Update-triggered evaluations: the workers copy the parameters when the run's update count
reaches each due count (worker.EvaluationTaker), the parent hands the copies out in order
(backend.EvaluationReader) -- exact with one worker, within a piece with several."""

import dataclasses

import numpy as np
import pytest

from hogwild_mts.backends.shm import worker
from hogwild_mts.backends.shm.backend import EvaluationReader
from hogwild_mts.backends.shm.block import Layout
from hogwild_mts.backends.shm.fields import BlockViews
from hogwild_mts.data.tabular import synthetic_sparse
from hogwild_mts.engines.linear import Engine
from tests.helpers import live_children, shared_blocks


@pytest.fixture(autouse=True)
def no_leaks():
    yield
    assert not shared_blocks(), "a run left shared memory behind"
    assert not live_children(), "a run left worker processes behind"


@pytest.fixture(scope="module")
def data():
    return synthetic_sparse(n_samples=4000, n_features=500, nnz_per_row=10, seed=5)


def _views(slots: int, n_params: int, first: int, every: int, workers: int = 2) -> BlockViews:
    """The fields a taker and a reader use, as plain arrays (no block, no processes)."""
    layout = Layout()
    worker.add_evaluation_fields(layout, slots, n_params, np.float64)
    views = dataclasses.replace(layout.views(bytearray(layout.nbytes)),
                                counter=np.zeros(8, np.int64), params=np.zeros(n_params),
                                stats=np.zeros((workers, 8), np.int64))
    worker.prepare_evaluations(views, first, every)
    return views


@pytest.mark.parametrize("total,resumed,every,expected", [
    (1000, 0, 100, (100, 10)),  # 100, 200, ..., 1000
    (1050, 0, 100, (100, 10)),
    (99, 0, 100, (100, 0)),
    (1000, 250, 100, (300, 8)),  # a resumed run: the next multiple after its start
])
def test_evaluation_slots(total, resumed, every, expected):
    assert worker.evaluation_slots(every, total, resumed) == expected
    assert worker.evaluation_slots(None, total, resumed) is None


def test_taker_copies_in_each_window_once_and_the_reader_skips_windows_nobody_took():
    views = _views(slots=6, n_params=3, first=10, every=10)  # due at 10, 20, ..., 60
    taker, reader = worker.EvaluationTaker(views, stamp=True, workers=2), EvaluationReader(views, True)
    counter, params = views.counter, views.params
    for updates, value in [(5, 1.0), (10, 2.0), (12, 3.0), (35, 4.0), (39, 5.0), (40, 6.0)]:
        counter[0], params[:] = updates, value
        taker.maybe_take()
    rows = reader.taken(origin=0.0)
    # the windows [10, 20) taken at 10, [20, 30) by nobody (skipped), [30, 40) at 35, [40, 50) at 40
    assert [row[1] for row in rows] == [10, 35, 40]
    assert [row[2][0] for row in rows] == [2.0, 4.0, 6.0]
    assert reader.taken(origin=0.0) == []  # each slot once
    counter[0], params[:] = 55, 7.0
    assert taker.maybe_take() == 5  # updates until the next due count
    counter[0] = 1000
    assert taker.maybe_take() == 0  # past the last slot
    assert [row[1] for row in reader.taken(origin=0.0)] == [55]


def test_a_slot_being_copied_holds_back_the_reader_not_the_workers():
    views = _views(slots=3, n_params=2, first=10, every=10)
    reader = EvaluationReader(views, True)
    taker = worker.EvaluationTaker(views, stamp=True, workers=2)
    views.counter[0] = 10
    views.eval_claims[0] = 1  # another worker is copying slot 0 (descheduled, say)
    taker.maybe_take()  # loses the claim, goes on
    views.counter[0] = 20
    taker.maybe_take()  # takes slot 1 all the same
    assert reader.taken(origin=0.0) == []
    views.eval_updates[0], views.eval_done[0] = 10, 1
    assert [row[1] for row in reader.taken(origin=0.0)] == [10, 20]


def test_unstamped_runs_count_the_workers_updates():
    views = _views(slots=2, n_params=1, first=10, every=10)
    views.stats[:, worker.STAT_UPDATES] = [6, 5]
    worker.EvaluationTaker(views, stamp=False, workers=2).maybe_take()
    assert [row[1] for row in EvaluationReader(views, False).taken(origin=0.0)] == [11]


def test_one_worker_evaluates_at_exactly_every_due_count(data):
    result = Engine("logreg", lr=0.5, workers=1, epochs=2, eval_every_updates=700,
                    defer_evaluation=True, progress=False).fit(data)
    assert result.history["updates"] == [0, *range(700, 8000, 700), 8000]
    assert len(set(result.history["loss"])) == len(result.history["loss"])  # each its own copy


def test_one_worker_scores_live_the_same_rows(data):
    deferred = Engine("logreg", lr=0.5, workers=1, epochs=2, eval_every_updates=700,
                      defer_evaluation=True, progress=False).fit(data)
    live = Engine("logreg", lr=0.5, workers=1, epochs=2, eval_every_updates=700,
                  progress=False).fit(data)
    assert live.history["updates"] == deferred.history["updates"]
    assert live.history["loss"] == deferred.history["loss"]


def test_several_workers_evaluate_near_each_due_count(data):
    every = 2000
    result = Engine("logreg", lr=0.5, workers=2, epochs=20, eval_every_updates=every,
                    defer_evaluation=True, progress=False).fit(data)
    updates = np.array(result.history["updates"])
    assert updates[0] == 0 and updates[-1] == result.updates == 80_000
    assert np.all(np.diff(updates) >= 0)
    due = np.arange(every, 80_000 + 1, every)
    taken = updates[1:-1]
    # loose (a busy machine may deschedule both workers): most due counts got a copy, and a
    # typical copy lands within a tenth of the spacing after its due count
    assert taken.size >= due.size // 2
    offsets = taken - due[np.searchsorted(due, taken, side="right") - 1]
    assert np.median(offsets) <= every // 10


def test_torch_one_worker_evaluates_at_exactly_every_due_count():
    from hogwild_mts.data.images import load_images
    from hogwild_mts.engines.networks import TorchEngine

    result = TorchEngine("mlp", workers=1, epochs=1, batch_size=32, eval_every_updates=10,
                         defer_evaluation=True, progress=False).fit(load_images("digits"))
    assert result.history["updates"] == [0, *range(10, result.updates + 1, 10)] + (
        [] if result.updates % 10 == 0 else [result.updates])


def test_too_many_copies_are_refused_before_any_worker_starts(data, monkeypatch):
    monkeypatch.setattr(worker, "EVAL_MAX_BYTES", 1 << 16)
    with pytest.raises(ValueError, match=r"eval_every_updates asks for 80 copies of 501 parameters"):
        Engine("logreg", workers=2, epochs=20, eval_every_updates=1000, progress=False).fit(data)
