"""Layer configurations, random data and checking helpers shared by the test files."""
import doctest

import numpy as np

import rnncore as rc

# the thread count a layer call passes its backend, for the tests that call one directly
THREADS = rc.get_num_threads()

# (name, class, constructor kwargs): every cell type and variant of the reference
VARIANTS = [
    ("rnn_tanh", rc.RNN, dict(nonlinearity="tanh")),
    ("rnn_relu", rc.RNN, dict(nonlinearity="relu")),
    ("lstm", rc.LSTM, dict()),
    ("lstm_proj", rc.LSTM, dict(proj_size=2)),
    ("lstm_peephole", rc.LSTM, dict(peephole=True)),
    ("lstm_cifg", rc.LSTM, dict(coupled_input_forget=True)),
    ("lstm_all", rc.LSTM, dict(proj_size=2, peephole=True, coupled_input_forget=True)),
    ("gru", rc.GRU, dict(reset_after=True)),
    ("gru_cho", rc.GRU, dict(reset_after=False)),
    ("jordan_identity", rc.JordanRNN, dict(output_size=2, output_activation="identity")),
    ("jordan_tanh", rc.JordanRNN, dict(output_size=3, output_activation="tanh", nonlinearity="relu")),
    ("jordan_sigmoid", rc.JordanRNN, dict(output_size=2, output_activation="sigmoid")),
]
VARIANT_IDS = [v[0] for v in VARIANTS]


def build(cls, kwargs, input_size, hidden_size, dtype=np.float64, seed=0, backend="numpy", **more):
    kwargs = dict(kwargs, **more)
    if kwargs.get("proj_size", 0) >= hidden_size:
        kwargs["proj_size"] = hidden_size - 1 if hidden_size > 1 else 0
    if cls is rc.JordanRNN:
        for key in ("num_layers", "bidirectional", "dropout"):
            kwargs.pop(key, None)
    return cls(input_size, hidden_size, dtype=dtype, seed=seed, backend=backend, **kwargs)


def random_backend_case(spec, T, B, D, dtype, seed):
    """A backend call's arguments for `spec`: D directions' params (U(-0.5, 0.5)), x
    (T, B, I) and initial states, and the generator for more."""
    rng = np.random.default_rng(seed)
    params = [{name: rng.uniform(-0.5, 0.5, shape).astype(dtype) for name, shape in spec.param_shapes().items()}
              for _ in range(D)]
    x = rng.standard_normal((T, B, spec.input_size)).astype(dtype)
    states = [tuple(rng.standard_normal((B, w)).astype(dtype) for w in spec.state_sizes) for _ in range(D)]
    return params, x, states, rng


def is_lstm(layer):
    return isinstance(layer, rc.LSTM)


def state_shapes(layer, batch):
    """Shapes of the initial states a layer takes, batched."""
    rows = getattr(layer, "num_directions", 1) * getattr(layer, "num_layers", 1)
    spec = layer.specs[0]
    return [(rows, batch, width) for width in spec.state_sizes]


def random_states(layer, batch, rng, dtype=np.float64):
    return [rng.standard_normal(shape).astype(dtype) for shape in state_shapes(layer, batch)]


def call(layer, x, states=None, lengths=None, **kw):
    """Run any layer; returns y and the list of final states."""
    if is_lstm(layer):
        y, (h, c) = layer(x, None if states is None else tuple(states), lengths=lengths, **kw)
        return y, [h, c]
    y, h = layer(x, None if states is None else states[0], lengths=lengths, **kw)
    return y, [h]


def back(layer, dy, dstates=None):
    """Backward for any layer; returns dx and the list of initial-state gradients."""
    if is_lstm(layer):
        dx, (dh, dc) = layer.backward(dy, None if dstates is None else tuple(dstates))
        return dx, [dh, dc]
    dx, dh = layer.backward(dy, None if dstates is None else dstates[0])
    return dx, [dh]


def finite_difference(loss, array, step=1e-6):
    """d loss / d array by central differences, perturbing `array` in place."""
    grad = np.empty_like(array)
    flat, grad_flat = array.reshape(-1), grad.reshape(-1)
    assert np.shares_memory(flat, array), "the array must be perturbed in place"
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + step
        up = loss()
        flat[i] = saved - step
        down = loss()
        flat[i] = saved
        grad_flat[i] = (up - down) / (2 * step)
    return grad


def assert_same_tree(a, b):
    """Nested dicts/lists/tuples of arrays and scalars equal bit for bit, types and dtypes included."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same_tree(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tree(x, y)
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def assert_same_state(a, b):
    """Two modules hold the same parameters, names, order, dtypes and bits."""
    assert_same_tree(a.state_dict(), b.state_dict())


def assert_examples_run(documented, recurse=True):
    """The doctest examples of `documented` (a module, class or function): at least one,
    none failing."""
    tests = doctest.DocTestFinder(recurse=recurse).find(documented)
    results = [doctest.DocTestRunner().run(test) for test in tests]
    assert sum(r.attempted for r in results) > 0, documented
    assert sum(r.failed for r in results) == 0, documented
