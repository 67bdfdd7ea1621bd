"""Objects pickled by rnncore 0.1.0 (the flat layout: rnncore.layers, rnncore.nn,
rnncore._spec, ...) load and compute the same numbers today. The fixture was written by
0.1.0 itself: a Sequential (LSTM with projection, LastStep, Linear), a stacked
bidirectional GRU and a GRUCell, with their outputs on a fixed input."""
import pickle
from pathlib import Path

import numpy as np

import rnncore as rc

FIXTURE = Path(__file__).with_name("data") / "objects_0.1.0.pkl"


def test_objects_pickled_by_0_1_0_load_and_compute_the_same():
    with open(FIXTURE, "rb") as f:
        saved = pickle.load(f)
    model, gru, cell = saved["objects"]
    assert isinstance(model, rc.Sequential) and isinstance(gru, rc.GRU) and isinstance(cell, rc.GRUCell)
    x = saved["x"]
    # the numbers did not change between versions: bitwise on the machine that wrote them,
    # to float32 rounding elsewhere (another BLAS may round the products differently)
    np.testing.assert_allclose(model(x)[0], saved["out"]["model"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gru(x)[0], saved["out"]["gru"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cell(x[0]), saved["out"]["cell"], rtol=1e-5, atol=1e-6)
    # and they train: the saved context was dropped, a new forward keeps its own
    y, _ = gru(x)
    gru.backward(np.ones_like(y))
    assert all(np.any(g != 0) for g in gru.grads.values())


def test_the_flat_module_names_of_0_1_0_still_import():
    import rnncore.checkpoint
    import rnncore.layers
    import rnncore.nn
    from rnncore.checkpoint import CheckpointError  # noqa: F401
    from rnncore.functional import lstm_forward  # noqa: F401
    assert rnncore.layers.LSTM is rc.LSTM and rnncore.nn.Sequential is rc.Sequential
    assert rnncore.checkpoint.load is rc.load
