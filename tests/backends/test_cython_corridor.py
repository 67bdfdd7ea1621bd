"""The corridor between the compiled backend's two halves: backend.py hands each stage of
_recurrent one plan dict per direction, and _recurrent.PLAN_SCHEMA is the one
description of those dicts. Here: every variant's plans, in training and inference, with
and without lengths, one and two directions, with and without bias, hold exactly what the
schema names; each requirement of the schema is met by backend.py and refused when
broken; the schema covers the Direction struct field for field; and a bad plan, or a
third direction, is a clear error before any work."""
import itertools
import re

import numpy as np
import pytest

from cases import VARIANTS, back, build, call

NOT_BUILT = "the compiled extension is not built here"
_recurrent = pytest.importorskip("rnncore.backends.cython._recurrent", reason=NOT_BUILT)
pytest.importorskip("rnncore.backends.cython.backend", reason=NOT_BUILT)

STAGES = ("forward_all", "backward_all", "weight_gradients_all")
SCHEMA = {key: (kind, when) for key, kind, when in _recurrent.PLAN_SCHEMA}
T, B, I, H = 3, 3, 2, 4

CASES = [(name, cls, kwargs, training, lengths, directions, bias)
         for (name, cls, kwargs), training, lengths, directions, bias
         in itertools.product(VARIANTS, (False, True), (None, [3, 1, 2]), (1, 2), (True, False))
         if directions == 1 or name.split("_")[0] != "jordan"]
CASE = {f"{c[0]}-{'train' if c[3] else 'eval'}-{'lengths' if c[4] else 'full'}-{c[5]}dir-"
        f"{'bias' if c[6] else 'nobias'}": c for c in CASES}


def _run_case(name, cls, kwargs, training, lengths, directions, bias):
    """Forward (and, training, backward) through the cython backend; returns the stages
    called, each as (stage, is_double, copies of its plans)."""
    more = dict(bias=bias) if directions == 1 else dict(bias=bias, bidirectional=True)
    layer = build(cls, kwargs, I, H, backend="cython", seed=1, **more)
    layer.train(training)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        for stage in STAGES:
            def spy(plans, is_double, *rest, _real=getattr(_recurrent, stage), _stage=stage):
                calls.append((_stage, is_double, [dict(plan) for plan in plans]))
                return _real(plans, is_double, *rest)
            patch.setattr(_recurrent, stage, spy)
        y, _ = call(layer, x, lengths=None if lengths is None else np.array(lengths))
        if training:
            back(layer, rng.standard_normal(y.shape))
    return calls


@pytest.fixture(scope="module")
def captured():
    return {case_id: _run_case(*case) for case_id, case in CASE.items()}


def _given(plan):
    return {key for key, value in plan.items() if value is not None}


@pytest.mark.parametrize("case_id", list(CASE))
def test_plans_hold_only_schema_keys(captured, case_id):
    calls = captured[case_id]
    _, _, _, training, _, directions, _ = CASE[case_id]
    assert [stage for stage, _, _ in calls] == (list(STAGES) if training else ["forward_all"])
    for stage, is_double, plans in calls:
        assert len(plans) == directions
        for plan in plans:
            assert set(plan) <= set(SCHEMA), f"{stage}: keys outside PLAN_SCHEMA: {set(plan) - set(SCHEMA)}"
            _recurrent.check_plan(plan, stage != "forward_all", is_double)


def test_every_schema_key_is_given_by_some_plan(captured):
    given = set().union(*(_given(plan) for calls in captured.values() for _, _, plans in calls for plan in plans))
    assert given == set(SCHEMA), f"never given: {set(SCHEMA) - given}"


def test_every_requirement_is_met_and_enforced(captured):
    """Each key backend.py gives that the schema does not call optional is required for
    that plan: taking it away is refused, naming the key. And every required entry is
    refused somewhere, so no condition of the schema is dead."""
    optional = {key for key, (_, when) in SCHEMA.items() if when == "optional"}
    refused = set()
    for calls in captured.values():
        for stage, is_double, plans in calls:
            for plan in plans:
                for key in _given(plan) - optional:
                    try:
                        _recurrent.check_plan(_with(plan, drop=[key]), stage != "forward_all", is_double)
                    except ValueError as exc:
                        assert re.match(rf"plan\[{key!r}\]: expected .*, got no such key$", str(exc)), exc
                        refused.add(key)
                    else:
                        pytest.fail(f"{stage}: a plan without {key!r} passes, though backend.py gives it "
                                    f"and the schema does not call it optional")
    assert refused == set(SCHEMA) - optional, f"never refused: {set(SCHEMA) - optional - refused}"


def test_schema_covers_the_direction_struct():
    assert _recurrent._layout_problems() == []


FIELD_KEYS = [entry[0] for entry in _recurrent._PLAN if entry[1] != "host"]


@pytest.mark.parametrize("key", FIELD_KEYS)
def test_a_struct_field_without_its_key_is_found(key):
    problems = _recurrent._layout_problems([entry for entry in _recurrent._PLAN if entry[0] != key])
    assert len(problems) == 1, problems


def test_two_keys_on_one_field_are_found():
    twin = ("w_hh_twin",) + next(entry for entry in _recurrent._PLAN if entry[0] == "w_hh")[1:]
    problems = _recurrent._layout_problems(_recurrent._PLAN + (twin,))
    assert len(problems) == 1 and problems[0].startswith("'w_hh_twin' at byte "), problems


@pytest.fixture(scope="module")
def lstm_plans():
    """The plans of a bidirectional float32 LSTM with projection and lengths: (forward
    plans, backward plans)."""
    _, cls, kwargs = next(v for v in VARIANTS if v[0] == "lstm_proj")
    layer = build(cls, kwargs, I, H, backend="cython", dtype=np.float32, bidirectional=True)
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        for stage in ("forward_all", "backward_all"):
            def spy(plans, *rest, _real=getattr(_recurrent, stage)):
                calls.append([dict(plan) for plan in plans])
                return _real(plans, *rest)
            patch.setattr(_recurrent, stage, spy)
        x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
        y, _ = call(layer, x, lengths=np.array([3, 1, 2]))
        back(layer, np.ones_like(y))
    return calls[0], calls[1]


def _untouched(plans):
    """The plans with fresh NaN output buffers, to see that nothing ran."""
    plans = [dict(plan, hs=np.full_like(plan["hs"], np.nan)) for plan in plans]
    return plans, lambda: all(np.isnan(plan["hs"]).all() for plan in plans)


def _with(plan, drop=(), **changes):
    out = {key: value for key, value in plan.items() if key not in drop}
    out.update(changes)
    return out


@pytest.mark.parametrize("count", [0, 3, 4])
def test_a_third_direction_is_refused_before_any_work(lstm_plans, count):
    forward, _ = lstm_plans
    plans, untouched = _untouched((forward * 2)[:count])
    with pytest.raises(ValueError, match=rf"^plans: expected one plan per direction, 1 or 2, got {count}$"):
        _recurrent.forward_all(plans, False, 2)
    assert untouched()


BAD_PLANS = [
    # (what, change, error, message)
    ("misspelt key", lambda p: _with(p, drop=["w_hh"], w_hhh=p["w_hh"]), ValueError,
     r"^plan: expected only the keys of PLAN_SCHEMA, got 'w_hhh'$"),
    ("missing key", lambda p: _with(p, drop=["c0"]), ValueError,
     r"^plan\['c0'\]: expected a C-contiguous float32 array \(required: lstm\), got no such key$"),
    ("required None", lambda p: _with(p, m_buf=None), ValueError,
     r"^plan\['m_buf'\]: expected a C-contiguous float32 array \(required: proj\), got None$"),
    ("wrong dtype", lambda p: _with(p, x=p["x"].astype(np.float64)), TypeError,
     r"^plan\['x'\]: expected a C-contiguous float32 array, got float64 array$"),
    ("strided array", lambda p: _with(p, h0=np.repeat(p["h0"], 2, axis=1)[:, ::2]), TypeError,
     r"^plan\['h0'\]: expected a C-contiguous float32 array, got non-contiguous float32 array$"),
    ("not an array", lambda p: _with(p, w_ih=p["w_ih"].tolist()), TypeError,
     r"^plan\['w_ih'\]: expected a C-contiguous float32 array, got list$"),
    ("wrong index dtype", lambda p: _with(p, active=p["active"].astype(np.int64)), TypeError,
     r"^plan\['active'\]: expected a C-contiguous intc array, got int64 array$"),
    ("not an integer", lambda p: _with(p, H=float(p["H"])), TypeError,
     r"^plan\['H'\]: expected an integer, got float$"),
]


@pytest.mark.parametrize("what, change, error, message", BAD_PLANS, ids=[b[0] for b in BAD_PLANS])
def test_a_bad_plan_is_refused_before_any_work(lstm_plans, what, change, error, message):
    forward, _ = lstm_plans
    # the bad plan second: the good first one must not have run either
    plans, untouched = _untouched([forward[0], change(forward[1])])
    with pytest.raises(error, match=message):
        _recurrent.forward_all(plans, False, 1)
    assert untouched()


def test_a_forward_plan_is_refused_by_the_backward_stages(lstm_plans):
    forward, backward = lstm_plans
    _recurrent.check_plan(backward[0], True, False)
    refused = r"^plan\['dy'\]: expected a C-contiguous float32 array \(required: backward\), got no such key$"
    with pytest.raises(ValueError, match=refused):
        _recurrent.backward_all([backward[0], forward[1]], False, 1)
    with pytest.raises(ValueError, match=refused):
        _recurrent.weight_gradients_all([backward[0], forward[1]], False)


def test_the_call_type_sets_the_float_type(lstm_plans):
    forward, _ = lstm_plans
    refused = r"^plan\['w_ih'\]: expected a C-contiguous float64 array, got float32 array$"
    with pytest.raises(TypeError, match=refused):
        _recurrent.check_plan(forward[0], False, True)
