"""Gradient clipping: rc.clip_grad_norm_ and rc.clip_grad_value_ against torch.nn.utils
on the same gradients, for dicts, layers and lists of either; and a demonstration that
norm clipping bounds the update of an Elman RNN whose gradient explodes.

Tolerances: in float64 both libraries sum the same squares in a different order, so
norms and clipped gradients agree to a few ulps; 1e-12 relative is far below any real
error (a wrong coefficient or norm type is off by a factor). In float32 torch reduces in
float32 while rnncore accumulates in float64: 1e-6 relative covers float32 rounding of
sums over a few hundred elements. Clipping by value is an exact elementwise clamp.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnncore as rc  # noqa: E402

RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-6}
NORM_TYPES = [2.0, 1.0, 3.0, math.inf]


def filled_layer(dtype, seed):
    """A stacked bidirectional LSTM whose grads hold random values of mixed scales."""
    layer = rc.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    for i, g in enumerate(layer.grads.values()):
        g[...] = rng.standard_normal(g.shape) * 10.0 ** (i % 3 - 1)
    return layer


def random_dict(dtype, seed):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((5, 3)).astype(dtype) * 4, "b": rng.standard_normal(7).astype(dtype)}


def arrays_of(grads):
    """The gradient arrays a dict, a layer or a list of either holds, in order."""
    if isinstance(grads, dict):
        return list(grads.values())
    if isinstance(grads, list):
        return [a for item in grads for a in arrays_of(item)]
    return list(grads.grads.values())


def make_grads(container, dtype):
    """Gradients in the form `container` names, and the flat list of their arrays."""
    grads = {"dict": lambda: random_dict(dtype, 0),
             "layer": lambda: filled_layer(dtype, 1),
             "list": lambda: [filled_layer(dtype, 2), random_dict(dtype, 3)]}[container]()
    return grads, arrays_of(grads)


def torch_params(arrays):
    """Zero tensors whose .grad holds a copy of each array, as torch's clipping expects."""
    params = []
    for array in arrays:
        param = torch.zeros(array.shape, dtype=torch.from_numpy(array).dtype, requires_grad=True)
        param.grad = torch.tensor(array)
        params.append(param)
    return params


def torch_total_norm(arrays, norm_type):
    return float(torch.nn.utils.get_total_norm([torch.tensor(a) for a in arrays], norm_type))


def assert_matches_torch(arrays, params, dtype):
    for array, param in zip(arrays, params):
        np.testing.assert_allclose(array, param.grad.numpy(), rtol=RTOL[np.dtype(dtype)], atol=0)


@pytest.mark.parametrize("container", ["dict", "layer", "list"])
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("ratio", [0.3, 2.0], ids=["clipped", "unclipped"])
def test_clip_grad_norm_matches_torch(container, norm_type, ratio):
    dtype = np.float64
    grads, arrays = make_grads(container, dtype)
    identities = [id(a) for a in arrays]
    params = torch_params(arrays)
    # max_norm below the total clips, above it leaves the gradients as they are
    max_norm = ratio * torch_total_norm(arrays, norm_type)
    before = [a.copy() for a in arrays]

    expected = float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type))
    total = rc.clip_grad_norm_(grads, max_norm, norm_type)

    assert isinstance(total, float)
    assert total == pytest.approx(expected, rel=RTOL[np.dtype(dtype)])  # the norm before clipping
    assert_matches_torch(arrays, params, dtype)
    assert [id(a) for a in arrays_of(grads)] == identities  # in place
    after = torch_total_norm(arrays, norm_type)
    if ratio < 1:
        assert after == pytest.approx(max_norm, rel=1e-5)  # scaled by max_norm / (total + 1e-6)
    else:
        for a, b in zip(arrays, before):
            np.testing.assert_allclose(a, b, rtol=1e-15, atol=0)


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_grad_norm_float32_matches_torch(norm_type):
    grads, arrays = make_grads("layer", np.float32)
    params = torch_params(arrays)
    max_norm = 0.1 * torch_total_norm(arrays, norm_type)
    expected = float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type))
    total = rc.clip_grad_norm_(grads, max_norm, norm_type)
    assert total == pytest.approx(expected, rel=RTOL[np.dtype(np.float32)])
    assert all(a.dtype == np.float32 for a in arrays)
    assert_matches_torch(arrays, params, np.float32)


@pytest.mark.parametrize("container", ["dict", "layer", "list"])
@pytest.mark.parametrize("clip_value", [0.0, 0.05, 1.5, 1e9])
def test_clip_grad_value_matches_torch(container, clip_value):
    grads, arrays = make_grads(container, np.float64)
    identities = [id(a) for a in arrays]
    params = torch_params(arrays)
    torch.nn.utils.clip_grad_value_(params, clip_value)
    assert rc.clip_grad_value_(grads, clip_value) is None
    assert [id(a) for a in arrays_of(grads)] == identities
    for array, param in zip(arrays, params):
        np.testing.assert_array_equal(array, param.grad.numpy())
        assert np.max(np.abs(array)) <= clip_value


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_nonfinite_gradients(bad, norm_type):
    grads = random_dict(np.float64, 4)
    grads["w"][1, 2] = bad
    before = {k: v.copy() for k, v in grads.items()}
    with pytest.raises(RuntimeError, match="norm"):
        rc.clip_grad_norm_(grads, 1.0, norm_type, error_if_nonfinite=True)
    for k in grads:  # raising leaves the gradients alone
        np.testing.assert_array_equal(grads[k], before[k])

    # without the flag: the same (NaN-filled or zeroed) result and total as torch
    params = torch_params(list(grads.values()))
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type, error_if_nonfinite=True)
    expected = float(torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type))
    with np.errstate(invalid="ignore"):  # inf * 0 -> NaN, as in torch
        total = rc.clip_grad_norm_(grads, 1.0, norm_type)
    assert total == expected or (math.isnan(total) and math.isnan(expected))
    for array, param in zip(grads.values(), params):
        np.testing.assert_array_equal(array, param.grad.numpy())


def test_clip_bounds_the_update_of_an_exploding_rnn():
    """Relu Elman RNN, T=200, with a positive recurrent matrix of spectral radius 3 and
    positive inputs: every unit stays active, so the recurrence is linear and the
    gradient grows like 3**T. Clipping to norm 1 keeps the SGD step at most lr."""
    T, B, I, H, radius, lr = 200, 2, 3, 4, 3.0, 0.1
    rng = np.random.default_rng(0)
    layer = rc.RNN(I, H, nonlinearity="relu", bias=False, dtype=np.float64, seed=0)
    params = layer.parameters()
    params["weight_ih_l0"][...] = rng.uniform(0.1, 1.0, (H, I))
    w_hh = rng.uniform(0.1, 1.0, (H, H))
    params["weight_hh_l0"][...] = w_hh * radius / np.max(np.abs(np.linalg.eigvals(w_hh)))
    x = rng.uniform(0.1, 1.0, (T, B, I))

    y, _ = layer(x)
    layer.backward(rng.standard_normal(y.shape) / y.size)
    raw = np.sqrt(sum(np.sum(g ** 2) for g in layer.grads.values()))
    assert np.isfinite(raw) and raw > 1e6 * 1.0  # exploded, far beyond the clip bound
    raw_grads = {name: g.copy() for name, g in layer.grads.items()}

    total = rc.clip_grad_norm_(layer, 1.0)
    assert total == pytest.approx(raw, rel=1e-12)
    before = {name: p.copy() for name, p in params.items()}
    for name, p in params.items():
        p -= lr * layer.grads[name]
    step = np.sqrt(sum(np.sum((params[n] - before[n]) ** 2) for n in params))
    assert step <= lr * 1.0 * (1 + 1e-12)
    assert step == pytest.approx(lr * 1.0, rel=1e-6)  # the bound is reached: the direction is kept...
    for name, g in layer.grads.items():  # ...and it is the raw gradient's direction
        np.testing.assert_allclose(g * total, raw_grads[name], rtol=1e-5, atol=0)


def test_iterables_of_arrays_are_accepted():
    # torch users pass generators (model.parameters()-style); a plain array list works too
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(4) * 10, rng.standard_normal((2, 3)) * 10]
    expected = float(np.sqrt(sum(np.sum(a ** 2) for a in arrays)))
    total = rc.clip_grad_norm_((a for a in arrays), 1.0)
    assert total == pytest.approx(expected)
    assert np.sqrt(sum(np.sum(a ** 2) for a in arrays)) == pytest.approx(1.0, rel=1e-5)
    rc.clip_grad_value_(arrays, 0.1)
    assert max(np.abs(a).max() for a in arrays) <= 0.1
    with pytest.raises(TypeError, match="grads"):
        rc.clip_grad_norm_("not gradients", 1.0)
