"""The backend contract and the pieces the backends share: the length schedule against a
brute-force statement of it, the bias fold and the gradient naming per variant, the
direction wrapper, and every available backend against the Protocol."""
import inspect

import numpy as np
import pytest

import rnncore as rc
from rnncore.backends import contract, registry
from rnncore.core.spec import CellSpec

from cases import VARIANT_IDS, VARIANTS, build

# (T, B, lengths drawn at random in [1, T]) with a seed each; B > T forces ties
SHAPES = [(1, 1), (1, 4), (5, 1), (6, 9), (9, 6), (12, 17)]


def _random_lengths(T, B, seed):
    lengths = np.random.default_rng(seed).integers(1, T + 1, B)
    lengths[seed % B] = 1  # at least one short row, so that a schedule with T > 1 sorts
    return lengths.astype(np.int64)


def _brute_time(T, length, reverse):
    """The time index each loop step of one row visits: its valid steps (backwards when
    reverse), then its padded tail in increasing order."""
    valid = list(range(length))
    return (valid[::-1] if reverse else valid) + list(range(length, T))


# -- the length schedule ---------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("T,B", SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_schedule_matches_its_brute_force_definition(T, B, seed, reverse):
    lengths = _random_lengths(T, B, seed)
    s = contract.Schedule(T, B, lengths)
    if lengths.min() == T:
        assert s.order is None
        order = list(range(B))
    else:
        # longest first, ties in batch order (Python's sort is stable)
        order = sorted(range(B), key=lambda b: -lengths[b])
        assert s.order.tolist() == order
    sorted_lengths = [int(lengths[b]) for b in order]
    assert s.lengths.tolist() == sorted_lengths
    assert s.steps == max(sorted_lengths)
    active = [sum(1 for L in sorted_lengths if L > t) for t in range(T)]
    assert s.active.tolist() == active
    assert s.offsets.tolist() == [sum(active[:t]) for t in range(T)]
    assert s.total == sum(active) == sum(sorted_lengths)
    for t in range(T):  # the running rows of each step are a prefix of the sorted rows
        assert all((sorted_lengths[j] > t) == (j < active[t]) for j in range(B))

    time = s.time(reverse)
    assert time.shape == (T, B)
    for j in range(B):
        assert time[:, j].tolist() == _brute_time(T, sorted_lengths[j], reverse)

    packed = [(_brute_time(T, sorted_lengths[j], reverse)[t], order[j])
              for t in range(s.steps) for j in range(active[t])]
    packed_time, packed_batch = s.packed(reverse)
    assert list(zip(packed_time.tolist(), packed_batch.tolist())) == packed

    a = np.random.default_rng(seed).standard_normal((T, B, 2))
    padded = a[s.padded(reverse)]
    for t in range(T):
        for j in range(B):
            np.testing.assert_array_equal(padded[t, j], a[time[t, j], order[j]])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("T,B", SHAPES)
def test_time_index_and_running_in_batch_order(T, B, reverse):
    lengths = _random_lengths(T, B, 0)
    time = contract.time_index(T, lengths, reverse)
    valid = contract.running(T, lengths)
    for b in range(B):
        assert time[:, b].tolist() == _brute_time(T, int(lengths[b]), reverse)
        assert valid[:, b].tolist() == [t < lengths[b] for t in range(T)]


def test_schedule_without_lengths_keeps_the_rows_and_is_reused_across_calls():
    T, B = 4, 3
    s = contract.schedule(T, B, None)
    assert s is contract.schedule(T, B, None) is contract.schedule(T, B, np.full(B, T))
    assert s.order is None and s.steps == T and s.active.tolist() == [B] * T
    assert s.time(True)[:, 0].tolist() == [3, 2, 1, 0]
    # what a backend derives from it lives as long as the schedule: built once
    built = []
    assert s.derived("test", lambda schedule: built.append(schedule) or "layout") == "layout"
    assert s.derived("test", lambda schedule: built.append(schedule) or "other") == "layout" and built == [s]
    ragged = np.array([4, 1, 3])
    assert contract.schedule(T, B, ragged) is not contract.schedule(T, B, ragged)


def test_compiled_slots_for_step_by_step_decoding_are_built_once():
    cython_backend = pytest.importorskip("rnncore.backends.cython.backend",
                                         reason="the compiled extension is not built here")
    slots = cython_backend._slots(1, 2, None)
    assert slots is cython_backend._slots(1, 2, None)
    assert slots.rows(False)[0] is slots.rows(False)[0]


@pytest.mark.parametrize("lengths", [None, np.array([2, 5, 5, 1])], ids=["uniform", "ragged"])
def test_sort_and_unsort_are_inverse_and_sort_copies(lengths):
    s = contract.Schedule(5, 4, lengths)
    a = np.arange(8.0).reshape(4, 2)
    sorted_rows = s.sort(a)
    assert not np.shares_memory(sorted_rows, a) and sorted_rows.flags.c_contiguous
    np.testing.assert_array_equal(s.unsort(sorted_rows), a)
    np.testing.assert_array_equal(sorted_rows, a if lengths is None else a[[1, 2, 0, 3]])
    if lengths is None:
        assert s.sort(a, copy=False) is a


# -- bias folding and gradient naming -------------------------------------------------------

def _spec(name, bias=True):
    _, cls, kwargs = VARIANTS[VARIANT_IDS.index(name)]
    return build(cls, kwargs, 3, 4, bias=bias).specs[0]


def _params(spec, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape) for name, shape in spec.param_shapes().items()}


@pytest.mark.parametrize("name", VARIANT_IDS)
def test_fold_bias_per_variant(name):
    spec = _spec(name)
    p = _params(spec)
    bias_x, b_hn = contract.fold_bias(spec, p)
    H = spec.hidden_size
    if spec.kind == "gru" and spec.reset_after:
        # b_hn is scaled by r: only b_hr and b_hz join the input projection's bias
        np.testing.assert_array_equal(bias_x, np.concatenate([p["bias_ih"][:2 * H] + p["bias_hh"][:2 * H],
                                                              p["bias_ih"][2 * H:]]))
        np.testing.assert_array_equal(b_hn, p["bias_hh"][2 * H:])
    else:
        np.testing.assert_array_equal(bias_x, p["bias_ih"] + p["bias_hh"])
        assert b_hn is None
    assert not np.shares_memory(bias_x, p["bias_ih"]) and not np.shares_memory(bias_x, p["bias_hh"])
    assert contract.fold_bias(_spec(name, bias=False), _params(_spec(name, bias=False))) == (None, None)


@pytest.mark.parametrize("name", VARIANT_IDS)
def test_gradients_are_named_in_the_specs_order_and_share_no_memory(name):
    spec = _spec(name)
    zeros = contract.new_gradients(spec, np.float32)
    assert list(zeros) == list(spec.param_shapes())
    assert all(g.shape == spec.param_shapes()[n] and g.dtype == np.float32 and not g.any() for n, g in zeros.items())
    one_bias = np.ones(spec.param_shapes()["bias_ih"])
    computed = dict(zeros, bias_ih=one_bias, bias_hh=one_bias, stand_in=np.zeros(1))
    grads = contract.gradients(spec, computed)
    assert list(grads) == list(spec.param_shapes())
    assert grads["bias_ih"] is one_bias and not np.shares_memory(grads["bias_hh"], one_bias)
    np.testing.assert_array_equal(grads["bias_hh"], one_bias)


# -- the direction wrapper ------------------------------------------------------------------

def test_directions_are_assembled_in_order_and_dx_summed():
    T, B, I = 3, 2, 4
    calls = []

    def run(p, state0, reverse):
        calls.append(reverse)
        return np.full((T, B, 1), p), (state0,), f"ctx{p}"

    y, states_n, ctx = contract.forward_directions(run, [1.0, 2.0], ["s0", "s1"], (False, True), training=True)
    assert calls == [False, True] and y.shape == (T, B, 2)
    assert y[..., 0].tolist() == np.ones((T, B)).tolist() and y[..., 1].tolist() == np.full((T, B), 2.0).tolist()
    assert states_n == [("s0",), ("s1",)] and ctx == ["ctx1.0", "ctx2.0"]
    y1, _, ctx1 = contract.forward_directions(run, [3.0], ["s"], (False,), training=False)
    assert ctx1 is None and y1.shape == (T, B, 1)

    dy = np.arange(T * B * 2, dtype=float).reshape(T, B, 2)

    def run_back(ctx_d, dy_d, dstate_n):
        return np.full((T, B, I), dy_d.sum()), (dstate_n,), {"ctx": ctx_d}

    dx, dstates0, grads = contract.backward_directions(run_back, ["a", "b"], dy, ["d0", "d1"])
    np.testing.assert_array_equal(dx, np.full((T, B, I), dy.sum()))
    assert dstates0 == [("d0",), ("d1",)] and grads == [{"ctx": "a"}, {"ctx": "b"}]


# -- every backend satisfies the contract ------------------------------------------------------

@pytest.mark.parametrize("name", rc.backends())
def test_every_available_backend_satisfies_the_protocol(name):
    module = registry.resolve(name)
    assert isinstance(module, contract.Backend)
    for method in ("layer_forward", "layer_backward"):
        expected = list(inspect.signature(getattr(contract.Backend, method)).parameters)[1:]  # without self
        assert list(inspect.signature(getattr(module, method)).parameters) == expected, (name, method)


@pytest.mark.parametrize("name", rc.backends())
def test_every_backend_returns_new_arrays_of_the_contract(name):
    """Shapes, dtypes and ownership of every result: y, states and grads new (none shared
    with the arguments), grads keyed in the spec's order, ctx left as it was."""
    module = registry.resolve(name)
    spec = CellSpec("lstm", 3, 4, peephole=True)
    T, B = 5, 3
    rng = np.random.default_rng(0)
    params = [_params(spec, seed) for seed in (1, 2)]
    x = rng.standard_normal((T, B, 3))
    states = [tuple(rng.standard_normal((B, w)) for w in spec.state_sizes) for _ in range(2)]
    lengths = np.array([5, 2, 4], dtype=np.int64)
    y, states_n, ctx = module.layer_forward(spec, params, x, states, lengths, True, (False, True), 2)
    assert y.shape == (T, B, 2 * spec.out_size) and y.dtype == np.float64
    assert not y[2:, 1].any()  # zero past sequence 1's end, in both directions
    dy = rng.standard_normal(y.shape)
    dstates_n = [tuple(rng.standard_normal(s.shape) for s in state) for state in states_n]
    first = module.layer_backward(ctx, dy, dstates_n, 2)
    again = module.layer_backward(ctx, dy, dstates_n, 1)
    for result in (first, again):
        dx, dstates0, grads = result
        assert dx.shape == x.shape and len(dstates0) == len(grads) == 2
        for g in grads:
            assert list(g) == list(spec.param_shapes())
            arrays = list(g.values())
            assert not any(np.shares_memory(a, b) for k, a in enumerate(arrays) for b in arrays[k + 1:])
    np.testing.assert_array_equal(first[0], again[0])
    for g_first, g_again in zip(first[2], again[2]):
        for key in g_first:
            np.testing.assert_array_equal(g_first[key], g_again[key], err_msg=key)


@pytest.mark.parametrize("memory", ["full", "lean"])
@pytest.mark.parametrize("lengths", [None, np.array([7, 2, 5], dtype=np.int64)], ids=["uniform", "ragged"])
@pytest.mark.parametrize("variant", VARIANT_IDS + ["gru_layer_norm"])
@pytest.mark.parametrize("name", rc.backends())
def test_a_backward_without_input_grad_makes_no_dx_and_the_same_bits(name, variant, lengths, memory):
    """input_grad=False (a model's first layer, whose input needs no gradient): dx is
    None, and the initial states' and parameters' gradients are those of the backward
    that makes dx, bit for bit; the compiled backend leaves out W_ih's packing and the
    dx product, which the other gradients do not read."""
    module = registry.resolve(name)
    spec = (CellSpec("gru", 3, 4, layer_norm=True) if variant == "gru_layer_norm" else _spec(variant))
    D = 1 if spec.kind == "jordan" else 2
    rng = np.random.default_rng(5)
    params = [_params(spec, seed) for seed in range(D)]
    x = rng.standard_normal((7, 3, 3))
    states = [tuple(rng.standard_normal((3, w)) for w in spec.state_sizes) for _ in range(D)]
    y, states_n, ctx = module.layer_forward(spec, params, x, states, lengths, True, (False, True)[:D], 1,
                                            memory=memory)
    dy = rng.standard_normal(y.shape)
    dstates_n = [tuple(rng.standard_normal(s.shape) for s in state) for state in states_n]
    dx, dstates0, grads = module.layer_backward(ctx, dy, dstates_n, 1)
    none, dstates0_alone, grads_alone = module.layer_backward(ctx, dy, dstates_n, 1, input_grad=False)
    assert dx is not None and none is None
    for d in range(D):
        for a, b in zip(dstates0[d], dstates0_alone[d]):
            np.testing.assert_array_equal(a, b)
        for key in grads[d]:
            np.testing.assert_array_equal(grads[d][key], grads_alone[d][key], err_msg=key)
