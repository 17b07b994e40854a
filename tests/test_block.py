"""The typed views of a shared block: Layout refuses names BlockViews has no field for, a field
the layout lacks is None, and a layout rebuilt from its pickle gives views of the same bytes."""

import pickle

import numpy as np
import pytest

from hogwild_mts.backends.shm import worker
from hogwild_mts.backends.shm.backend import control_layout
from hogwild_mts.backends.shm.block import Layout


def test_a_name_that_is_no_field_is_refused_when_the_layout_is_built():
    layout = Layout()
    with pytest.raises(ValueError, match="'param' is not a field of a shared block; BlockViews has: "):
        layout.add("param", np.float64, (3,))
    assert layout.fields == {} and layout.nbytes == 0


def test_fields_the_layout_lacks_are_none():
    layout = control_layout(workers=2, n_params=5, dtype=np.float32)
    views = layout.views(bytearray(layout.nbytes))
    assert views.params.dtype == np.float32 and views.params.shape == (5,)
    assert views.stats.shape[0] == 2
    for name in ("positions", "velocity0", "eval_words", "snapshot_words", "orders", "values",
                 "inputs"):
        assert getattr(views, name) is None, name


def test_views_rebuilt_from_the_pickled_layout_share_the_block():
    layout = control_layout(workers=2, n_params=5, dtype=np.float64)
    worker.add_schedule(layout, 10, "dynamic")
    worker.add_checkpoint_fields(layout, 2, 5, np.float64)
    buffer = bytearray(layout.nbytes)
    views = layout.views(buffer)
    again = pickle.loads(pickle.dumps(layout)).views(buffer)
    for name in layout.fields:
        assert np.shares_memory(getattr(views, name), getattr(again, name)), name
    views.params[:] = 1.5
    again.positions[1, 0] = 7
    assert np.all(again.params == 1.5) and views.positions[1, 0] == 7
