"""The corridor between the compiled backend's two halves: backend.py hands each stage of
_recurrent one `Plan` per direction, and _recurrent.PLAN_SCHEMA is the one description
of its fields. Here: every variant's plans, in training and inference, with and without
lengths, one and two directions, with and without bias, pass the stages' checks and give
every field of the schema somewhere; each requirement of the schema is met by backend.py
and refused when broken; the schema covers the Direction struct field for field; a field
is checked as it is set (a bad value refused, naming it, and the plan left as it was; the
last value set is the one used); and a plan lacking a required field, something that is
not a plan, or a third direction, is a clear error before any work."""
import itertools
import re

import numpy as np
import pytest

from rnncore.core.spec import CellSpec

from cases import VARIANTS, back, build, call, random_backend_case

NOT_BUILT = "the compiled extension is not built here"
_recurrent = pytest.importorskip("rnncore.backends.cython._recurrent", reason=NOT_BUILT)
cython_backend = pytest.importorskip("rnncore.backends.cython.backend", reason=NOT_BUILT)
Plan = _recurrent.Plan

STAGES = ("forward_all", "backward_all", "weight_gradients_all")
SCHEMA = {name: (kind, when) for name, kind, when in _recurrent.PLAN_SCHEMA}
T, B, I, H = 3, 3, 2, 4

CASES = [(name, cls, kwargs, training, lengths, directions, bias)
         for (name, cls, kwargs), training, lengths, directions, bias
         in itertools.product(VARIANTS, (False, True), (None, [3, 1, 2]), (1, 2), (True, False))
         if directions == 1 or name.split("_")[0] != "jordan"]
CASE = {f"{c[0]}-{'train' if c[3] else 'eval'}-{'lengths' if c[4] else 'full'}-{c[5]}dir-"
        f"{'bias' if c[6] else 'nobias'}": c for c in CASES}


def _spy(patch, stages, calls):
    """Record each stage call's plans (copies, as they were when the stage began)."""
    for stage in stages:
        def spy(plans, *rest, _real=getattr(_recurrent, stage), _stage=stage):
            calls.append((_stage, [plan.copy() for plan in plans]))
            return _real(plans, *rest)
        patch.setattr(_recurrent, stage, spy)


def _run_case(name, cls, kwargs, training, lengths, directions, bias):
    """Forward (and, training, backward) through the cython backend; returns the stages
    called, each as (stage, copies of its plans)."""
    more = dict(bias=bias) if directions == 1 else dict(bias=bias, bidirectional=True)
    layer = build(cls, kwargs, I, H, backend="cython", seed=1, **more)
    layer.train(training)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        _spy(patch, STAGES, calls)
        y, _ = call(layer, x, lengths=None if lengths is None else np.array(lengths))
        if training:
            back(layer, rng.standard_normal(y.shape))
    return calls


# the regularised cells, through the backend itself: in training with masks and without
REGULARISED = [CellSpec("lstm", I, H, layer_norm=True, zoneout_h=0.2, zoneout_c=0.3, recurrent_dropout=0.1),
               CellSpec("gru", I, H, layer_norm=True, zoneout_h=0.2, recurrent_dropout=0.1),
               CellSpec("gru", I, H, reset_after=False, zoneout_h=0.2, recurrent_dropout=0.1)]


def _run_regularised(spec, training, masked):
    params, x, states, rng = random_backend_case(spec, T, B, 1, np.float64, 0)
    masks = [{"zoneout_h": np.ones((T, B, H)), "zoneout_c": np.zeros((T, B, H)), "recurrent": np.ones((B, H))}]
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        _spy(patch, STAGES, calls)
        y, _, ctx = cython_backend.layer_forward(spec, params, x, states, None, training, (False,), 1,
                                                 masks if masked else None)
        if training:
            cython_backend.layer_backward(ctx, np.ones_like(y), [tuple(np.zeros_like(a) for a in states[0])], 1)
    return calls


@pytest.fixture(scope="module")
def captured():
    plans = {case_id: _run_case(*case) for case_id, case in CASE.items()}
    for k, spec in enumerate(REGULARISED):
        for training, masked in ((False, False), (True, False), (True, True)):
            plans[f"regularised-{k}-{training}-{masked}"] = _run_regularised(spec, training, masked)
    return plans


def _given(plan):
    return {name for name in SCHEMA if getattr(plan, name) is not None}


def _with(plan, **changes):
    """A copy of plan with the fields changed (None: taken away)."""
    out = plan.copy()
    for name, value in changes.items():
        setattr(out, name, value)
    return out


@pytest.mark.parametrize("case_id", list(CASE))
def test_plans_pass_the_stages_checks(captured, case_id):
    calls = captured[case_id]
    _, _, _, training, _, directions, _ = CASE[case_id]
    assert [stage for stage, _ in calls] == (list(STAGES) if training else ["forward_all"])
    for stage, plans in calls:
        assert len(plans) == directions
        for plan in plans:
            assert plan.is_double  # the cases run in float64
            plan.check(stage != "forward_all")


def test_every_schema_field_is_given_by_some_plan(captured):
    given = set().union(*(_given(plan) for calls in captured.values() for _, plans in calls for plan in plans))
    assert given == set(SCHEMA), f"never given: {set(SCHEMA) - given}"


def test_every_requirement_is_met_and_enforced(captured):
    """Each field backend.py gives that the schema does not call optional is required for
    that plan: taking it away is refused, naming the field. And every required entry is
    refused somewhere, so no condition of the schema is dead."""
    optional = {name for name, (_, when) in SCHEMA.items() if when == "optional"}
    refused = set()
    for calls in captured.values():
        for stage, plans in calls:
            for plan in plans:
                for name in _given(plan) - optional:
                    try:
                        _with(plan, **{name: None}).check(stage != "forward_all")
                    except ValueError as exc:
                        assert re.match(rf"plan\.{name}: expected .* \(required: .*\), got None$", str(exc)), exc
                        refused.add(name)
                    else:
                        pytest.fail(f"{stage}: a plan without {name!r} passes, though backend.py gives it "
                                    f"and the schema does not call it optional")
    assert refused == set(SCHEMA) - optional, f"never refused: {set(SCHEMA) - optional - refused}"


def test_schema_covers_the_direction_struct():
    assert _recurrent._layout_problems() == []


@pytest.mark.parametrize("name", list(SCHEMA))
def test_a_struct_field_without_its_entry_is_found(name):
    problems = _recurrent._layout_problems([entry for entry in _recurrent._PLAN if entry[0] != name])
    assert len(problems) == 1, problems


def test_two_entries_on_one_field_are_found():
    twin = ("w_hh_twin",) + next(entry for entry in _recurrent._PLAN if entry[0] == "w_hh")[1:]
    problems = _recurrent._layout_problems(_recurrent._PLAN + (twin,))
    assert len(problems) == 1 and problems[0].startswith("'w_hh_twin' at byte "), problems


@pytest.fixture(scope="module")
def lstm_plans():
    """The plans of a bidirectional float32 LSTM with projection and lengths: (forward
    plans, backward plans), each as the stage received it."""
    _, cls, kwargs = next(v for v in VARIANTS if v[0] == "lstm_proj")
    layer = build(cls, kwargs, I, H, backend="cython", dtype=np.float32, bidirectional=True)
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        _spy(patch, ("forward_all", "backward_all"), calls)
        x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
        y, _ = call(layer, x, lengths=np.array([3, 1, 2]))
        back(layer, np.ones_like(y))
    return calls[0][1], calls[1][1]


def _untouched(plans):
    """Copies of the plans with fresh NaN output buffers, to see that nothing ran."""
    plans = [_with(plan, hs=np.full_like(plan.hs, np.nan)) for plan in plans]
    return plans, lambda: all(np.isnan(plan.hs).all() for plan in plans)


def _forward(plans):
    """Run the forward stages on copies of the plans (fresh outputs); returns their hs."""
    plans = [_with(plan, hs=np.full_like(plan.hs, np.nan), xp=np.empty_like(plan.xp),
                   c_buf=np.empty_like(plan.c_buf), m_buf=np.empty_like(plan.m_buf)) for plan in plans]
    _recurrent.forward_all(plans, 1)
    return [plan.hs for plan in plans]


@pytest.mark.parametrize("count", [0, 3, 4])
def test_a_third_direction_is_refused_before_any_work(lstm_plans, count):
    forward, _ = lstm_plans
    plans, untouched = _untouched((forward * 2)[:count])
    with pytest.raises(ValueError, match=rf"^plans: expected one plan per direction, 1 or 2, got {count}$"):
        _recurrent.forward_all(plans, 2)
    assert untouched()


def _strided(a):
    return np.repeat(a, 2, axis=-1)[..., ::2]


BAD_VALUES = [
    # (what, field, bad value from the plan, error, message)
    ("wrong dtype", "x", lambda p: p.x.astype(np.float64), TypeError,
     r"^plan\.x: expected a C-contiguous float32 array, got float64 array$"),
    ("strided array", "h0", lambda p: _strided(p.h0), TypeError,
     r"^plan\.h0: expected a C-contiguous float32 array, got non-contiguous float32 array$"),
    ("not an array", "w_ih", lambda p: p.w_ih.tolist(), TypeError,
     r"^plan\.w_ih: expected a C-contiguous float32 array, got list$"),
    ("wrong index dtype", "active", lambda p: p.active.astype(np.int64), TypeError,
     r"^plan\.active: expected a C-contiguous intc array, got int64 array$"),
    ("strided index array", "step_row", lambda p: _strided(p.step_row), TypeError,
     r"^plan\.step_row: expected a C-contiguous intp array, got non-contiguous int64 array$"),
    ("not an integer", "H", lambda p: float(p.H), TypeError,
     r"^plan\.H: expected an integer from 0 to 2147483647, got float$"),
    ("an array for an integer", "B", lambda p: np.array([p.B]), TypeError,
     r"^plan\.B: expected an integer from 0 to 2147483647, got ndarray$"),
    ("negative", "GH", lambda p: -1, ValueError, r"^plan\.GH: expected an integer from 0 to 2147483647, got -1$"),
    ("past a C int", "P", lambda p: 2**31, ValueError,
     r"^plan\.P: expected an integer from 0 to 2147483647, got 2147483648$"),
    ("past a Py_ssize_t", "N", lambda p: 2**63, ValueError,
     rf"^plan\.N: expected an integer from 0 to {2**63 - 1}, got {2**63}$"),
    ("far past any integer", "ldx", lambda p: 2**80, ValueError,
     rf"^plan\.ldx: expected an integer from 0 to {2**63 - 1}, got {2**80}$"),
    ("flag not 0 or 1", "training", lambda p: 2, ValueError, r"^plan\.training: expected 0 or 1, got 2$"),
    ("kind past GRU", "kind", lambda p: 4, ValueError, r"^plan\.kind: expected an integer from 0 to 3, got 4$"),
]


@pytest.mark.parametrize("what, field, bad, error, message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_a_bad_value_is_refused_as_it_is_set_and_the_plan_is_left_as_it_was(lstm_plans, what, field, bad,
                                                                            error, message):
    forward, _ = lstm_plans
    before = _forward(forward)
    plan = forward[1].copy()
    kept = getattr(plan, field)
    with pytest.raises(error, match=message):
        setattr(plan, field, bad(plan))
    assert getattr(plan, field) is kept
    # the struct kept the old value too: the plan computes what it did
    after = _forward([forward[0], plan])
    np.testing.assert_array_equal(after[1], before[1])
    # and a keyword of the constructor is checked the same way
    with pytest.raises(error, match=message):
        Plan(False, **{field: bad(plan)})


def test_the_plans_float_type_is_the_one_of_its_arrays(lstm_plans):
    forward, _ = lstm_plans
    refused = r"^plan\.w_ih: expected a C-contiguous float64 array, got float32 array$"
    with pytest.raises(TypeError, match=refused):
        Plan(True, w_ih=forward[0].w_ih)
    Plan(True, w_ih=forward[0].w_ih.astype(np.float64))


def test_the_directions_share_a_float_type(lstm_plans):
    forward, _ = lstm_plans
    double = Plan(True, **{name: getattr(forward[1], name) for name in ("kind", "B", "S", "H")})
    plans, untouched = _untouched([forward[0]])
    with pytest.raises(TypeError, match=r"^plans\[1\]: expected a float32 plan like plans\[0\], got a float64 one$"):
        _recurrent.forward_all(plans + [double], 1)
    assert untouched()


def test_an_unknown_field_is_refused(lstm_plans):
    forward, _ = lstm_plans
    plan = forward[0].copy()
    message = r"^plan: expected a field of PLAN_SCHEMA, last_rows or params, got 'w_hhh'$"
    with pytest.raises(AttributeError, match=message):
        plan.w_hhh = plan.w_hh
    with pytest.raises(AttributeError, match=message):
        plan.w_hhh
    with pytest.raises(AttributeError, match=message):
        Plan(False, w_hhh=plan.w_hh)
    with pytest.raises(AttributeError, match=r"got 'is_double'$"):
        plan.is_double = True  # set at construction only
    assert not plan.is_double


def test_the_host_attributes_are_kept_as_given():
    plan = Plan(False, params={"weight_ih": 1}, last_rows=[2])
    assert plan.params == {"weight_ih": 1} and plan.last_rows == [2]
    plan.last_rows = None
    assert plan.last_rows is None and plan.params == {"weight_ih": 1}


def test_a_field_set_twice_keeps_the_second(lstm_plans):
    """The value read back and the one computed with are the last set."""
    forward, _ = lstm_plans
    plan = forward[1].copy()
    zero, other = np.zeros_like(plan.h0), np.random.default_rng(3).standard_normal(plan.h0.shape).astype(np.float32)
    plan.h0 = zero
    plan.h0 = other
    assert plan.h0 is other
    once = _with(forward[1], h0=other)
    hs_twice, hs_once = _forward([forward[0], plan])[1], _forward([forward[0], once])[1]
    np.testing.assert_array_equal(hs_twice, hs_once)
    assert not np.array_equal(hs_twice, _forward([forward[0], _with(forward[1], h0=zero)])[1])
    plan.H = 7
    plan.H = forward[1].H
    assert plan.H == forward[1].H
    np.testing.assert_array_equal(_forward([forward[0], plan])[1], hs_once)


def test_none_takes_a_field_away(lstm_plans):
    forward, _ = lstm_plans
    plan = forward[1].copy()
    plan.c0 = None
    assert plan.c0 is None and "c0" not in _given(plan)
    plans, untouched = _untouched([forward[0], plan])
    with pytest.raises(ValueError, match=r"^plan\.c0: expected a C-contiguous float32 array \(required: lstm\), "
                                         r"got None$"):
        _recurrent.forward_all(plans, 1)
    assert untouched()


def test_a_copy_is_a_plan_of_its_own(lstm_plans):
    forward, _ = lstm_plans
    before = _forward(forward)
    original = forward[1]
    kept = {name: getattr(original, name) for name in SCHEMA}
    copy = original.copy()
    assert all(getattr(copy, name) is value for name, value in kept.items())
    copy.h0 = np.ones_like(original.h0)
    copy.dy = np.zeros((1, 1), np.float32)
    copy.w_hr = None
    assert all(getattr(original, name) is value for name, value in kept.items())
    np.testing.assert_array_equal(_forward(forward)[1], before[1])


REQUIRED = [
    # (what, plan from the forward one, message)
    ("missing field", lambda p: _with(p, c0=None),
     r"^plan\.c0: expected a C-contiguous float32 array \(required: lstm\), got None$"),
    ("missing integer", lambda p: _with(p, S=None), r"^plan\.S: expected an integer from 0 to 2147483647 "
                                                    r"\(required: always\), got None$"),
    ("missing variant field", lambda p: _with(p, m_buf=None),
     r"^plan\.m_buf: expected a C-contiguous float32 array \(required: proj\), got None$"),
]


@pytest.mark.parametrize("what, change, message", REQUIRED, ids=[r[0] for r in REQUIRED])
def test_a_plan_lacking_a_required_field_is_refused_before_any_work(lstm_plans, what, change, message):
    forward, _ = lstm_plans
    # the bad plan second: the good first one must not have run either
    plans, untouched = _untouched([forward[0], change(forward[1])])
    with pytest.raises(ValueError, match=message):
        _recurrent.forward_all(plans, 1)
    assert untouched()


@pytest.mark.parametrize("stage, args", [("forward_all", (1,)), ("backward_all", (1,)),
                                         ("weight_gradients_all", ())])
def test_what_is_not_a_plan_is_refused(lstm_plans, stage, args):
    forward, backward = lstm_plans
    good = forward if stage == "forward_all" else backward
    as_dict = {name: getattr(good[1], name) for name in _given(good[1])}
    plans, untouched = _untouched([good[0]])
    with pytest.raises(TypeError, match=r"^plans\[1\]: expected a Plan, got dict$"):
        getattr(_recurrent, stage)(plans + [as_dict], *args)
    assert untouched()
    with pytest.raises(TypeError, match=r"^plans\[0\]: expected a Plan, got dict$"):
        _recurrent.StepStack([as_dict])


def test_a_forward_plan_is_refused_by_the_backward_stages(lstm_plans):
    forward, backward = lstm_plans
    backward[0].check(True)
    refused = r"^plan\.dy: expected a C-contiguous float32 array \(required: backward\), got None$"
    with pytest.raises(ValueError, match=refused):
        forward[1].check(True)
    with pytest.raises(ValueError, match=refused):
        _recurrent.backward_all([backward[0], forward[1]], 1)
    with pytest.raises(ValueError, match=refused):
        _recurrent.weight_gradients_all([backward[0], forward[1]])


def _backward(plans):
    """Run the backward stages on copies of the plans (fresh outputs); returns dx and
    the weight gradients of each."""
    outputs = ("dx", "dh", "dc", "g_w_ih", "g_w_hh", "g_b_ih", "g_b_hh", "g_w_hr")
    plans = [_with(plan, **{name: getattr(plan, name).copy() for name in outputs}) for plan in plans]
    _recurrent.backward_all(plans, 1)
    _recurrent.weight_gradients_all(plans)
    return [[getattr(plan, name) for name in outputs] for plan in plans]


def test_dy_offset_is_applied_whichever_is_set_first():
    """dy holds both directions' columns side by side; a direction starts at dy_offset,
    set before or after dy."""
    _, cls, kwargs = next(v for v in VARIANTS if v[0] == "lstm_proj")
    layer = build(cls, kwargs, I, H, backend="cython", dtype=np.float32, bidirectional=True)
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        _spy(patch, ("backward_all",), calls)
        rng = np.random.default_rng(4)
        y, _ = call(layer, rng.standard_normal((T, B, I)).astype(np.float32))  # no lengths: dy as it lies
        back(layer, rng.standard_normal(y.shape).astype(np.float32))
    plans = calls[0][1]
    assert plans[1].dy_offset > 0 and plans[1].dy is plans[0].dy
    later = plans[1].copy()
    later.dy, later.dy_offset = None, 0
    later.dy_offset = plans[1].dy_offset
    later.dy = plans[1].dy
    expected, got = _backward(plans), _backward([plans[0], later])
    for a, b in zip(expected[1], got[1]):
        np.testing.assert_array_equal(a, b)
    shifted = _backward([plans[0], _with(plans[1], dy_offset=0)])
    assert not np.array_equal(shifted[1][1], expected[1][1])
