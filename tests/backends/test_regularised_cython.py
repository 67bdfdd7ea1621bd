"""The compiled backend's regularised and normalised cells (zoneout, recurrent dropout,
layer norm) against an oracle, and the bits they keep: threads, streams, layouts.

The oracle is the cells' equations (API.md, "Regularised and normalised cells") written
step by step in PyTorch, float64, with autograd for every gradient: it shares no code
with the kernels. float64 agrees to 1e-10 of the largest magnitude (the same operations
in another order, over a few steps); float32 to 1e-5 (its eps 1.2e-7 grown over the
steps, the sums and LN's statistics), the project's stated float32 agreement. The data
are of order 1 (x, states and dy standard normal), so a result whose largest magnitude
is below 1e-3 (the gradient through a layer norm of one unit, which cancels to rounding
noise) is held to 1e-3 as its scale."""
from dataclasses import replace

import numpy as np
import pytest

from rnncore.core.spec import LAYER_NORM_EPS, CellSpec

from cases import random_backend_case as _random_case
from conftest import assert_close

torch = pytest.importorskip("torch")
_recurrent = pytest.importorskip("rnncore.backends.cython._recurrent", reason="the compiled extension is not built here")
cython_backend = pytest.importorskip("rnncore.backends.cython.backend", reason="the compiled extension is not built here")


# -- the oracle ------------------------------------------------------------------------

def _ln(v, gain, shift=0.0):
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    return gain * (v - mean) / torch.sqrt(var + LAYER_NORM_EPS) + shift


def _cell(spec, p, x_t, h, c, h_in):
    """(h~, c~): one step of the plain or layer-normalised cell from the carried h, c;
    the recurrent products read h_in (h, or h * the recurrent dropout's mask)."""
    H = spec.hidden_size
    b = (lambda name: p[name]) if spec.bias else (lambda name: 0.0)
    ax, ah = x_t @ p["weight_ih"].T, h_in @ p["weight_hh"].T
    if spec.kind == "rnn":
        a = ax + b("bias_ih") + ah + b("bias_hh")
        return (torch.tanh(a) if spec.nonlinearity == "tanh" else torch.relu(a)), None
    if spec.layer_norm:
        ax, ah = _ln(ax, p["weight_ih_ln"]), _ln(ah, p["weight_hh_ln"])
    if spec.kind == "lstm":
        a = ax + ah + b("bias_ih") + b("bias_hh")
        if spec.coupled_input_forget:
            a_i, a_g, a_o = a.split(H, -1)
        else:
            a_i, a_f, a_g, a_o = a.split(H, -1)
        if spec.peephole:
            a_i = a_i + p["weight_ci"] * c
            if not spec.coupled_input_forget:
                a_f = a_f + p["weight_cf"] * c
        i = torch.sigmoid(a_i)
        f = 1 - i if spec.coupled_input_forget else torch.sigmoid(a_f)
        c_new = f * c + i * torch.tanh(a_g)
        if spec.peephole:
            a_o = a_o + p["weight_co"] * c_new
        shown = _ln(c_new, p["weight_c_ln"], p["bias_c_ln"]) if spec.layer_norm else c_new
        m = torch.sigmoid(a_o) * torch.tanh(shown)
        return (m @ p["weight_hr"].T if spec.proj_size else m), c_new
    gx = ax + b("bias_ih")
    if spec.reset_after:
        gh = ah + b("bias_hh")
        r = torch.sigmoid(gx[:, :H] + gh[:, :H])
        z = torch.sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
    else:
        w, bh = p["weight_hh"], b("bias_hh")
        rz = ah[:, :2 * H] + (bh[:2 * H] if spec.bias else 0.0)
        r = torch.sigmoid(gx[:, :H] + rz[:, :H])
        z = torch.sigmoid(gx[:, H:2 * H] + rz[:, H:])
        n = torch.tanh(gx[:, 2 * H:] + (r * h_in) @ w[2 * H:].T + (bh[2 * H:] if spec.bias else 0.0))
    return (1 - z) * n + z * h, None


def _direction(spec, p, x, state, lengths, reverse, masks):
    """y (T, B, P) and the final states of one direction, by the equations."""
    T, B, _ = x.shape
    lengths = torch.full((B,), T) if lengths is None else torch.as_tensor(lengths)
    h, c = state[0], (state[1] if spec.kind == "lstm" else None)
    ys = [None] * T
    rows = torch.arange(B)
    out = torch.zeros(T, B, spec.out_size, dtype=x.dtype)
    for s in range(T):
        active = (s < lengths)[:, None]
        t = (lengths - 1 - s).clamp(min=0) if reverse else torch.full((B,), s)
        t = torch.where(active[:, 0], t, torch.zeros_like(t))
        h_in = h * masks["recurrent"] if "recurrent" in masks else h
        h_new, c_new = _cell(spec, p, x[t, rows], h, c, h_in)
        if spec.zoneout_h or "zoneout_h" in masks:
            w = masks["zoneout_h"][t, rows] if "zoneout_h" in masks else spec.zoneout_h
            h_new = w * h + (1 - w) * h_new
        if c is not None and (spec.zoneout_c or "zoneout_c" in masks):
            w = masks["zoneout_c"][t, rows] if "zoneout_c" in masks else spec.zoneout_c
            c_new = w * c + (1 - w) * c_new
        ys[s] = (t, active, h_new)
        h = torch.where(active, h_new, h)
        if c is not None:
            c = torch.where(active, c_new, c)
    for t, active, h_new in ys:
        out = out.index_put((t, rows), torch.where(active, h_new, out[t, rows]))
    return out, ((h, c) if c is not None else (h,))


def _oracle(spec, params, x, states, lengths, reverse, masks, dy, dsn):
    """(y, states_n, dx, dstates0, grads), float64, by autograd through the equations."""
    as_t = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
    tp = [{k: as_t(v) for k, v in p.items()} for p in params]
    tx = as_t(x)
    ts = [tuple(as_t(a) for a in st) for st in states]
    tm = [{k: torch.tensor(np.asarray(v, np.float64)) for k, v in (m or {}).items()} for m in masks]
    ys, sns = zip(*[_direction(spec, p, tx, st, lengths, rev, m) for p, st, rev, m in zip(tp, ts, reverse, tm)])
    y = torch.cat(ys, -1)
    loss = (y * torch.tensor(np.asarray(dy, np.float64))).sum()
    for sn, dsn_d in zip(sns, dsn):
        for a, g in zip(sn, dsn_d):
            loss = loss + (a * torch.tensor(np.asarray(g, np.float64))).sum()
    loss.backward()
    grads = [{k: v.grad.numpy() for k, v in p.items()} for p in tp]
    return (y.detach().numpy(), [[a.detach().numpy() for a in sn] for sn in sns], tx.grad.numpy(),
            [[a.grad.numpy() for a in st] for st in ts], grads)


# -- the cases -------------------------------------------------------------------------

def _masks(spec, T, B, directions, rng, dtype, which):
    """Per direction, the masks `which` names, drawn as the layers draw them."""
    out = []
    for _ in range(directions):
        m = {}
        if "zoneout_h" in which:
            m["zoneout_h"] = (rng.random((T, B, spec.out_size)) < 0.4).astype(dtype)
        if "zoneout_c" in which and spec.kind == "lstm":
            m["zoneout_c"] = (rng.random((T, B, spec.hidden_size)) < 0.3).astype(dtype)
        if "recurrent" in which:
            keep = rng.random((B, spec.out_size)) >= 0.25
            m["recurrent"] = (keep / 0.75).astype(dtype)
        out.append(m)
    return out


def _variants(kind, H=7, I=5):
    base = dict(rnn=[dict(), dict(nonlinearity="relu")],
                lstm=[dict(), dict(proj_size=3), dict(peephole=True), dict(coupled_input_forget=True),
                      dict(proj_size=3, peephole=True, coupled_input_forget=True), dict(bias=False)],
                gru=[dict(reset_after=True), dict(reset_after=False), dict(reset_after=True, bias=False)])[kind]
    options = [dict(zoneout_h=0.3, zoneout_c=0.2 if kind == "lstm" else 0.0), dict(recurrent_dropout=0.25),
               dict(zoneout_h=0.4, recurrent_dropout=0.25)]
    if kind != "rnn":
        options += [dict(layer_norm=True), dict(layer_norm=True, zoneout_h=0.3, zoneout_c=0.1 if kind == "lstm"
                                                 else 0.0, recurrent_dropout=0.2)]
    specs = []
    for variant in base:
        for option in options:
            if option.get("layer_norm") and kind == "gru" and not variant["reset_after"]:
                continue
            specs.append(CellSpec(kind, I, H, **variant, **option))
    return specs


SPECS = _variants("rnn") + _variants("lstm") + _variants("gru")


def _spec_id(s):
    parts = [s.kind, f"H{s.hidden_size}"]
    parts += [name for name, on in (("proj", s.proj_size), ("peep", s.peephole), ("cifg", s.coupled_input_forget),
                                    ("before", s.kind == "gru" and not s.reset_after), ("nobias", not s.bias),
                                    ("relu", s.nonlinearity == "relu"), ("ln", s.layer_norm)) if on]
    parts += [f"zo{s.zoneout_h}-{s.zoneout_c}"] if s.zoneout else []
    parts += [f"rd{s.recurrent_dropout}"] if s.recurrent_dropout else []
    return "-".join(parts)


def _which(spec, masked):
    """The masks a training call of `spec` passes (none: the deterministic form)."""
    if not masked:
        return ()
    return (("zoneout_h", "zoneout_c") if spec.zoneout else ()) + (("recurrent",) if spec.recurrent_dropout else ())


def _run(spec, dtype, T, B, lengths, directions, masked, seed, threads=1):
    params, x, states, rng = _random_case(spec, T, B, directions, dtype, seed)
    masks = _masks(spec, T, B, directions, rng, dtype, _which(spec, masked))
    reverse = (False, True)[:directions]
    y, sn, ctx = cython_backend.layer_forward(spec, params, x, states, lengths, True, reverse, threads, masks)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dsn = [tuple(rng.standard_normal(a.shape).astype(dtype) for a in st) for st in states]
    dx, ds0, grads = cython_backend.layer_backward(ctx, dy, dsn, threads)
    return (params, x, states, masks, reverse, dy, dsn), (y, sn, dx, ds0, grads)


def _close(actual, expected, dtype, what, rtol32=1e-5):
    assert actual.shape == expected.shape, what
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-3)
    err = float(np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0))
    rtol = 1e-10 if dtype == np.float64 else rtol32
    assert err <= rtol * scale, f"{what}: max abs error {err:.3e} exceeds {rtol:.0e} x scale {scale:.3e}"


def _check(spec, dtype, T, B, lengths, directions, masked, seed):
    (params, x, states, masks, reverse, dy, dsn), (y, sn, dx, ds0, grads) = _run(
        spec, dtype, T, B, lengths, directions, masked, seed)
    y_o, sn_o, dx_o, ds0_o, grads_o = _oracle(spec, params, x, states, lengths, reverse, masks, dy, dsn)
    # a layer norm over a row of 3 or 4 values (H = 1) scales float32's rounding by
    # 1/std of so few values: 5e-5 there
    rtol32 = 5e-5 if spec.layer_norm and spec.hidden_size == 1 else 1e-5
    _close(y, y_o, dtype, rtol32=rtol32, what="y")
    _close(dx, dx_o, dtype, rtol32=rtol32, what="dx")
    for d in range(directions):
        for a, b in zip(sn[d], sn_o[d]):
            _close(a, b, dtype, rtol32=rtol32, what=f"final state {d}")
        for a, b in zip(ds0[d], ds0_o[d]):
            _close(a, b, dtype, rtol32=rtol32, what=f"initial-state gradient {d}")
        assert set(grads[d]) == set(grads_o[d])
        for k in grads_o[d]:
            _close(grads[d][k], grads_o[d][k], dtype, rtol32=rtol32, what=f"{k} ({d})")


@pytest.mark.parametrize("masked", [False, True], ids=["expectation", "masks"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
def test_every_option_matches_the_equations(spec, dtype, masked):
    """Both directions, lengths and initial states, training forward and every gradient,
    with the masks a training call draws or in the deterministic form (zoneout's
    expectation, no dropout)."""
    _check(spec, dtype, 5, 4, np.array([5, 2, 4, 1]), 2, masked, 3)


_EDGE_SPECS = [CellSpec("lstm", 3, H, layer_norm=True, zoneout_h=0.2, zoneout_c=0.3, recurrent_dropout=0.3,
                        peephole=True) for H in (1, 33, 65)] + \
              [CellSpec("gru", 3, H, layer_norm=True, zoneout_h=0.2, recurrent_dropout=0.3) for H in (1, 33, 65)] + \
              [CellSpec("rnn", 3, H, zoneout_h=0.5, recurrent_dropout=0.1) for H in (1, 65)] + \
              [CellSpec("gru", 3, 33, reset_after=False, zoneout_h=0.5, recurrent_dropout=0.1),
               CellSpec("lstm", 3, 33, proj_size=7, layer_norm=True, zoneout_h=0.2, recurrent_dropout=0.3)]


@pytest.mark.parametrize("T, B, lengths", [(1, 1, None), (3, 1, None), (1, 3, None), (4, 6, [4, 4, 3, 1, 2, 4])])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", _EDGE_SPECS, ids=_spec_id)
def test_edges_of_shapes(spec, dtype, T, B, lengths):
    """T = 1, B = 1, H = 1 and widths on both sides of a panel and a block (33, 65),
    one direction and two, with masks."""
    lengths = None if lengths is None else np.array(lengths)
    _check(spec, dtype, T, B, lengths, 2 if B > 1 else 1, True, 7)


def _flat(result):
    """y, the final states, dx, the initial states' gradients, the weights' gradients."""
    y, sn, dx, ds0, grads = result
    return [y] + [a for st in sn for a in st] + [dx] + [a for st in ds0 for a in st] + \
        [g[k] for g in grads for k in sorted(g)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", [s for s in _EDGE_SPECS if s.hidden_size == 33] + [
    CellSpec("lstm", 4, 9, layer_norm=True, zoneout_h=0.1, zoneout_c=0.2, coupled_input_forget=True)], ids=_spec_id)
def test_threads_give_the_bits_of_one(spec, dtype, monkeypatch):
    """Row slices over 2 and 4 threads, forward and backward (the weight gradients and the
    layer norm's sums split between the threads too), with lengths: the bits of one
    thread (every per-row store and mask moves with its slice)."""
    monkeypatch.setattr(cython_backend, "MIN_SLICE_WORK", 1)
    monkeypatch.setattr(cython_backend, "MIN_GRADIENT_WORK", 1)
    monkeypatch.setattr(cython_backend, "MIN_SLICE_ROWS", 2)
    monkeypatch.setattr(cython_backend, "MIN_PROJECTION_ROWS", 8)
    lengths = np.array([6, 2, 5, 1, 6, 3, 4, 6, 2, 1, 5])
    runs = [_flat(_run(spec, dtype, 6, 11, lengths, 2, True, 5, threads)[1]) for threads in (1, 2, 4)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


_INFERENCE_SPECS = [
    CellSpec("lstm", 3, 65, zoneout_h=0.3, zoneout_c=0.2),          # blocked, input in the steps
    CellSpec("lstm", 300, 65, zoneout_h=0.3, zoneout_c=0.2, peephole=True),   # blocked, projection read
    CellSpec("lstm", 3, 65, proj_size=7, zoneout_h=0.3, zoneout_c=0.1),
    CellSpec("gru", 3, 129, zoneout_h=0.25),
    CellSpec("lstm", 3, 65, layer_norm=True, zoneout_h=0.3, zoneout_c=0.2),
    CellSpec("gru", 3, 65, layer_norm=True, zoneout_h=0.3, recurrent_dropout=0.5),
    CellSpec("rnn", 3, 65, zoneout_h=0.3),
    CellSpec("gru", 3, 33, reset_after=False, zoneout_h=0.3),
]


@pytest.mark.parametrize("B", [1, 5, 70])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", _INFERENCE_SPECS, ids=_spec_id)
def test_inference_gives_the_bits_of_training(spec, dtype, B):
    """Inference (zoneout's expectation blended block by block where the cell runs by
    blocks; layer norm on whole rows) and the deterministic training forward: the same
    bits, and the equations' numbers. The layouts are the ones the spec should get."""
    params, x, states, _ = _random_case(spec, 4, B, 2, dtype, 13)
    blocked, _ = cython_backend._layout(spec, False, B)
    GH = spec.num_gates * spec.hidden_size
    assert blocked == (spec.kind != "rnn" and not spec.layer_norm and (spec.kind != "gru" or spec.reset_after)
                       and B * GH * (spec.input_size + spec.out_size) >= 32768)
    y, sn, _ = cython_backend.layer_forward(spec, params, x, states, None, False, (False, True), 1)
    y_t, sn_t, _ = cython_backend.layer_forward(spec, params, x, states, None, True, (False, True), 1)
    np.testing.assert_array_equal(y, y_t)
    for a, b in zip([s for st in sn for s in st], [s for st in sn_t for s in st]):
        np.testing.assert_array_equal(a, b)
    zeros = [tuple(np.zeros_like(a) for a in st) for st in states]
    y_o, sn_o, *_ = _oracle(spec, params, x, states, None, (False, True), [{}, {}], np.zeros_like(y), zeros)
    assert_close(y, y_o, dtype, what="y")


def test_the_inference_layouts_occur():
    seen = {cython_backend._layout(spec, False, B) for spec in _INFERENCE_SPECS for B in (1, 5, 70)}
    assert seen == {(False, False), (True, True), (True, False)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", [s for s in _INFERENCE_SPECS if not s.recurrent_dropout] + [
    CellSpec("lstm", 3, 9, layer_norm=True, proj_size=4, peephole=True, zoneout_h=0.2, zoneout_c=0.5)],
    ids=_spec_id)
def test_streams_and_steps_equal_the_call(spec, dtype):
    """A stream (the compiled StepStack over one-step plans) and one-step calls carrying
    the state give the bits of one inference call: zoneout's expectation, layer norm."""
    T, B = 6, 3
    params, x, states, _ = _random_case(spec, T, B, 1, dtype, 17)
    zero = [tuple(np.zeros_like(a) for a in states[0])]
    y, sn, _ = cython_backend.layer_forward(spec, params, x, zero, None, False, (False,), 1)
    stack = cython_backend.open_stream([spec], [{k: v.copy() for k, v in params[0].items()}], B, dtype, 1)
    out = np.empty((T, B, spec.out_size), dtype)
    stack.run(x, out)
    np.testing.assert_array_equal(out, y)
    state = zero[0]
    for t in range(T):
        y_t, (state,), _ = cython_backend.layer_forward(spec, params, x[t:t + 1], [state], None, False, (False,), 1)
        np.testing.assert_array_equal(y_t[0], y[t], err_msg=f"step {t}")
    for a, b in zip(state, sn[0]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spec", [CellSpec("lstm", 3, 9, proj_size=4, peephole=True),
                                  CellSpec("gru", 3, 9), CellSpec("gru", 3, 9, reset_after=False),
                                  CellSpec("rnn", 3, 9)], ids=_spec_id)
def test_masks_at_their_limits(spec):
    """Zoneout masks of ones keep the initial state at every step (p = 1); a recurrent
    mask of ones and zoneout masks of zeros give the plain cell's bits forward, and its
    numbers backward (the GRU's masked gradient sums its two shares of dh in another
    order); masks=None and an empty dict are one call, bit for bit."""
    T, B = 5, 4
    zoned = replace(spec, zoneout_h=0.5, zoneout_c=0.5 if spec.kind == "lstm" else 0.0, recurrent_dropout=0.5)
    params, x, states, rng = _random_case(spec, T, B, 1, np.float64, 23)
    keep = {"zoneout_h": np.ones((T, B, spec.out_size))}
    if spec.kind == "lstm":
        keep["zoneout_c"] = np.ones((T, B, spec.hidden_size))
    y, sn, _ = cython_backend.layer_forward(zoned, params, x, states, None, True, (False,), 1, [keep])
    np.testing.assert_array_equal(y, np.broadcast_to(states[0][0], y.shape))
    for a, b in zip(sn[0], states[0]):
        np.testing.assert_array_equal(a, b)
    neutral = {name: np.zeros_like(m) for name, m in keep.items()}
    neutral["recurrent"] = np.ones((B, spec.out_size))
    dy = rng.standard_normal((T, B, spec.out_size))
    dsn = [tuple(rng.standard_normal(a.shape) for a in states[0])]
    runs = []
    for s, masks in ((spec, None), (spec, [{}]), (zoned, [neutral])):
        y, sn, ctx = cython_backend.layer_forward(s, params, x, states, None, True, (False,), 1, masks)
        runs.append(_flat((y, sn) + tuple(cython_backend.layer_backward(ctx, dy, dsn, 1))))
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a, b)
    for k, (a, b) in enumerate(zip(runs[0], runs[2])):
        if k <= len(sn[0]):
            np.testing.assert_array_equal(a, b)
        else:
            assert_close(b, a, rtol=1e-13, what=f"gradient {k}")
