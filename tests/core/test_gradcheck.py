"""BPTT gradients against central finite differences, in float64.

The loss is L = sum(wy * y) + sum(wh * h_n) (+ sum(wc * c_n)) with random weights, so
backward gets dy = wy, dh_n = wh, dc_n = wc and every output and final state counts.
Every parameter, the input and every initial state is perturbed one element at a time.

Tolerance: with step EPS = 1e-6 the central difference has truncation error
~EPS^2 * |L'''| / 6 ~ 1e-13 and rounding error ~2e-16 * |L| / EPS ~ 1e-9 for the
|L| ~ 1-10 of these tiny shapes. A gradient is accepted when its largest error is within
RTOL = 1e-6 of its largest magnitude (floored at 1e-2, where the rounding error would
otherwise dominate a near-zero gradient): three orders of magnitude above the
finite-difference noise, and far below any real error (a wrong or missing term is off by
1e-2 of the scale or more).

The reference is the oracle of every backend, so these checks run on it; the fast
backends get one cheap check each here, and are held to the reference in
test_backends.py.
"""
import numpy as np
import pytest

import rnncore as rc
from rnncore import functional as F
from cases import VARIANTS, back, build, call, finite_difference, random_states

EPS = 1e-6
RTOL = 1e-6
SCALE_FLOOR = 1e-2
VARIANT = {name: (cls, kwargs) for name, cls, kwargs in VARIANTS}


def check(loss, analytic, arrays):
    """Each analytic gradient against the finite difference of `loss` in its array."""
    assert sorted(analytic) == sorted(arrays)
    for name, array in arrays.items():
        numeric = finite_difference(loss, array, EPS)
        assert analytic[name].shape == numeric.shape, name
        scale = max(float(np.max(np.abs(numeric))), SCALE_FLOOR)
        err = float(np.max(np.abs(analytic[name] - numeric)))
        assert err <= RTOL * scale, f"{name}: |analytic - numeric| = {err:.2e}, scale {scale:.2e}"


def weighted_sum(weights, values):
    return float(sum(np.sum(w * v) for w, v in zip(weights, values)))


# -- layers ------------------------------------------------------------------------------

def layer_case(variant, T, B, I, H, layers=1, bidirectional=False, bias=True, lengths=None,
               batch_first=False):
    return dict(variant=variant, T=T, B=B, I=I, H=H, layers=layers, bidirectional=bidirectional, bias=bias,
                lengths=lengths, batch_first=batch_first)


def cases_of(variant):
    """Three tiny configurations per variant: the smallest (T=1, B=1, H=1; a projection
    needs H=2 to exist), one with unsorted lengths and no bias, and a stacked
    bidirectional one with lengths (Jordan is one layer, one direction: a longer
    sequence with lengths instead)."""
    smallest_h = 2 if VARIANT[variant][1].get("proj_size") else 1
    stacked = (layer_case(variant, 5, 2, 2, 2, lengths=[5, 1]) if variant.startswith("jordan") else
               layer_case(variant, 3, 2, 2, 2, layers=2, bidirectional=True, lengths=[3, 1]))
    return [layer_case(variant, 1, 1, 1, smallest_h),
            layer_case(variant, 4, 3, 2, 3, bias=False, lengths=[2, 4, 1]),
            stacked]


LAYER_CASES = [c for name, _, _ in VARIANTS for c in cases_of(name)] + [
    layer_case("lstm_all", 2, 2, 2, 3, layers=3, bidirectional=True, lengths=[1, 2]),
    layer_case("gru_cho", 3, 2, 2, 2, layers=3, batch_first=True),
    layer_case("rnn_relu", 4, 1, 3, 2, layers=3, bidirectional=True),
]


def layer_case_id(c):
    parts = [c["variant"], f"T{c['T']}B{c['B']}I{c['I']}H{c['H']}L{c['layers']}"]
    parts += ["bi"] if c["bidirectional"] else []
    parts += [] if c["bias"] else ["nobias"]
    parts += ["lengths"] if c["lengths"] else []
    parts += ["batch_first"] if c["batch_first"] else []
    return "-".join(parts)


def check_layer(c, backend="numpy", seed=0):
    cls, kwargs = VARIANT[c["variant"]]
    layer = build(cls, kwargs, c["I"], c["H"], backend=backend, seed=seed, bias=c["bias"], num_layers=c["layers"],
                  bidirectional=c["bidirectional"], batch_first=c["batch_first"])
    rng = np.random.default_rng(seed + 1)
    T, B = c["T"], c["B"]
    x = rng.standard_normal((B, T, c["I"]) if c["batch_first"] else (T, B, c["I"]))
    states = random_states(layer, B, rng)
    y, finals = call(layer, x, states, lengths=c["lengths"])
    wy = rng.standard_normal(y.shape)
    w_finals = [rng.standard_normal(s.shape) for s in finals]

    def loss():
        y, finals = call(layer, x, states, lengths=c["lengths"])
        return weighted_sum([wy] + w_finals, [y] + finals)

    layer.zero_grad()
    call(layer, x, states, lengths=c["lengths"])
    dx, dstates = back(layer, wy, w_finals)
    analytic = {"x": dx, **{f"state0[{i}]": d for i, d in enumerate(dstates)}, **layer.grads}
    arrays = {"x": x, **{f"state0[{i}]": s for i, s in enumerate(states)}, **layer.parameters()}
    check(loss, analytic, arrays)


@pytest.mark.parametrize("c", LAYER_CASES, ids=[layer_case_id(c) for c in LAYER_CASES])
def test_layer(c):
    check_layer(c)


@pytest.mark.parametrize("variant", ["lstm_all", "gru_cho", "jordan_sigmoid"])
def test_layer_on_every_backend(backend, variant):
    # kept tiny: the backends are checked in depth against the reference elsewhere
    check_layer(layer_case(variant, 3, 2, 2, 3, lengths=[3, 1]), backend=backend)


# -- cells -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,kwargs,batched", [
    (rc.RNNCell, dict(nonlinearity="tanh"), True),
    (rc.RNNCell, dict(nonlinearity="relu", bias=False), False),
    (rc.LSTMCell, dict(), False),
    (rc.LSTMCell, dict(peephole=True, coupled_input_forget=True), True),
    (rc.GRUCell, dict(reset_after=True), True),
    (rc.GRUCell, dict(reset_after=False, bias=False), False),
], ids=["rnn_tanh", "rnn_relu_nobias_unbatched", "lstm_unbatched", "lstm_peephole_cifg", "gru",
        "gru_cho_nobias_unbatched"])
def test_cell(cls, kwargs, batched):
    cell = cls(3, 4, dtype=np.float64, seed=2, **kwargs)
    rng = np.random.default_rng(3)
    lead = (2,) if batched else ()
    x = rng.standard_normal(lead + (3,))
    is_lstm = cls is rc.LSTMCell
    states = [rng.standard_normal(lead + (4,)) for _ in range(2 if is_lstm else 1)]
    weights = [rng.standard_normal(lead + (4,)) for _ in states]

    def step():
        out = cell(x, tuple(states) if is_lstm else states[0])
        return list(out) if is_lstm else [out]

    step()
    dx, dstates = cell.backward(tuple(weights) if is_lstm else weights[0])
    dstates = list(dstates) if is_lstm else [dstates]
    analytic = {"x": dx, **{f"state0[{i}]": d for i, d in enumerate(dstates)}, **cell.grads}
    arrays = {"x": x, **{f"state0[{i}]": s for i, s in enumerate(states)}, **cell.parameters()}
    check(lambda: weighted_sum(weights, step()), analytic, arrays)


# -- functional --------------------------------------------------------------------------

def functional_params(rng, I, H, gates, out=None, extra=()):
    out = H if out is None else out
    params = dict(weight_ih=rng.standard_normal((gates * H, I)) * 0.5,
                  weight_hh=rng.standard_normal((gates * H, out)) * 0.5,
                  bias_ih=rng.standard_normal(gates * H) * 0.5, bias_hh=rng.standard_normal(gates * H) * 0.5)
    params.update({name: rng.standard_normal(shape) * 0.5 for name, shape in extra})
    return params


T_F, B_F, I_F, H_F = 4, 3, 2, 3
FUNCTIONAL_CASES = {
    # name: (forward, backward, parameter shapes builder, keyword options, state widths)
    "rnn_relu": (F.rnn_forward, F.rnn_backward, lambda rng: functional_params(rng, I_F, H_F, 1),
                 dict(nonlinearity="relu"), (H_F,)),
    "gru_cho": (F.gru_forward, F.gru_backward, lambda rng: functional_params(rng, I_F, H_F, 3),
                dict(reset_after=False), (H_F,)),
    "lstm_proj_peephole": (F.lstm_forward, F.lstm_backward,
                           lambda rng: functional_params(rng, I_F, H_F, 4, out=2, extra=[
                               ("weight_hr", (2, H_F)), ("weight_ci", (H_F,)), ("weight_cf", (H_F,)),
                               ("weight_co", (H_F,))]),
                           dict(), (2, H_F)),
    "lstm_cifg": (F.lstm_forward, F.lstm_backward, lambda rng: functional_params(rng, I_F, H_F, 3),
                  dict(coupled_input_forget=True), (H_F, H_F)),
    "jordan_tanh": (F.jordan_forward, F.jordan_backward,
                    lambda rng: functional_params(rng, I_F, H_F, 1, out=2, extra=[("weight_ho", (2, H_F)),
                                                                                    ("bias_ho", (2,))]),
                    dict(output_activation="tanh"), (2,)),
}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", list(FUNCTIONAL_CASES))
def test_functional(name, reverse):
    forward, backward, make_params, options, widths = FUNCTIONAL_CASES[name]
    rng = np.random.default_rng(4)
    params = make_params(rng)
    x = rng.standard_normal((T_F, B_F, I_F))
    states = [rng.standard_normal((B_F, w)) for w in widths]
    lengths = [4, 1, 2]

    def run(training):
        *outputs, ctx = forward(x, *states, **params, **options, lengths=lengths, reverse=reverse,
                                training=training)
        return outputs, ctx

    (y, *finals), ctx = run(True)
    weights = [rng.standard_normal(y.shape)] + [rng.standard_normal(s.shape) for s in finals]
    dx, *dstates, grads = backward(ctx, *weights)
    analytic = {"x": dx, **{f"state0[{i}]": d for i, d in enumerate(dstates)}, **grads}
    arrays = {"x": x, **{f"state0[{i}]": s for i, s in enumerate(states)}, **params}
    check(lambda: weighted_sum(weights, run(False)[0]), analytic, arrays)
