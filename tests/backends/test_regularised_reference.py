"""The regularised cells of the NumPy reference: layer norm, zoneout, recurrent dropout.

The reference is the oracle the fast backends are held to, so it is held here to two
things that do not share its code: central finite differences of its own forward (every
option and combination, masks drawn once by a seeded generator and kept fixed, both
directions, lengths, initial states, every parameter including the layer norm's gains
and shift, the input and the initial states), and formulas written out by hand or from
the plain cell (zoneout's expectation and masks step by step, the limits p = 0 and
p = 1, recurrent dropout absent or all ones, layer norm on one step).

Finite differences: L = sum(wy * y) + sum(w * state_n) with random weights; step 1e-6 in
float64, so the central difference's error is ~1e-9 for these |L| ~ 1-10; accepted within
1e-6 of each gradient's largest magnitude (floored at 1e-2), three orders above the noise
and far below a wrong or missing term (off by a percent of the scale or more).
"""
import itertools

import numpy as np
import pytest

from rnncore.backends.reference import backend as reference
from rnncore.backends.reference import cells
from rnncore.core import regularise
from rnncore.core import spec as core_spec
from rnncore.core.spec import CellSpec
from cases import finite_difference, random_backend_case

EPS = 1e-6
RTOL = 1e-6
SCALE_FLOOR = 1e-2
T, B, I, H = 4, 3, 2, 3
LENGTHS = np.array([4, 1, 3], dtype=np.int64)
BOTH = (False, True)

# the cells, each variant a regularised option goes into
VARIANTS = {
    "rnn": dict(kind="rnn"),
    "lstm": dict(kind="lstm"),
    "lstm_proj": dict(kind="lstm", proj_size=2),
    "lstm_peephole": dict(kind="lstm", peephole=True),
    "lstm_cifg": dict(kind="lstm", coupled_input_forget=True),
    "lstm_nobias": dict(kind="lstm", bias=False),
    "lstm_all": dict(kind="lstm", proj_size=2, peephole=True, coupled_input_forget=True),
    "gru": dict(kind="gru"),
    "gru_nobias": dict(kind="gru", bias=False),
    "gru_cho": dict(kind="gru", reset_after=False),
}
OPTIONS = ("layer_norm", "zoneout", "recurrent_dropout")


def make_spec(variant, options, zoneout=(0.3, 0.4), recurrent_dropout=0.4):
    kwargs = dict(VARIANTS[variant])
    kind = kwargs.pop("kind")
    if "layer_norm" in options:
        kwargs["layer_norm"] = True
    if "zoneout" in options:
        kwargs["zoneout_h"] = zoneout[0]
        if kind == "lstm":
            kwargs["zoneout_c"] = zoneout[1]
    if "recurrent_dropout" in options:
        kwargs["recurrent_dropout"] = recurrent_dropout
    return CellSpec(kind, I, H, **kwargs)


def takes(variant, option):
    """Whether the variant has the option: layer norm is LSTM's and reset-after GRU's."""
    kwargs = VARIANTS[variant]
    return option != "layer_norm" or kwargs["kind"] == "lstm" or (
        kwargs["kind"] == "gru" and kwargs.get("reset_after", True))


COMBINATIONS = [(variant, options) for variant in VARIANTS
                for k in range(1, len(OPTIONS) + 1) for options in itertools.combinations(OPTIONS, k)
                if all(takes(variant, option) for option in options)]


def draw_masks(spec, T, B, rng, dtype=np.float64):
    """One direction's masks as a training layer draws them (`regularise.draw`): zoneout
    Bernoulli(p) per step and unit, recurrent dropout one inverted mask per sequence."""
    return regularise.draw(rng, spec, T, B, dtype, 1)[0][0]


def forward(spec, params, x, states, lengths=None, reverse=BOTH, masks=None, training=True):
    return reference.layer_forward(spec, params, x, states, lengths, training, reverse, 1, masks)


def check_gradients(spec, lengths, masked, seed=0):
    """Every analytic gradient of a bidirectional layer against finite differences."""
    params, x, states, rng = random_backend_case(spec, T, B, 2, np.float64, seed)
    masks = [draw_masks(spec, T, B, rng) for _ in BOTH] if masked else None
    y, states_n, _ = forward(spec, params, x, states, lengths, masks=masks)
    wy = rng.standard_normal(y.shape)
    w_states = [tuple(rng.standard_normal(s.shape) for s in state) for state in states_n]

    def loss():
        y, states_n, _ = forward(spec, params, x, states, lengths, masks=masks, training=False)
        return float(np.sum(wy * y) + sum(np.sum(w * s) for ws, sn in zip(w_states, states_n)
                                            for w, s in zip(ws, sn)))

    _, _, ctx = forward(spec, params, x, states, lengths, masks=masks)
    dx, dstates0, grads = reference.layer_backward(ctx, wy, w_states)
    analytic = {"x": dx}
    numeric_of = {"x": x}
    for d in range(2):
        assert list(grads[d]) == list(spec.param_shapes())
        for name, array in params[d].items():
            analytic[f"{name}[{d}]"], numeric_of[f"{name}[{d}]"] = grads[d][name], array
        for k, array in enumerate(states[d]):
            analytic[f"state{k}[{d}]"], numeric_of[f"state{k}[{d}]"] = dstates0[d][k], array
    for name, array in numeric_of.items():
        numeric = finite_difference(loss, array, EPS)
        scale = max(float(np.max(np.abs(numeric))), SCALE_FLOOR)
        err = float(np.max(np.abs(analytic[name] - numeric)))
        assert err <= RTOL * scale, f"{name}: |analytic - numeric| = {err:.2e}, scale {scale:.2e}"


def combination_id(case):
    variant, options = case
    return f"{variant}-{'+'.join(options)}"


# -- finite differences ---------------------------------------------------------------------

@pytest.mark.parametrize("case", COMBINATIONS, ids=combination_id)
def test_gradients_with_masks(case):
    """Training: masks fixed, lengths, both directions, initial states."""
    check_gradients(make_spec(*case), LENGTHS, masked=True)


@pytest.mark.parametrize("case", [c for c in COMBINATIONS if "zoneout" in c[1]], ids=combination_id)
def test_gradients_deterministic(case):
    """No masks: zoneout's expectation, with the other options (recurrent dropout then
    does nothing, and the combinations without zoneout have no masks to leave out)."""
    check_gradients(make_spec(*case), None, masked=False, seed=1)


@pytest.mark.parametrize("masked", [True, False])
def test_gradients_float32_follow_float64(masked):
    """float32 keeps its dtype through forward and backward and agrees with float64 to
    the float32 rounding of T steps: eps 1.2e-7 grown by the steps, the products and the
    normalisation's division (3e-7 of the scale measured), held to the project's float32
    agreement, 1e-5."""
    spec = make_spec("lstm_all", OPTIONS)
    results = {}
    for dtype in (np.float64, np.float32):
        params, x, states, rng = random_backend_case(spec, T, B, 2, dtype, 5)
        masks = [draw_masks(spec, T, B, rng, dtype) for _ in BOTH] if masked else None
        y, states_n, ctx = forward(spec, params, x, states, LENGTHS, masks=masks)
        dy = np.ones_like(y)
        dx, dstates0, grads = reference.layer_backward(ctx, dy, [tuple(np.ones_like(s) for s in sn)
                                                                 for sn in states_n])
        arrays = [y, dx, *states_n[0], *states_n[1], *dstates0[0], *dstates0[1],
                  *grads[0].values(), *grads[1].values()]
        assert all(a.dtype == dtype for a in arrays)
        results[dtype] = arrays
    for single, double in zip(results[np.float32], results[np.float64]):
        scale = max(float(np.max(np.abs(double))), 1e-3)
        assert float(np.max(np.abs(single - double))) <= 1e-5 * scale


# -- zoneout -----------------------------------------------------------------------------------

def zoned_by_hand(spec, params, x, states, lengths, reverse, masks):
    """Zoneout written from the plain cell: each sequence alone, its valid time indices in
    visiting order, one plain step from the carried state, then the blend with mask[t, b]
    (or p without a mask); y_t is the blended h_t."""
    plain = CellSpec(spec.kind, spec.input_size, spec.hidden_size, bias=spec.bias, proj_size=spec.proj_size,
                     peephole=spec.peephole, coupled_input_forget=spec.coupled_input_forget,
                     reset_after=spec.reset_after, layer_norm=spec.layer_norm)
    y = np.zeros((x.shape[0], x.shape[1], spec.out_size))
    finals = []
    for b in range(x.shape[1]):
        state = tuple(s[b:b + 1] for s in states[0])
        steps = range(lengths[b])
        for t in (reversed(steps) if reverse else steps):
            _, (new,), _ = reference.layer_forward(plain, params, x[t:t + 1, b:b + 1], [state], None, False,
                                                   (False,), 1)
            weights = [masks[name][t, b] if name in masks else p
                       for name, p in (("zoneout_h", spec.zoneout_h), ("zoneout_c", spec.zoneout_c))]
            state = tuple(w * old + (1 - w) * n for w, old, n in zip(weights, state, new))
            y[t, b] = state[0][0]
        finals.append(state)
    return y, tuple(np.concatenate(parts) for parts in zip(*finals))


@pytest.mark.parametrize("variant", ["rnn", "lstm_proj", "lstm_peephole", "gru", "gru_cho"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("masked", [True, False])
def test_zoneout_is_the_blend_of_the_plain_step(variant, reverse, masked):
    """Training (masks, indexed by time index in either direction) and the expectation;
    y_t is the zoned-out h_t; a sequence's state stops at its end."""
    options = ("zoneout", "layer_norm") if variant.startswith("lstm") else ("zoneout",)
    spec = make_spec(variant, options)
    params, x, states, rng = random_backend_case(spec, T, B, 1, np.float64, 2)
    masks = draw_masks(spec, T, B, rng) if masked else {}
    y, (state_n,), _ = forward(spec, params, x, states, LENGTHS, (reverse,), [masks], training=masked)
    y_hand, state_hand = zoned_by_hand(spec, params, x, states, LENGTHS, reverse, masks)
    np.testing.assert_allclose(y, y_hand, rtol=1e-13, atol=1e-14)
    for got, expected in zip(state_n, state_hand):
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("variant", ["rnn", "lstm_all", "gru", "gru_cho"])
def test_zoneout_one_keeps_the_initial_state(variant):
    """p = 1 (and masks all ones): the state never moves, every valid y_t is h_0."""
    spec = make_spec(variant, ("zoneout",), zoneout=(1.0, 1.0))
    params, x, states, _ = random_backend_case(spec, T, B, 2, np.float64, 3)
    ones = {name: np.ones(shape) for name, shape in
            (("zoneout_h", (T, B, spec.out_size)), ("zoneout_c", (T, B, H)))}
    for masks in (None, [ones, ones]):
        y, states_n, _ = forward(spec, params, x, states, LENGTHS, masks=masks)
        for d in range(2):
            for got, initial in zip(states_n[d], states[d]):
                np.testing.assert_array_equal(got, initial)
            valid = np.arange(T)[:, None] < LENGTHS[None, :]
            width = spec.out_size
            expected = np.where(valid[:, :, None], states[d][0][None], 0)
            np.testing.assert_array_equal(y[:, :, d * width:(d + 1) * width], expected)


@pytest.mark.parametrize("variant", ["rnn", "lstm_all", "gru", "gru_cho"])
def test_zoneout_zero_is_the_plain_cell(variant):
    """p = 0 is the plain cell bit for bit; so are all-zero masks, forward and back."""
    plain = make_spec(variant, ())
    zoned = make_spec(variant, ("zoneout",), zoneout=(0.0, 0.0))
    params, x, states, _ = random_backend_case(plain, T, B, 2, np.float64, 4)
    zeros = {"zoneout_h": np.zeros((T, B, plain.out_size)), "zoneout_c": np.zeros((T, B, H))}
    expected = run_and_back(plain, params, x, states, None)
    for spec, masks in ((zoned, None), (make_spec(variant, ("zoneout",)), [zeros, zeros])):
        for got, want in zip(run_and_back(spec, params, x, states, masks), expected):
            np.testing.assert_array_equal(got, want)


def run_and_back(spec, params, x, states, masks):
    """Every array of a forward and its backward, with dy and dstates_n drawn from a
    fresh generator of seed 0 (so that two runs get the same)."""
    rng = np.random.default_rng(0)
    y, states_n, ctx = forward(spec, params, x, states, LENGTHS, masks=masks)
    dy = rng.standard_normal(y.shape)
    dstates_n = [tuple(rng.standard_normal(s.shape) for s in sn) for sn in states_n]
    dx, dstates0, grads = reference.layer_backward(ctx, dy, dstates_n)
    return [y, dx, *(s for sn in states_n for s in sn), *(s for ds in dstates0 for s in ds),
            *(g for gd in grads for g in gd.values())]


# -- recurrent dropout -------------------------------------------------------------------------

@pytest.mark.parametrize("variant, layer_norm", [(v, ln) for v in ("rnn", "lstm_all", "gru", "gru_cho")
                                                 for ln in (False, True) if takes(v, "layer_norm") or not ln])
def test_recurrent_dropout_without_mask_or_with_ones_is_the_plain_cell(variant, layer_norm):
    """No mask (eval, or a deterministic training call) and a mask of ones are the
    plain cell bit for bit, forward and back."""
    extra = ("layer_norm",) if layer_norm else ()
    plain = make_spec(variant, extra)
    dropped = make_spec(variant, extra + ("recurrent_dropout",))
    params, x, states, _ = random_backend_case(plain, T, B, 2, np.float64, 6)
    ones = {"recurrent": np.ones((B, plain.out_size))}
    expected = run_and_back(plain, params, x, states, None)
    for masks in (None, [ones, ones]):
        for got, want in zip(run_and_back(dropped, params, x, states, masks), expected):
            np.testing.assert_array_equal(got, want)
    y_eval, _, _ = forward(dropped, params, x, states, LENGTHS, training=False)
    np.testing.assert_array_equal(y_eval, expected[0])


@pytest.mark.parametrize("variant", ["rnn", "lstm_proj", "lstm_peephole"])
def test_recurrent_dropout_is_the_plain_step_from_the_masked_state(variant):
    """Elman and LSTM read h_{t-1} in the product only: one step with the mask is the
    plain step from h_0 * m (and the LSTM's c_0)."""
    spec = make_spec(variant, ("recurrent_dropout",))
    plain = make_spec(variant, ())
    params, x, states, rng = random_backend_case(spec, 1, B, 1, np.float64, 7)
    masks = draw_masks(spec, 1, B, rng)
    y, state_n, _ = forward(spec, params, x, states, None, (False,), [masks])
    masked_state = (states[0][0] * masks["recurrent"],) + states[0][1:]
    y_plain, state_plain, _ = forward(plain, params, x, [masked_state], None, (False,))
    np.testing.assert_array_equal(y, y_plain)
    for got, want in zip(state_n[0], state_plain[0]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("reset_after", [True, False])
def test_recurrent_dropout_gru_step_by_hand(reset_after):
    """GRU: the products read h_0 * m, z * h_0 reads h_0."""
    spec = make_spec("gru" if reset_after else "gru_cho", ("recurrent_dropout",))
    params, x, states, rng = random_backend_case(spec, 1, B, 1, np.float64, 8)
    masks = draw_masks(spec, 1, B, rng)
    p, h0, m = params[0], states[0][0], masks["recurrent"]
    sigmoid = cells.sigmoid
    gx = x[0] @ p["weight_ih"].T + p["bias_ih"]
    w_r, w_z, w_n = np.split(p["weight_hh"], 3)
    b_r, b_z, b_n = np.split(p["bias_hh"], 3)
    r = sigmoid(gx[:, :H] + (h0 * m) @ w_r.T + b_r)
    z = sigmoid(gx[:, H:2 * H] + (h0 * m) @ w_z.T + b_z)
    if reset_after:
        n = np.tanh(gx[:, 2 * H:] + r * ((h0 * m) @ w_n.T + b_n))
    else:
        n = np.tanh(gx[:, 2 * H:] + (r * (h0 * m)) @ w_n.T + b_n)
    y, _, _ = forward(spec, params, x, states, None, (False,), [masks])
    np.testing.assert_allclose(y[0], (1 - z) * n + z * h0, rtol=1e-13, atol=1e-14)


# -- layer norm --------------------------------------------------------------------------------

def by_hand_norm(v, gain=1.0, shift=0.0):
    return gain * (v - v.mean(axis=1, keepdims=True)) / np.sqrt(v.var(axis=1, keepdims=True) + 1e-5) + shift


def test_layer_norm_eps_is_the_spec():
    assert cells.LAYER_NORM_EPS == core_spec.LAYER_NORM_EPS


@pytest.mark.parametrize("variant", ["lstm", "lstm_all"])
def test_layer_norm_lstm_step_by_hand(variant):
    """Gains 1 and shift 0 (the starting values): a = LN(W_ih x) + LN(W_hh h) + b_ih + b_hh
    over the whole gate row, h = o * tanh(LN(c)) (projected with proj_size)."""
    spec = make_spec(variant, ("layer_norm",))
    params, x, states, _ = random_backend_case(spec, 1, B, 1, np.float64, 9)
    p = params[0]
    for name in ("weight_ih_ln", "weight_hh_ln", "weight_c_ln", "bias_c_ln"):
        p[name][...] = spec.initial_value(name)
    h0, c0 = states[0]
    a = by_hand_norm(x[0] @ p["weight_ih"].T) + by_hand_norm(h0 @ p["weight_hh"].T) + p["bias_ih"] + p["bias_hh"]
    sigmoid = cells.sigmoid
    if spec.coupled_input_forget:
        a_i, a_g, a_o = np.split(a, 3, axis=1)
        i = sigmoid(a_i + p["weight_ci"] * c0)
        f = 1 - i
    else:
        a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)
        i, f = sigmoid(a_i), sigmoid(a_f)
    c = f * c0 + i * np.tanh(a_g)
    o = sigmoid(a_o + p["weight_co"] * c) if spec.peephole else sigmoid(a_o)
    h = o * np.tanh(by_hand_norm(c))
    if spec.proj_size:
        h = h @ p["weight_hr"].T
    y, ((h_n, c_n),), _ = forward(spec, params, x, states, None, (False,))
    np.testing.assert_allclose(y[0], h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n, h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c_n, c, rtol=1e-12, atol=1e-14)  # the carried c is not normalised


def test_layer_norm_gru_step_by_hand():
    """gx = LN(W_ih x) + b_ih, gh = LN(W_hh h) + b_hh, each over its three blocks (gains
    1), then the reset-after GRU."""
    spec = make_spec("gru", ("layer_norm",))
    params, x, states, _ = random_backend_case(spec, 1, B, 1, np.float64, 10)
    p = params[0]
    p["weight_ih_ln"][...] = p["weight_hh_ln"][...] = 1.0
    h0 = states[0][0]
    gx = by_hand_norm(x[0] @ p["weight_ih"].T) + p["bias_ih"]
    gh = by_hand_norm(h0 @ p["weight_hh"].T) + p["bias_hh"]
    sigmoid = cells.sigmoid
    r = sigmoid(gx[:, :H] + gh[:, :H])
    z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
    y, _, _ = forward(spec, params, x, states, None, (False,))
    np.testing.assert_allclose(y[0], (1 - z) * n + z * h0, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variant", ["lstm_peephole", "gru"])
def test_layer_norm_ignores_the_scale_of_the_weights(variant):
    """LN(k W v) = LN(W v) but for eps: scaling W_ih and W_hh by 10 moves y by about
    eps / var(W v) (1e-5 against row variances of ~0.05 here), while the plain cell's y
    moves by order one."""
    def y_of(spec, scale):
        params, x, states, _ = random_backend_case(spec, T, B, 1, np.float64, 11)
        for name in ("weight_ih", "weight_hh"):
            params[0][name] *= scale
        return forward(spec, params, x, states, None, (False,))[0]
    normed = make_spec(variant, ("layer_norm",))
    assert np.max(np.abs(y_of(normed, 10.0) - y_of(normed, 1.0))) < 2e-3
    plain = make_spec(variant, ())
    assert np.max(np.abs(y_of(plain, 10.0) - y_of(plain, 1.0))) > 0.1


# -- gate traces --------------------------------------------------------------------------------

def trace_and_forward(spec, seed, lengths=LENGTHS):
    params, x, states, _ = random_backend_case(spec, T, B, 2, np.float64, seed)
    traces = reference.layer_trace(spec, params, x, states, lengths, BOTH, 1)
    y, states_n, _ = forward(spec, params, x, states, lengths, training=False)
    return traces, y, states, states_n


def previous(trace_d, initial, reverse, lengths):
    """(T, B, n): the value each visited step started from, in time order: the traced
    value of the step visited before (the initial state for the first), zero past the
    end."""
    before = np.zeros_like(trace_d)
    for b, length in enumerate(lengths):
        order = list(range(length))[::-1] if reverse else list(range(length))
        for k, t in enumerate(order):
            before[t, b] = initial[b] if k == 0 else trace_d[order[k - 1], b]
    return before


def zoned(p, prev, new):
    return p * prev + (1 - p) * new


@pytest.mark.parametrize("variant", ["lstm", "lstm_peephole", "lstm_cifg", "lstm_nobias"])
@pytest.mark.parametrize("options", [(), ("zoneout",), ("recurrent_dropout",)])
def test_trace_lstm_is_what_the_forward_computes(variant, options):
    """Per direction, in time order: c_t = f * c_{t-1} + i * g (zoned out with the
    expectation), h_t = o * tanh(c~_t) is y, the last c is the final state; f = 1 - i
    when coupled; zero past the end."""
    spec = make_spec(variant, options)
    traces, y, states, states_n = trace_and_forward(spec, 12)
    valid = (np.arange(T)[:, None] < LENGTHS[None, :])[:, :, None]
    for d, (trace, reverse) in enumerate(zip(traces, BOTH)):
        assert list(trace) == ["i", "f", "g", "o", "c"] and all(a.shape == (T, B, H) for a in trace.values())
        i, f, g, o, c = (trace[k] for k in "ifgoc")
        c_prev = previous(c, states[d][1], reverse, LENGTHS)
        h_prev = previous(y[:, :, d * H:(d + 1) * H], states[d][0], reverse, LENGTHS)
        c_new = f * c_prev + i * g
        np.testing.assert_allclose(c, zoned(spec.zoneout_c, c_prev, c_new) * valid, rtol=1e-13, atol=1e-15)
        h = zoned(spec.zoneout_h, h_prev, o * np.tanh(c_new)) * valid
        np.testing.assert_allclose(y[:, :, d * H:(d + 1) * H], h, rtol=1e-13, atol=1e-15)
        if spec.coupled_input_forget:
            np.testing.assert_array_equal(f, (1 - i) * valid)
        last = LENGTHS - 1 if not reverse else np.zeros(B, dtype=int)
        np.testing.assert_array_equal(c[last, np.arange(B)], states_n[d][1])
        for gate in (i, f, g, o, c):
            assert not gate[~np.broadcast_to(valid, gate.shape)].any()


@pytest.mark.parametrize("variant, options", [("gru", ()), ("gru", ("zoneout",)), ("gru", ("layer_norm",)),
                                              ("gru_cho", ()), ("gru_cho", ("zoneout", "recurrent_dropout"))])
def test_trace_gru_is_what_the_forward_computes(variant, options):
    """y_t = (1 - z) * n + z * h_{t-1}, zoned out with the expectation."""
    spec = make_spec(variant, options)
    traces, y, states, _ = trace_and_forward(spec, 13)
    valid = (np.arange(T)[:, None] < LENGTHS[None, :])[:, :, None]
    for d, (trace, reverse) in enumerate(zip(traces, BOTH)):
        assert list(trace) == ["r", "z", "n"]
        y_d = y[:, :, d * H:(d + 1) * H]
        h_prev = previous(y_d, states[d][0], reverse, LENGTHS)
        h_new = (1 - trace["z"]) * trace["n"] + trace["z"] * h_prev
        np.testing.assert_allclose(y_d, zoned(spec.zoneout_h, h_prev, h_new) * valid, rtol=1e-13, atol=1e-15)
        assert not trace["r"][~np.broadcast_to(valid, trace["r"].shape)].any()


def test_trace_rnn_is_the_output():
    """The Elman trace's h is the carried (zoned-out) h_t, that is y."""
    spec = make_spec("rnn", ("zoneout",))
    traces, y, _, _ = trace_and_forward(spec, 14)
    for d, trace in enumerate(traces):
        np.testing.assert_array_equal(trace["h"], y[:, :, d * H:(d + 1) * H])


def test_trace_lstm_one_step_by_hand():
    """The gates themselves, one plain step: i = sigmoid(W_ii x + b_ii + W_hi h + b_hi) ..."""
    spec = make_spec("lstm", ())
    params, x, states, _ = random_backend_case(spec, 1, B, 1, np.float64, 15)
    p, (h0, c0) = params[0], states[0]
    a = x[0] @ p["weight_ih"].T + p["bias_ih"] + h0 @ p["weight_hh"].T + p["bias_hh"]
    a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)
    (trace,) = reference.layer_trace(spec, params, x, states, None, (False,), 1)
    for name, expected in (("i", cells.sigmoid(a_i)), ("f", cells.sigmoid(a_f)), ("g", np.tanh(a_g)),
                           ("o", cells.sigmoid(a_o))):
        np.testing.assert_allclose(trace[name][0], expected, rtol=1e-13)
