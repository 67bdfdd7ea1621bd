"""Memory-lean BPTT (`contract.MEMORY`): a lean training forward keeps one state per
segment of `contract.lean_segments` and its backward recomputes each segment; every
backend gives the full path's results bit for bit: y, the final states, dx, the initial
states' gradients and every parameter's gradient, for every cell type and variant, the
regularised options with their masks, lengths, both directions, float32 and float64,
and T on either side of a segment's and a gradient chunk's edge."""
from dataclasses import replace

import numpy as np
import pytest

import rnncore as rc
from rnncore.backends import contract, registry
from rnncore.core import regularise
from rnncore.core.spec import CellSpec

from cases import THREADS, random_backend_case

BACKENDS = rc.backends()

SPECS = {
    "rnn": CellSpec("rnn", 3, 5),
    "rnn_relu_nobias": CellSpec("rnn", 3, 5, bias=False, nonlinearity="relu"),
    "jordan": CellSpec("jordan", 3, 5, output_size=2, output_activation="tanh"),
    "lstm": CellSpec("lstm", 3, 5),
    "lstm_all": CellSpec("lstm", 3, 5, proj_size=2, peephole=True, coupled_input_forget=True),
    "lstm_peephole": CellSpec("lstm", 3, 5, peephole=True),
    "gru": CellSpec("gru", 3, 5),
    "gru_before": CellSpec("gru", 3, 5, reset_after=False),
    "lstm_ln_zone": CellSpec("lstm", 3, 5, layer_norm=True, zoneout_h=0.3, zoneout_c=0.2),
    "lstm_drop": CellSpec("lstm", 3, 5, recurrent_dropout=0.3),
    "gru_ln_zone_drop": CellSpec("gru", 3, 5, layer_norm=True, zoneout_h=0.25, recurrent_dropout=0.2),
    "gru_before_zone": CellSpec("gru", 3, 5, reset_after=False, zoneout_h=0.4, recurrent_dropout=0.3),
    "rnn_zone_drop": CellSpec("rnn", 3, 5, zoneout_h=0.3, recurrent_dropout=0.2),
}


def _run(backend, spec, params, x, states, lengths, reverse, masks, dy, dstates, memory):
    module = registry.resolve(backend)
    y, states_n, ctx = module.layer_forward(spec, params, x, states, lengths, True, reverse, THREADS, masks=masks,
                                            memory=memory)
    dx, dstates0, grads = module.layer_backward(ctx, dy, dstates, THREADS)
    return y, states_n, dx, dstates0, grads


def _assert_same(full, lean):
    for name, a, b in zip(("y", "states_n", "dx", "dstates0", "grads"), full, lean):
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), name
        elif name in ("states_n", "dstates0"):
            for d, (sa, sb) in enumerate(zip(a, b)):
                for k, (u, v) in enumerate(zip(sa, sb)):
                    assert np.array_equal(u, v), f"{name}[{d}][{k}]"
        else:
            for d, (ga, gb) in enumerate(zip(a, b)):
                assert list(ga) == list(gb)
                for key in ga:
                    assert np.array_equal(ga[key], gb[key]), f"grads[{d}][{key}]"


def _case(spec, T, B, D, dtype, seed, with_lengths):
    params, x, states, rng = random_backend_case(spec, T, B, D, dtype, seed)
    lengths = None
    if with_lengths:
        lengths = rng.integers(1, T + 1, B).astype(np.int64)
        lengths[0] = T
    masks = None
    if regularise.random(spec):
        masks, _ = regularise.draw(np.random.default_rng(seed + 1), spec, T, B, dtype, D)
    dy = rng.standard_normal((T, B, D * spec.out_size)).astype(dtype)
    dstates = [tuple(rng.standard_normal((B, w)).astype(dtype) for w in spec.state_sizes) for _ in range(D)]
    return params, x, states, lengths, masks, dy, dstates


def test_segments_cover_the_steps_in_whole_chunks():
    for steps in (1, 63, 64, 65, 200, 4096, 20000):
        segments = contract.lean_segments(steps)
        assert segments[0][0] == 0 and segments[-1][1] == steps
        assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))
        assert all(first % contract.GRADIENT_CHUNK == 0 for first, _ in segments)
        stride = segments[0][1] - segments[0][0]
        assert stride >= min(steps, contract.GRADIENT_CHUNK)
        if steps >= 4096:
            # about sqrt(T) steps a segment, to the chunk
            assert abs(stride - steps ** 0.5) <= contract.GRADIENT_CHUNK
    assert contract.gradient_chunks(128, 300) == [(256, 300), (192, 256), (128, 192)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lean_is_the_full_path_bit_for_bit(backend, name, dtype):
    spec = SPECS[name]
    # three segments, the last short: lengths that end in each of them
    T, B = 150, 6
    for D, with_lengths, seed in ((1, False, 1), (2, True, 2)):
        params, x, states, lengths, masks, dy, dstates = _case(spec, T, B, D, dtype, seed, with_lengths)
        reverse = (False, True)[:D]
        full = _run(backend, spec, params, x, states, lengths, reverse, masks, dy, dstates, "full")
        lean = _run(backend, spec, params, x, states, lengths, reverse, masks, dy, dstates, "lean")
        _assert_same(full, lean)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [1, 63, 64, 65, 129])
def test_lean_at_the_edges_of_segments_and_chunks(backend, T):
    spec = SPECS["lstm_peephole"]
    for D, with_lengths in ((1, True), (2, False)):
        params, x, states, lengths, masks, dy, dstates = _case(spec, T, 3, D, np.float64, T, with_lengths)
        reverse = (False, True)[:D]
        full = _run(backend, spec, params, x, states, lengths, reverse, masks, dy, dstates, "full")
        lean = _run(backend, spec, params, x, states, lengths, reverse, masks, dy, dstates, "lean")
        _assert_same(full, lean)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lean_context_back_propagates_twice_alike(backend):
    # the backward only reads a lean context (the last segment's kept caches included)
    spec = SPECS["gru_ln_zone_drop"]
    params, x, states, lengths, masks, dy, dstates = _case(spec, 150, 4, 2, np.float32, 5, True)
    module = registry.resolve(backend)
    _, _, ctx = module.layer_forward(spec, params, x, states, lengths, True, (False, True), THREADS, masks=masks,
                                     memory="lean")
    first = module.layer_backward(ctx, dy, dstates, THREADS)
    second = module.layer_backward(ctx, dy, dstates, THREADS)
    _assert_same((first[0], [], *first), (second[0], [], *second))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lstm", "gru_ln_zone_drop", "lstm_peephole"])
def test_lean_gives_the_bits_of_one_thread_at_any_thread_count(backend, name):
    # a batch that the threads split in row slices (each slice's rows running for fewer
    # and fewer steps with lengths), over segments whose slices differ
    spec = replace(SPECS[name], input_size=16, hidden_size=96)
    params, x, states, lengths, masks, dy, dstates = _case(spec, 140, 40, 2, np.float32, 9, True)
    module = registry.resolve(backend)
    reverse = (False, True)
    results = []
    for threads, memory in ((1, "full"), (1, "lean"), (2, "lean"), (4, "lean")):
        y, states_n, ctx = module.layer_forward(spec, params, x, states, lengths, True, reverse, threads, masks=masks,
                                                memory=memory)
        results.append((y, states_n, *module.layer_backward(ctx, dy, dstates, threads)))
    for other in results[1:]:
        _assert_same(results[0], other)
