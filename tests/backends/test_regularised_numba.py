"""The numba backend's regularised cells (layer norm, zoneout, recurrent dropout) against
the NumPy reference, forward and every gradient, with the masks of training and without
them (the deterministic form), over lengths, both directions, initial states and the
edge shapes T = 1, B = 1, H = 1; one thread and two bitwise equal.

Tolerances (conftest.assert_close, relative to each array's largest magnitude): float64
1e-10 against the reference (the same operations, summed in other orders: a few hundred
ulps after a few steps); float32 1e-5 against the float64 numbers (eps 1.2e-7 times the
growth over the steps and the layer norm's division by a row's spread).
"""
import itertools

import numpy as np
import pytest

import rnncore as rc
from conftest import assert_close
from rnncore.backends.reference import backend as reference
from rnncore.core import regularise
from rnncore.core.spec import CellSpec

pytestmark = pytest.mark.skipif("numba" not in rc.backends(), reason="numba is not installed here")

if "numba" in rc.backends():
    from rnncore.backends.numba import backend as numba_backend


# -- cases -------------------------------------------------------------------------------

# the cells each option goes into, and every combination of the options a kind takes
VARIANTS = {
    "rnn": dict(kind="rnn"),
    "rnn relu": dict(kind="rnn", nonlinearity="relu"),
    "lstm": dict(kind="lstm"),
    "lstm proj": dict(kind="lstm", proj_size=3),
    "lstm peephole": dict(kind="lstm", peephole=True),
    "lstm cifg": dict(kind="lstm", coupled_input_forget=True),
    "lstm no bias": dict(kind="lstm", bias=False),
    "lstm peephole cifg proj": dict(kind="lstm", peephole=True, coupled_input_forget=True, proj_size=2),
    "gru": dict(kind="gru"),
    "gru no bias": dict(kind="gru", bias=False),
    "gru cho": dict(kind="gru", reset_after=False),
    "gru cho no bias": dict(kind="gru", reset_after=False, bias=False),
}
OPTIONS = {
    "ln": dict(layer_norm=True),
    "zoneout": dict(zoneout_h=0.3, zoneout_c=0.25),
    "dropout": dict(recurrent_dropout=0.3),
}


def _takes(variant, option):
    kind = variant["kind"]
    if option == "ln":
        return kind == "lstm" or (kind == "gru" and variant.get("reset_after", True))
    return True


def _combinations():
    cases = {}
    for name, variant in VARIANTS.items():
        usable = [option for option in OPTIONS if _takes(variant, option)]
        for r in range(1, len(usable) + 1):
            for chosen in itertools.combinations(usable, r):
                options = dict(variant)
                for option in chosen:
                    options.update(OPTIONS[option])
                if options["kind"] != "lstm":
                    options.pop("zoneout_c", None)
                cases[f"{name} + {' + '.join(chosen)}"] = options
    return cases


CASES = _combinations()
# one of each kind with every option it takes: the cases the other tests run
EVERYTHING = ["rnn relu + zoneout + dropout", "lstm peephole cifg proj + ln + zoneout + dropout",
              "lstm proj + ln + zoneout + dropout", "gru + ln + zoneout + dropout", "gru cho + zoneout + dropout"]
# zoneout of one state only
CASES["lstm zoneout h only proj"] = dict(kind="lstm", zoneout_h=0.35, proj_size=3)
CASES["lstm zoneout c only peephole"] = dict(kind="lstm", zoneout_c=0.4, peephole=True)


def _spec(options, I=3, H=4):
    return CellSpec(input_size=I, hidden_size=H, **options)


def _params(spec, rng, dtype):
    """Random parameters; the layer norm's gains and shift away from 1 and 0, so that a
    gain used in the wrong place shows."""
    params = {}
    for name, shape in spec.param_shapes().items():
        value = rng.uniform(-0.6, 0.6, shape)
        if name.endswith("_ln"):
            value = value + (0.0 if name.startswith("bias") else 1.0)
        params[name] = value.astype(dtype)
    return params


def _masks(spec, rng, T, B, dtype):
    """A direction's masks as a training call draws them."""
    return regularise.draw(rng, spec, T, B, dtype, 1)[0][0]


class Problem:
    """One layer call: spec, parameters, input, initial states, lengths, directions,
    masks (or none: the deterministic form) and the output gradients."""

    def __init__(self, options, T=5, B=4, I=3, H=4, lengths=(5, 2, 4, 1), reverse=(False, True), masked=True,
                 seed=0):
        rng = np.random.default_rng(seed)
        self.spec = spec = _spec(options, I, H)
        self.reverse = tuple(reverse)
        D = len(self.reverse)
        self.lengths = None if lengths is None else np.asarray(lengths, np.int64)
        self.params = [_params(spec, rng, np.float64) for _ in range(D)]
        self.x = rng.standard_normal((T, B, I))
        self.states = [tuple(0.5 * rng.standard_normal((B, n)) for n in spec.state_sizes) for _ in range(D)]
        # masks from a generator of their own: the other arrays do not depend on the options
        mask_rng = np.random.default_rng(seed + 1)
        self.masks = [_masks(spec, mask_rng, T, B, np.float64) for _ in range(D)] if masked else None
        self.dy = rng.standard_normal((T, B, D * spec.out_size))
        self.dstates = [tuple(rng.standard_normal((B, n)) for n in spec.state_sizes) for _ in range(D)]

    def cast(self, dtype):
        """Every array of the call in `dtype`."""
        def to(tree):
            if isinstance(tree, dict):
                return {k: to(v) for k, v in tree.items()}
            if isinstance(tree, (list, tuple)):
                return type(tree)(to(v) for v in tree)
            return None if tree is None else np.ascontiguousarray(tree, dtype=dtype)
        return (to(self.params), to(self.x), to(self.states), None if self.masks is None else to(self.masks),
                to(self.dy), to(self.dstates))

    def run(self, dtype=np.float64, threads=1, module=None):
        """A backend's (numba's, or `module`'s) forward and backward: (y, states_n, dx,
        dstates0, grads)."""
        module = numba_backend if module is None else module
        params, x, states, masks, dy, dstates = self.cast(dtype)
        y, states_n, ctx = module.layer_forward(self.spec, params, x, states, self.lengths, True, self.reverse,
                                                threads, masks)
        dx, dstates0, grads = module.layer_backward(ctx, dy, dstates, threads)
        return y, states_n, dx, dstates0, grads


def _flatten(results):
    """Every array of a run, named."""
    y, states_n, dx, dstates0, grads = results
    arrays = [("y", y), ("dx", dx)]
    for d in range(len(states_n)):
        arrays += [(f"states_n[{d}][{k}]", a) for k, a in enumerate(states_n[d])]
        arrays += [(f"dstates0[{d}][{k}]", a) for k, a in enumerate(dstates0[d])]
        arrays += [(f"{name}[{d}]", a) for name, a in grads[d].items()]
    return arrays


def _check_against_reference(problem):
    """float64 forward and every gradient, against the reference at 1e-10."""
    got, want = _flatten(problem.run()), _flatten(problem.run(module=reference))
    assert [name for name, _ in got] == [name for name, _ in want]
    for (name, a), (_, b) in zip(got, want):
        assert_close(a, b, what=name)


@pytest.mark.parametrize("masked", [True, False], ids=["masks", "deterministic"])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_every_gradient_match_the_reference(case, masked):
    _check_against_reference(Problem(CASES[case], masked=masked))


@pytest.mark.parametrize("shape", [dict(T=1, B=3, lengths=None), dict(T=4, B=1, lengths=None),
                                   dict(H=1, lengths=None, T=3, B=2), dict(T=1, B=1, H=1, lengths=None)],
                         ids=["T=1", "B=1", "H=1", "T=B=H=1"])
@pytest.mark.parametrize("case", EVERYTHING)
def test_edge_shapes(case, shape):
    _check_against_reference(Problem(CASES[case], **shape))


@pytest.mark.parametrize("case", EVERYTHING)
def test_one_forward_direction_without_lengths(case):
    _check_against_reference(Problem(CASES[case], reverse=(False,), lengths=None))


@pytest.mark.parametrize("masked", [True, False], ids=["masks", "deterministic"])
@pytest.mark.parametrize("case", EVERYTHING + ["lstm cifg + ln", "gru no bias + ln"])
def test_float32_follows_float64(case, masked):
    problem = Problem(CASES[case], masked=masked)
    # a layer norm over H = 4 units divides by the standard deviation of four values,
    # which some draws make small, and float32's rounding grows by its inverse: on this
    # problem's masked draw the LSTM with projection and layer norm runs 1.7e-5 from its
    # float64 here and 1.4e-5 on the cython backend; other seeds give 1e-6 to 7e-6
    rtol = 3e-5 if problem.spec.layer_norm else 1e-5
    for (name, got), (_, want) in zip(_flatten(problem.run(np.float32)), _flatten(problem.run(np.float64))):
        assert got.dtype == np.float32, name
        assert_close(got, want, rtol=rtol, what=name)


@pytest.mark.parametrize("case", EVERYTHING)
def test_two_threads_give_bitwise_the_numbers_of_one(case):
    B = 97
    assert -(-B // numba_backend.rows_per_chunk(B)) >= 3, "the case must cut the batch in several chunks"
    lengths = np.random.default_rng(5).integers(1, 6, B)
    problem = Problem(CASES[case], B=B, lengths=lengths)
    one, two = _flatten(problem.run(threads=1)), _flatten(problem.run(threads=2))
    for (name, a), (_, b) in zip(one, two):
        np.testing.assert_array_equal(b, a, err_msg=name)


def test_deterministic_forms_are_the_limits():
    # zoneout's expectation at p = 0 is the plain cell bit for bit; at p = 1 the state
    # never moves; a mask of ones for recurrent dropout changes nothing
    base = dict(kind="lstm", peephole=True, proj_size=3)
    plain = Problem(base, masked=False).run()
    zero = Problem(dict(base, zoneout_h=0.0, zoneout_c=0.0), masked=False).run()
    for (name, a), (_, b) in zip(_flatten(plain), _flatten(zero)):
        np.testing.assert_array_equal(a, b, err_msg=name)
    still = Problem(dict(kind="gru", zoneout_h=1.0), masked=False, lengths=None)
    y, states_n, *_ = still.run()
    np.testing.assert_array_equal(states_n[0][0], still.states[0][0])
    np.testing.assert_array_equal(y[-1, :, :4], still.states[0][0])
    ones = Problem(dict(kind="gru", recurrent_dropout=0.5))
    for masks in ones.masks:
        masks["recurrent"][...] = 1.0
    for (name, a), (_, b) in zip(_flatten(ones.run()), _flatten(Problem(dict(kind="gru")).run())):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_each_family_still_compiles_once_per_dtype():
    # the options are runtime flags and stand-in arrays: one signature per kernel and dtype
    from rnncore.backends.numba import kernels
    for case in CASES:
        Problem(CASES[case], T=2, B=2, lengths=None).run()
    for entry in (kernels.simple_forward, kernels.simple_backward, kernels.lstm_forward, kernels.lstm_backward,
                  kernels.gru_forward, kernels.gru_backward):
        float64_signatures = [sig for sig in entry.signatures if str(sig[0].dtype) == "float64"]
        assert len(float64_signatures) == 1, (entry, float64_signatures)


def test_inference_without_masks_is_the_deterministic_training_forward():
    for case in EVERYTHING:
        problem = Problem(CASES[case], masked=False)
        y_train, states_train, *_ = problem.run()
        y_eval, states_eval, ctx = numba_backend.layer_forward(problem.spec, problem.params, problem.x,
                                                               problem.states, problem.lengths, False,
                                                               problem.reverse, 1)
        assert ctx is None
        np.testing.assert_array_equal(y_eval, y_train)
        for a, b in zip(states_eval, states_train):
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v)


def _reference_trace(problem):
    """Per direction, the reference's own gates and states at every step, placed at their
    time index, zero past each sequence's end."""
    params, x, states, _, _, _ = problem.cast(np.float64)
    y, _, ctx = reference.layer_forward(problem.spec, params, x, states, problem.lengths, True, problem.reverse, 1)
    out = problem.spec.out_size
    traces = []
    for d, ctx_d in enumerate(ctx):
        if problem.spec.kind == "rnn":
            traces.append({"h": y[:, :, d * out:(d + 1) * out]})
            continue
        names = "ifgoc" if problem.spec.kind == "lstm" else "rzn"
        trace = {name: np.zeros((x.shape[0], x.shape[1], problem.spec.hidden_size)) for name in names}
        batch = np.arange(x.shape[1])
        for t, cache in enumerate(ctx_d["caches"]):
            rows = batch[ctx_d["valid"][t]]
            for name in names:
                trace[name][ctx_d["time"][t, rows], rows] = getattr(cache, name)[rows]
        traces.append(trace)
    return traces


@pytest.mark.parametrize("case", ["lstm peephole cifg proj + ln + zoneout", "lstm + zoneout + dropout",
                                  "gru + ln + zoneout", "gru cho + zoneout", "rnn + zoneout"])
def test_trace_is_what_the_forward_computed(case):
    # the deterministic forward's gates (dropout off, zoneout's expectation), time order
    problem = Problem(CASES[case], masked=False)
    params, x, states, _, _, _ = problem.cast(np.float64)
    traces = numba_backend.layer_trace(problem.spec, params, x, states, problem.lengths, problem.reverse, 1)
    assert len(traces) == 2
    for got, want in zip(traces, _reference_trace(problem)):
        assert list(got) == list(want)
        for name in got:
            assert_close(got[name], want[name], what=name)
    if problem.spec.coupled_input_forget:
        ended = np.arange(x.shape[0])[:, None] >= problem.lengths[None, :]
        np.testing.assert_array_equal(traces[0]["f"][~ended], 1 - traces[0]["i"][~ended])
        assert not traces[0]["f"][ended].any()
