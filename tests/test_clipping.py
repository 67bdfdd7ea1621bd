"""Gradient clipping: the same results as torch.nn.utils on the same gradients, and a
demonstration that clipping bounds the update of an exploding Elman RNN.

Tolerance 1e-6 relative: torch reduces float32 norms in float32, we accumulate in
float64, so the two differ by float32 rounding of the sums."""
import numpy as np
import pytest

import rnncore as rc


def gradient_sets(seed=0):
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal((4, 3)).astype(np.float32) * 3,
            "b": rng.standard_normal(5).astype(np.float32),
            "c": rng.standard_normal((2, 2, 2)).astype(np.float32) * 0.1}


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    torch = pytest.importorskip("torch")
    grads = gradient_sets()
    params = []
    for g in grads.values():
        p = torch.zeros(g.shape, requires_grad=True)
        p.grad = torch.tensor(g)
        params.append(p)
    expected_total = float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type))
    total = rc.clip_grad_norm_(grads, max_norm, norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(expected_total, rel=1e-6)
    for g, p in zip(grads.values(), params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_clip_grad_value_matches_torch():
    torch = pytest.importorskip("torch")
    grads = gradient_sets()
    params = []
    for g in grads.values():
        p = torch.zeros(g.shape, requires_grad=True)
        p.grad = torch.tensor(g)
        params.append(p)
    torch.nn.utils.clip_grad_value_(params, 0.7)
    assert rc.clip_grad_value_(grads, 0.7) is None
    for g, p in zip(grads.values(), params):
        np.testing.assert_array_equal(g, p.grad.numpy())
    assert max(np.abs(g).max() for g in grads.values()) == pytest.approx(0.7)


def test_accepts_layers_dicts_and_lists_in_place():
    lstm = rc.LSTM(2, 3, seed=0)
    gru = rc.GRU(2, 3, seed=1)
    for layer in (lstm, gru):
        for g in layer.grads.values():
            g[...] = 10.0
    extra = {"w": np.full(4, 10.0, dtype=np.float32)}
    identities = [id(g) for g in list(lstm.grads.values()) + list(gru.grads.values())]
    arrays = list(lstm.grads.values()) + list(gru.grads.values()) + [extra["w"]]
    expected = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in arrays))
    total = rc.clip_grad_norm_([lstm, gru, extra], max_norm=1.0)
    assert total == pytest.approx(expected, rel=1e-6)
    after = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in arrays))
    assert after == pytest.approx(1.0, rel=1e-5)
    assert identities == [id(g) for g in list(lstm.grads.values()) + list(gru.grads.values())]
    # below the bound nothing changes (coefficient clamped to 1)
    before = [g.copy() for g in lstm.grads.values()]
    rc.clip_grad_norm_(lstm, max_norm=1e9)
    for b, g in zip(before, lstm.grads.values()):
        np.testing.assert_array_equal(b, g)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_total(bad):
    grads = gradient_sets()
    grads["b"][0] = bad
    with pytest.raises(RuntimeError, match="total norm"):
        rc.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    # without the flag it scales as torch does (by a coefficient computed from a NaN/Inf total)
    torch = pytest.importorskip("torch")
    grads2 = gradient_sets()
    grads2["b"][0] = bad
    params = []
    for g in grads2.values():
        p = torch.zeros(g.shape, requires_grad=True)
        p.grad = torch.tensor(g)
        params.append(p)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    rc.clip_grad_norm_(grads2, 1.0)
    for g, p in zip(grads2.values(), params):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(p.grad.numpy()))


def test_exploding_elman_rnn_update_is_bounded_by_clipping():
    """A relu RNN whose recurrent matrix has spectral radius 1.5: over T=200 steps the
    gradient grows like 1.5^200 ~ 1e35 (float64 holds it); clipping to norm 1 bounds the
    SGD step to exactly lr."""
    H, T, lr = 8, 200, 0.1
    layer = rc.RNN(1, H, nonlinearity="relu", dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((H, H)))
    layer.parameters()["weight_hh_l0"][...] = 1.5 * np.abs(q) / np.abs(q).sum(axis=1, keepdims=True) * H ** 0.5
    spectral_radius = max(abs(np.linalg.eigvals(layer.parameters()["weight_hh_l0"])))
    assert spectral_radius > 1.2
    layer.parameters()["bias_hh_l0"][...] = 0.1
    x = rng.standard_normal((T, 1, 1))
    y, h_n = layer(x)
    layer.backward(np.zeros_like(y), np.ones_like(h_n))
    raw = rc.clip_grad_norm_(layer, max_norm=1.0)
    assert raw > 1e10  # exploded
    before = {n: p.copy() for n, p in layer.parameters().items()}
    for name, param in layer.parameters().items():
        param -= lr * layer.grads[name]
    step = np.sqrt(sum(np.sum((layer.parameters()[n] - before[n]) ** 2) for n in before))
    assert step <= lr * (1 + 1e-6)
    assert step == pytest.approx(lr, rel=1e-5)


@pytest.mark.parametrize("call", [
    lambda g: rc.clip_grad_norm_(g, 1.0, norm_type=0),
    lambda g: rc.clip_grad_norm_(g, "big"),
    lambda g: rc.clip_grad_norm_(g, float("nan")),
    lambda g: rc.clip_grad_value_(g, -1.0),
    lambda g: rc.clip_grad_value_(g, None),
])
def test_bad_arguments_leave_gradients_alone(call):
    grads = gradient_sets()
    before = {k: v.copy() for k, v in grads.items()}
    with pytest.raises(ValueError):
        call(grads)
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


def test_bad_container():
    with pytest.raises(TypeError, match="grads"):
        rc.clip_grad_norm_(42, 1.0)
