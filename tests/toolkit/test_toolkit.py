"""The training toolkit: gradients by finite differences, optimizers and losses against
torch, Sequential's plumbing, truncated BPTT, early stopping, generation, bad input."""
import numpy as np
import pytest

import rnncore as rc
from cases import finite_difference
from conftest import assert_close

F64 = np.float64
# Central differences in float64 with step 1e-6: truncation error ~ h^2 * f''' ~ 1e-12,
# rounding ~ 1e-16 / 1e-6 = 1e-10 relative; 1e-6 relative to the largest gradient is
# far above both and far below any real error (a wrong term is O(1) relative).
FD_RTOL = 1e-6  # with finite_difference's default step of 1e-6


def check_module(module, x, extra_params=()):
    """d sum(w * module(x)) / d x and / d every parameter, analytic vs numeric."""
    rng = np.random.default_rng(1)
    weights = None

    def objective():
        nonlocal weights
        y = module(x)
        y = y[0] if isinstance(y, tuple) else y
        if weights is None:
            weights = rng.standard_normal(y.shape)
        return float(np.sum(weights * y))

    objective()
    module.zero_grad()
    dx = module.backward(weights)
    dx = dx[0] if isinstance(dx, tuple) else dx
    if x.dtype.kind == "f":
        assert_close(dx, finite_difference(objective, x), rtol=FD_RTOL, what="dx")
    for name, param in module.parameters().items():
        assert_close(module.grads[name], finite_difference(objective, param), rtol=FD_RTOL, what=name)


@pytest.mark.parametrize("shape", [(4, 3), (5, 2, 3), (3,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(shape, bias):
    linear = rc.Linear(3, 2, bias=bias, dtype=F64, seed=0)
    check_module(linear, np.random.default_rng(0).standard_normal(shape))


def test_embedding_gradient_accumulates_repeated_indices():
    embedding = rc.Embedding(5, 3, dtype=F64, seed=0)
    indices = np.array([[0, 2, 2], [4, 2, 0]])  # index 2 three times, 0 twice
    check_module(embedding, indices)
    assert_close(embedding(indices)[0, 1], embedding.parameters()["weight"][2], what="lookup")


@pytest.mark.parametrize("activation", [rc.Tanh, rc.Sigmoid, rc.ReLU])
def test_activation_gradients(activation):
    x = np.random.default_rng(0).standard_normal((4, 3))
    x[np.abs(x) < 0.05] = 0.5  # keep away from ReLU's kink, where the derivative is undefined
    check_module(activation(), x)


@pytest.mark.parametrize("batch_first", [False, True])
def test_last_step_gradient_with_lengths(batch_first):
    time_major = np.random.default_rng(0).standard_normal((4, 3, 2))
    y = time_major.transpose(1, 0, 2).copy() if batch_first else time_major
    lengths = np.array([4, 1, 3])
    out = rc.LastStep(batch_first=batch_first)(y, lengths)
    assert_close(out, time_major[lengths - 1, np.arange(3)], what="last")
    check_module(rc.LastStep(batch_first=batch_first), y)


def loss_gradient_check(loss_fn, x, *args, **kwargs):
    loss_fn(x, *args, **kwargs)
    analytic = loss_fn.backward()
    assert_close(analytic, finite_difference(lambda: loss_fn(x, *args, **kwargs), x), rtol=FD_RTOL, what="dloss")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_gradient_and_mask(reduction):
    rng = np.random.default_rng(0)
    x, target = rng.standard_normal((2, 4, 3))
    loss_gradient_check(rc.MSELoss(reduction), x, target)
    mask = (rng.random((4, 3)) < 0.5).astype(F64)
    mask[0, 0] = 1
    loss_gradient_check(rc.MSELoss(reduction), x, target, mask=mask)
    # masked-out entries neither count nor dilute the mean
    marked = mask > 0
    expected = np.sum((x - target)[marked] ** 2) / (marked.sum() if reduction == "mean" else 1)
    assert rc.MSELoss(reduction)(x, target, mask=mask) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", [(5, 4), (3, 2, 4)], ids=["last-step", "per-step"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_gradient(shape, reduction):
    rng = np.random.default_rng(0)
    logits = 3 * rng.standard_normal(shape)
    target = rng.integers(0, shape[-1], shape[:-1])
    target.flat[0] = -100  # ignored
    loss_gradient_check(rc.CrossEntropyLoss(reduction), logits, target)


def test_losses_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits = 4 * rng.standard_normal((3, 2, 5))
    target = rng.integers(0, 5, (3, 2))
    target[1, 1] = -100
    ours = rc.CrossEntropyLoss()
    value = ours(logits, target)
    t_logits = torch.tensor(logits, requires_grad=True)
    # torch puts the classes on axis 1
    t_loss = torch.nn.functional.cross_entropy(t_logits.permute(1, 2, 0), torch.tensor(target).T)
    t_loss.backward()
    assert value == pytest.approx(t_loss.item(), rel=1e-12)
    assert_close(ours.backward(), t_logits.grad.numpy(), rtol=1e-12, what="dlogits")

    x, y = rng.standard_normal((2, 4, 3))
    mse = rc.MSELoss()
    t_x = torch.tensor(x, requires_grad=True)
    t_mse = torch.nn.functional.mse_loss(t_x, torch.tensor(y))
    t_mse.backward()
    assert mse(x, y) == pytest.approx(t_mse.item(), rel=1e-12)
    assert_close(mse.backward(), t_x.grad.numpy(), rtol=1e-12, what="dmse")


def test_sequential_gradients_through_embedding_lstm_linear():
    rng = np.random.default_rng(0)
    model = rc.Sequential(rc.Embedding(5, 3, dtype=F64, seed=0), rc.LSTM(3, 4, dtype=F64, seed=1), rc.Tanh(),
                          rc.Linear(4, 5, dtype=F64, seed=2))
    tokens, target = rng.integers(0, 5, (2, 6, 2))
    h0 = (0.1 * rng.standard_normal((1, 2, 4)), 0.1 * rng.standard_normal((1, 2, 4)))
    loss_fn = rc.CrossEntropyLoss()

    def objective():
        return loss_fn(model(tokens, [h0])[0], target)

    objective()
    model.zero_grad()
    dx, (dh0,) = model.backward(loss_fn.backward())
    assert dx is None  # integer inputs
    for name, param in model.parameters().items():
        assert_close(model.grads[name], finite_difference(objective, param), rtol=FD_RTOL, what=name)
    assert_close(dh0[1], finite_difference(objective, h0[1]), rtol=FD_RTOL, what="dc0")


def test_sequential_lengths_reach_recurrent_layer_and_last_step():
    rng = np.random.default_rng(0)
    model = rc.Sequential(rc.GRU(2, 3, dtype=F64, seed=0), rc.LastStep(), rc.Linear(3, 2, dtype=F64, seed=1))
    x = rng.standard_normal((5, 3, 2))
    lengths = np.array([5, 2, 4])
    out, (h_n,) = model(x, lengths=lengths)
    # with lengths, the last valid output of a one-layer GRU is its final state
    assert_close(out, model[2](h_n[0]), what="out")
    # steps past a sequence's length cannot change its output
    x_changed = x.copy()
    x_changed[2:, 1] = 99.0
    assert_close(model(x_changed, lengths=lengths)[0][1], out[1], what="padding")


def test_sequential_state_dict_round_trip_and_torch_names():
    model = rc.Sequential(rc.LSTM(2, 3, seed=0), rc.Linear(3, 1, seed=1))
    assert set(model.state_dict()) == {"0.weight_ih_l0", "0.weight_hh_l0", "0.bias_ih_l0", "0.bias_hh_l0",
                                       "1.weight", "1.bias"}
    other = rc.Sequential(rc.LSTM(2, 3, seed=5), rc.Linear(3, 1, seed=6))
    other.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).standard_normal((4, 2, 2)).astype(np.float32)
    assert_close(other(x)[0], model(x)[0], what="y")
    before = other.state_dict()
    bad = dict(model.state_dict(), **{"1.weight": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"1.weight: expected shape \(1, 3\), got \(2, 3\)"):
        other.load_state_dict(bad)
    with pytest.raises(KeyError, match="unexpected keys"):
        other.load_state_dict(dict(model.state_dict(), extra=np.zeros(1)))
    for name, value in other.state_dict().items():
        assert_close(value, before[name], what=name)


def test_linear_matches_torch_state_dict_and_output():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    t_linear = torch.nn.Linear(4, 3).double()
    linear = rc.Linear(4, 3, dtype=F64)
    linear.load_state_dict(t_linear.state_dict())
    x = np.random.default_rng(0).standard_normal((5, 2, 4))
    assert_close(linear(x), t_linear(torch.tensor(x)).detach().numpy(), rtol=1e-12, what="y")


def optimizer_pair(torch, name, options):
    """Ours and torch's optimizer over the same initial parameters."""
    rng = np.random.default_rng(0)
    linear = rc.Linear(4, 3, dtype=F64, seed=0)
    t_params = [torch.tensor(p.copy(), requires_grad=True) for p in linear.parameters().values()]
    ours = getattr(rc.optim, name)(linear, **options)
    theirs = getattr(torch.optim, name)(t_params, **options)
    return rng, linear, t_params, ours, theirs


@pytest.mark.parametrize("name, options", [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
])
def test_optimizer_matches_torch(name, options):
    torch = pytest.importorskip("torch")
    rng, linear, t_params, ours, theirs = optimizer_pair(torch, name, options)
    for _ in range(6):
        for (pname, grad), t_param in zip(linear.grads.items(), t_params):
            grad[...] = rng.standard_normal(grad.shape) * rng.choice([0.01, 1.0, 100.0])
            t_param.grad = torch.tensor(grad.copy())
        ours.step()
        theirs.step()
    # float64, identical formulas; the operations differ only in order inside a step, so
    # the parameters agree to rounding (~1e-16 per step, 6 steps)
    for (pname, param), t_param in zip(linear.parameters().items(), t_params):
        assert_close(param, t_param.detach().numpy(), rtol=1e-12, what=pname)


def test_optimizer_over_several_modules_and_zero_grad():
    a, b = rc.Linear(2, 2, seed=0), rc.Linear(2, 1, seed=1)
    optimizer = rc.optim.SGD([a, b], lr=1.0)
    b.grads["bias"][...] = 2.0
    before = b.parameters()["bias"].copy()
    optimizer.step()
    assert_close(b.parameters()["bias"], before - 2.0, what="bias")
    optimizer.zero_grad()
    assert all(not g.any() for m in (a, b) for g in m.grads.values())


def test_truncated_bptt_with_one_chunk_is_full_bptt():
    rng = np.random.default_rng(0)
    x, target = rng.standard_normal((2, 12, 3, 2))
    models = [rc.Sequential(rc.LSTM(2, 4, dtype=F64, seed=0), rc.Linear(4, 2, dtype=F64, seed=1)) for _ in range(3)]
    loss_fn = rc.MSELoss()
    full_loss, full_states = rc.train.train_step(models[0], loss_fn, None, x, target)
    tbptt_loss, tbptt_states = rc.train.truncated_bptt(models[1], loss_fn, None, x, target, chunk=12)
    assert tbptt_loss == pytest.approx(full_loss, rel=1e-12)
    for name, grad in models[0].grads.items():
        assert_close(models[1].grads[name], grad, what=name)
    # shorter chunks carry the state, so the forward is the same, but cut the gradient
    _, chunked_states = rc.train.truncated_bptt(models[2], loss_fn, None, x, target, chunk=5)
    assert_close(chunked_states[0][1], full_states[0][1], what="c_n")
    assert not np.allclose(models[2].grads["0.weight_hh_l0"], models[0].grads["0.weight_hh_l0"])


def test_early_stopping_stops_after_patience_and_restores_the_best():
    model = rc.Linear(1, 1, seed=0)
    stopper = rc.train.EarlyStopping(patience=2)
    decisions = []
    for epoch, val in enumerate([3.0, 1.0, 2.0, 1.5, 0.5]):
        model.parameters()["weight"][...] = epoch
        decisions.append(stopper.step(val, model))
        if decisions[-1]:
            break
    assert decisions == [False, False, False, True]  # two checks without improving on 1.0
    assert stopper.best == 1.0 and stopper.best_step == 2
    stopper.restore(model)
    assert model.parameters()["weight"][0, 0] == 1.0


def token_model(vocab=6):
    return rc.Sequential(rc.Embedding(vocab, 4, dtype=F64, seed=0), rc.GRU(4, 8, dtype=F64, seed=1),
                         rc.Linear(8, vocab, dtype=F64, seed=2))


def test_greedy_generation_carries_the_state():
    model = token_model()
    prompt = np.array([1, 4, 2])
    tokens = rc.train.generate(model, prompt, 10, temperature=0)
    # fed all at once, the whole sequence gives the same logits as the step-by-step run
    # with carried state, so every greedy choice is the argmax at its position
    logits, _ = model(np.concatenate([prompt, tokens])[:, None])
    assert np.array_equal(logits[len(prompt) - 1:-1, 0].argmax(axis=-1), tokens)
    assert model.training  # the mode is given back


def test_sampling_follows_softmax_over_temperature():
    model = token_model(3)
    model[2].parameters()["weight"][...] = 0  # logits = bias, whatever the state
    model[2].parameters()["bias"][...] = [0.0, 1.0, 2.0]
    temperature = 2.0
    tokens = rc.train.generate(model, [0], 3000, temperature=temperature, seed=0)
    expected = np.exp(np.array([0.0, 1.0, 2.0]) / temperature)
    expected /= expected.sum()
    # 3000 draws: the standard error of a frequency near 0.4 is 0.009; 0.04 is over 4 of them
    assert np.allclose(np.bincount(tokens, minlength=3) / 3000, expected, atol=0.04)
    assert np.array_equal(tokens, rc.train.generate(model, [0], 3000, temperature=temperature, seed=0))


def test_forecast_feeds_predictions_back():
    model = rc.Sequential(rc.RNN(1, 3, dtype=F64, seed=0), rc.Linear(3, 1, dtype=F64, seed=1))
    history = np.random.default_rng(0).standard_normal((5, 1, 1))
    out = rc.train.forecast(model, history, 3)
    y, _ = model(np.concatenate([history, out[:2]]))
    assert_close(out, y[4:], what="forecast")


@pytest.mark.parametrize("make, message", [
    (lambda: rc.Linear(3, 2)(np.zeros((4, 2), np.float32)), r"x: expected shape \(\.\.\., 3\), got \(4, 2\)"),
    (lambda: rc.Linear(3, 2)(np.zeros((4, 3), np.float64)), "x: expected dtype float32"),
    (lambda: rc.Linear(0, 2), "in_features: expected an int >= 1, got 0"),
    (lambda: rc.Embedding(4, 2)(np.array([0, 4])), r"indices: expected values in \[0, 3\]"),
    (lambda: rc.Embedding(4, 2)(np.array([0.0])), "indices: expected integers"),
    (lambda: rc.CrossEntropyLoss()(np.zeros((2, 3)), np.zeros(3, int)), r"target: expected shape \(2,\)"),
    (lambda: rc.CrossEntropyLoss()(np.zeros((2, 3)), np.array([0, 3])), r"target: expected class indices in \[0, 2\]"),
    (lambda: rc.CrossEntropyLoss()(np.zeros((2, 3)), np.zeros(2)), "target: expected integer class indices"),
    (lambda: rc.MSELoss()(np.zeros(3), np.zeros(2)), r"target: expected shape \(3,\), got \(2,\)"),
    (lambda: rc.MSELoss(reduction="max"), r"reduction: expected one of \['mean', 'sum'\], got 'max'"),
    (lambda: rc.optim.SGD(rc.Linear(1, 1), lr=-1), "lr: expected a finite number >= 0"),
    (lambda: rc.optim.Adam(rc.Linear(1, 1), betas=(0.9, 1.0)), r"betas\[1\]: expected a finite number >= 0.0 and < 1.0"),
    (lambda: rc.optim.SGD(rc.Linear(1, 1), lr=0.1, nesterov=True), "nesterov: expected momentum > 0"),
    (lambda: rc.optim.Adam(object()), "modules"),
    (lambda: rc.Sequential(rc.LSTM(1, 2))(np.zeros((2, 1, 1), np.float32), states=[None, None]),
     "states: expected a list of 1 states"),
    (lambda: rc.Sequential(object()), r"modules\[0\]: expected a module"),
    (lambda: rc.train.generate(token_model(), [], 3), "prompt: expected a non-empty 1-d sequence"),
    (lambda: rc.train.generate(token_model(), [1], 3, temperature=-1), "temperature: expected a number >= 0"),
])
def test_bad_input_is_named(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_backward_before_forward_says_so():
    for module in (rc.Linear(2, 2), rc.Embedding(3, 2), rc.Tanh(), rc.LastStep()):
        with pytest.raises(RuntimeError, match="no training-mode forward"):
            module.backward(np.zeros((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="call the loss on an input first"):
        rc.MSELoss().backward()
    linear = rc.Linear(2, 2).eval()
    linear(np.zeros((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="no training-mode forward"):
        linear.backward(np.zeros((1, 2), np.float32))
