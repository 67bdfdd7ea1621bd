"""memory="lean" through a model: `Sequential` passes it to its recurrent layers, and
`train.train_step` and `train.truncated_bptt` to the model; training lean gives the full
path's losses and parameters bit for bit; a wrong `memory` is refused before anything
runs."""
import numpy as np
import pytest

import rnncore as rc


def _model():
    return rc.Sequential(rc.LSTM(2, 8, num_layers=2, seed=0, zoneout=0.1, dropout=0.1), rc.Linear(8, 2, seed=1))


def _data():
    t = np.linspace(0, 40, 300, dtype=np.float32)
    x = np.stack([np.sin(t), np.cos(0.7 * t)], axis=-1).reshape(300, 1, 2)
    return np.repeat(x, 3, axis=1)


def _train(memory, how):
    model = _model()
    opt = rc.optim.Adam(model, lr=1e-2)
    x = _data()
    losses = []
    for _ in range(2):
        if how == "step":
            loss, _ = rc.train.train_step(model, rc.MSELoss(), opt, x[:-1], x[1:], max_norm=1.0, memory=memory)
        else:
            loss, _ = rc.train.truncated_bptt(model, rc.MSELoss(), opt, x[:-1], x[1:], chunk=150, memory=memory)
        losses.append(loss)
    return losses, model.state_dict()


@pytest.mark.parametrize("how", ["step", "truncated"])
def test_training_lean_is_training_full_bit_for_bit(how):
    losses_full, params_full = _train("full", how)
    losses_lean, params_lean = _train("lean", how)
    assert losses_full == losses_lean
    for name in params_full:
        assert np.array_equal(params_full[name], params_lean[name]), name


def test_a_wrong_memory_is_refused_before_the_model_runs():
    model, twin = _model(), _model()
    x = _data()
    with pytest.raises(ValueError, match="memory: expected one of"):
        model(x, memory="sqrt")
    with pytest.raises(ValueError, match="memory: expected one of"):
        rc.train.train_step(model, rc.MSELoss(), None, x[:-1], x[1:], memory="sqrt")
    with pytest.raises(ValueError, match="memory: expected one of"):
        rc.train.truncated_bptt(model, rc.MSELoss(), None, x[:-1], x[1:], chunk=10, memory="sqrt")
    # no mask drawn, no gradient touched: the model still runs as its twin
    assert all(not g.any() for g in model.grads.values())
    assert np.array_equal(model(x)[0], twin(x)[0])
