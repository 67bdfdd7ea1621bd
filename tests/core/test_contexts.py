"""Saved contexts: one backward per training-mode forward, safe under threads, all or
nothing (layers, cells, the nn modules, Sequential), a context per call in rc.functional;
and every object pickling and deep-copying in every state, copies independent."""
import copy
import pickle
import threading

import numpy as np
import pytest

import rnncore as rc
from rnncore import functional as F

from cases import back, call

F64 = np.float64


def _run_in_threads(count, work):
    """`work()` in `count` threads released together; each thread's result or exception."""
    barrier = threading.Barrier(count)
    outcomes = [None] * count

    def run(i):
        barrier.wait()
        try:
            outcomes[i] = ("ok", work())
        except Exception as exc:  # collected for the assertions of the test
            outcomes[i] = ("error", exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def _assert_same_results(a, b):
    dx_a, ds_a, g_a = a
    dx_b, ds_b, g_b = b
    np.testing.assert_array_equal(dx_a, dx_b)
    np.testing.assert_array_equal(ds_a, ds_b)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        np.testing.assert_array_equal(g_a[name], g_b[name], err_msg=name)


# -- item 1: concurrent backward ------------------------------------------------------------

@pytest.mark.parametrize("lengths", [None, "ragged"])
def test_functional_context_back_propagated_from_threads_gives_identical_results(backend, lengths):
    """Eight backward calls on one functional context, four threads at a time: each gives
    exactly the result of a single call (the compiled backend used to keep each call's
    buffers in the shared context, so concurrent calls overwrote and freed each other's)."""
    rng = np.random.default_rng(0)
    T, B, I, H = 60, 16, 8, 48
    x = rng.standard_normal((T, B, I))
    w_ih, w_hh = 0.3 * rng.standard_normal((3 * H, I)), 0.3 * rng.standard_normal((3 * H, H))
    b_ih, b_hh = rng.standard_normal(3 * H), rng.standard_normal(3 * H)
    lens = None if lengths is None else rng.integers(1, T + 1, B)
    y, _, ctx = F.gru_forward(x, None, w_ih, w_hh, b_ih, b_hh, lengths=lens, training=True, backend=backend)
    dy = rng.standard_normal(y.shape)
    dh_n = rng.standard_normal((B, H))
    expected = F.gru_backward(ctx, dy, dh_n)
    for _ in range(2):
        outcomes = _run_in_threads(4, lambda: F.gru_backward(ctx, dy, dh_n))
        for status, result in outcomes:
            assert status == "ok", result
            _assert_same_results(result, expected)
    # and once more after the threads: the context is still whole
    _assert_same_results(F.gru_backward(ctx, dy, dh_n), expected)


@pytest.mark.parametrize("make", [
    lambda backend: rc.GRU(16, 64, dtype=F64, seed=0, backend=backend),
    lambda backend: rc.LSTM(16, 32, num_layers=2, bidirectional=True, proj_size=8, dtype=F64, seed=0,
                            backend=backend),
], ids=["gru", "lstm_stack"])
def test_two_threads_backward_on_one_forward_one_succeeds_one_refused(backend, make):
    """Two threads back-propagating through one layer forward: exactly one adds its
    gradients, the other gets the one-context RuntimeError; never a crash."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, 16, 16))
    reference = make(backend)
    y, _ = call(reference, x)
    dy = rng.standard_normal(y.shape)
    dx_reference, _ = back(reference, dy)
    for _ in range(3):
        layer = make(backend)
        call(layer, x)
        outcomes = _run_in_threads(2, lambda: back(layer, dy))
        statuses = sorted(status for status, _ in outcomes)
        assert statuses == ["error", "ok"], outcomes
        error = next(result for status, result in outcomes if status == "error")
        assert isinstance(error, RuntimeError) and "retain_graph" in str(error)
        dx = next(result for status, result in outcomes if status == "ok")[0]
        np.testing.assert_array_equal(dx, dx_reference)
        for name, grad in reference.grads.items():
            np.testing.assert_array_equal(layer.grads[name], grad, err_msg=name)


def test_two_threads_backward_through_a_sequential_one_succeeds():
    model = rc.Sequential(rc.GRU(6, 32, dtype=F64, seed=0), rc.LastStep(), rc.Linear(32, 3, dtype=F64, seed=1))
    x = np.random.default_rng(2).standard_normal((50, 8, 6))
    y, _ = model(x)
    outcomes = _run_in_threads(2, lambda: model.backward(np.ones_like(y)))
    assert sorted(status for status, _ in outcomes) == ["error", "ok"], outcomes
    fresh = rc.Sequential(rc.GRU(6, 32, dtype=F64, seed=0), rc.LastStep(), rc.Linear(32, 3, dtype=F64, seed=1))
    fresh(x)
    fresh.backward(np.ones_like(y))
    for name, grad in fresh.grads.items():
        np.testing.assert_array_equal(model.grads[name], grad, err_msg=name)


# -- item 5: one backward per forward -------------------------------------------------------

def _layers():
    return [rc.RNN(3, 4, dtype=F64, seed=0), rc.LSTM(3, 4, num_layers=2, dtype=F64, seed=0),
            rc.GRU(3, 4, bidirectional=True, dtype=F64, seed=0),
            rc.JordanRNN(3, 4, 2, dtype=F64, seed=0)]


@pytest.mark.parametrize("index", range(4), ids=["rnn", "lstm", "gru", "jordan"])
def test_layer_second_backward_is_refused_and_adds_nothing(index):
    layer = _layers()[index]
    x = np.random.default_rng(3).standard_normal((5, 2, 3))
    y, _ = call(layer, x)
    dy = np.ones_like(y)
    back(layer, dy)
    once = {name: grad.copy() for name, grad in layer.grads.items()}
    with pytest.raises(RuntimeError, match="already back-propagated.*retain_graph"):
        back(layer, dy)
    for name, grad in once.items():
        np.testing.assert_array_equal(layer.grads[name], grad, err_msg=name)
    call(layer, x)  # a new forward allows a new backward, which adds as much again
    back(layer, dy)
    for name, grad in once.items():
        np.testing.assert_array_equal(layer.grads[name], 2 * grad, err_msg=name)


@pytest.mark.parametrize("cell, states", [
    (rc.RNNCell(3, 4, dtype=F64, seed=0), np.ones((2, 4))),
    (rc.GRUCell(3, 4, dtype=F64, seed=0), np.ones((2, 4))),
    (rc.LSTMCell(3, 4, dtype=F64, seed=0), (np.ones((2, 4)), np.ones((2, 4)))),
], ids=["rnn", "gru", "lstm"])
def test_cell_second_backward_is_refused(cell, states):
    cell(np.ones((2, 3)))
    cell.backward(states)
    once = {name: grad.copy() for name, grad in cell.grads.items()}
    with pytest.raises(RuntimeError, match="retain_graph"):
        cell.backward(states)
    for name, grad in once.items():
        np.testing.assert_array_equal(cell.grads[name], grad, err_msg=name)


@pytest.mark.parametrize("module, x", [
    (rc.Linear(3, 2, dtype=F64, seed=0), np.ones((4, 3))),
    (rc.Embedding(5, 2, dtype=F64, seed=0), np.array([[0, 4], [4, 1]])),
    (rc.Tanh(), np.ones((4, 3))),
    (rc.ReLU(), np.ones((4, 3))),
    (rc.Sigmoid(), np.ones((4, 3))),
    (rc.LastStep(), np.ones((4, 2, 3))),
], ids=["linear", "embedding", "tanh", "relu", "sigmoid", "last_step"])
def test_toolkit_module_second_backward_is_refused(module, x):
    y = module(x)
    module.backward(np.ones_like(y))
    once = {name: grad.copy() for name, grad in module.grads.items()}
    with pytest.raises(RuntimeError, match=f"{type(module).__name__}.backward: .*retain_graph"):
        module.backward(np.ones_like(y))
    for name, grad in once.items():
        np.testing.assert_array_equal(module.grads[name], grad, err_msg=name)


def test_sequential_second_backward_is_refused():
    model = rc.Sequential(rc.Embedding(7, 3, dtype=F64, seed=0), rc.LSTM(3, 4, dtype=F64, seed=1),
                          rc.Linear(4, 2, dtype=F64, seed=2))
    y, _ = model(np.array([[1, 2], [3, 6], [0, 0]]))
    model.backward(np.ones_like(y))
    once = {name: grad.copy() for name, grad in model.grads.items()}
    with pytest.raises(RuntimeError, match="retain_graph"):
        model.backward(np.ones_like(y))
    for name, grad in once.items():
        np.testing.assert_array_equal(model.grads[name], grad, err_msg=name)


def test_backward_goes_through_the_last_training_forward_only():
    rng = np.random.default_rng(4)
    x1, x2 = rng.standard_normal((2, 6, 2, 3))
    twice, once = rc.GRU(3, 4, dtype=F64, seed=0), rc.GRU(3, 4, dtype=F64, seed=0)
    twice(x1)
    y, _ = twice(x2)
    once(x2)
    dx_twice, _ = twice.backward(np.ones_like(y))
    dx_once, _ = once.backward(np.ones_like(y))
    np.testing.assert_array_equal(dx_twice, dx_once)
    for name, grad in once.grads.items():
        np.testing.assert_array_equal(twice.grads[name], grad, err_msg=name)


def test_refused_gradient_keeps_the_context_for_a_good_backward():
    layer = rc.LSTM(3, 4, dtype=F64, seed=0)
    y, _ = layer(np.ones((5, 2, 3)))
    with pytest.raises(ValueError, match="dy"):
        layer.backward(np.ones((5, 2, 5)))
    layer.backward(np.ones_like(y))  # the context was not consumed by the refused call


def test_functional_context_back_propagates_more_than_once(backend):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 2))
    weights = [rng.standard_normal(s) for s in [(16, 2), (16, 4), (16,), (16,)]]
    y, _, _, ctx = F.lstm_forward(x, None, None, *weights, training=True, backend=backend)
    dy = rng.standard_normal(y.shape)
    first = F.lstm_backward(ctx, dy)
    second = F.lstm_backward(ctx, dy)
    for a, b in zip(first[:3], second[:3]):
        np.testing.assert_array_equal(a, b)
    for name in first[3]:
        np.testing.assert_array_equal(first[3][name], second[3][name], err_msg=name)


def test_training_loop_still_steps():
    model = rc.Sequential(rc.LSTM(2, 8, dtype=F64, seed=0), rc.Linear(8, 1, dtype=F64, seed=1))
    opt = rc.optim.Adam(model, lr=1e-2)
    rng = np.random.default_rng(6)
    x, target = rng.standard_normal((30, 4, 2)), rng.standard_normal((30, 4, 1))
    first, _ = rc.train.train_step(model, rc.MSELoss(), opt, x, target)
    loss, _ = rc.train.truncated_bptt(model, rc.MSELoss(), opt, x, target, chunk=10)
    for _ in range(20):
        last, _ = rc.train.train_step(model, rc.MSELoss(), opt, x, target)
    assert last < first


# -- item 14: all or nothing ------------------------------------------------------------------

def _chain():
    return rc.Sequential(rc.LSTM(3, 4, dtype=F64, seed=0), rc.LastStep(), rc.Linear(4, 2, dtype=F64, seed=1))


def test_sequential_backward_error_in_an_early_module_changes_nothing():
    """The LSTM (first module, back-propagated last) refuses its state gradient: the
    Linear's gradients, back-propagated first, must not have been added, and every
    context stays for a good backward."""
    x = np.random.default_rng(7).standard_normal((5, 2, 3))
    model = _chain()
    y, _ = model(x)
    with pytest.raises(ValueError, match="dc_n"):
        model.backward(np.ones_like(y), [(np.ones((1, 2, 4)), np.ones((1, 3, 4)))])
    for name, grad in model.grads.items():
        assert not grad.any(), name
    model.backward(np.ones_like(y))
    fresh = _chain()
    fresh(x)
    fresh.backward(np.ones_like(y))
    for name, grad in fresh.grads.items():
        np.testing.assert_array_equal(model.grads[name], grad, err_msg=name)


class _Scale:
    """A module of the user's own: y = w * x, adding its gradient at once."""

    def __init__(self):
        self.w = np.array([2.0])
        self.grads = {"w": np.zeros(1)}
        self.training = True

    def parameters(self):
        return {"w": self.w}

    def train(self, mode=True):
        self.training = mode
        return self

    def zero_grad(self):
        self.grads["w"][:] = 0

    def __call__(self, x):
        self.x = x
        return self.w * x

    def backward(self, dy):
        self.grads["w"] += (dy * self.x).sum()
        return dy * self.w


def test_sequential_restores_a_user_module_when_a_later_module_fails():
    model = rc.Sequential(rc.LSTM(3, 4, dtype=F64, seed=0), _Scale())
    y, _ = model(np.ones((5, 2, 3)))
    with pytest.raises(ValueError, match="dh_n"):
        model.backward(np.ones_like(y), [(np.full((1, 2, 4), np.nan), None)])
    assert model.grads["1.w"][0] == 0
    model.backward(np.ones_like(y))
    assert model.grads["1.w"][0] != 0


def test_layer_backward_with_a_bad_state_gradient_changes_nothing():
    layer = rc.GRU(3, 4, num_layers=2, dtype=F64, seed=0)
    y, _ = layer(np.ones((5, 2, 3)))
    bad = np.ones((2, 2, 4))
    bad[1, 1, 3] = np.inf
    with pytest.raises(ValueError, match="dh_n"):
        layer.backward(np.ones_like(y), bad)
    for name, grad in layer.grads.items():
        assert not grad.any(), name
    layer.backward(np.ones_like(y), np.ones((2, 2, 4)))


# -- item 3: pickling and deep copies -----------------------------------------------------------

def _objects():
    """(name, object, forward(obj) -> output, backward(obj, output)) for every kind."""
    rng = np.random.default_rng(8)
    x3 = rng.standard_normal((5, 2, 3))
    x2 = rng.standard_normal((2, 3))
    tokens = np.array([[1, 2], [3, 0], [4, 4]])

    def layer_forward(layer):
        return call(layer, x3)[0]

    def layer_backward(layer, y):
        back(layer, np.ones_like(y))

    def seq_forward(model):
        return model(tokens)[0]

    def module_backward(module, y):
        module.backward(np.ones_like(y))

    def cell_forward(cell):
        out = cell(x2)
        return out

    def cell_backward(cell, out):
        cell.backward(tuple(np.ones_like(o) for o in out) if isinstance(out, tuple) else np.ones_like(out))

    return [
        ("rnn", rc.RNN(3, 4, nonlinearity="relu", dtype=F64, seed=0), layer_forward, layer_backward),
        ("lstm_dropout", rc.LSTM(3, 4, num_layers=2, dropout=0.5, bidirectional=True, dtype=F64, seed=0),
         layer_forward, layer_backward),
        ("gru", rc.GRU(3, 4, num_layers=2, dropout=0.3, dtype=np.float32, seed=0),
         lambda m: call(m, x3.astype(np.float32))[0], layer_backward),
        ("jordan", rc.JordanRNN(3, 4, 2, dtype=F64, seed=0), layer_forward, layer_backward),
        ("rnn_cell", rc.RNNCell(3, 4, dtype=F64, seed=0), cell_forward, cell_backward),
        ("lstm_cell", rc.LSTMCell(3, 4, dtype=F64, seed=0), cell_forward, cell_backward),
        ("gru_cell", rc.GRUCell(3, 4, dtype=F64, seed=0), cell_forward, cell_backward),
        ("sequential", rc.Sequential(rc.Embedding(5, 3, dtype=F64, seed=0),
                                     rc.LSTM(3, 4, num_layers=2, dropout=0.5, dtype=F64, seed=1),
                                     rc.Tanh(), rc.LastStep(), rc.Linear(4, 3, dtype=F64, seed=2), rc.ReLU(),
                                     rc.Sigmoid()), seq_forward, module_backward),
    ]


OBJECT_IDS = [entry[0] for entry in _objects()]
STATES = ["fresh", "eval_forward", "train_forward", "after_backward"]
COPIERS = {"pickle": lambda obj: pickle.loads(pickle.dumps(obj)), "deepcopy": copy.deepcopy}


def _in_state(index, state):
    name, obj, forward, backward = _objects()[index]
    if state == "eval_forward":
        obj.eval()
        forward(obj)
        obj.train()
    elif state in ("train_forward", "after_backward"):
        out = forward(obj)
        if state == "after_backward":
            backward(obj, out)
    return obj, forward, backward


def _params(obj):
    return obj.parameters()


@pytest.mark.parametrize("copier", COPIERS)
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("index", range(len(OBJECT_IDS)), ids=OBJECT_IDS)
def test_copies_in_every_state_are_whole_and_independent(index, state, copier):
    obj, forward, backward = _in_state(index, state)
    clone = COPIERS[copier](obj)
    assert type(clone) is type(obj)
    for name, value in _params(obj).items():
        np.testing.assert_array_equal(_params(clone)[name], value, err_msg=name)
        assert not np.shares_memory(_params(clone)[name], value), name
    for name, value in obj.grads.items():
        np.testing.assert_array_equal(clone.grads[name], value, err_msg=name)
        assert not np.shares_memory(clone.grads[name], value), name
    # the saved context is dropped: the copy needs a forward of its own before backward
    with pytest.raises(RuntimeError, match="no training-mode"):
        backward(clone, forward(copy.deepcopy(obj).eval()))
    # the same random generator state: the same dropout masks, so the same outputs
    np.testing.assert_array_equal(forward(clone), forward(obj))
    # independent: a change to the copy's parameters and gradients leaves the original
    before = {name: value.copy() for name, value in _params(obj).items()}
    before_grads = {name: value.copy() for name, value in obj.grads.items()}
    out = forward(clone)
    backward(clone, out)
    for value in _params(clone).values():
        value += 1.0
    for name, value in _params(obj).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    for name, value in obj.grads.items():
        np.testing.assert_array_equal(value, before_grads[name], err_msg=name)


@pytest.mark.parametrize("copier", COPIERS)
def test_copied_layer_reads_its_own_parameters(copier):
    """The layer caches views of its parameters per stacked layer: a copy's cache must
    point at the copy's arrays, so that loading into the copy changes what it computes."""
    layer = rc.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=F64, seed=0).eval()
    x = np.random.default_rng(9).standard_normal((5, 2, 3))
    y, _ = layer(x)  # fills the cache
    clone = COPIERS[copier](layer)
    for k in range(2):
        for d, params in enumerate(clone._direction_params(k)):
            for base, value in params.items():
                suffix = "_reverse" if d else ""
                assert value is clone._params[f"{base}_l{k}{suffix}"]
    clone.load_state_dict({name: np.zeros_like(v) for name, v in clone.state_dict().items()})
    y_clone, _ = clone(x)
    assert not y_clone.any()
    np.testing.assert_array_equal(layer(x)[0], y)


@pytest.mark.parametrize("copier", COPIERS)
@pytest.mark.parametrize("make_opt", [
    lambda model: rc.optim.SGD(model, lr=0.1, momentum=0.9),
    lambda model: rc.optim.Adam(model, lr=0.01),
    lambda model: rc.optim.Adam([model[0], model[1]], lr=0.01, amsgrad=True),
], ids=["sgd", "adam", "adam_list"])
def test_model_and_optimizer_copied_together_stay_bound(copier, make_opt):
    """Copying (model, optimizer) together keeps the copied optimizer stepping the copied
    model's arrays; the copy then trains exactly as the original does, independently."""
    rng = np.random.default_rng(10)
    x, target = rng.standard_normal((8, 3, 2)), rng.standard_normal((8, 3, 1))

    def make():
        return rc.Sequential(rc.GRU(2, 5, dtype=F64, seed=0), rc.Linear(5, 1, dtype=F64, seed=1))

    model = make()
    opt = make_opt(model)
    rc.train.train_step(model, rc.MSELoss(), opt, x, target)  # optimizer state and a forward context
    model(x)
    model2, opt2 = COPIERS[copier]((model, opt))
    before = {name: value.copy() for name, value in model.parameters().items()}
    for _ in range(3):
        rc.train.train_step(model2, rc.MSELoss(), opt2, x, target)
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    for _ in range(3):
        rc.train.train_step(model, rc.MSELoss(), opt, x, target)
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(model2.parameters()[name], value, err_msg=name)
        assert not np.array_equal(value, before[name]), name
