"""The numba backend's memory-lean BPTT beyond the shared cases of test_lean.py: batches
of several parallel chunks, whose float64 gradient sums carry across the segments, and
the memory a lean forward keeps and a lean backward allocates."""
import tracemalloc

import numpy as np
import pytest

from rnncore.backends import contract
from rnncore.core.spec import CellSpec

from cases import random_backend_case

nb = pytest.importorskip("rnncore.backends.numba.backend")
kernels = pytest.importorskip("rnncore.backends.numba.kernels")


def test_the_kernels_chunk_the_gradients_as_the_contract_says():
    assert kernels.GRADIENT_CHUNK == contract.GRADIENT_CHUNK


def _train(spec, params, x, states, lengths, dy, dstates, threads, memory):
    y, states_n, ctx = nb.layer_forward(spec, params, x, states, lengths, True, (False, True), threads,
                                        memory=memory)
    return (y, states_n) + nb.layer_backward(ctx, dy, dstates, threads)


@pytest.mark.parametrize("spec", [CellSpec("lstm", 3, 5, peephole=True, layer_norm=True),
                                  CellSpec("lstm", 3, 5, proj_size=2),
                                  CellSpec("gru", 3, 5),
                                  CellSpec("jordan", 3, 5, output_size=2)], ids=str)
def test_lean_is_the_full_path_with_several_batch_chunks(spec):
    # B = 70: three chunks of rows_per_chunk(70) = 32 rows, each with its own float64 sums
    T, B = 140, 70
    assert -(-B // nb.rows_per_chunk(B)) == 3
    params, x, states, rng = random_backend_case(spec, T, B, 2, np.float64, 3)
    lengths = rng.integers(1, T + 1, B).astype(np.int64)
    dy = rng.standard_normal((T, B, 2 * spec.out_size))
    dstates = [tuple(rng.standard_normal((B, w)) for w in spec.state_sizes) for _ in range(2)]
    full = _train(spec, params, x, states, lengths, dy, dstates, 1, "full")
    lean = _train(spec, params, x, states, lengths, dy, dstates, 3, "lean")
    np.testing.assert_array_equal(full[0], lean[0])
    for name, a, b in zip(("states_n", "dstates0"), (full[1], full[3]), (lean[1], lean[3])):
        for d in range(2):
            for u, v in zip(a[d], b[d]):
                assert np.array_equal(u, v), name
    np.testing.assert_array_equal(full[2], lean[2])
    for d in range(2):
        for key in full[4][d]:
            assert np.array_equal(full[4][d][key], lean[4][d][key]), key


def _peak(run):
    tracemalloc.start()
    try:
        result = run()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_lean_keeps_and_allocates_nothing_per_step_but_the_results(kind):
    T, B, I, H = 4096, 4, 4, 32
    spec = CellSpec(kind, I, H)
    params, x, states, rng = random_backend_case(spec, T, B, 1, np.float64, 4)
    dy = rng.standard_normal((T, B, H))
    dstates = [tuple(np.zeros((B, w)) for w in spec.state_sizes)]
    results = T * B * H * 8  # y in the forward, dx (I < H) in the backward

    def forward(memory):
        return nb.layer_forward(spec, params, x, states, None, True, (False,), 1, memory=memory)

    forward("lean")  # compiled (or loaded) outside the measurement
    full_peak, _ = _peak(lambda: forward("full"))
    lean_peak, (_, _, ctx) = _peak(lambda: forward("lean"))
    backward_peak, _ = _peak(lambda: nb.layer_backward(ctx, dy, dstates, 1))
    # the full path keeps every step's gates (3H or 4H wide) besides y
    assert full_peak > 3 * results
    # the lean one: y, and buffers for one segment of about sqrt(T) steps
    assert lean_peak < 1.25 * results, (lean_peak, results)
    assert backward_peak < 1.25 * results, (backward_peak, results)
