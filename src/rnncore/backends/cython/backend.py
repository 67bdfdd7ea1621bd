"""The compiled backend: the contract of `_reference.layer_forward/layer_backward`.

This module owns shapes and buffers; `_recurrent` (Cython) owns the loops. Per call it
builds a schedule (which slot rows each step uses; with lengths, the batch sorted by
length and packed step after step, so finished sequences cost nothing), gathers what the
schedule needs, allocates every buffer once, and hands one plan per direction to the
compiled stages: the input projection, the time loop, and (backward) the products over
all steps. Importing it fails with ImportError when the extension was not compiled, so
the registry falls back to another backend.
"""

import functools

import numpy as np

from . import _recurrent
from .. import registry

_KINDS = {"rnn": 0, "jordan": 1, "lstm": 2, "gru": 3}
_ACTIVATIONS = {"identity": 0, "tanh": 1, "relu": 2, "sigmoid": 3}

# Up to this many active rows, a step's products may run in rc_small_gemm (a
# register-tiled C kernel) instead of BLAS, whose per-call packing and dispatch dominate
# there; `_recurrent.is_small` adds the bound on the weight's size. From 4 to 32 rows:
# LSTM (100, 16, 32, 64) forward 3.2 -> 2.7 ms, GRU 2.5 -> 2.0 ms (one thread, AVX2).
SMALL_ROWS = 32

# the kernels hold the BLAS at one thread while they run, in _recurrent's section,
# which the registry configures once (see registry.blas_section)
registry.blas_section()


class _Schedule:
    """Which slot rows each loop step uses, shared by the directions of a layer.

    Without lengths (or all equal to T) step s of a direction uses the B rows of the time
    index it visits, so x, y, dy and dx are used where they lie. With lengths the batch is
    sorted by length, descending (`order`), and steps are packed: step s owns
    `active[s]` rows starting at `offsets[s]`, the sequences still running."""

    def __init__(self, T, B, lengths):
        self.T, self.B = T, B
        self._rows = {}
        self.packed = lengths is not None and int(lengths.min()) < T
        if not self.packed:
            self.S, self.N = T, T * B
            self.active = np.full(T, B, dtype=np.intc)
            self.order = None
            self.sorted_lengths = np.full(B, T, dtype=np.intp)
            return
        self.order = np.argsort(-lengths, kind="stable")
        self.sorted_lengths = lengths[self.order].astype(np.intp)
        self.S = int(self.sorted_lengths[0])
        steps = np.arange(self.S)
        self.active = np.count_nonzero(self.sorted_lengths[None, :] > steps[:, None], axis=1).astype(np.intc)
        self.offsets = np.zeros(self.S, dtype=np.intp)
        np.cumsum(self.active[:-1], out=self.offsets[1:])
        self.N = int(self.active.sum())
        self.step_of = np.repeat(steps, self.active)            # step of each packed row
        self.row_of = np.arange(self.N) - self.offsets[self.step_of]
        self.batch_of = self.order[self.row_of]                  # original batch index

    def step_rows(self, reverse):
        if self.packed:
            return self.offsets
        times = np.arange(self.T - 1, -1, -1) if reverse else np.arange(self.T)
        return times * self.B

    def last_rows_of(self, reverse):
        """`last_rows(step_rows(reverse))`, and both computed once per schedule: the
        schedule without lengths is reused across calls (see `_schedule`)."""
        key = bool(reverse)
        if key not in self._rows:
            step_row = np.ascontiguousarray(self.step_rows(reverse), dtype=np.intp)
            self._rows[key] = (step_row, self.last_rows(step_row))
        return self._rows[key]

    def times(self, reverse):
        """Time index of each packed row."""
        if reverse:
            return self.sorted_lengths[self.row_of] - 1 - self.step_of
        return self.step_of

    def last_rows(self, step_row):
        """Slot row of each sorted sequence's last valid step."""
        return step_row[self.sorted_lengths - 1] + np.arange(self.B)

    def sort(self, a):
        """`a`'s rows in the sorted order, always a new array (the kernels may write it)."""
        return np.array(a) if self.order is None else a[self.order]

    def sorted_state(self, a):
        """`a`'s rows in the sorted order, for the kernels to read only."""
        return np.ascontiguousarray(a) if self.order is None else a[self.order]

    def unsort(self, a):
        if self.order is None:
            return a
        out = np.empty_like(a)
        out[self.order] = a
        return out


_schedules = {}


def _schedule(T, B, lengths):
    """A schedule without lengths depends on (T, B) only: keep the last few, so
    step-by-step decoding does not rebuild its arrays every call. Its row tables are
    filled lazily (`last_rows_of`); two threads racing there compute equal arrays, and
    the kernels only read them."""
    if lengths is not None and int(lengths.min()) < T:
        return _Schedule(T, B, lengths)
    schedule = _schedules.get((T, B))
    if schedule is None:
        if len(_schedules) >= 16:
            _schedules.clear()
        schedule = _schedules[(T, B)] = _Schedule(T, B, None)
    return schedule


@functools.lru_cache(maxsize=256)
def _fixed(spec, training):
    """The plan entries that follow from the spec alone, built once per spec: a short
    call (one step of decoding) would otherwise spend microseconds rebuilding them."""
    H, G = spec.hidden_size, spec.num_gates
    return dict(kind=_KINDS[spec.kind], act=_ACTIVATIONS[spec.nonlinearity],
                out_act=_ACTIVATIONS[spec.output_activation], coupled=int(spec.coupled_input_forget),
                reset_after=int(spec.reset_after), training=int(training),
                H=H, GH=G * H, P=spec.out_size, O=spec.output_size, I=spec.input_size)


def _plan(spec, p, x, state, schedule, reverse, training, dtype):
    T, B, I = x.shape
    H = spec.hidden_size
    N = schedule.N
    plan = dict(_fixed(spec, bool(training)))
    GH, P = plan["GH"], plan["P"]
    p = {name: np.ascontiguousarray(value) for name, value in p.items()}
    step_row, last_rows = schedule.last_rows_of(reverse)
    plan.update(B=B, S=schedule.S, N=N, step_row=step_row, last_rows=last_rows, active=schedule.active, params=p,
                small_rows=SMALL_ROWS,
                w_ih=p["weight_ih"], w_hh=p["weight_hh"], w_hr=p.get("weight_hr"),
                w_ci=p.get("weight_ci"), w_cf=p.get("weight_cf"), w_co=p.get("weight_co"),
                w_ho=p.get("weight_ho"), b_ho=p.get("bias_ho"))
    # transposed once per call, only where some step can take the small product for it
    # (with lengths, late steps may have few rows left; a (2048, 512) transpose costs
    # 5 ms that BLAS-only shapes never repay)
    min_rows = int(schedule.active[-1])
    if min_rows <= SMALL_ROWS:
        for key in ("w_hh", "w_hr", "w_ho"):
            w = plan[key]
            # GRU-before's smallest product uses the (H, H) block of w_hh
            if w is not None and (min_rows <= _recurrent.TINY_ROWS_LIMIT
                                  or min(w.size, H * H) <= _recurrent.SMALL_PANEL_LIMIT):
                plan[key + "_t"] = np.ascontiguousarray(w.T)
    if spec.bias:
        b_hh = p["bias_hh"]
        if spec.kind == "gru" and spec.reset_after:
            # b_hn is multiplied by r with W_hn h, so only b_hr, b_hz fold into x's projection
            bias_x = p["bias_ih"].copy()
            bias_x[:2 * H] += b_hh[:2 * H]
            plan["bias_x"] = bias_x
            plan["b_hn"] = b_hh[2 * H:]
        else:
            plan["bias_x"] = p["bias_ih"] + b_hh
    if schedule.packed:
        plan["x"] = x[schedule.times(reverse), schedule.batch_of]
    else:
        plan["x"] = x.reshape(T * B, I)
    plan["ldx"] = I
    plan["hs"] = np.empty((N, P), dtype)
    # Elman: the input projection, pre-activation and state are one buffer, updated in place
    plan["xp"] = plan["hs"] if spec.kind == "rnn" else np.empty((N, GH), dtype)
    # inference reads the initial state where it lies; training keeps it for the
    # backward pass, so it takes its own copy, as it does of x
    initial = schedule.sort if training else schedule.sorted_state
    plan["h0"] = initial(state[0])
    per_step = (N, H) if training else (B, H)
    if spec.kind == "lstm":
        plan["c0"] = initial(state[1])
        plan["c_buf"] = np.empty((N, H) if training else (2, B, H), dtype)
        if spec.proj_size:
            plan["m_buf"] = np.empty(per_step, dtype)
    elif spec.kind == "gru":
        plan["kept"] = np.empty(per_step, dtype)
        if spec.reset_after:
            plan["hh"] = np.empty((B, GH), dtype)
    return plan


def _final_states(spec, plan, schedule):
    if not schedule.packed:
        # every row's last step is the loop's last step: one block of B rows, sliced
        # (fancy indexing costs several microseconds, a tenth of a short call)
        first = int(plan["step_row"][-1])
        h_n = plan["hs"][first:first + schedule.B].copy()
        if spec.kind != "lstm":
            return (h_n,)
        cells = plan["c_buf"]
        # inference keeps c in a two-slot ring: step s wrote slot s % 2
        c_n = cells[first:first + schedule.B] if plan["training"] else cells[(schedule.S - 1) % 2]
        return h_n, c_n.copy()
    last = plan["last_rows"]
    h_n = schedule.unsort(plan["hs"][last])
    if spec.kind != "lstm":
        return (h_n,)
    if plan["training"]:
        c_last = plan["c_buf"][last]
    else:
        # inference keeps c in a two-slot ring: step s wrote slot s % 2
        c_last = plan["c_buf"][(schedule.sorted_lengths - 1) % 2, np.arange(schedule.B)]
    return h_n, schedule.unsort(c_last)


def layer_forward(spec, params, x, states, lengths, training, reverse, num_threads):
    T, B, _ = x.shape
    dtype = x.dtype
    is_double = dtype == np.float64
    schedule = _schedule(T, B, lengths)
    plans = [_plan(spec, p, x, s, schedule, rev, training, dtype)
             for p, s, rev in zip(params, states, reverse)]
    _recurrent.forward_all(plans, is_double, num_threads)

    D, P = len(plans), spec.out_size
    if D == 1 and not schedule.packed and not training:
        # one direction in time order: hs already is y, and in inference nothing else
        # keeps it (training keeps hs for the backward pass, so y must be a copy there)
        y = plans[0]["hs"].reshape(T, B, P)
        return y, [_final_states(spec, plans[0], schedule)], None
    y = (np.zeros if schedule.packed else np.empty)((T, B, D * P), dtype)
    for d, plan in enumerate(plans):
        if schedule.packed:
            y[schedule.times(reverse[d]), schedule.batch_of, d * P:(d + 1) * P] = plan["hs"]
        else:
            # a reverse direction's slots are already in time order
            y[:, :, d * P:(d + 1) * P] = plan["hs"].reshape(T, B, P)
    states_n = [_final_states(spec, plan, schedule) for plan in plans]
    ctx = None
    if training:
        ctx = dict(spec=spec, plans=plans, schedule=schedule, reverse=tuple(reverse), x_shape=x.shape,
                   dtype=dtype)
    return y, states_n, ctx


def layer_backward(ctx, dy, dstates_n, num_threads):
    spec, plans, schedule = ctx["spec"], ctx["plans"], ctx["schedule"]
    T, B, I = ctx["x_shape"]
    dtype = ctx["dtype"]
    is_double = dtype == np.float64
    D, P, H, N = len(plans), spec.out_size, spec.hidden_size, schedule.N
    dx = np.empty((T, B, I), dtype) if not schedule.packed else np.zeros((T, B, I), dtype)
    grads = []
    # the saved plans are only read: each call's buffers go into a plan of its own, so
    # that a context may be back-propagated through again, or from two threads at once
    plans = [dict(plan) for plan in plans]
    for d, (plan, dstate) in enumerate(zip(plans, dstates_n)):
        GH = plan["GH"]
        g = {name: np.zeros_like(value) for name, value in plan["params"].items()}
        grads.append(g)
        if schedule.packed:
            plan["dy"] = np.ascontiguousarray(dy[schedule.times(ctx["reverse"][d]), schedule.batch_of,
                                                 d * P:(d + 1) * P])
            plan["dy_offset"], plan["ldy"] = 0, P
            plan["dx"], plan["ldx_out"], plan["dx_accumulate"] = np.empty((N, I), dtype), I, 0
        else:
            plan["dy"], plan["dy_offset"], plan["ldy"] = dy, d * P, D * P
            plan["dx"], plan["ldx_out"], plan["dx_accumulate"] = dx, I, int(d > 0)
        plan["dgx"] = np.empty((N, GH), dtype)
        plan["dgh"] = np.empty((N, GH), dtype) if spec.kind == "gru" and spec.reset_after else plan["dgx"]
        plan["dh"] = schedule.sort(dstate[0])
        if spec.kind == "lstm":
            plan["dc"] = schedule.sort(dstate[1])
        if (spec.kind == "lstm" and spec.proj_size) or (spec.kind == "gru" and not spec.reset_after):
            plan["dm"] = np.empty((B, H), dtype)
        if spec.kind == "lstm" and spec.proj_size:
            plan["dhtot"] = np.empty((N, P), dtype)
        if spec.kind == "jordan":
            plan["dypre"] = np.empty((N, P), dtype)
        plan["hprev"] = np.empty((N, P), dtype)
        for key, name in (("g_w_ih", "weight_ih"), ("g_w_hh", "weight_hh"), ("g_b_ih", "bias_ih"),
                          ("g_b_hh", "bias_hh"), ("g_w_hr", "weight_hr"), ("g_ci", "weight_ci"),
                          ("g_cf", "weight_cf"), ("g_co", "weight_co"), ("g_w_ho", "weight_ho"),
                          ("g_b_ho", "bias_ho")):
            plan[key] = g.get(name)

    _recurrent.backward_all(plans, is_double, num_threads)
    _recurrent.weight_gradients_all(plans, is_double)

    dstates0 = []
    for d, plan in enumerate(plans):
        if schedule.packed:
            dx[schedule.times(ctx["reverse"][d]), schedule.batch_of] += plan["dx"]
        ds = [schedule.unsort(plan["dh"])]
        if spec.kind == "lstm":
            ds.append(schedule.unsort(plan["dc"]))
        dstates0.append(tuple(ds))
    return dx, dstates0, grads
