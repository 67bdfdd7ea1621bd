"""Checkpoints under stress: an optimizer restored by rc.load steps the model it returns."""
import numpy as np
import pytest

import rnncore as rc
from cases import assert_same_state, assert_same_tree


# -- item: rc.load(path, optimizer=opt) resumes training of the returned model ---------------

def lstm_layer(seed):
    return rc.LSTM(3, 5, num_layers=2, dtype=np.float64, seed=seed)


def lstm_last_linear(seed):
    return rc.Sequential(rc.LSTM(3, 5, dtype=np.float64, seed=seed), rc.LastStep(),
                         rc.Linear(5, 2, dtype=np.float64, seed=seed + 1))


# model, and the shape of its targets for x of shape (6, 4, 3)
MODELS = {"lstm": (lstm_layer, (6, 4, 5)), "lstm-laststep-linear": (lstm_last_linear, (4, 2))}
OPTIMIZERS = {"sgd-momentum": lambda m: rc.optim.SGD(m, lr=0.05, momentum=0.9),
              "adam": lambda m: rc.optim.Adam(m, lr=0.02)}


def manual_steps(model, optimizer, data):
    losses, loss_fn = [], rc.MSELoss()
    for x, target in data:
        model.train()
        model.zero_grad()
        y, _ = model(x)
        losses.append(loss_fn(y, target))
        model.backward(loss_fn.backward())
        optimizer.step()
    return losses


def train_steps(model, optimizer, data):
    return [rc.train.train_step(model, rc.MSELoss(), optimizer, x, target)[0] for x, target in data]


def bptt_steps(model, optimizer, data):
    return [rc.train.truncated_bptt(model, rc.MSELoss(), optimizer, x, target, chunk=2)[0] for x, target in data]


STEPPERS = {"manual": manual_steps, "train_step": train_steps, "truncated_bptt": bptt_steps}
# truncated BPTT needs a target per step, which a LastStep model does not give
COMBINATIONS = [(m, s) for m in MODELS for s in STEPPERS if not (m != "lstm" and s == "truncated_bptt")]


def batches(target_shape, count, seed):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((6, 4, 3)), rng.standard_normal(target_shape)) for _ in range(count)]


@pytest.mark.parametrize("optimizer_kind", OPTIMIZERS)
@pytest.mark.parametrize("model_kind,stepper", COMBINATIONS)
def test_an_optimizer_restored_by_load_steps_the_returned_model_bit_for_bit(tmp_path, model_kind, stepper,
                                                                           optimizer_kind):
    make, target_shape = MODELS[model_kind]
    make_optimizer, steps = OPTIMIZERS[optimizer_kind], STEPPERS[stepper]
    before, after = batches(target_shape, 3, seed=1), batches(target_shape, 3, seed=2)
    model = make(0)
    optimizer = make_optimizer(model)
    steps(model, optimizer, before)
    path = tmp_path / "train.ckpt"
    rc.save(path, model, optimizer=optimizer)

    placeholder = make(10)  # what a resuming script builds before it knows the weights
    placeholder_state = placeholder.state_dict()
    resumed_optimizer = make_optimizer(placeholder)
    resumed = rc.load(path, optimizer=resumed_optimizer)

    losses = steps(model, optimizer, after)
    assert steps(resumed, resumed_optimizer, after) == losses
    assert_same_state(resumed, model)
    assert_same_tree(resumed_optimizer.state_dict(), optimizer.state_dict())
    # the optimizer has left the placeholder alone
    assert_same_tree(placeholder.state_dict(), placeholder_state)


def stepped(model, optimizer):
    """The optimizer after one step from unit gradients, so that it has state."""
    for grad in model.grads.values():
        grad[...] = 1.0
    optimizer.step()
    return optimizer


def test_rebind_moves_the_optimizer_with_its_state_and_refuses_another_structure():
    model, twin = lstm_layer(0), lstm_layer(1)
    optimizer = stepped(model, rc.optim.Adam(model, lr=0.01))
    state = optimizer.state_dict()
    assert optimizer.rebind(twin) is optimizer
    assert_same_tree(optimizer.state_dict(), state)
    twin_before, model_before = twin.state_dict(), model.state_dict()
    stepped(twin, optimizer)
    assert not np.array_equal(twin.parameters()["weight_hh_l0"], twin_before["weight_hh_l0"])
    assert_same_tree(model.state_dict(), model_before)

    others = {
        "names": (rc.LSTM(3, 5, num_layers=1, dtype=np.float64),
                  r"parameters missing \['weight_ih_l1', 'weight_hh_l1', 'bias_ih_l1', 'bias_hh_l1'\]"),
        "shapes": (rc.LSTM(3, 6, num_layers=2, dtype=np.float64),
                   r"weight_ih_l0: expected float64\(20, 3\), got float64\(24, 3\)"),
        "dtypes": (rc.LSTM(3, 5, num_layers=2, dtype=np.float32),
                   r"weight_ih_l0: expected float64\(20, 3\), got float32\(20, 3\)"),
        "extra-module": ([twin, rc.Linear(5, 2)], r"parameters missing \['weight_ih_l0'.*unexpected parameters "
                                                  r"\['0.weight_ih_l0'"),
    }
    state = optimizer.state_dict()
    for other, message in others.values():
        with pytest.raises(ValueError, match=r"Adam.rebind: modules: expected parameters of the names, shapes and "
                                             r"dtypes of those it steps, got .*" + message):
            optimizer.rebind(other)
    # refused: still bound to twin, state untouched
    assert_same_tree(optimizer.state_dict(), state)
    changed = twin.state_dict()
    optimizer.step()
    assert not np.array_equal(twin.parameters()["weight_hh_l0"], changed["weight_hh_l0"])
    with pytest.raises(TypeError, match=r"modules\[0\]: expected an object with parameters\(\) and grads"):
        optimizer.rebind(object())


def test_a_load_that_does_not_fit_the_optimizer_leaves_it_bound_and_unchanged(tmp_path):
    path = tmp_path / "train.ckpt"
    saved = lstm_layer(0)
    rc.save(path, saved, optimizer=stepped(saved, rc.optim.SGD(saved, lr=0.1, momentum=0.9)))
    cases = {
        # another structure: refused by rebind, before the state is loaded
        "structure": (rc.optim.SGD, rc.LSTM(3, 4, num_layers=2, dtype=np.float64, seed=3), ValueError,
                      r"SGD.rebind: modules: .*weight_ih_l0: expected float64\(16, 3\), got float64\(20, 3\)"),
        # the same structure, another optimizer: refused by load_state_dict, after rebind
        "type": (rc.optim.Adam, lstm_layer(3), ValueError, "of a 'SGD' optimizer, not a 'Adam'"),
    }
    for make_optimizer, model, error, message in cases.values():
        optimizer = stepped(model, make_optimizer(model, lr=0.01))
        state, weights = optimizer.state_dict(), model.state_dict()
        with pytest.raises(error, match=message):
            rc.load(path, optimizer=optimizer)
        assert_same_tree(optimizer.state_dict(), state)
        optimizer.step()  # still steps the model it was built over
        assert not np.array_equal(model.parameters()["weight_ih_l0"], weights["weight_ih_l0"])
