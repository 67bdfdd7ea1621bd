"""What only the numba backend can get wrong; its numbers against the reference are
tests/test_backends.py's job.

- The on-disk cache: a build cached by one process must load, not recompile, and give
  the same numbers in a fresh process started with another thread count (numba issues
  7518 and 10184 are about exactly this with parallel=True).
- Threads: the batch is cut in chunks fixed by the batch size, so one thread and two
  give bitwise the same numbers, with several chunks and packed lengths.
- Compile cost: variants, lengths, directions and modes are runtime flags, so one cell
  family compiles once per dtype, and awkward input layouts do not add signatures.
- The inference path keeps nothing per step.
"""
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import rnncore as rc
from conftest import assert_close

pytestmark = pytest.mark.skipif("numba" not in rc.backends(), reason="numba is not installed here")

SRC = os.path.dirname(os.path.dirname(rc.__file__))

# One process: run a bidirectional peephole-projected LSTM with lengths, forward and
# backward, and report the numbers and whether the kernels came from the disk cache.
_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import rnncore as rc
    from rnncore.backends.numba import kernels
    layer = rc.LSTM(5, 7, proj_size=3, peephole=True, bidirectional=True, dtype=np.float64, seed=1,
                    backend="numba")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 20, 5))
    lengths = rng.integers(1, 7, 20)
    y, (h, c) = layer(x, lengths=lengths)
    dx, (dh0, dc0) = layer.backward(rng.standard_normal(y.shape))
    entries = (kernels.lstm_forward, kernels.lstm_backward)
    json.dump(dict(
        numbers=[a.tolist() for a in (y, h, c, dx, dh0, dc0, layer.grads["weight_hh_l0_reverse"])],
        hits=sum(sum(e.stats.cache_hits.values()) for e in entries),
        misses=sum(sum(e.stats.cache_misses.values()) for e in entries),
        threads=rc.get_num_threads()), sys.stdout)
""")


def _run_child(threads):
    env = dict(os.environ, PYTHONPATH=SRC, NUMBA_NUM_THREADS=str(threads), RNNCORE_NUM_THREADS=str(threads))
    env.pop("RNNCORE_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cached_build_reloads_in_a_fresh_process_with_another_thread_count():
    first = _run_child(threads=2)  # compiles and writes the cache, or loads it if warm
    second = _run_child(threads=1)
    assert (first["threads"], second["threads"]) == (2, 1)
    assert second["misses"] == 0 and second["hits"] == 2, second
    # bitwise: a fresh process, a cached build and another thread count change nothing
    assert first["numbers"] == second["numbers"]


@pytest.fixture
def restore_threads():
    before = rc.get_num_threads()
    yield
    rc.set_num_threads(before)


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_cho", "jordan"])
def test_two_threads_give_bitwise_the_numbers_of_one(kind, restore_threads):
    from rnncore.backends.numba.backend import rows_per_chunk
    T, B = 5, 97
    assert -(-B // rows_per_chunk(B)) >= 3, "the case must cut the batch in several chunks"
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, B, 4)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B)
    results = []
    for threads, backend in ((1, "numba"), (2, "numba"), (2, "numpy")):
        rc.set_num_threads(threads)
        if kind == "jordan":
            layer = rc.JordanRNN(4, 6, 3, output_activation="tanh", seed=0, backend=backend)
        elif kind == "lstm":
            layer = rc.LSTM(4, 6, bidirectional=True, peephole=True, seed=0, backend=backend)
        else:
            layer = rc.GRU(4, 6, bidirectional=True, reset_after=kind == "gru", seed=0, backend=backend)
        y, _ = layer(x, lengths=lengths)
        dx, _ = layer.backward(np.ones_like(y))
        results.append([y, dx] + [layer.grads[name] for name in sorted(layer.grads)])
    one, two, reference = results
    for a, b, expected in zip(one, two, reference):
        np.testing.assert_array_equal(b, a)
        assert_close(a, expected)  # the chunked path is also right, not only reproducible


def test_each_family_compiles_once_per_dtype_whatever_the_variant():
    from rnncore.backends.numba import kernels
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3, 5))
    for options in [dict(), dict(proj_size=2), dict(peephole=True, coupled_input_forget=True),
                    dict(bias=False, bidirectional=True), dict(proj_size=3, peephole=True, bidirectional=True)]:
        layer = rc.LSTM(5, 4, dtype=np.float64, seed=0, backend="numba", **options)
        for lengths in (None, [4, 1, 2]):
            for training in (True, False):
                layer.train(training)
                y, _ = layer(x, lengths=lengths)
                if training:
                    layer.backward(np.ones_like(y))
    # awkward layouts are made C-contiguous and writable before the kernel sees them
    read_only = np.asfortranarray(x)
    read_only.flags.writeable = False
    layer.eval()
    layer(read_only)
    layer(x[:, ::-1])
    for entry in (kernels.lstm_forward, kernels.lstm_backward):
        float64_signatures = [sig for sig in entry.signatures if str(sig[0].dtype) == "float64"]
        assert len(float64_signatures) == 1, float64_signatures


def _peak_bytes(run):
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_inference_keeps_nothing_per_step():
    T, B, I, H, P = 64, 8, 4, 32, 5
    layer = rc.LSTM(I, H, proj_size=P, dtype=np.float64, seed=0, backend="numba")
    x = np.random.default_rng(5).standard_normal((T, B, I))
    layer.eval()
    layer(x)  # compiled (or loaded) outside the measurement
    layer.train()
    layer(x)
    per_step = T * B * 8
    # inference: the input projection (4H wide), the outputs with the initial state and
    # the running state copies; training adds c_t and m_t for every step, 2H wide
    unavoidable = per_step * (4 * H + 2 * P)
    eval_peak = _peak_bytes(lambda: layer.eval()(x))
    train_peak = _peak_bytes(lambda: layer.train()(x))
    assert eval_peak < unavoidable + per_step * H // 2, (eval_peak, unavoidable)
    assert train_peak > unavoidable + per_step * 2 * H, (train_peak, unavoidable)
    layer.eval()(x)
    assert layer._saved is None


def test_eval_and_training_forward_agree():
    layer = rc.GRU(3, 5, reset_after=False, bidirectional=True, dtype=np.float64, seed=0, backend="numba")
    x = np.random.default_rng(6).standard_normal((6, 4, 3))
    lengths = [6, 2, 5, 1]
    y_train, h_train = layer.train()(x, lengths=lengths)
    y_eval, h_eval = layer.eval()(x, lengths=lengths)
    np.testing.assert_array_equal(y_eval, y_train)
    np.testing.assert_array_equal(h_eval, h_train)


def test_training_output_is_not_the_saved_state():
    # y aliases nothing the backward reads: editing it in place changes no gradient
    layer = rc.RNN(3, 4, dtype=np.float64, seed=0, backend="numba")
    x = np.random.default_rng(7).standard_normal((5, 2, 3))
    dy = np.ones((5, 2, 4))
    y, _ = layer(x)
    expected, _ = layer.backward(dy)
    y, _ = layer(x)
    y *= 100.0
    dx, _ = layer.backward(dy)
    assert_close(dx, expected, what="dx after an in-place edit of y")


def _ulp_errors(fast, exact, x, dtype):
    """|fast(x) - exact(x)| in units of the last place of `dtype` at the exact value,
    `exact` evaluated in extended precision (float64 libm for float32)."""
    got = np.empty_like(x)
    fast(x, got)
    wide = x.astype(np.longdouble) if dtype == np.float64 else x.astype(np.float64)
    want = exact(wide).astype(np.longdouble)
    return np.abs(got.astype(np.longdouble) - want) / np.spacing(np.abs(want.astype(dtype)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorised_activations_are_a_few_ulp_from_libm(dtype):
    from numba import njit
    from rnncore.backends.numba import kernels

    @njit(error_model="numpy")
    def tanh(x, out):
        for i in range(x.size):
            out[i] = kernels.tanh(x[i])

    @njit(error_model="numpy")
    def sigmoid(x, out):
        for i in range(x.size):
            out[i] = kernels.sigmoid(x[i])

    # dense where the functions bend, tiny and huge magnitudes, the cut-offs near 0.625
    # and the underflow of sigmoid towards -100 (float32) and -745 (float64)
    magnitudes = np.logspace(-30, 3, 20001)
    x = np.concatenate([np.linspace(-20, 20, 400_001), np.linspace(-1e-3, 1e-3, 20_001),
                        np.linspace(0.62, 0.63, 10_001), np.linspace(-800, 800, 40_001),
                        magnitudes, -magnitudes, [0.0, -0.0, 1e30, -1e30]]).astype(dtype)
    with np.errstate(over="ignore"):
        tanh_ulp = _ulp_errors(tanh, np.tanh, x, dtype)
        sigmoid_ulp = _ulp_errors(sigmoid, lambda v: 1 / (1 + np.exp(-v)), x, dtype)
    assert tanh_ulp.max() <= 3, x[np.argmax(tanh_ulp)]
    assert sigmoid_ulp.max() <= 4, x[np.argmax(sigmoid_ulp)]
    limits = np.array([np.inf, -np.inf, np.nan], dtype)
    out = np.empty_like(limits)
    tanh(limits, out)
    np.testing.assert_array_equal(out, [1, -1, np.nan])
    sigmoid(limits, out)
    np.testing.assert_array_equal(out, [1, 0, np.nan])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_long_float64_sequence_stays_with_the_reference(kind):
    # 300 steps feed every activation's error back through the state: the float64
    # activations must be accurate enough not to drift from libm's
    rng = np.random.default_rng(8)
    x = rng.standard_normal((300, 3, 4))
    results = []
    for backend in ("numba", "numpy"):
        cls = rc.LSTM if kind == "lstm" else rc.GRU
        layer = cls(4, 16, dtype=np.float64, seed=3, backend=backend)
        y, _ = layer(x)
        dx, _ = layer.backward(np.ones_like(y))
        results.append((y, dx, layer.grads["weight_hh_l0"]))
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("kind,options", [("lstm", {}), ("lstm", dict(peephole=True, coupled_input_forget=True)),
                                          ("gru", {}), ("gru", dict(reset_after=False)), ("rnn", {})])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_products_small_loops_and_blas_agree_with_the_reference(kind, options, dtype):
    # 20 rows in one chunk, running 20, 17, 9 and then 4 as the lengths run out. Forward
    # takes BLAS for the whole call (its widest step has more than 16 rows); backward
    # takes BLAS at 20 and 17 rows and the small loops at 9 (two blocks of four rows and
    # one left over) and 4. H = 6 leaves k remainders after the four-at-a-time loops,
    # H = 100 none. The other tests' batches of at most 16 rows take the small loops
    # forward too.
    rng = np.random.default_rng(9)
    B, I = 20, 5
    lengths = np.array([7] * 4 + [5] * 5 + [3] * 8 + [1] * 3)
    for H in (6, 100):
        x = rng.standard_normal((7, B, I)).astype(dtype)
        dy = None
        results = []
        for backend in ("numba", "numpy"):
            cls = {"lstm": rc.LSTM, "gru": rc.GRU, "rnn": rc.RNN}[kind]
            layer = cls(I, H, dtype=dtype, seed=4, backend=backend, **options)
            y, _ = layer(x, lengths=lengths)
            dy = rng.standard_normal(y.shape).astype(dtype) if dy is None else dy
            dx, _ = layer.backward(dy)
            results.append((y, dx, layer.grads["weight_hh_l0"]))
        for got, want in zip(*results):
            assert_close(got, want)
