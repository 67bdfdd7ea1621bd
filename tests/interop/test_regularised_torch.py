"""The regularised cells against PyTorch autograd: the layer-norm LSTM and GRU, zoneout,
recurrent dropout and weight dropout, written here as a plain loop of torch operations
in float64 straight from the formulas of docs/api.md ("Regularised and normalised
cells"), fed the weights of an rnncore layer and the masks that layer draws (from a copy
of its generator, in the order `regularise.draw` documents), and compared with the
layer: outputs, final states, and every gradient (autograd against `backward`); the
evaluation forms and the gate traces against the same loop without masks; the cells
against one step of it.

The torch loop knows nothing of rnncore's backends: one step per equation, lengths by
keeping the state past each sequence's end and giving zero output there, the reverse
direction run from each sequence's own last valid step, a mask of time index t applied
at time index t whichever direction reads it.

Tolerance: float64 to 1e-10 relative to the largest magnitude of torch's array
(conftest's RTOL): the same equations in a different order of operations agree to a few
hundred ulps of 2.2e-16 over these short sequences.
"""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnncore as rc  # noqa: E402
from conftest import assert_close  # noqa: E402
from rnncore.core import regularise  # noqa: E402

T, B, I, H = 6, 3, 4, 5
LENGTHS = np.array([T, 2, 4])
EPS = 1e-5   # LN's epsilon, docs/api.md


# -- the cells in torch, from the formulas -------------------------------------------------

def ln(v, gain, shift=None):
    """LN(v; g, b) = g * (v - mean(v)) / sqrt(var(v) + 1e-5) + b, over each row, biased var."""
    centred = v - v.mean(dim=1, keepdim=True)
    out = gain * centred / torch.sqrt((centred * centred).mean(dim=1, keepdim=True) + EPS)
    return out if shift is None else out + shift


def affine(v, weight, bias):
    """v W^T + b, b optional."""
    out = v @ weight.T
    return out if bias is None else out + bias


def lstm_candidates(opt, p, x, h_prev, c_prev, w_hh, rec):
    """(h~_t, c~_t, gates) of one LSTM step; `rec` the recurrent-dropout mask or None."""
    h_in = h_prev if rec is None else h_prev * rec
    if opt["layer_norm"]:
        a = ln(x @ p["weight_ih"].T, p["weight_ih_ln"]) + ln(h_in @ w_hh.T, p["weight_hh_ln"])
        for name in ("bias_ih", "bias_hh"):
            if name in p:
                a = a + p[name]
    else:
        a = affine(x, p["weight_ih"], p.get("bias_ih")) + affine(h_in, w_hh, p.get("bias_hh"))
    if opt["coupled_input_forget"]:
        a_i, a_g, a_o = a.chunk(3, dim=1)
    else:
        a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
    if opt["peephole"]:
        a_i = a_i + p["weight_ci"] * c_prev
        if not opt["coupled_input_forget"]:
            a_f = a_f + p["weight_cf"] * c_prev
    i = torch.sigmoid(a_i)
    f = 1 - i if opt["coupled_input_forget"] else torch.sigmoid(a_f)
    g = torch.tanh(a_g)
    c = f * c_prev + i * g
    if opt["peephole"]:
        a_o = a_o + p["weight_co"] * c
    o = torch.sigmoid(a_o)
    squashed = torch.tanh(ln(c, p["weight_c_ln"], p["bias_c_ln"]) if opt["layer_norm"] else c)
    h = o * squashed
    if opt["proj_size"]:
        h = h @ p["weight_hr"].T
    return h, c, dict(i=i, f=f, g=g, o=o)


def gru_candidate(opt, p, x, h_prev, w_hh, rec):
    """(h~_t, gates) of one GRU step: r, z, n from gx and gh (layer norm), or the products."""
    h_in = h_prev if rec is None else h_prev * rec
    b_ih, b_hh = p.get("bias_ih"), p.get("bias_hh")
    if opt["layer_norm"]:
        gx = ln(x @ p["weight_ih"].T, p["weight_ih_ln"]) + (0 if b_ih is None else b_ih)
        gh = ln(h_in @ w_hh.T, p["weight_hh_ln"]) + (0 if b_hh is None else b_hh)
    else:
        gx = affine(x, p["weight_ih"], b_ih)
    x_r, x_z, x_n = gx.chunk(3, dim=1)
    if opt["reset_after"]:
        if not opt["layer_norm"]:
            gh = affine(h_in, w_hh, b_hh)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
    else:
        w_r, w_z, w_n = w_hh.chunk(3, dim=0)
        b_r, b_z, b_n = (None, None, None) if b_hh is None else b_hh.chunk(3)
        r = torch.sigmoid(x_r + affine(h_in, w_r, b_r))
        z = torch.sigmoid(x_z + affine(h_in, w_z, b_z))
        n = torch.tanh(x_n + affine(r * h_in, w_n, b_n))
    return (1 - z) * n + z * h_prev, dict(r=r, z=z, n=n)


def rnn_candidate(opt, p, x, h_prev, w_hh, rec):
    h_in = h_prev if rec is None else h_prev * rec
    a = affine(x, p["weight_ih"], p.get("bias_ih")) + affine(h_in, w_hh, p.get("bias_hh"))
    return (torch.tanh(a) if opt["nonlinearity"] == "tanh" else torch.relu(a)), {}


def zone(w, prev, new):
    """h_t = w * h_{t-1} + (1 - w) * h~_t; w a 0/1 mask, the probability p, or None."""
    return new if w is None else w * prev + (1 - w) * new


def direction(opt, p, x, state0, lengths, reverse, masks, zoneout_p):
    """One direction over x (T, B, I): y (T, B, out), the final states, the gates per
    time index. masks: {"weight", "recurrent", "zoneout_h", "zoneout_c"} (missing: off);
    zoneout_p: (p_h, p_c) for the expectation where no zoneout mask is given."""
    steps, batch = x.shape[0], x.shape[1]
    # order[s, b]: the time index row b reads at loop step s (the reverse direction runs
    # from each sequence's own last valid step down to 0, its padded tail left as it is)
    s = np.arange(steps)[:, None]
    order = np.where(s < lengths[None], lengths[None] - 1 - s, s) if reverse else np.repeat(s, batch, axis=1)
    rows = np.arange(batch)

    def read(array, s):
        return array[order[s], rows]

    w_hh = p["weight_hh"] if "weight" not in masks else p["weight_hh"] * masks["weight"]
    rec = masks.get("recurrent")
    state = list(state0)
    outputs, gates = [None] * steps, [None] * steps
    for step in range(steps):
        x_t = read(x, step)
        w_h = read(masks["zoneout_h"], step) if "zoneout_h" in masks else zoneout_p[0] or None
        if opt["kind"] == "lstm":
            w_c = read(masks["zoneout_c"], step) if "zoneout_c" in masks else zoneout_p[1] or None
            h_new, c_new, found = lstm_candidates(opt, p, x_t, state[0], state[1], w_hh, rec)
            new = [zone(w_h, state[0], h_new), zone(w_c, state[1], c_new)]
            found["c"] = new[1]
        else:
            step_fn = gru_candidate if opt["kind"] == "gru" else rnn_candidate
            h_new, found = step_fn(opt, p, x_t, state[0], w_hh, rec)
            new = [zone(w_h, state[0], h_new)]
            if opt["kind"] == "rnn":
                found["h"] = new[0]
        valid = torch.as_tensor(step < lengths)[:, None]
        state = [torch.where(valid, n, old) for n, old in zip(new, state)]
        outputs[step] = torch.where(valid, new[0], torch.zeros_like(new[0]))
        gates[step] = {name: torch.where(valid, g, torch.zeros_like(g)) for name, g in found.items()}
    # back from loop steps to time indices: order is, per row, a permutation of range(T)
    back = np.argsort(order, axis=0)
    by_step = torch.stack(outputs)
    trace = {name: torch.stack([g[name] for g in gates])[back, rows] for name in gates[0]}
    return by_step[back, rows], state, trace


def stack(opt, params, x, states, lengths, layer_masks, between, zoneout_p):
    """The stacked, optionally bidirectional layer: y, the final states (rows layer-major,
    direction-minor), the traces keyed "l0", "l0_reverse", ...; `between[k]` the dropout
    mask of layer k's output, or None."""
    D = 2 if opt["bidirectional"] else 1
    finals = [[] for _ in states]
    traces = {}
    layer_input = x
    for k in range(opt["num_layers"]):
        halves = []
        for d in range(D):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            p = {base[:-len(suffix)]: value for base, value in params.items() if base.endswith(suffix)}
            y, state, trace = direction(opt, p, layer_input, [s[k * D + d] for s in states], lengths, bool(d),
                                        layer_masks[k][d], zoneout_p)
            halves.append(y)
            for final, value in zip(finals, state):
                final.append(value)
            traces[suffix[1:]] = trace
        layer_input = torch.cat(halves, dim=2)
        if between[k] is not None:
            layer_input = layer_input * between[k]
    return layer_input, [torch.stack(f) for f in finals], traces


# -- the rnncore side, and the masks it draws ------------------------------------------------

def options(spec, num_layers=1, bidirectional=False):
    """What the torch loop needs to know of a layer's (or cell's) configuration."""
    return dict(kind=spec.kind, layer_norm=spec.layer_norm, proj_size=spec.proj_size, peephole=spec.peephole,
                coupled_input_forget=spec.coupled_input_forget, reset_after=spec.reset_after,
                nonlinearity=spec.nonlinearity, num_layers=num_layers, bidirectional=bidirectional)


def drawn_masks(layer, rng, steps, batch):
    """The masks a training call of `layer` draws, from `rng` (a copy of its generator):
    per layer and direction {name: tensor}, and the dropout masks between layers, drawn
    in the layer's order (this layer's cell masks, then the dropout mask of its output)."""
    D = layer.num_directions
    layer_masks, between = [], []
    for k, spec in enumerate(layer.specs):
        per_direction = [{} for _ in range(D)]
        if regularise.random(spec):
            masks, weight_masks = regularise.draw(rng, spec, steps, batch, np.float64, D)
            for d in range(D):
                per_direction[d] = {name: torch.tensor(m) for name, m in masks[d].items()}
                if weight_masks[d] is not None:
                    per_direction[d]["weight"] = torch.tensor(weight_masks[d])
        layer_masks.append(per_direction)
        mask = None
        if layer.dropout > 0 and k < layer.num_layers - 1:
            keep = 1.0 - layer.dropout
            mask = torch.tensor((rng.random((steps, batch, D * spec.out_size)) < keep) / keep)
        between.append(mask)
    return layer_masks, between


def make(cls, kwargs, num_layers, bidirectional, seed=0):
    """A float64 numpy-backend layer whose parameters (the layer norm's gains and shifts
    too) are moved off their starting values, so every one of them matters."""
    layer = cls(I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=np.float64, seed=seed,
                backend="numpy", **kwargs)
    rng = np.random.default_rng(seed + 100)
    for value in layer.parameters().values():
        value += rng.uniform(-0.3, 0.3, value.shape)
    return layer


def inputs(layer, with_states, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I))
    rows = layer.num_layers * layer.num_directions
    states = [rng.standard_normal((rows, B, w)) for w in layer.specs[0].state_sizes] if with_states else None
    return x, states, rng


def batch_major(layer, array):
    """A time-major (T, B, n) array as the layer takes and gives it."""
    return np.ascontiguousarray(array.transpose(1, 0, 2)) if layer.batch_first else array


def rc_call(layer, x, states, lengths):
    """y (time-major) and the final states of a layer call on time-major x."""
    if isinstance(layer, rc.LSTM):
        y, finals = layer(batch_major(layer, x), None if states is None else tuple(states), lengths=lengths)
        return batch_major(layer, y), list(finals)
    y, h_n = layer(batch_major(layer, x), None if states is None else states[0], lengths=lengths)
    return batch_major(layer, y), [h_n]


def rc_backward(layer, dy, dfinals):
    """dx (time-major) and the initial states' gradients from time-major dy."""
    if isinstance(layer, rc.LSTM):
        dx, dstates = layer.backward(batch_major(layer, dy), tuple(dfinals))
        return batch_major(layer, dx), list(dstates)
    dx, dh0 = layer.backward(batch_major(layer, dy), dfinals[0])
    return batch_major(layer, dx), [dh0]


def leaf(array):
    return torch.tensor(array, dtype=torch.float64, requires_grad=True)


def torch_side(layer, x, states, lengths, layer_masks, between):
    """The torch loop's leaves and its y, finals and traces, on the layer's parameters."""
    params = {name: leaf(value) for name, value in layer.parameters().items()}
    x_t = leaf(x)
    widths = layer.specs[0].state_sizes
    rows = layer.num_layers * layer.num_directions
    states_t = [leaf(s) for s in states] if states is not None else [torch.zeros(rows, B, w, dtype=torch.float64)
                                                                     for w in widths]
    spec = layer.specs[0]
    y, finals, traces = stack(options(spec, layer.num_layers, layer.bidirectional), params, x_t, states_t, lengths,
                              layer_masks, between, (spec.zoneout_h, spec.zoneout_c))
    return params, x_t, states_t, y, finals, traces


# (class, constructor kwargs, num_layers, bidirectional, initial states, lengths): a
# covering set; every option meets two layers, both directions, lengths and states
CASES = [
    # the layer-norm LSTM, every variant
    (rc.LSTM, dict(layer_norm=True), 2, True, True, True),
    (rc.LSTM, dict(layer_norm=True, proj_size=3), 2, True, False, True),
    (rc.LSTM, dict(layer_norm=True, peephole=True), 2, False, True, True),
    (rc.LSTM, dict(layer_norm=True, coupled_input_forget=True), 1, True, True, True),
    (rc.LSTM, dict(layer_norm=True, bias=False), 2, True, True, False),
    (rc.LSTM, dict(layer_norm=True, proj_size=2, peephole=True, coupled_input_forget=True, bias=False),
     2, True, True, True),
    # the layer-norm GRU (reset after)
    (rc.GRU, dict(layer_norm=True), 2, True, True, True),
    (rc.GRU, dict(layer_norm=True, bias=False), 1, False, True, False),
    # zoneout
    (rc.LSTM, dict(zoneout=(0.3, 0.6)), 2, True, True, True),
    (rc.LSTM, dict(zoneout=0.4, proj_size=3, peephole=True), 1, True, True, True),
    (rc.GRU, dict(zoneout=0.35), 2, True, True, True),
    (rc.GRU, dict(zoneout=0.5, reset_after=False), 1, True, False, True),
    (rc.RNN, dict(zoneout=0.5), 2, True, True, True),
    (rc.RNN, dict(zoneout=0.3, nonlinearity="relu"), 1, False, True, True),
    # recurrent dropout
    (rc.GRU, dict(recurrent_dropout=0.4), 2, True, True, True),
    (rc.GRU, dict(recurrent_dropout=0.4, reset_after=False), 2, True, True, True),
    (rc.LSTM, dict(recurrent_dropout=0.3, proj_size=3, peephole=True), 2, True, True, True),
    (rc.LSTM, dict(recurrent_dropout=0.5, coupled_input_forget=True), 1, False, True, False),
    (rc.RNN, dict(recurrent_dropout=0.5, nonlinearity="relu"), 1, True, True, True),
    # weight dropout
    (rc.LSTM, dict(weight_dropout=0.4), 2, True, True, True),
    (rc.GRU, dict(weight_dropout=0.5, reset_after=False), 1, True, True, True),
    (rc.GRU, dict(weight_dropout=0.3, layer_norm=True), 2, False, False, True),
    (rc.RNN, dict(weight_dropout=0.4), 2, True, True, False),
    # everything at once, with dropout between the layers
    (rc.LSTM, dict(layer_norm=True, zoneout=(0.2, 0.4), recurrent_dropout=0.3, weight_dropout=0.3, dropout=0.3,
                   proj_size=3, peephole=True), 2, True, True, True),
    (rc.LSTM, dict(layer_norm=True, zoneout=0.25, recurrent_dropout=0.2, weight_dropout=0.2,
                   coupled_input_forget=True, batch_first=True), 2, True, True, True),
    (rc.GRU, dict(layer_norm=True, zoneout=0.3, recurrent_dropout=0.3, weight_dropout=0.4, dropout=0.2),
     2, True, True, True),
    (rc.GRU, dict(zoneout=0.3, recurrent_dropout=0.3, weight_dropout=0.4, reset_after=False, batch_first=True),
     2, True, True, True),
    (rc.RNN, dict(zoneout=0.3, recurrent_dropout=0.4, weight_dropout=0.3, dropout=0.5), 2, True, True, True),
]
CASE_IDS = ["{}-{}-L{}-{}-{}-{}".format(cls.__name__, "-".join(f"{k}={v}" for k, v in kw.items()), L,
                                        "bi" if bi else "uni", "h0" if st else "noh0", "len" if ln else "full")
            for cls, kw, L, bi, st, ln in CASES]


@pytest.mark.parametrize("cls, kwargs, num_layers, bidirectional, with_states, with_lengths", CASES, ids=CASE_IDS)
def test_training_matches_torch_autograd_with_the_layer_masks(cls, kwargs, num_layers, bidirectional, with_states,
                                                               with_lengths):
    layer = make(cls, kwargs, num_layers, bidirectional)
    x, states, rng = inputs(layer, with_states)
    lengths = LENGTHS if with_lengths else np.full(B, T)
    layer_masks, between = drawn_masks(layer, copy.deepcopy(layer._rng), T, B)

    y, finals = rc_call(layer, x, states, LENGTHS if with_lengths else None)
    dy = rng.standard_normal(y.shape)
    dfinals = [rng.standard_normal(f.shape) for f in finals]
    dx, dstates = rc_backward(layer, dy, dfinals)

    params, x_t, states_t, y_t, finals_t, _ = torch_side(layer, x, states, lengths, layer_masks, between)
    torch.autograd.backward([y_t] + finals_t, [torch.tensor(dy)] + [torch.tensor(d) for d in dfinals])

    assert_close(y, y_t.detach().numpy(), what="y")
    for name, got, want in zip(("h_n", "c_n"), finals, finals_t):
        assert_close(got, want.detach().numpy(), what=name)
    assert_close(dx, x_t.grad.numpy(), what="dx")
    if with_states:
        for name, got, want in zip(("dh0", "dc0"), dstates, states_t):
            assert_close(got, want.grad.numpy(), what=name)
    assert set(layer.grads) == set(params)
    for name, p in params.items():
        assert_close(layer.grads[name], p.grad.numpy(), what=name)
    if kwargs.get("weight_dropout"):
        dropped = layer_masks[0][0]["weight"].numpy() == 0
        assert dropped.any() and np.all(layer.grads["weight_hh_l0"][dropped] == 0)


# (class, kwargs): the options whose evaluation form is not the plain cell's
EVALUATION = [
    (rc.LSTM, dict(zoneout=(0.3, 0.6), recurrent_dropout=0.4, weight_dropout=0.3, dropout=0.3)),
    (rc.LSTM, dict(layer_norm=True, zoneout=0.4, proj_size=3, peephole=True, coupled_input_forget=True)),
    (rc.GRU, dict(zoneout=0.35, layer_norm=True, recurrent_dropout=0.2)),
    (rc.GRU, dict(zoneout=0.5, reset_after=False, weight_dropout=0.5)),
    (rc.RNN, dict(zoneout=0.45, recurrent_dropout=0.3)),
]
EVALUATION_IDS = [f"{cls.__name__}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for cls, kw in EVALUATION]


@pytest.mark.parametrize("cls, kwargs", EVALUATION, ids=EVALUATION_IDS)
def test_evaluation_is_zoneout_expectation_without_dropout_and_trace_reports_its_gates(cls, kwargs):
    """eval(): zoneout's h_t = p h_{t-1} + (1 - p) h~_t, the dropout options off; `trace`
    gives that forward's gates (zero past a sequence's end), whatever the layer's mode."""
    layer = make(cls, kwargs, 2, True)
    x, states, _ = inputs(layer, True)
    no_masks = [[{}, {}], [{}, {}]]
    _, _, _, y_t, finals_t, traces_t = torch_side(layer, x, states, LENGTHS, no_masks, [None, None])
    # traced in training mode on purpose: a trace is the evaluation form whatever the mode
    trace = (layer.trace(x, tuple(states), LENGTHS) if cls is rc.LSTM else layer.trace(x, states[0], LENGTHS))
    layer.eval()
    y, finals = rc_call(layer, x, states, LENGTHS)
    assert_close(y, y_t.detach().numpy(), what="y")
    for got, want in zip(finals, finals_t):
        assert_close(got, want.detach().numpy(), what="final state")
    assert sorted(trace) == sorted(traces_t)
    for key, gates in traces_t.items():
        assert sorted(trace[key]) == sorted(gates), key
        for name, want in gates.items():
            assert_close(trace[key][name], want.detach().numpy(), what=f"{key} {name}")


@pytest.mark.parametrize("cls, kwargs", [(rc.LSTMCell, dict(layer_norm=True, zoneout=(0.3, 0.5),
                                                            recurrent_dropout=0.3, weight_dropout=0.3,
                                                            peephole=True)),
                                         (rc.GRUCell, dict(layer_norm=True, zoneout=0.4, recurrent_dropout=0.3,
                                                           weight_dropout=0.3)),
                                         (rc.GRUCell, dict(zoneout=0.4, recurrent_dropout=0.3, reset_after=False)),
                                         (rc.RNNCell, dict(zoneout=0.5, recurrent_dropout=0.4, weight_dropout=0.4))])
def test_cells_match_one_torch_step(cls, kwargs):
    """A cell's call is a one-step sequence: its masks drawn per call (T = 1)."""
    cell = cls(I, H, dtype=np.float64, seed=2, backend="numpy", **kwargs)
    rng = np.random.default_rng(3)
    for value in cell.parameters().values():
        value += rng.uniform(-0.3, 0.3, value.shape)
    lstm = cls is rc.LSTMCell
    x = rng.standard_normal((B, I))
    states = [rng.standard_normal((B, w)) for w in cell.spec.state_sizes]
    masks, weight_masks = regularise.draw(copy.deepcopy(cell._rng), cell.spec, 1, B, np.float64, 1)
    got = cell(x, tuple(states)) if lstm else (cell(x, states[0]),)
    dnew = [rng.standard_normal(s.shape) for s in got]
    if lstm:
        dx, dstates = cell.backward(tuple(dnew))
    else:
        dx, dh0 = cell.backward(dnew[0])
        dstates = [dh0]

    params = {name: leaf(value) for name, value in cell.parameters().items()}
    given = {name: torch.tensor(m) for name, m in masks[0].items()}
    if weight_masks[0] is not None:
        given["weight"] = torch.tensor(weight_masks[0])
    x_t, states_t = leaf(x[None]), [leaf(s) for s in states]
    _, new_t, _ = direction(options(cell.spec), params, x_t, states_t, np.full(B, 1), False, given, (0.0, 0.0))
    torch.autograd.backward(new_t, [torch.tensor(d) for d in dnew])
    for a, b in zip(got, new_t):
        assert_close(a, b.detach().numpy(), what="new state")
    assert_close(dx, x_t.grad[0].numpy(), what="dx")
    for a, b in zip(dstates, states_t):
        assert_close(a, b.grad.numpy(), what="dstate")
    for name, p in params.items():
        assert_close(cell.grads[name], p.grad.numpy(), what=name)
