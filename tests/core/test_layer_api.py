"""The layer objects' contract (API.md): parameter names, shapes and gate orders,
live parameters, in-place loading, initialisation, train/eval, dropout, gradient
bookkeeping, backend and thread selection (also from the environment), and the Jordan
RNN's shapes and output feedback.

Tolerances: comparisons between two computations of the same float64 arithmetic in a
different arrangement (a stack against its layers run one by one, a layer against a
plain loop) use conftest's RTOL, 1e-10 relative. Statistical checks of dropout use
fixed seeds and bounds of 5 binomial standard deviations, so they are deterministic and
would still pass for any seed with probability 1 - 6e-7.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import rnncore as rc
from conftest import assert_close

SRC = os.path.dirname(os.path.dirname(rc.__file__))  # where the rnncore under test is installed

# every configuration torch has: (class name in both libraries, kwargs)
TORCH_CONFIGS = [
    ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu", num_layers=2, bidirectional=True)),
    ("RNN", dict(bias=False, num_layers=3)),
    ("LSTM", dict()),
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=2, num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=3, bias=False)),
    ("GRU", dict(num_layers=2)),
    ("GRU", dict(bidirectional=True, bias=False, num_layers=2)),
]


@pytest.mark.parametrize("name, kwargs", TORCH_CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(TORCH_CONFIGS)])
def test_state_dict_names_and_shapes_equal_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    module = getattr(torch.nn, name)(3, 5, **kwargs)
    layer = getattr(rc, name)(3, 5, **kwargs)
    expected = [(key, tuple(value.shape)) for key, value in module.state_dict().items()]
    assert [(key, value.shape) for key, value in layer.state_dict().items()] == expected
    assert list(layer.grads) == [key for key, _ in expected]
    assert [(key, g.shape) for key, g in layer.grads.items()] == expected


def test_cell_state_dict_names_equal_torch():
    torch = pytest.importorskip("torch")
    for name in ("RNNCell", "LSTMCell", "GRUCell"):
        module = getattr(torch.nn, name)(3, 5)
        expected = [(key, tuple(value.shape)) for key, value in module.state_dict().items()]
        assert [(key, value.shape) for key, value in getattr(rc, name)(3, 5).state_dict().items()] == expected


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_lstm_gate_order_is_i_f_g_o():
    # zero weights, distinct gate biases: one step from zero state in closed form
    H = 2
    layer = rc.LSTM(1, H, dtype=np.float64)
    bias = np.repeat([0.3, -0.7, 0.9, 1.4], H)  # i, f, g, o
    layer.load_state_dict({"weight_ih_l0": np.zeros((4 * H, 1)), "weight_hh_l0": np.zeros((4 * H, H)),
                           "bias_ih_l0": bias, "bias_hh_l0": np.zeros(4 * H)})
    c0 = np.full((1, 1, H), 0.5)
    _, (h1, c1) = layer(np.zeros((1, 1, 1)), (np.zeros((1, 1, H)), c0))
    i, f, g, o = sigmoid(0.3), sigmoid(-0.7), math.tanh(0.9), sigmoid(1.4)
    assert_close(c1, f * c0 + i * g, what="c1")
    assert_close(h1, o * np.tanh(f * c0 + i * g), what="h1")


def test_gru_gate_order_is_r_z_n():
    H = 2
    layer = rc.GRU(1, H, dtype=np.float64)
    bias_ih = np.repeat([0.3, -0.7, 0.9], H)  # r, z, n
    bias_hh = np.repeat([0.1, 0.2, -0.4], H)
    layer.load_state_dict({"weight_ih_l0": np.zeros((3 * H, 1)), "weight_hh_l0": np.zeros((3 * H, H)),
                           "bias_ih_l0": bias_ih, "bias_hh_l0": bias_hh})
    h0 = np.full((1, 1, H), 0.5)
    _, h1 = layer(np.zeros((1, 1, 1)), h0)
    r, z = sigmoid(0.3 + 0.1), sigmoid(-0.7 + 0.2)
    n = math.tanh(0.9 + r * -0.4)  # reset after the recurrent product, as torch
    assert_close(h1, (1 - z) * n + z * h0, what="h1")


@pytest.mark.parametrize("coupled", [False, True])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_peephole_and_cifg_names_and_shapes(coupled, proj_size):
    I, H = 3, 4
    layer = rc.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=proj_size, peephole=True,
                    coupled_input_forget=coupled)
    gates = 3 if coupled else 4
    out = proj_size or H
    # f has no peephole when it is tied to i
    peepholes = ("ci", "co") if coupled else ("ci", "cf", "co")
    expected = {}
    for k in range(2):
        for suffix in ("", "_reverse"):
            expected[f"weight_ih_l{k}{suffix}"] = (gates * H, I if k == 0 else 2 * out)
            expected[f"weight_hh_l{k}{suffix}"] = (gates * H, out)
            expected[f"bias_ih_l{k}{suffix}"] = (gates * H,)
            expected[f"bias_hh_l{k}{suffix}"] = (gates * H,)
            if proj_size:
                expected[f"weight_hr_l{k}{suffix}"] = (proj_size, H)
            for p in peepholes:
                expected[f"weight_{p}_l{k}{suffix}"] = (H,)
    assert {key: value.shape for key, value in layer.state_dict().items()} == expected
    assert {key: value.shape for key, value in layer.grads.items()} == expected


def test_cifg_without_peepholes_has_three_gate_rows():
    layer = rc.LSTM(3, 4, coupled_input_forget=True)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {
        "weight_ih_l0": (12, 3), "weight_hh_l0": (12, 4), "bias_ih_l0": (12,), "bias_hh_l0": (12,)}


def test_parameters_are_live(backend):
    layer = rc.GRU(3, 4, num_layers=2, dtype=np.float64, seed=0, backend=backend)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y0, _ = layer(x)
    params = layer.parameters()
    assert all(params[k] is v for k, v in layer.parameters().items())  # the same arrays every time
    params["weight_hh_l1"] *= 0.5
    y1, _ = layer(x)
    assert np.max(np.abs(y1 - y0)) > 1e-3
    params["weight_hh_l1"] *= 2.0
    np.testing.assert_array_equal(layer(x)[0], y0)  # halving then doubling is exact


def test_state_dict_is_a_copy_and_load_is_in_place():
    layer = rc.LSTM(3, 4, proj_size=2, dtype=np.float64, seed=0)
    params = layer.parameters()
    snapshot = layer.state_dict()
    for value in snapshot.values():
        value += 1.0  # editing the copies leaves the layer alone
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value + 1.0, snapshot[key])

    layer.load_state_dict(snapshot)
    for key, value in layer.parameters().items():
        assert value is params[key]  # the same arrays, new values
        np.testing.assert_array_equal(value, snapshot[key])
        assert value.dtype == np.float64
    # float32 values and plain lists are converted into the layer's dtype
    layer.load_state_dict({k: v.astype(np.float32).tolist() for k, v in snapshot.items()})
    assert all(v.dtype == np.float64 and v is params[k] for k, v in layer.parameters().items())


def test_load_state_dict_not_strict():
    layer = rc.RNN(3, 4, num_layers=2, dtype=np.float64, seed=0)
    before = layer.state_dict()
    new = np.full((4, 4), 0.25)
    layer.load_state_dict({"weight_hh_l1": new, "not_a_parameter": np.zeros(3)}, strict=False)
    after = layer.state_dict()
    np.testing.assert_array_equal(after["weight_hh_l1"], new)
    for key in before:
        if key != "weight_hh_l1":
            np.testing.assert_array_equal(after[key], before[key])


@pytest.mark.parametrize("cls, kwargs", [(rc.LSTM, dict(proj_size=16, num_layers=2)), (rc.GRU, dict()),
                                         (rc.RNN, dict(bidirectional=True)), (rc.LSTMCell, dict())],
                         ids=["lstm_proj", "gru", "rnn", "lstm_cell"])
def test_default_init_is_uniform(cls, kwargs):
    H = 64
    layer = cls(8, H, seed=3, dtype=np.float64, **kwargs)
    bound = 1 / math.sqrt(H)
    for name, value in layer.state_dict().items():
        assert np.all(np.abs(value) <= bound), name
    values = np.concatenate([v.ravel() for v in layer.state_dict().values()]) / bound
    assert values.size > 5_000
    # Kolmogorov-Smirnov against U(-1, 1): a wrong bound or a normal draw fails by far
    assert stats.kstest(values, "uniform", args=(-1, 2)).pvalue > 1e-4


def test_init_is_reproducible_from_seed():
    def weights(seed):
        return rc.LSTM(3, 5, num_layers=2, bidirectional=True, seed=seed).state_dict()

    same, again, other = weights(7), weights(7), weights(8)
    for key in same:
        np.testing.assert_array_equal(same[key], again[key])
    assert all(not np.array_equal(same[key], other[key]) for key in same)


def test_train_and_eval(backend):
    layer = rc.LSTM(3, 4, num_layers=2, dtype=np.float64, seed=0, backend=backend)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    assert layer.training
    y_train, states_train = layer(x)
    assert layer.eval() is layer and not layer.training
    y_eval, states_eval = layer(x)
    np.testing.assert_array_equal(y_eval, y_train)  # no dropout: the two paths agree exactly
    for got, want in zip(states_eval, states_train):
        np.testing.assert_array_equal(got, want)
    assert layer._saved is None  # eval keeps nothing
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.ones_like(y_eval))
    assert layer.train() is layer and layer.training
    layer(x)
    layer.backward(np.ones_like(y_eval))
    assert layer.train(False) is layer and not layer.training


T, B, H = 40, 25, 16


def mask_revealing_rnn(dropout, seed, backend):
    """A 2-layer relu RNN whose first layer outputs exactly 1 everywhere and whose second
    layer passes its input through: its training output *is* the dropout mask."""
    layer = rc.RNN(H, H, num_layers=2, nonlinearity="relu", dropout=dropout, dtype=np.float64, seed=seed,
                   backend=backend)
    state = {k: np.zeros_like(v) for k, v in layer.state_dict().items()}
    state["bias_ih_l0"][:] = 1.0
    state["weight_ih_l1"][...] = np.eye(H)
    layer.load_state_dict(state)
    return layer


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_zeroes_a_fraction_p_and_rescales(backend, p):
    layer = mask_revealing_rnn(p, seed=0, backend=backend)
    x = np.zeros((T, B, H))
    mask, _ = layer(x)
    keep = 1 / (1 - p)
    # every value is dropped (0) or kept and scaled by 1/(1-p), once: the last layer has no dropout
    assert np.all((mask == 0) | np.isclose(mask, keep, rtol=1e-14, atol=0))
    dropped = np.mean(mask == 0)
    sd = math.sqrt(p * (1 - p) / mask.size)
    assert abs(dropped - p) < 5 * sd
    assert abs(np.mean(mask) - 1.0) < 5 * sd * keep  # unbiased in expectation
    # elementwise masks, fresh at every step and for every sequence (not time-locked)
    assert not np.array_equal(mask[0], mask[1]) and not np.array_equal(mask[:, 0], mask[:, 1])
    second, _ = layer(x)
    assert not np.array_equal(mask, second)  # a new mask at every call
    # eval mode: no dropout, deterministic
    layer.eval()
    np.testing.assert_array_equal(layer(x)[0], np.ones_like(mask))
    np.testing.assert_array_equal(layer(x)[0], np.ones_like(mask))


def test_dropout_zero_is_deterministic_in_training(backend):
    layer = rc.LSTM(3, 4, num_layers=3, dropout=0.0, dtype=np.float64, seed=0, backend=backend)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    first = layer(x)[0]
    np.testing.assert_array_equal(layer(x)[0], first)
    np.testing.assert_array_equal(layer.eval()(x)[0], first)


def test_same_seed_same_dropout(backend):
    x = np.zeros((T, B, H))
    first = mask_revealing_rnn(0.3, seed=5, backend=backend)(x)[0]
    again = mask_revealing_rnn(0.3, seed=5, backend=backend)(x)[0]
    other = mask_revealing_rnn(0.3, seed=6, backend=backend)(x)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_dropout_gradients_follow_the_mask(backend):
    """A 2-layer tanh RNN with dropout against its two layers run one by one with the
    same mask applied by hand. The mask is read from a twin of the same seed and shapes
    (the same random stream) made to output its mask, as above."""
    p, I = 0.4, H
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T // 4, B // 5, I))
    mask = mask_revealing_rnn(p, seed=11, backend=backend)(np.zeros_like(x))[0]
    assert 0 < np.mean(mask == 0) < 1

    stack = rc.RNN(I, H, num_layers=2, dropout=p, dtype=np.float64, seed=11, backend=backend)
    weights = stack.state_dict()
    layers = []
    for k in range(2):
        single = rc.RNN(I if k == 0 else H, H, dtype=np.float64, backend=backend)
        single.load_state_dict({name.replace(f"_l{k}", "_l0"): value for name, value in weights.items()
                                if name.endswith(f"_l{k}")})
        layers.append(single)
    h0 = rng.standard_normal((2, x.shape[1], H))
    y, h_n = stack(x, h0)
    first, h1_n = layers[0](x, h0[:1])
    expected_y, h2_n = layers[1](first * mask, h0[1:])
    assert_close(y, expected_y, what="y")
    assert_close(h_n, np.concatenate([h1_n, h2_n]), what="h_n")

    dy, dh_n = rng.standard_normal(y.shape), rng.standard_normal(h_n.shape)
    dx, dh0 = stack.backward(dy, dh_n)
    dfirst, dh0_2 = layers[1].backward(dy, dh_n[1:])
    expected_dx, dh0_1 = layers[0].backward(dfirst * mask, dh_n[:1])
    assert_close(dx, expected_dx, what="dx")
    assert_close(dh0, np.concatenate([dh0_1, dh0_2]), what="dh0")
    for k, single in enumerate(layers):
        for name, grad in single.grads.items():
            assert_close(stack.grads[name.replace("_l0", f"_l{k}")], grad, what=name)


def test_zero_grad_and_accumulation(backend):
    layer = rc.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=np.float64, seed=0,
                    backend=backend)
    grads = dict(layer.grads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3))
    y, _ = layer(x)
    dy = rng.standard_normal(y.shape)
    layer.backward(dy)
    once = {k: v.copy() for k, v in layer.grads.items()}
    assert all(np.any(v != 0) for v in once.values())
    layer(x)
    layer.backward(dy)
    for key, value in layer.grads.items():
        assert_close(value, 2 * once[key], what=key)  # added, not replaced
    layer.zero_grad()
    for key, value in layer.grads.items():
        assert value is grads[key] and not np.any(value)


def test_backends_and_selection():
    names = rc.backends()
    assert "numpy" in names and names[-1] == "numpy"
    previous = rc.get_backend()
    try:
        for name in names:
            rc.set_backend(name)
            assert rc.get_backend() == name
    finally:
        rc.set_backend(previous)
    assert rc.get_backend() == previous


def run_python(code, **env):
    """Run `code` in a fresh interpreter importing rnncore from this tree, with `env`
    as the only RNNCORE_ variables."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RNNCORE_")}
    environ.update(env, PYTHONPATH=SRC + os.pathsep + environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("name", rc.backends())
def test_backend_environment_variable(name):
    done = run_python("import json, rnncore as rc; print(json.dumps(rc.get_backend()))", RNNCORE_BACKEND=name)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == name
    assert "RuntimeWarning" not in done.stderr  # an explicit choice is not warned about


def test_backend_environment_variable_rejects_unknown():
    done = run_python("import rnncore as rc; rc.get_backend()", RNNCORE_BACKEND="nope")
    assert done.returncode != 0
    assert "ValueError" in done.stderr and "nope" in done.stderr


def test_num_threads():
    previous = rc.get_num_threads()
    try:
        rc.set_num_threads(1)
        assert rc.get_num_threads() == 1
        rc.set_num_threads(3)
        assert rc.get_num_threads() == 3
    finally:
        rc.set_num_threads(previous)
    assert rc.get_num_threads() == previous


def test_num_threads_environment_variable():
    code = ("import json, rnncore as rc\n"
            "from threadpoolctl import threadpool_info\n"
            "print(json.dumps([rc.get_num_threads(),"
            " [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']]))")
    done = run_python(code, RNNCORE_NUM_THREADS="3")
    assert done.returncode == 0, done.stderr
    threads, blas = json.loads(done.stdout)
    assert threads == 3
    # BLAS keeps its own setting: the kernels hold it at one thread only while they run
    unset = run_python(code)
    assert unset.returncode == 0, unset.stderr
    assert blas == json.loads(unset.stdout)[1]


def jordan_loop(layer, x, y0):
    """API.md's Jordan equations written as a plain loop (tanh hidden, identity output)."""
    p = layer.parameters()
    y_prev, ys = y0, []
    for x_t in x:
        h = np.tanh(x_t @ p["weight_ih_l0"].T + p["bias_ih_l0"] + y_prev @ p["weight_hh_l0"].T + p["bias_hh_l0"])
        y_prev = h @ p["weight_ho_l0"].T + p["bias_ho_l0"]
        ys.append(y_prev)
    return np.stack(ys)


def test_jordan_shapes_and_feedback(backend):
    T_, B_, I, H_, O = 6, 3, 4, 5, 2
    layer = rc.JordanRNN(I, H_, output_size=O, dtype=np.float64, seed=0, backend=backend)
    shapes = {k: v.shape for k, v in layer.state_dict().items()}
    assert shapes == {"weight_ih_l0": (H_, I), "weight_hh_l0": (H_, O), "bias_ih_l0": (H_,),
                      "bias_hh_l0": (H_,), "weight_ho_l0": (O, H_), "bias_ho_l0": (O,)}
    rng = np.random.default_rng(0)
    x, y0 = rng.standard_normal((T_, B_, I)), rng.standard_normal((1, B_, O))
    y, y_n = layer(x, y0)
    assert y.shape == (T_, B_, O) and y_n.shape == (1, B_, O)
    np.testing.assert_array_equal(y_n[0], y[-1])
    assert_close(y, jordan_loop(layer, x, y0[0]), what="y")
    dx, dy0 = layer.backward(np.ones_like(y), np.ones_like(y_n))
    assert dx.shape == x.shape and dy0.shape == y0.shape

    # the output at step t depends on y_{t-1}: a change at step 0 reaches later steps
    # through the fed-back output, and only through it
    x_changed = x.copy()
    x_changed[0] += 1.0
    changed, _ = layer(x_changed, y0)
    assert np.all(np.abs(changed - y).max(axis=(1, 2)) > 1e-6)
    layer.parameters()["weight_hh_l0"][...] = 0.0
    y_cut, _ = layer(x, y0)
    changed_cut, _ = layer(x_changed, y0)
    np.testing.assert_array_equal(changed_cut[1:], y_cut[1:])

    # lengths: y_n holds each sequence's output at its own last step; batch_first; unbatched
    lengths = np.array([T_, 2, 4])
    y, y_n = layer(x, y0, lengths=lengths)
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(y_n[0, b], y[n - 1, b])
        assert not np.any(y[n:, b])
    bf = rc.JordanRNN(I, H_, output_size=O, batch_first=True, dtype=np.float64, seed=0, backend=backend)
    bf.load_state_dict(layer.state_dict())
    y_bf, y_n_bf = bf(x.transpose(1, 0, 2), y0)
    assert_close(y_bf.transpose(1, 0, 2), layer(x, y0)[0], what="batch_first")
    y_single, y_n_single = layer(x[:, 1], y0[:, 1])
    assert y_single.shape == (T_, O) and y_n_single.shape == (1, O)
    assert_close(y_single, layer(x, y0)[0][:, 1], what="unbatched")


@pytest.mark.parametrize("cls", [rc.LSTM, rc.GRU])
def test_training_keeps_its_own_copy_of_x_and_the_initial_state(cls, backend):
    # a caller refilling their input or state buffers between forward and backward (a
    # data loader reusing memory, a truncated-BPTT loop reusing h) must not change the
    # gradients; the initial state enters them through step 0's recurrent product
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3))
    states = [rng.standard_normal((1, 2, 4)) for _ in range(2 if cls is rc.LSTM else 1)]
    given = tuple(states) if cls is rc.LSTM else states[0]
    layer = cls(3, 4, dtype=np.float64, seed=0, backend=backend)
    y, _ = layer(x, given)
    expected = layer.state_dict()  # unchanged weights; gradients from an untouched copy below
    twin = cls(3, 4, dtype=np.float64, seed=0, backend=backend)
    twin.load_state_dict(expected)
    twin(x.copy(), tuple(s.copy() for s in states) if cls is rc.LSTM else states[0].copy())
    x[...] = 7.0
    for s in states:
        s[...] = -3.0
    dx, _ = layer.backward(np.ones_like(y))
    dx_twin, _ = twin.backward(np.ones_like(y))
    for name in layer.grads:
        np.testing.assert_array_equal(layer.grads[name], twin.grads[name], err_msg=name)
    np.testing.assert_array_equal(dx, dx_twin)


def test_batch_first_errors_name_the_callers_shape():
    layer = rc.GRU(3, 4, batch_first=True)
    with pytest.raises(ValueError, match=r"got shape \(2, 5, 2\)"):
        layer(np.zeros((2, 5, 2), dtype=np.float32))


def test_flags_must_be_booleans():
    # PyTorch's RNNCell takes bias third; API.md's takes nonlinearity third: a string in
    # a yes/no slot must be an error, not a truthy value that silently builds a tanh cell
    with pytest.raises(TypeError, match="bias"):
        rc.RNNCell(3, 4, bias="relu")
    with pytest.raises(TypeError, match="bidirectional"):
        rc.LSTM(3, 4, bidirectional="yes")
    assert rc.RNNCell(3, 4, "relu").nonlinearity == "relu"
    assert rc.GRU(3, 4, bias=0).bias is False


def test_gru_is_not_an_rnn():
    # as in torch: type dispatch on rc.RNN must not catch GRUs
    assert not isinstance(rc.GRU(2, 3), rc.RNN)
    assert not isinstance(rc.GRUCell(2, 3), rc.RNNCell)
