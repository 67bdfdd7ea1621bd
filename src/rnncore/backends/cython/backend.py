"""The compiled backend: `rnncore.backends.contract.Backend` over `_recurrent`'s loops.

This module owns shapes and buffers; `_recurrent` (Cython) owns the loops. Per call it
takes the length schedule (`contract.schedule`: with lengths, the batch sorted by length)
and lays it out as slot rows (`_Slots`: which rows each step uses; with lengths, packed
step after step, so finished sequences cost nothing), gathers what the slots need,
allocates every buffer once, and hands one plan per direction (a `_recurrent.Plan`,
each field checked as it is set) to the compiled stages: the input projection, the time
loop, and (backward) the products over the steps, chunk by chunk. A lean call
(`contract.MEMORY`) runs the same stages segment by segment over plans of a block of
slot rows each (see "memory-lean BPTT" below). Importing it fails with ImportError when the extension was not compiled, so
the registry falls back to another backend.
"""

import functools

import numpy as np

from . import _recurrent
from .. import contract, registry

_KINDS = {"rnn": 0, "jordan": 1, "lstm": 2, "gru": 3}
_ACTIVATIONS = {"identity": 0, "tanh": 1, "relu": 2, "sigmoid": 3}

# Threads split a direction's rows into slices that each run the whole time loop (see
# `_recurrent._slice_rows`): bitwise the same for any split. A slice gets at least this
# many rows (below a register tile's, its products run at a fraction of their rate)...
MIN_SLICE_ROWS = 4
# ...and at least this many multiply-adds of the time loop: a parallel region costs
# some microseconds to start and join, which a smaller share would not repay
MIN_SLICE_WORK = 200_000
# the input projection's slot rows are split likewise, into ranges of at least this many
MIN_PROJECTION_ROWS = 64
# the weight gradients split each product's rows between threads where each thread's
# share is at least this many multiply-adds (a team starts and meets at barriers, a few
# microseconds)
MIN_GRADIENT_WORK = 1_000_000
# Inference of a small batch splits each step's hidden units instead (see
# `_recurrent.forward_unit_slice`), when a row slice would hold fewer than this many
# rows (a register tile's: fewer leave its multiply-adds idle)...
UNIT_SPLIT_BELOW_ROWS = 8
# ...and each thread's share of a step is at least this many multiply-adds: the step
# ends at a barrier, a microsecond or two, which a smaller share would not repay
MIN_UNIT_STEP_WORK = 40_000

# the kernels hold the BLAS at one thread while they run, in _recurrent's section,
# which the registry configures once (see registry.blas_section)
registry.blas_section()


class _Slots:
    """Where the compiled loops keep each step's rows (the "slot rows" of `_recurrent`),
    over the layer call's `contract.Schedule`; built once per schedule.

    Without lengths (or all equal to T) step s of a direction uses the B rows of the time
    index it visits, so x, y, dy and dx are used where they lie. With lengths the steps'
    running rows are packed one after the other (the schedule's `offsets`), in the
    schedule's sorted order, and x, y, dy and dx are gathered and scattered."""

    def __init__(self, schedule):
        self.schedule = schedule
        self.B = schedule.B
        self.packed = schedule.order is not None
        self.S, self.N = schedule.steps, schedule.total
        self.active = np.ascontiguousarray(schedule.active[:self.S], dtype=np.intc)
        self._rows = {}

    def rows(self, reverse):
        """(step_row, last_rows): the first slot row of each step, and the slot row of
        each sorted sequence's last valid step, computed once per direction."""
        key = bool(reverse)
        if key not in self._rows:
            if self.packed:
                step_row = self.schedule.offsets[:self.S]
            else:
                step_row = self.schedule.time(reverse)[:, 0] * self.B
            step_row = np.ascontiguousarray(step_row, dtype=np.intp)
            self._rows[key] = (step_row, step_row[self.schedule.lengths - 1] + np.arange(self.B))
        return self._rows[key]


# every buffer of a plan starts on a cache line (see `_recurrent.on_lines`)
_on_lines = _recurrent.on_lines


def _slots(T, B, lengths):
    """The slots of a call: a schedule without lengths is reused across calls (step-by-step
    decoding), and its slots with it. Two threads racing to fill `rows` compute equal
    arrays, and the kernels only read them."""
    return contract.schedule(T, B, lengths).derived("cython slots", _Slots)


@functools.lru_cache(maxsize=256)
def _fixed(spec, training, is_double):
    """The plan of the fields that follow from the spec alone, built once per spec and
    only ever copied: a short call (one step of decoding) would otherwise spend
    microseconds setting them."""
    H, G = spec.hidden_size, spec.num_gates
    plan = _recurrent.Plan(is_double, kind=_KINDS[spec.kind], act=_ACTIVATIONS[spec.nonlinearity],
                           out_act=_ACTIVATIONS[spec.output_activation], coupled=int(spec.coupled_input_forget),
                           reset_after=int(spec.reset_after), training=int(training),
                           H=H, GH=G * H, P=spec.out_size, O=spec.output_size, I=spec.input_size,
                           layer_norm=int(spec.layer_norm), zoned_h=0, zoned_c=0)
    if spec.zoneout:
        # zoneout's expectation (a call without masks): h_t = p h_{t-1} + (1 - p) h~_t
        plan.zoneout = np.array([spec.zoneout_h, spec.zoneout_c], np.float64 if is_double else np.float32)
        plan.zoned_h, plan.zoned_c = int(spec.zoneout_h > 0), int(spec.zoneout_c > 0)
    return plan


# Each parameter's field in a plan, and its gradient's (None: the parameter enters through
# other fields: the biases through the folded `bias_x` and `b_hn`)
_SLOTS = (("weight_ih", "w_ih", "g_w_ih"), ("weight_hh", "w_hh", "g_w_hh"), ("bias_ih", None, "g_b_ih"),
          ("bias_hh", None, "g_b_hh"), ("weight_hr", "w_hr", "g_w_hr"), ("weight_ci", "w_ci", "g_ci"),
          ("weight_cf", "w_cf", "g_cf"), ("weight_co", "w_co", "g_co"), ("weight_ho", "w_ho", "g_w_ho"),
          ("bias_ho", "b_ho", "g_b_ho"), ("weight_ih_ln", "w_ih_ln", "g_ih_ln"),
          ("weight_hh_ln", "w_hh_ln", "g_hh_ln"), ("weight_c_ln", "w_c_ln", "g_c_ln"),
          ("bias_c_ln", "b_c_ln", "g_bc_ln"))


@functools.lru_cache(maxsize=256)
def _spec_slots(spec):
    """The (name, field, gradient field) entries of _SLOTS whose parameter `spec` has;
    the other fields stay None, as `_fixed`'s plan has them."""
    names = spec.param_shapes()
    return tuple(entry for entry in _SLOTS if entry[0] in names)


@functools.lru_cache(maxsize=256)
def _parameter_slots(spec):
    """The (name, field) pairs of `_spec_slots` whose parameter a plan reads itself."""
    return tuple((name, field) for name, field, _ in _spec_slots(spec) if field is not None)


def _slot_mask(mask, slots, reverse, dtype):
    """A (T, B, width) mask indexed by time index, as slot rows (N, width), like x."""
    if slots.packed:
        return np.ascontiguousarray(mask[slots.schedule.packed(reverse)], dtype)
    T, B, width = mask.shape
    return np.ascontiguousarray(mask, dtype).reshape(T * B, width)


def _plan(spec, p, x, state, slots, reverse, training, dtype, masks=None, rows=None):
    """One direction's plan over the call's slots: its weights and masks, x's slot rows,
    the initial state, and the buffers of `rows` slot rows (None: every one; 0: none,
    for a lean call, whose segments get theirs from `_forward_rows`)."""
    T, B, I = x.shape
    H = spec.hidden_size
    N = slots.N
    schedule = slots.schedule
    is_double = dtype == np.float64
    plan = _fixed(spec, bool(training), is_double).copy()
    GH, P = plan.GH, plan.P
    masks = masks or {}
    if "zoneout_h" in masks:
        plan.zmask_h, plan.zoned_h = _slot_mask(masks["zoneout_h"], slots, reverse, dtype), 1
    if "zoneout_c" in masks:
        plan.zmask_c, plan.zoned_c = _slot_mask(masks["zoneout_c"], slots, reverse, dtype), 1
    if plan.zoneout is None and (plan.zoned_h or plan.zoned_c):
        plan.zoneout = np.zeros(2, dtype)
    if "recurrent" in masks:
        plan.rmask = schedule.sort(np.asarray(masks["recurrent"], dtype), copy=True)
        plan.hm = _on_lines((B, P), dtype)
    whole = bool(masks) or spec.layer_norm
    p = _recurrent.contiguous_values(p)
    plan.step_row, plan.last_rows = slots.rows(reverse)
    plan.B, plan.ring_rows, plan.S, plan.N, plan.active, plan.params = B, B, slots.S, N, slots.active, p
    for name, field in _parameter_slots(spec):
        setattr(plan, field, p.get(name))
    # every product's weights, packed once per call into the micro-kernel's panels
    # (`_recurrent.pack_weights`): every step reads them
    plan.w_ih_p = _on_lines(_recurrent.packed_input_size(spec.kind, GH, H, spec.input_size, is_double), dtype)
    plan.w_hh_p = _on_lines(_recurrent.packed_recurrent_size(
        spec.kind, H, GH, P, plan.O, bool(spec.reset_after), is_double), dtype)
    if plan.w_hr is not None:
        plan.w_hr_p = _on_lines(_recurrent.packed_size(P, H, is_double), dtype)
    if plan.w_ho is not None:
        plan.w_ho_p = _on_lines(_recurrent.packed_size(plan.O, H, is_double), dtype)
    plan.bias_x, plan.b_hn = contract.fold_bias(spec, p)
    if slots.packed:
        plan.x = x[schedule.packed(reverse)]
    else:
        plan.x = x.reshape(T * B, I)
    plan.ldx = I
    # inference reads the initial state where it lies; training keeps it for the
    # backward pass, so it takes its own copy, as it does of x
    plan.h0 = schedule.sort(state[0], copy=training)
    if spec.kind == "lstm":
        plan.c0 = schedule.sort(state[1], copy=training)
        if spec.layer_norm:
            plan.hh = _on_lines((B, GH), dtype)
    elif spec.kind == "gru" and spec.reset_after:
        plan.hh = _on_lines((B, GH), dtype)
    buffers = _forward_rows(spec, plan, N if rows is None else rows, training, whole, dtype)
    for field, buffer in buffers.items():
        setattr(plan, field, buffer)
    return plan


def _forward_rows(spec, plan, rows, training, whole, dtype):
    """{field: array}: the forward's buffers of a plan, over `rows` slot rows (none when
    0), or of B rows where inference keeps only the running step's."""
    if not rows:
        return {}
    B, H, GH, P = plan.B, spec.hidden_size, plan.GH, plan.P
    hs = _on_lines((rows, P), dtype)
    buffers = dict(hs=hs)
    # Elman: the input projection, pre-activation and state are one buffer, updated in place;
    # where inference runs by blocks of units and each step makes its own input product
    # (`_recurrent.input_layout`), there is no (N, GH) array
    if spec.kind == "rnn" and not plan.zoned_h:
        buffers["xp"] = hs
    elif not _layout(spec, training, B, whole)[1]:
        buffers["xp"] = _on_lines((rows, GH), dtype)
    if spec.layer_norm and training:
        # what the backward pass reads of each slot row's layer norms
        buffers.update(ln_xh_ih=_on_lines((rows, GH), dtype), ln_xh_hh=_on_lines((rows, GH), dtype),
                       ln_st_ih=_on_lines((rows, 2), dtype), ln_st_hh=_on_lines((rows, 2), dtype))
        if spec.kind == "lstm":
            buffers["ln_st_c"] = _on_lines((rows, 2), dtype)
    per_step = (rows, H) if training else (B, H)
    if spec.kind == "lstm":
        buffers["c_buf"] = _on_lines((rows, H) if training else (2, B, H), dtype)
        if training and plan.zoned_c:
            # the cell's own new c, apart from the blended one it carries
            buffers["c_tilde"] = _on_lines((rows, H), dtype)
        if spec.proj_size:
            buffers["m_buf"] = _on_lines(per_step, dtype)
    elif spec.kind == "gru":
        buffers["kept"] = _on_lines(per_step, dtype)
    return buffers


def _final_states(spec, plan, slots):
    B = slots.B
    if not slots.packed:
        # every row's last step is the loop's last step: one block of B rows, sliced
        # (fancy indexing costs several microseconds, a tenth of a short call)
        first = int(plan.step_row[-1])
        h_n = plan.hs[first:first + B].copy()
        if spec.kind != "lstm":
            return (h_n,)
        cells = plan.c_buf
        # inference keeps c in a two-slot ring: step s wrote slot s % 2
        c_n = cells[first:first + B] if plan.training else cells[(slots.S - 1) % 2]
        return h_n, c_n.copy()
    schedule = slots.schedule
    last = plan.last_rows
    h_n = schedule.unsort(plan.hs[last])
    if spec.kind != "lstm":
        return (h_n,)
    if plan.training:
        c_last = plan.c_buf[last]
    else:
        # inference keeps c in a two-slot ring: step s wrote slot s % 2
        c_last = plan.c_buf[(schedule.lengths - 1) % 2, np.arange(B)]
    return h_n, schedule.unsort(c_last)


def _row_slices(spec, slots, directions, num_threads, backward):
    """The (lo, hi, active, steps) row slices of a call's time loop (None: one slice of
    every row), balanced by the rows' steps (with lengths the sorted rows run for fewer
    and fewer steps). The directions run beside each other, so each gets its share of
    the threads. A peephole LSTM's backward adds every row's peephole gradient into one
    array step by step, which a split would regroup, so it runs unsplit."""
    threads = num_threads // directions
    if threads < 2 or (backward and spec.kind == "lstm" and spec.peephole):
        return None
    B, lengths = slots.B, slots.schedule.lengths
    per_row_step = spec.num_gates * spec.hidden_size * spec.out_size + spec.hidden_size * spec.out_size
    work = int(lengths.sum()) * per_row_step
    count = min(threads, B // MIN_SLICE_ROWS, work // max(MIN_SLICE_WORK, 1))
    if count < 2:
        return None
    # cut where the running total of steps passes each share, at least MIN_SLICE_ROWS apart
    total = np.cumsum(lengths)
    cuts = np.searchsorted(total, total[-1] * np.arange(1, count) / count) + 1
    bounds = [0]
    for cut in cuts:
        cut = int(min(max(cut, bounds[-1] + MIN_SLICE_ROWS), B - MIN_SLICE_ROWS))
        if cut > bounds[-1]:
            bounds.append(cut)
    bounds.append(B)
    active = slots.active.astype(np.intp)
    slices = []
    for lo, hi in zip(bounds, bounds[1:]):
        own = np.ascontiguousarray(np.clip(active - lo, 0, hi - lo), dtype=np.intc)
        slices.append((lo, hi, own, int(lengths[lo])))
    return tuple(slices) if len(slices) > 1 else None


@functools.lru_cache(maxsize=1024)
@functools.lru_cache(maxsize=1024)
def _layout(spec, training, B, whole=False):
    """(blocked, input in steps): how the compiled time loop runs a direction of this
    spec over B rows (`_recurrent.step_layout`); `whole`: the call has masks, or the
    spec layer norm (then each step runs whole rows). Cached: a short call asks it twice."""
    return _recurrent.step_layout(spec.kind, bool(spec.reset_after), bool(training), B,
                                  spec.num_gates * spec.hidden_size, spec.input_size, spec.out_size,
                                  bool(whole) or spec.layer_norm)


def _unit_threads(spec, slots, directions, num_threads, training, is_double, masked=False):
    """How many threads split inference's time loop by hidden units (1: none)."""
    if training or directions != 1 or num_threads < 2 or slots.B >= UNIT_SPLIT_BELOW_ROWS * num_threads:
        return 1
    if spec.proj_size or not _layout(spec, training, slots.B, masked)[0]:
        return 1
    step_work = slots.B * spec.num_gates * spec.hidden_size * spec.out_size
    threads = min(num_threads, _recurrent.unit_blocks_of(spec.hidden_size, is_double),
                  step_work // MIN_UNIT_STEP_WORK)
    return max(int(threads), 1)


def _projection_ranges(N, directions, num_threads):
    """The bounds the input projection of N slot rows splits at, or None for one range."""
    count = min(num_threads // directions, N // MIN_PROJECTION_ROWS)
    if count < 2:
        return None
    return tuple(int(b) for b in np.linspace(0, N, count + 1).round())


# The directions run together in `_recurrent`'s compiled stages (side by side with two
# threads), writing y's columns and dx in place, so the layer's assembly stays here
# rather than in `contract.forward_directions`.

def layer_forward(spec, params, x, states, lengths, training, reverse, num_threads, masks=None, memory="full"):
    """(y, states_n, ctx): see `rnncore.backends.contract.Backend`."""
    T, B, _ = x.shape
    dtype = x.dtype
    slots = _slots(T, B, lengths)
    masks = masks or [None] * len(params)
    if training and memory == "lean":
        return _lean_forward(spec, params, x, states, slots, tuple(reverse), num_threads, masks)
    plans = [_plan(spec, p, x, s, slots, rev, training, dtype, m)
             for p, s, rev, m in zip(params, states, reverse, masks)]
    D = len(plans)
    units = _unit_threads(spec, slots, D, num_threads, training, dtype == np.float64, any(masks))
    _recurrent.forward_all(plans, num_threads, None if units > 1 else _row_slices(spec, slots, D, num_threads, False),
                           _projection_ranges(slots.N, D, num_threads), units)

    P = spec.out_size
    if D == 1 and not slots.packed and not training:
        # one direction in time order: hs already is y, and in inference nothing else
        # keeps it (training keeps hs for the backward pass, so y must be a copy there)
        y = plans[0].hs.reshape(T, B, P)
        return y, [_final_states(spec, plans[0], slots)], None
    y = (np.zeros if slots.packed else np.empty)((T, B, D * P), dtype)
    for d, plan in enumerate(plans):
        _write_output(y, plan.hs, slots, reverse[d], d, P, 0, slots.N)
    states_n = [_final_states(spec, plan, slots) for plan in plans]
    ctx = None
    if training:
        ctx = dict(spec=spec, plans=plans, slots=slots, reverse=tuple(reverse), x_shape=x.shape, dtype=dtype)
    return y, states_n, ctx


def _write_output(y, hs, slots, reverse, d, P, lo, hi):
    """Direction d's outputs of the slot rows [lo, hi) (hs, their states) into y's columns."""
    if slots.packed:
        time, batch = slots.schedule.packed(reverse)
        y[time[lo:hi], batch[lo:hi], d * P:(d + 1) * P] = hs
    else:
        # a reverse direction's slots are already in time order
        T, B, _ = y.shape
        y.reshape(T * B, -1)[lo:hi, d * P:(d + 1) * P] = hs


def _gradient_threads(spec, slots, num_threads):
    """The team of the weight gradients' products (1: one thread)."""
    G, H, P = spec.num_gates, spec.hidden_size, spec.out_size
    work = slots.N * G * H * (spec.input_size + P + spec.input_size)
    return int(max(1, min(num_threads, work // MIN_GRADIENT_WORK)))


def _backward_fields(spec, plan, schedule, dstate, grads, dtype, gradient_threads, input_grad):
    """Set what a plan's backward reads and writes that does not grow with the steps: the
    carried state gradients (sorted copies, updated in place), the scratch rows, the
    weights packed for the backward's products (W_ih only for an `input_grad`), the
    gradients' arrays."""
    B, H, GH, P = plan.B, spec.hidden_size, plan.GH, plan.P
    is_double = dtype == np.float64
    if plan.zoned_h or plan.zoned_c:
        plan.dz = _on_lines((B, P), dtype)
        if spec.kind == "lstm" and plan.zoned_c:
            plan.dzc = _on_lines((B, H), dtype)
    if plan.rmask is not None:
        # scratch of this call's own: a context may be back-propagated from two threads
        plan.dr, plan.hm = _on_lines((B, P), dtype), _on_lines((B, P), dtype)
    plan.dh = schedule.sort(dstate[0])
    if spec.kind == "lstm":
        plan.dc = schedule.sort(dstate[1])
    if (spec.kind == "lstm" and spec.proj_size) or (spec.kind == "gru" and not spec.reset_after):
        plan.dm = _on_lines((B, H), dtype)
    # the weights as the backward's products take them, packed once per call
    plan.w_hh_bp = _on_lines(_recurrent.packed_backward_size(
        spec.kind, H, GH, P, spec.output_size, bool(spec.reset_after), is_double), dtype)
    if plan.w_hr is not None:
        plan.w_hr_bp = _on_lines(_recurrent.packed_size(H, P, is_double), dtype)
    if plan.w_ho is not None:
        plan.w_ho_bp = _on_lines(_recurrent.packed_size(H, spec.output_size, is_double), dtype)
    if input_grad:
        plan.w_ih_bp = _on_lines(_recurrent.packed_size(spec.input_size, GH, is_double), dtype)
    # the weight gradients' products pack their operands into this, a share per thread
    share = _recurrent.gradient_scratch_size(GH, P, spec.output_size, spec.input_size, H,
                                             contract.GRADIENT_CHUNK * B, is_double)
    plan.g_pack = _on_lines(share * gradient_threads, dtype)
    # the gradients the spec has (the forward plan it copies left the others None)
    for name, _, field in _spec_slots(spec):
        setattr(plan, field, grads[name])
    plan.grad_chunk = contract.GRADIENT_CHUNK


def _backward_rows(spec, plan, rows, dtype):
    """{field: array}: the backward's buffers over `rows` slot rows."""
    H, GH, P = spec.hidden_size, plan.GH, plan.P
    dgx = _on_lines((rows, GH), dtype)
    dgh = _on_lines((rows, GH), dtype) if spec.kind == "gru" and spec.reset_after else dgx
    # the gradient of the raw recurrent product: layer norm's own, else dgh's
    buffers = dict(dgx=dgx, dgh=dgh, dgr=_on_lines((rows, GH), dtype) if spec.layer_norm else dgh,
                   hprev=_on_lines((rows, P), dtype))
    if spec.layer_norm and spec.kind == "lstm":
        buffers["dcl"] = _on_lines((rows, H), dtype)
    if spec.kind == "lstm" and spec.proj_size:
        buffers["dhtot"] = _on_lines((rows, P), dtype)
    if spec.kind == "jordan":
        buffers["dypre"] = _on_lines((rows, P), dtype)
    return buffers


def _backward_plans(ctx, dy, dstates_n, dx, gradient_threads):
    """The plans of one backward call, copies of the saved ones (which are only read: a
    context may be back-propagated through again, or from two threads at once), with
    their backward fields and dy's and dx's slot rows (packed: gathered, and dx's
    scattered by the caller; dx None: the plans make none); and the new gradients per
    direction."""
    spec, slots = ctx["spec"], ctx["slots"]
    dtype, P, N, I = ctx["dtype"], spec.out_size, slots.N, ctx["x_shape"][2]
    D = len(ctx["plans"])
    plans, grads = [plan.copy() for plan in ctx["plans"]], []
    for d, (plan, dstate) in enumerate(zip(plans, dstates_n)):
        g = contract.new_gradients(spec, dtype)
        grads.append(g)
        _backward_fields(spec, plan, slots.schedule, dstate, g, dtype, gradient_threads, dx is not None)
        if slots.packed:
            time, batch = slots.schedule.packed(ctx["reverse"][d])
            plan.dy = np.ascontiguousarray(dy[time, batch, d * P:(d + 1) * P])
            plan.dy_offset, plan.ldy = 0, P
            plan.dx, plan.ldx_out, plan.dx_accumulate = None if dx is None else np.empty((N, I), dtype), I, 0
        else:
            plan.dy, plan.dy_offset, plan.ldy = dy, d * P, D * P
            plan.dx, plan.ldx_out, plan.dx_accumulate = dx, I, int(d > 0)
    return plans, grads


def _backward_results(ctx, plans, dx):
    """dx (packed: the plans' slot rows scattered in) and the initial states' gradients."""
    spec, slots = ctx["spec"], ctx["slots"]
    schedule = slots.schedule
    dstates0 = []
    for d, plan in enumerate(plans):
        if slots.packed and dx is not None:
            dx[schedule.packed(ctx["reverse"][d])] += plan.dx
        ds = [schedule.unsort(plan.dh)]
        if spec.kind == "lstm":
            ds.append(schedule.unsort(plan.dc))
        dstates0.append(tuple(ds))
    return dstates0


def layer_backward(ctx, dy, dstates_n, num_threads, input_grad=True):
    """(dx, dstates0, grads): see `rnncore.backends.contract.Backend`."""
    spec, slots = ctx["spec"], ctx["slots"]
    T, B, I = ctx["x_shape"]
    dx = (np.zeros if slots.packed else np.empty)((T, B, I), ctx["dtype"]) if input_grad else None
    gradient_threads = _gradient_threads(spec, slots, num_threads)
    plans, grads = _backward_plans(ctx, dy, dstates_n, dx, gradient_threads)
    if "lean" in ctx:
        _lean_backward(ctx, plans, dy, dx, num_threads, gradient_threads)
    else:
        for plan in plans:
            for field, buffer in _backward_rows(spec, plan, slots.N, ctx["dtype"]).items():
                setattr(plan, field, buffer)
        _recurrent.backward_all(plans, num_threads, _row_slices(spec, slots, len(plans), num_threads, True))
        _recurrent.weight_gradients_all(plans, gradient_threads)
    return dx, _backward_results(ctx, plans, dx), grads


# -- memory-lean BPTT (contract.MEMORY) ----------------------------------------------------
#
# A lean call runs the time loop one segment of `contract.lean_segments` at a time, each
# segment a plan over its own block of slot rows (`_segment`): x's, the masks', dy's and
# dx's slot rows are views of the call's, and the buffers that grow with the steps are
# the longest segment's, reused. The forward keeps the state each segment starts from;
# the backward reruns each segment's forward from it, last segment first, then its
# backward and its share of the weight gradients, which the chunking of
# `_recurrent.weight_gradients` adds in the full path's order.

def _segment_rows(slots, reverse, first, last):
    """(lo, hi, step_row): the block of slot rows of the loop steps [first, last), and
    each step's first row in it."""
    step_row, _ = slots.rows(reverse)
    a, b = int(step_row[first]), int(step_row[last - 1])
    lo = min(a, b)
    hi = max(a + int(slots.active[first]), b + int(slots.active[last - 1]))
    return lo, hi, np.ascontiguousarray(step_row[first:last] - lo)


def _longest_segment(slots, segments):
    """The most slot rows a segment has (the same in either direction)."""
    blocks = [_segment_rows(slots, False, first, last)[:2] for first, last in segments]
    return max(hi - lo for lo, hi in blocks)


def _segment(spec, plan, buffers, slots, reverse, first, last, state):
    """A plan of the loop steps [first, last) of `plan`'s direction from `state` (sorted
    state tuple), over views of `buffers` ({field: array} of the longest segment's rows):
    (segment plan, lo, hi)."""
    lo, hi, step_row = _segment_rows(slots, reverse, first, last)
    seg = plan.copy()
    seg.S, seg.N, seg.step_row = last - first, hi - lo, step_row
    seg.active = np.ascontiguousarray(slots.active[first:last])
    seg.x = plan.x[lo:hi]
    for field in ("zmask_h", "zmask_c"):
        mask = getattr(plan, field)
        if mask is not None:
            setattr(seg, field, mask[lo:hi])
    for field, buffer in buffers.items():
        setattr(seg, field, buffer[:hi - lo])
    seg.h0 = state[0]
    if spec.kind == "lstm":
        seg.c0 = state[1]
    return seg, lo, hi


def _state_after(spec, seg, slots, first, last, state):
    """The sorted state tuple after a segment's forward: each row running at its first
    step takes its value at its own last step in it; the others keep `state`'s."""
    n = int(slots.active[first])
    ends = np.minimum(slots.schedule.lengths[:n], last) - 1 - first
    rows = seg.step_row[ends] + np.arange(n)
    after = [state[0].copy()]
    after[0][:n] = seg.hs[rows]
    if spec.kind == "lstm":
        after.append(state[1].copy())
        after[1][:n] = seg.c_buf[rows]
    return tuple(after)


def _segment_slices(slices, first, last):
    """The whole call's row slices (`_row_slices`) over the loop steps [first, last):
    each slice's running rows at those steps, the slices with none dropped (None: one
    slice of every row)."""
    if slices is None:
        return None
    kept = []
    for lo, hi, active, _ in slices:
        own = np.ascontiguousarray(active[first:last])
        steps = int(np.count_nonzero(own))
        if steps:
            kept.append((lo, hi, own, steps))
    return tuple(kept) if len(kept) > 1 else None


def _lean_forward(spec, params, x, states, slots, reverse, num_threads, masks):
    T, B, _ = x.shape
    dtype, P, D = x.dtype, spec.out_size, len(params)
    whole = any(masks) or spec.layer_norm
    plans = [_plan(spec, p, x, s, slots, rev, True, dtype, m, rows=0)
             for p, s, rev, m in zip(params, states, reverse, masks)]
    segments = contract.lean_segments(slots.S)
    rows = _longest_segment(slots, segments)
    slices = _row_slices(spec, slots, D, num_threads, False)
    buffers = [_forward_rows(spec, plan, rows, True, whole, dtype) for plan in plans]
    y = (np.zeros if slots.packed else np.empty)((T, B, D * P), dtype)
    current = [(plan.h0, plan.c0) if spec.kind == "lstm" else (plan.h0,) for plan in plans]
    checkpoints = [[] for _ in plans]
    for first, last in segments:
        segs = []
        for d, plan in enumerate(plans):
            checkpoints[d].append(current[d])
            segs.append(_segment(spec, plan, buffers[d], slots, reverse[d], first, last, current[d]))
        _recurrent.forward_all([seg for seg, _, _ in segs], num_threads, _segment_slices(slices, first, last),
                               _projection_ranges(segs[0][0].N, D, num_threads), 1)
        for d, (seg, lo, hi) in enumerate(segs):
            _write_output(y, seg.hs, slots, reverse[d], d, P, lo, hi)
            current[d] = _state_after(spec, seg, slots, first, last, current[d])
    states_n = [tuple(slots.schedule.unsort(s) for s in state) for state in current]
    # the last segment's buffers hold its forward: its backward, the first, reads them
    ctx = dict(spec=spec, plans=plans, slots=slots, reverse=reverse, x_shape=x.shape, dtype=dtype,
               lean=dict(segments=segments, checkpoints=checkpoints, rows=rows, whole=whole, last=buffers))
    return y, states_n, ctx


def _lean_backward(ctx, plans, dy, dx, num_threads, gradient_threads):
    # one direction after the other, as the full path's weight gradients run: the second
    # direction's dx product adds into the first's finished rows
    spec, slots, reverse, dtype = ctx["spec"], ctx["slots"], ctx["reverse"], ctx["dtype"]
    lean = ctx["lean"]
    T, B, _ = ctx["x_shape"]
    last = len(lean["segments"]) - 1
    forward_slices = _row_slices(spec, slots, 1, num_threads, False)
    backward_slices = _row_slices(spec, slots, 1, num_threads, True)
    for d, plan in enumerate(plans):
        grads_rows = _backward_rows(spec, plan, lean["rows"], dtype)
        # the forward's buffers, only read by the backward: the last segment's as the
        # forward left them (the context's, shared with other backward calls), the
        # others' recomputed into buffers of this call's own
        recomputed = None
        for index in reversed(range(len(lean["segments"]))):
            first, last_step = lean["segments"][index]
            if index == last:
                forward_rows = lean["last"][d]
            else:
                if recomputed is None:
                    recomputed = _forward_rows(spec, plan, lean["rows"], True, lean["whole"], dtype)
                forward_rows = recomputed
            seg, lo, hi = _segment(spec, plan, dict(forward_rows, **grads_rows), slots, reverse[d], first, last_step,
                                   lean["checkpoints"][d][index])
            if slots.packed:
                seg.dy, seg.dx = plan.dy[lo:hi], None if dx is None else plan.dx[lo:hi]
            else:
                seg.dy = dy.reshape(T * B, -1)[lo:hi]
                seg.dx = None if dx is None else dx.reshape(T * B, -1)[lo:hi]
            if index != last:
                _recurrent.forward_all([seg], num_threads, _segment_slices(forward_slices, first, last_step),
                                       _projection_ranges(seg.N, 1, num_threads), 1)
            _recurrent.backward_all([seg], num_threads, _segment_slices(backward_slices, first, last_step))
            _recurrent.weight_gradients_all([seg], gradient_threads)


def open_stream(specs, params, batch, dtype, num_threads):
    """A `_recurrent.StepStack` for a stack of one-direction layers: see
    `rnncore.backends.contract.open_stream`. Each layer's plan is a one-step inference
    plan over state buffers of the stream's own; `params` are the stream's copies."""
    slots = _slots(1, batch, None)
    plans = []
    for spec, p in zip(specs, params):
        state = tuple(np.zeros((batch, width), dtype) for width in spec.state_sizes)
        x = np.zeros((1, batch, spec.input_size), dtype)
        plans.append(_plan(spec, p, x, state, slots, False, False, dtype))
    return _recurrent.StepStack(plans)


def layer_trace(spec, params, x, states, lengths, reverse, num_threads):
    """The gates of the deterministic forward (see `contract.Backend`'s `layer_trace`),
    read from the slot rows a training-mode forward keeps for its backward pass: the
    gate activations of each step, the carried c (LSTM) or h (Elman)."""
    T, B, _ = x.shape
    _, _, ctx = layer_forward(spec, params, x, states, lengths, True, reverse, num_threads)
    slots, H = ctx["slots"], spec.hidden_size
    traces = []
    for d, plan in enumerate(ctx["plans"]):
        if spec.kind == "lstm":
            gates = plan.xp.reshape(-1, spec.num_gates, H)
            named = dict(zip(spec.gates, np.moveaxis(gates, 1, 0)))
            if spec.coupled_input_forget:
                named["f"] = 1 - named["i"]
            named = {name: named[name] for name in "ifgo"}
            named["c"] = plan.c_buf
        elif spec.kind == "gru":
            named = dict(zip("rzn", np.moveaxis(plan.xp.reshape(-1, 3, H), 1, 0)))
        else:
            named = {"h": plan.hs}
        out = {}
        for name, rows in named.items():
            if slots.packed:
                traced = np.zeros((T, B, rows.shape[1]), rows.dtype)
                time, batch = slots.schedule.packed(reverse[d])
                traced[time, batch] = rows
            else:
                traced = np.ascontiguousarray(rows).reshape(T, B, -1).copy()
            out[name] = traced
        traces.append(out)
    return traces
