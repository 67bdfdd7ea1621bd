"""Checkpoints of the training toolkit: a whole Sequential with its optimizer's state, so
that training resumed from a file continues bit for bit as if it had never stopped; and
the optimizers' state_dict/load_state_dict on their own, refusals included."""
import copy

import numpy as np
import pytest

import rnncore as rc
from rnncore.checkpoint import CheckpointError
from cases import assert_same_state, assert_same_tree


def make_model(dtype=np.float32, seed=0):
    return rc.Sequential(rc.LSTM(3, 5, dtype=dtype, seed=seed), rc.Tanh(), rc.Linear(5, 2, dtype=dtype, seed=seed + 1))


def batches(dtype, count, seed):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((6, 4, 3)).astype(dtype), rng.standard_normal((6, 4, 2)).astype(dtype))
            for _ in range(count)]


def train(model, optimizer, data):
    loss_fn = rc.MSELoss()
    return [rc.train.train_step(model, loss_fn, optimizer, x, target)[0] for x, target in data]


OPTIMIZERS = {
    "adam": lambda m: rc.optim.Adam(m, lr=0.02),
    "adam-amsgrad-decay": lambda m: rc.optim.Adam(m, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.01,
                                                  amsgrad=True),
    "sgd-momentum": lambda m: rc.optim.SGD(m, lr=0.05, momentum=0.9),
    "sgd-nesterov-decay": lambda m: rc.optim.SGD(m, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_training_resumed_from_a_checkpoint_continues_bit_for_bit(tmp_path, kind, dtype):
    make_optimizer = OPTIMIZERS[kind]
    before, after = batches(dtype, 3, seed=1), batches(dtype, 4, seed=2)
    model = make_model(dtype)
    optimizer = make_optimizer(model)
    train(model, optimizer, before)
    path = tmp_path / "train.ckpt"
    rc.save(path, model, optimizer=optimizer)

    # the PyTorch pattern: an optimizer built afresh (over other weights, with other
    # hyper-parameters that the saved ones replace), its state loaded with the model; and
    # rebound to the model that rc.load returns
    fresh = make_model(dtype, seed=10)
    fresh_optimizer = type(optimizer)(fresh, lr=0.5)
    loaded = rc.load(path, optimizer=fresh_optimizer)
    assert type(loaded) is rc.Sequential and loaded.get_config() == model.get_config()
    assert [type(m) for m in loaded] == [rc.LSTM, rc.Tanh, rc.Linear]
    assert_same_state(loaded, model)
    # and an optimizer built over the model the file rebuilt
    rebuilt = rc.load(path)
    rebuilt_optimizer = make_optimizer(rebuilt)
    rebuilt_optimizer.load_state_dict(rc.checkpoint.read(path).optimizer_state)
    # the same weights with a new optimizer: it must drift away from the uninterrupted
    # run, or this test could not tell a restored optimizer state from a lost one
    forgetful = make_model(dtype, seed=10)
    forgetful.load_state_dict(model.state_dict())
    forgetful_optimizer = make_optimizer(forgetful)

    losses = train(model, optimizer, after)
    assert train(loaded, fresh_optimizer, after) == losses
    assert train(rebuilt, rebuilt_optimizer, after) == losses
    assert_same_state(loaded, model)
    assert_same_state(rebuilt, model)
    assert_same_tree(fresh_optimizer.state_dict(), optimizer.state_dict())
    train(forgetful, forgetful_optimizer, after)
    assert not all(np.array_equal(p, forgetful.parameters()[n]) for n, p in model.parameters().items())


def test_state_dict_names_copies_and_contents():
    a, b = rc.Linear(2, 3, seed=0), rc.Linear(3, 1, seed=1)
    optimizer = rc.optim.Adam([a, b], lr=0.01, amsgrad=True)
    for module in (a, b):
        for grad in module.grads.values():
            grad[...] = 1.0
    optimizer.step()
    optimizer.step()
    state = optimizer.state_dict()
    assert state["type"] == "Adam" and state["steps"] == 2
    (group,) = state["param_groups"]
    assert group == {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": True,
                     "params": ["0.weight", "0.bias", "1.weight", "1.bias"]}
    assert list(state["state"]) == group["params"]
    assert sorted(state["state"]["1.weight"]) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]
    assert state["state"]["1.weight"]["step"] == 2
    # copies both ways: neither the saved dict nor the loaded-from dict aliases live state
    state["state"]["0.bias"]["exp_avg"][...] = 7.0
    assert not (optimizer.state_dict()["state"]["0.bias"]["exp_avg"] == 7.0).any()
    optimizer.load_state_dict(state)
    state["state"]["0.bias"]["exp_avg"][...] = 9.0
    assert (optimizer.state_dict()["state"]["0.bias"]["exp_avg"] == 7.0).all()
    # one module: its own names; a fresh SGD without momentum keeps no state at all
    single = rc.optim.SGD(a, lr=0.1)
    single.step()
    assert single.state_dict()["param_groups"][0]["params"] == ["weight", "bias"]
    assert single.state_dict()["state"] == {}


def trained_adam():
    model = make_model(np.float64)
    optimizer = rc.optim.Adam(model, lr=0.01, amsgrad=True)
    train(model, optimizer, batches(np.float64, 2, seed=3))
    return optimizer


def without(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


def changed_group(state, **changes):
    state["param_groups"][0].update(changes)
    return state


def broken_states(good):
    """(name, bad state, exception, message) from a good Adam state_dict."""
    group = good["param_groups"][0]
    yield "no-state-entry", without(good, "state"), KeyError, r"lacks \['state'\]"
    yield "other-optimizer", {**good, "type": "SGD"}, ValueError, "of a 'SGD' optimizer, not a 'Adam'"
    params = [n for n in group["params"] if n != "2.bias"] + ["2.extra"]
    yield ("names", changed_group(copy.deepcopy(good), params=params), KeyError,
           r"parameters missing \['2.bias'\]; unexpected parameters \['2.extra'\]")
    yield ("hyper-names", {**good, "param_groups": [{**without(group, "eps"), "momentum": 0.9}]}, KeyError,
           r"hyper-parameters missing \['eps'\]; unexpected hyper-parameters \['momentum'\]")
    yield ("unknown-state", {**good, "state": {**good["state"], "3.weight": {}}}, KeyError,
           r"state for unknown parameters \['3.weight'\]")
    shapes = copy.deepcopy(good)
    shapes["state"]["2.weight"]["exp_avg"] = np.zeros((5, 2))
    shapes["state"]["0.bias_hh_l0"]["exp_avg_sq"] = np.zeros(3)
    yield ("shapes", shapes, ValueError, r"0.bias_hh_l0.exp_avg_sq: expected a numeric array of shape \(20,\), "
           r"got float64\(3,\); 2.weight.exp_avg: expected a numeric array of shape \(2, 5\)")
    entries = copy.deepcopy(good)
    del entries["state"]["2.bias"]["max_exp_avg_sq"]
    yield "entries", entries, ValueError, r"2.bias: expected state entries \['exp_avg', 'exp_avg_sq', 'max_exp"
    values = changed_group(copy.deepcopy(good), lr=-1.0)
    values["state"]["2.bias"]["step"] = -3
    yield ("values", values, ValueError,
           r"lr: expected a finite number >= 0.0, got -1.0; 2.bias.step: expected an int >= 0, got -3")


@pytest.mark.parametrize("case", ["no-state-entry", "other-optimizer", "names", "hyper-names", "unknown-state",
                                  "shapes", "entries", "values"])
def test_refused_states_leave_the_optimizer_unchanged(case):
    optimizer = trained_adam()
    good = optimizer.state_dict()
    bad, error, message = {name: rest for name, *rest in broken_states(good)}[case]
    with pytest.raises(error, match=message):
        optimizer.load_state_dict(bad)
    assert_same_tree(optimizer.state_dict(), good)
    # and the good state itself still loads
    optimizer.load_state_dict(good)
    assert_same_tree(optimizer.state_dict(), good)


def test_sequential_config_rebuilds_the_chain_and_refuses_unknown_modules(tmp_path):
    model = rc.Sequential(rc.Embedding(7, 4, seed=1), rc.LSTM(4, 3, num_layers=2, batch_first=True, seed=0),
                          rc.LastStep(batch_first=True), rc.Linear(3, 7, bias=False, seed=2))
    config = model.get_config()
    assert [entry["class"] for entry in config["modules"]] == ["Embedding", "LSTM", "LastStep", "Linear"]
    assert config["modules"][2] == {"class": "LastStep", "config": {"batch_first": True}}
    assert config["modules"][1]["config"] == model[1].get_config()
    assert rc.Sequential.from_config(config).get_config() == config
    rc.save(tmp_path / "m.ckpt", model.eval())
    loaded = rc.load(tmp_path / "m.ckpt")
    assert loaded.training is False and loaded[1].training is False
    assert_same_state(loaded, model)
    tokens = np.random.default_rng(0).integers(0, 7, size=(2, 5))
    np.testing.assert_array_equal(loaded(tokens)[0], model(tokens)[0])

    with pytest.raises(ValueError, match=r"modules\[1\]: expected \{'class': a registered name"):
        rc.Sequential.from_config({"modules": [config["modules"][0], {"class": "Nope", "config": {}}]})

    class Doubler(rc.Tanh):
        def _function(self, x):
            return 2 * x

    with pytest.raises(TypeError, match=r"modules\[1\] \(Doubler\) not registered"):
        rc.save(tmp_path / "n.ckpt", rc.Sequential(rc.Linear(2, 2), Doubler()))
    assert not (tmp_path / "n.ckpt").exists()


def replace_in_header(path, old, new):
    with np.load(path, allow_pickle=False) as archive:
        members = {key: archive[key] for key in archive.files}
    header = members["header"].tobytes()
    assert old in header
    members["header"] = np.frombuffer(header.replace(old, new), dtype=np.uint8)
    with open(path, "wb") as file:
        np.savez(file, **members)


def test_a_checkpoint_of_a_sequential_with_an_unknown_module_class_is_refused(tmp_path):
    path = tmp_path / "m.ckpt"
    rc.save(path, rc.Sequential(rc.Linear(2, 2, seed=0), rc.Tanh()))
    replace_in_header(path, b'"Tanh"', b'"Tanhh"')
    with pytest.raises(CheckpointError, match="configuration does not build a Sequential"):
        rc.load(path)


def test_a_layer_inside_a_sequential_falls_back_from_an_unavailable_backend(tmp_path):
    path = tmp_path / "m.ckpt"
    model = make_model()
    rc.save(path, model)
    replace_in_header(path, b'"backend": null', b'"backend": "elsewhere"')
    with pytest.warns(RuntimeWarning, match=r"modules\[0\] was configured with backend='elsewhere'"):
        loaded = rc.load(path)
    assert loaded[0].get_config()["backend"] is None
    assert_same_state(loaded, model)
