"""NaN goes through every backend as it goes through the reference and torch (ReLU
included, forward and backward; NaN weights too), and size 0 is refused at the edge of
rc.functional while the compiled BLAS door still handles an empty product correctly."""
import numpy as np
import pytest

import rnncore as rc
from rnncore.backends.reference import backend as _reference
from rnncore import functional as F
from rnncore.core.spec import CellSpec

from cases import THREADS, VARIANT_IDS, VARIANTS, back, build, call
from conftest import RTOL

DTYPES = [np.float32, np.float64]


def assert_same_with_nan(actual, expected, dtype, what):
    """NaN exactly where the reference has NaN; the rest within the project's tolerance."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=f"{what}: NaN positions")
    finite = ~np.isnan(expected)
    if finite.any():
        scale = max(float(np.max(np.abs(expected[finite]))), 1e-12)
        np.testing.assert_allclose(actual[finite], expected[finite], rtol=0, atol=RTOL[np.dtype(dtype)] * scale,
                                   err_msg=what)


def _run(layer, x, dy):
    y, states = call(layer, x, check_finite=False)
    dx, dstates = back(layer, dy)
    return [("y", y), ("dx", dx)] + [(f"state{i}", s) for i, s in enumerate(states + dstates)] + \
        sorted(layer.grads.items())


# -- item 11: NaN through ReLU ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", [dict(nonlinearity="relu"), dict(nonlinearity="relu", bidirectional=True)],
                         ids=["relu", "relu_bidirectional"])
def test_relu_layer_keeps_nan_of_the_input(backend, dtype, kwargs):
    """A NaN in x reaches y through ReLU (the compiled kernels used to turn it into 0)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 4)).astype(dtype)
    x[2, 1, 0] = np.nan
    dy = rng.standard_normal((6, 3, 10 if kwargs.get("bidirectional") else 5)).astype(dtype)
    got = _run(rc.RNN(4, 5, dtype=dtype, seed=0, backend=backend, **kwargs), x, dy)
    want = _run(rc.RNN(4, 5, dtype=dtype, seed=0, backend="numpy", **kwargs), x, dy)
    assert np.isnan(want[0][1]).any()
    for (name, a), (_, b) in zip(got, want):
        assert_same_with_nan(a, b, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jordan_relu_keeps_nan_of_the_input(backend, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 2, 3)).astype(dtype)
    x[1, 0, 2] = np.nan
    dy = rng.standard_normal((5, 2, 2)).astype(dtype)
    make = dict(nonlinearity="relu", output_activation="tanh", dtype=dtype, seed=0)
    got = _run(rc.JordanRNN(3, 4, 2, backend=backend, **make), x, dy)
    want = _run(rc.JordanRNN(3, 4, 2, backend="numpy", **make), x, dy)
    assert np.isnan(want[0][1]).any()
    for (name, a), (_, b) in zip(got, want):
        assert_same_with_nan(a, b, dtype, name)


def test_relu_nan_matches_torch(backend):
    """Forward and backward with a NaN input, against torch: relu keeps NaN, and its
    gradient is zero only where the output is <= 0 (torch's threshold_backward), so a
    NaN output passes its gradient on."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.RNN(3, 4, nonlinearity="relu", dtype=torch.float64)
    x = np.random.default_rng(2).standard_normal((5, 2, 3))
    x[2, 0, 1] = np.nan
    x_t = torch.tensor(x, requires_grad=True)
    y_t, _ = module(x_t)
    y_t.backward(torch.ones_like(y_t))
    layer = rc.RNN(3, 4, nonlinearity="relu", dtype=np.float64, backend=backend)
    layer.load_state_dict(module.state_dict())
    y, _ = layer(x, check_finite=False)
    dx, _ = layer.backward(np.ones_like(y))
    assert_same_with_nan(y, y_t.detach().numpy(), np.float64, "y")
    assert_same_with_nan(dx, x_t.grad.numpy(), np.float64, "dx")
    for name, param in module.named_parameters():
        assert_same_with_nan(layer.grads[name], param.grad.numpy(), np.float64, name)


def test_relu_module_keeps_nan_and_passes_its_gradient_as_torch():
    torch = pytest.importorskip("torch")
    x = np.array([np.nan, -1.0, 0.0, 2.0])
    relu = rc.ReLU()
    y = relu(x)
    dx = relu.backward(np.full(4, 3.0))
    x_t = torch.tensor(x, requires_grad=True)
    y_t = torch.relu(x_t)
    y_t.backward(torch.full((4,), 3.0, dtype=torch.float64))
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    np.testing.assert_array_equal(dx, x_t.grad.numpy())


@pytest.mark.parametrize("name, cls, kwargs", VARIANTS, ids=VARIANT_IDS)
def test_nan_weight_gives_nan_outputs_on_every_backend(backend, name, cls, kwargs):
    """A NaN loaded into a weight is accepted and propagates honestly, as in the reference."""
    x = np.random.default_rng(3).standard_normal((4, 2, 3))
    outputs = {}
    for which in (backend, "numpy"):
        layer = build(cls, kwargs, 3, 4, backend=which)
        state = layer.state_dict()
        state["weight_hh_l0"][0, 0] = np.nan
        layer.load_state_dict(state)
        outputs[which] = call(layer.eval(), x)
    (y, states), (y_ref, states_ref) = outputs[backend], outputs["numpy"]
    assert np.isnan(y_ref).any()
    assert_same_with_nan(y, y_ref, np.float64, "y")
    for i, (s, s_ref) in enumerate(zip(states, states_ref)):
        assert_same_with_nan(s, s_ref, np.float64, f"state {i}")


# -- item 12: size 0 -------------------------------------------------------------------------

X = np.ones((3, 2, 4))


@pytest.mark.parametrize("run, name", [
    (lambda: F.rnn_forward(X, None, np.zeros((0, 4)), np.zeros((0, 0))), "weight_ih"),
    (lambda: F.gru_forward(X, None, np.zeros((0, 4)), np.zeros((0, 0)), np.zeros(0), np.zeros(0)), "weight_ih"),
    (lambda: F.gru_forward(X, None, np.zeros((2, 4)), np.zeros((2, 2))), "weight_ih"),
    (lambda: F.lstm_forward(X, None, None, np.zeros((8, 4)), np.zeros((8, 0)), weight_hr=np.zeros((0, 2))),
     "weight_hh"),
    (lambda: F.lstm_forward(X, None, None, np.zeros((0, 4)), np.zeros((0, 0))), "weight_ih"),
    (lambda: F.jordan_forward(X, None, np.zeros((3, 4)), np.zeros((3, 0)), np.zeros((0, 3))), "weight_hh"),
], ids=["rnn", "gru", "gru_too_few_rows", "lstm_proj", "lstm", "jordan"])
def test_functional_refuses_size_zero(backend, run, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected .*>= 1, got shape"):
        run()


def test_functional_still_takes_size_one(backend):
    rng = np.random.default_rng(4)
    y, h_n, ctx = F.rnn_forward(rng.standard_normal((2, 1, 1)), None, rng.standard_normal((1, 1)),
                                rng.standard_normal((1, 1)), training=True, backend=backend)
    dx, dh0, grads = F.rnn_backward(ctx, np.ones_like(y))
    assert dx.shape == (2, 1, 1) and dh0.shape == (1, 1)


@pytest.mark.parametrize("lengths", [None, np.array([3, 1])])
@pytest.mark.parametrize("directions", [1, 2])
def test_compiled_empty_product_writes_zeros(lengths, directions):
    """Below the functional's check, the compiled backend with hidden_size 0: dx is the
    product (T*B, 0) x (0, I), which must be zeros (beta 0), not the buffer's old
    contents. The allocator is primed with NaN so that a skipped write shows."""
    cython_backend = pytest.importorskip("rnncore.backends.cython.backend")
    spec = CellSpec("rnn", 4, 0, bias=False)
    T, B, I = 3, 2, 4
    params = [{name: np.zeros(shape) for name, shape in spec.param_shapes().items()} for _ in range(directions)]
    states = [(np.zeros((B, 0)),) for _ in range(directions)]
    x = np.ones((T, B, I))
    y, _, ctx = cython_backend.layer_forward(spec, params, x, states, lengths, True, (False, True)[:directions], THREADS)
    for _ in range(3):
        primed = np.full((T, B, I), np.nan)
        packed = np.full((T * B if lengths is None else int(lengths.sum()), I), np.nan)
        del primed, packed
        dx, dstates0, grads = cython_backend.layer_backward(ctx, np.zeros(y.shape), states, THREADS)
        np.testing.assert_array_equal(dx, np.zeros((T, B, I)))
        for g in grads:
            assert g["weight_ih"].shape == (0, I)
    y_ref, _, ctx_ref = _reference.layer_forward(spec, params, x, states, lengths, True,
                                                 (False, True)[:directions], THREADS)
    np.testing.assert_array_equal(_reference.layer_backward(ctx_ref, np.zeros(y.shape), states, THREADS)[0], dx)
