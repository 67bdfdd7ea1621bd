"""Streams: stepping through a sequence gives the layer's call bit for bit.

Exact equality, not a tolerance: a stream runs, for each step, the products and cell
updates a layer call runs for that step, in the same order (every backend's input
projection and recurrent product sum in one order whatever the number of rows), so any
difference is a bug. The backends are each checked against the reference elsewhere."""
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import rnncore as rc
from cases import VARIANTS, VARIANT_IDS, build

DTYPES = [np.float32, np.float64]


def _states(y_and_state):
    """A layer call's final state as a tuple of arrays."""
    state = y_and_state[1]
    return state if isinstance(state, tuple) else (state,)


def _stream_state(stream):
    state = stream.state
    return state if isinstance(state, tuple) else (state,)


def _assert_same_states(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def _layer(cls, kwargs, dtype, backend, layers=2, **more):
    extra = {} if cls is rc.JordanRNN else {"num_layers": layers}
    return build(cls, kwargs, 4, 5, dtype=dtype, seed=3, backend=backend, **extra, **more).eval()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, cls, kwargs", VARIANTS, ids=VARIANT_IDS)
def test_steps_and_chunks_equal_the_call_bit_for_bit(name, cls, kwargs, dtype, backend):
    layer = _layer(cls, kwargs, dtype, backend)
    x = np.random.default_rng(1).standard_normal((11, 3, 4)).astype(dtype)
    full = layer(x)
    y, state = full[0], _states(full)

    stream = layer.stream(batch_size=3)
    stepped = np.stack([stream.step(x_t) for x_t in x])
    np.testing.assert_array_equal(stepped, y)
    _assert_same_states(_stream_state(stream), state)

    stream.reset()
    chunked = np.concatenate([stream(x[:1]), stream(x[1:5]), stream(x[5:])])
    np.testing.assert_array_equal(chunked, y)
    _assert_same_states(_stream_state(stream), state)
    assert stream.steps == 22


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 12), min_size=0, max_size=4, unique=True),
       variant=st.sampled_from(range(len(VARIANTS))), batch=st.integers(1, 4), double=st.booleans())
def test_any_chunking_equals_the_call(cuts, variant, batch, double):
    dtype = np.float64 if double else np.float32
    _, cls, kwargs = VARIANTS[variant]
    layer = _layer(cls, kwargs, dtype, None)
    x = np.random.default_rng(variant).standard_normal((13, batch, 4)).astype(dtype)
    y, *_ = layer(x)
    stream = layer.stream(batch)
    bounds = [0] + sorted(cuts) + [13]
    parts = [stream(x[a:b]) for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_array_equal(np.concatenate(parts), y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_initial_state_and_state_round_trip(dtype, backend):
    layer = rc.LSTM(4, 6, num_layers=2, proj_size=3, dtype=dtype, seed=0, backend=backend)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 2, 4)).astype(dtype)
    h0, c0 = rng.standard_normal((2, 2, 3)).astype(dtype), rng.standard_normal((2, 2, 6)).astype(dtype)
    y, (h_n, c_n) = layer(x, (h0, c0))
    stream = layer.stream(2)
    stream.reset((h0, c0))
    np.testing.assert_array_equal(stream(x[:3]), y[:3])
    middle = stream.state
    # a second stream started from the first one's state carries on identically
    other = layer.stream(2)
    other.reset(middle)
    np.testing.assert_array_equal(other(x[3:]), y[3:])
    _assert_same_states(other.state, (h_n, c_n))
    # `state` is a copy: changing it changes nothing
    middle[0][...] = 7
    np.testing.assert_array_equal(stream(x[3:]), y[3:])


def test_reset_of_some_rows_leaves_the_others_alone(backend):
    layer = rc.GRU(3, 4, seed=1, backend=backend)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, 3)).astype(np.float32)
    stream = layer.stream(3)
    stream(x[:4])
    before = stream.state.copy()
    fresh = rng.standard_normal((1, 1, 4)).astype(np.float32)
    stream.reset(fresh, rows=[1])
    after = stream.state
    np.testing.assert_array_equal(after[:, [0, 2]], before[:, [0, 2]])
    np.testing.assert_array_equal(after[:, 1], fresh[:, 0])
    # row 1 now continues as a new sequence from `fresh`; rows 0 and 2 as before (the
    # same batch of 3 as the call, whose rows the backends keep apart)
    y_rest = stream(x[4:])
    y_full, _ = layer(x)
    np.testing.assert_array_equal(y_rest[:, [0, 2]], y_full[4:, [0, 2]])
    np.testing.assert_array_equal(y_rest, layer(x[4:], after)[0])
    stream.reset(rows=[0, 2])
    assert not stream.state[:, [0, 2]].any() and stream.state[:, 1].any()
    # no rows: nothing to set (a server with no finished sequence this step)
    before = stream.state
    stream.reset(rows=[])
    np.testing.assert_array_equal(stream.state, before)


def test_unbatched_stream():
    layer = rc.LSTM(3, 4, num_layers=2, seed=2)
    x = np.random.default_rng(4).standard_normal((5, 3)).astype(np.float32)
    y, (h_n, c_n) = layer(x)
    stream = layer.stream(batch_size=None)
    steps = np.stack([stream.step(x_t) for x_t in x])
    np.testing.assert_array_equal(steps, y)
    h, c = stream.state
    assert h.shape == (2, 4)
    np.testing.assert_array_equal(h, h_n)
    stream.reset()
    np.testing.assert_array_equal(stream(x), y)


def test_batch_first_chunks_keep_the_layers_layout():
    layer = rc.GRU(3, 4, batch_first=True, seed=2)
    x = np.random.default_rng(5).standard_normal((2, 7, 3)).astype(np.float32)
    y, _ = layer(x)
    stream = layer.stream(2)
    np.testing.assert_array_equal(np.concatenate([stream(x[:, :3]), stream(x[:, 3:])], axis=1), y)
    # one step is (B, I) whatever the layout
    stream.reset()
    np.testing.assert_array_equal(stream.step(x[:, 0]), y[:, 0])


def test_out_buffer_is_written_and_returned():
    layer = rc.RNN(3, 4, seed=0)
    x = np.random.default_rng(6).standard_normal((4, 2, 3)).astype(np.float32)
    y, _ = layer(x)
    stream = layer.stream(2)
    out = np.empty((2, 4), np.float32)
    for t in range(4):
        assert stream.step(x[t], out=out) is out
        np.testing.assert_array_equal(out, y[t])
    chunk_out = np.empty((4, 2, 4), np.float32)
    stream.reset()
    assert stream(x, out=chunk_out) is chunk_out
    np.testing.assert_array_equal(chunk_out, y)


def test_non_contiguous_and_list_inputs_give_the_same_bits():
    # float64: a list becomes a float64 array, which a float32 layer refuses as its calls do
    layer = rc.LSTM(3, 4, seed=0, dtype=np.float64)
    base = np.random.default_rng(7).standard_normal((2, 6))
    strided = base[:, ::2]
    stream_a, stream_b = layer.stream(2), layer.stream(2)
    np.testing.assert_array_equal(stream_a.step(strided), stream_b.step(np.ascontiguousarray(strided)))
    np.testing.assert_array_equal(stream_a.step(strided.tolist()), stream_b.step(np.ascontiguousarray(strided)))


@pytest.mark.parametrize("bad, error, message", [
    (np.zeros((3, 4), np.float32), ValueError, "x_t: expected shape (2, 4)"),
    (np.zeros((2, 5), np.float32), ValueError, "x_t: expected shape (2, 4)"),
    (np.zeros((2, 4), np.float64), TypeError, "x_t: expected dtype float32"),
    (np.full((2, 4), np.nan, np.float32), ValueError, "finite"),
    (np.full((2, 4), np.inf, np.float32), ValueError, "finite"),
])
def test_refused_steps_leave_the_state_alone(bad, error, message, backend):
    layer = rc.LSTM(4, 3, seed=0, backend=backend)
    stream = layer.stream(2)
    stream.step(np.ones((2, 4), np.float32))
    before = stream.state
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        stream.step(bad)
    _assert_same_states(stream.state, before)
    assert stream.steps == 1


def test_refused_chunks_outs_and_states_leave_the_state_alone():
    layer = rc.GRU(4, 3, seed=0)
    stream = layer.stream(2)
    stream(np.ones((3, 2, 4), np.float32))
    before = stream.state
    bad_chunk = np.ones((3, 2, 4), np.float32)
    bad_chunk[2, 1, 3] = np.nan
    for call, error in [(lambda: stream(bad_chunk), ValueError),
                        (lambda: stream(np.ones((0, 2, 4), np.float32)), ValueError),
                        (lambda: stream(np.ones((3, 1, 4), np.float32)), ValueError),
                        (lambda: stream(np.ones((2, 4), np.float32)), ValueError),
                        (lambda: stream.step(np.ones((2, 4), np.float32), out=np.empty((2, 4), np.float32)),
                         ValueError),
                        (lambda: stream.step(np.ones((2, 4), np.float32), out=np.empty((3, 2), np.float32)[:, :3]),
                         ValueError),
                        (lambda: stream.reset(np.ones((1, 3, 3), np.float32)), ValueError),
                        (lambda: stream.reset(np.ones((1, 2, 3), np.float64)), TypeError),
                        (lambda: stream.reset(np.full((1, 2, 3), np.nan, np.float32)), ValueError),
                        (lambda: stream.reset(np.ones((1, 1, 3), np.float32), rows=[2]), ValueError),
                        (lambda: stream.reset(np.ones((1, 2, 3), np.float32), rows=[0, 0]), ValueError),
                        (lambda: stream.reset(rows=[[0]]), ValueError),
                        (lambda: stream.step(np.ones((2, 4), np.float32), check_finite="no"), TypeError),
                        (lambda: stream(np.ones((1, 2, 4), np.float32), check_finite=None), TypeError)]:
        with pytest.raises(error):
            call()
        np.testing.assert_array_equal(stream.state, before)
    assert stream.steps == 3
    # the chunk's NaN is found before its first step runs: nothing advanced
    good = np.ones((3, 2, 4), np.float32)
    reference = layer.stream(2)
    reference(np.ones((3, 2, 4), np.float32))
    np.testing.assert_array_equal(stream(good), reference(good))


def test_bidirectional_layers_and_bad_batch_sizes_cannot_stream():
    with pytest.raises(ValueError, match="bidirectional"):
        rc.LSTM(3, 4, bidirectional=True).stream()
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises((ValueError, TypeError), match="batch_size"):
            rc.GRU(3, 4).stream(bad)


def test_stream_keeps_its_weights_until_refresh(backend):
    layer = rc.LSTM(3, 4, seed=0, backend=backend)
    x = np.random.default_rng(8).standard_normal((5, 1, 3)).astype(np.float32)
    y_old, _ = layer(x)
    stream = layer.stream(1)
    stream(x[:2])
    for value in layer.parameters().values():
        value *= 0.5
    y_new, _ = layer(x)
    np.testing.assert_array_equal(stream(x[2:]), y_old[2:])
    stream.reset()
    stream.refresh()
    np.testing.assert_array_equal(stream(x), y_new)
    # refresh keeps the state: the carried state meets the new weights
    mid = layer.stream(1)
    mid(x[:2])
    state = mid.state
    mid.refresh()
    _assert_same_states(mid.state, state)


def test_one_stream_per_thread_runs_concurrently():
    layer = rc.GRU(8, 16, num_layers=2, seed=0)
    rng = np.random.default_rng(9)
    inputs = [rng.standard_normal((200, 2, 8)).astype(np.float32) for _ in range(4)]
    expected = [layer(x)[0] for x in inputs]
    results = [None] * 4

    def run(k):
        stream = layer.stream(2)
        results[k] = np.stack([stream.step(x_t) for x_t in inputs[k]])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_copies_are_independent_and_pickling_is_refused():
    import copy
    import pickle
    layer = rc.LSTM(3, 4, seed=0)
    x = np.random.default_rng(15).standard_normal((6, 2, 3)).astype(np.float32)
    stream = layer.stream(2)
    stream(x[:2])
    for twin in (copy.deepcopy(stream), copy.copy(stream)):
        np.testing.assert_array_equal(twin(x[2:]), layer(x)[0][2:])
    # the original did not move while its copies stepped
    np.testing.assert_array_equal(stream(x[2:]), layer(x)[0][2:])
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(stream)


def test_an_lstm_state_may_come_as_a_list():
    layer = rc.LSTM(3, 4, seed=0)
    h0, c0 = (np.full((1, 2, 4), v, np.float32) for v in (0.5, -0.5))
    stream = layer.stream(2)
    stream.reset([h0, c0])
    x = np.ones((3, 2, 3), np.float32)
    np.testing.assert_array_equal(stream(x), layer(x, (h0, c0))[0])


def test_calls_during_another_threads_run_are_refused():
    """step, state, reset and refresh while another thread's chunk runs: each refused
    (RuntimeError), none torn: the run's end state is what it computes alone."""
    layer = rc.LSTM(64, 256, seed=0)
    stream = layer.stream(8)
    long_chunk = np.zeros((4000, 8, 64), np.float32)
    started = threading.Event()

    def run():
        started.set()
        stream(long_chunk)

    calls = {"step": lambda: stream.step(np.zeros((8, 64), np.float32)), "state": lambda: stream.state,
             "reset": stream.reset, "refresh": stream.refresh}
    thread = threading.Thread(target=run)
    thread.start()
    started.wait()
    refused, done_before = set(), set()
    deadline = time.monotonic() + 10
    while thread.is_alive() and len(refused) < len(calls) and time.monotonic() < deadline:
        for name, call in calls.items():
            try:
                call()
                # a call may slip in before the run takes the stream
                done_before.add(name)
            except RuntimeError as exc:
                if "one caller at a time" in str(exc):
                    refused.add(name)
        time.sleep(0.001)
    thread.join()
    assert refused == set(calls)
    if not done_before & {"step", "reset"}:
        reference = layer.stream(8)
        reference(long_chunk)
        assert stream.steps == 4000
        _assert_same_states(_stream_state(stream), _stream_state(reference))


def test_thread_setting_does_not_change_the_bits():
    layer = rc.LSTM(16, 40, num_layers=2, seed=0)
    x = np.random.default_rng(10).standard_normal((30, 5, 16)).astype(np.float32)
    before = rc.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            rc.set_num_threads(threads)
            outs.append(layer.stream(5)(x))
    finally:
        rc.set_num_threads(before)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


# -- a Sequential ----------------------------------------------------------------------

def test_sequential_stream_equals_the_model_bit_for_bit():
    model = rc.Sequential(rc.Embedding(7, 3, seed=0), rc.LSTM(3, 5, num_layers=2, seed=1), rc.Tanh(),
                          rc.GRU(5, 4, seed=2), rc.ReLU(), rc.Linear(4, 7, seed=3)).eval()
    tokens = np.random.default_rng(11).integers(0, 7, (9, 2))
    y, states = model(tokens)
    stream = model.stream(2)
    steps = np.concatenate([stream(tokens[:3]), stream.step(tokens[3])[None], stream(tokens[4:])])
    np.testing.assert_array_equal(steps, y)
    for got, want in zip(stream.state, states):
        _assert_same_states(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,))
    stream.reset(state=states)
    more = np.random.default_rng(12).integers(0, 7, (4, 2))
    np.testing.assert_array_equal(stream(more), model(more, states)[0])


def test_sequential_with_last_step_outputs_the_model_output_so_far():
    model = rc.Sequential(rc.LSTM(3, 5, seed=1), rc.LastStep(), rc.Linear(5, 2, seed=3)).eval()
    x = np.random.default_rng(13).standard_normal((6, 2, 3)).astype(np.float32)
    stream = model.stream(2)
    for t in range(6):
        np.testing.assert_array_equal(stream.step(x[t]), model(x[:t + 1])[0])
    stream.reset()
    np.testing.assert_array_equal(stream(x), model(x)[0])


def test_sequential_stream_refuses_what_cannot_step():
    class Doubling:
        training = False

        def __call__(self, x):
            return 2 * x

        def parameters(self):
            return {}

        grads = {}

        def backward(self, dy):
            return 2 * dy

        def train(self, mode=True):
            return self

    with pytest.raises(TypeError, match=r"modules\[1\] \(Doubling\)"):
        rc.Sequential(rc.GRU(2, 3), Doubling()).stream()
    with pytest.raises(ValueError, match="recurrent"):
        rc.Sequential(rc.Linear(2, 3)).stream()
    with pytest.raises(ValueError, match="bidirectional"):
        rc.Sequential(rc.GRU(2, 3, bidirectional=True)).stream()
    stream = rc.Sequential(rc.Linear(3, 8), rc.LSTM(8, 8)).stream(1)
    # the caller's shapes in the messages, not an inner module's
    with pytest.raises(ValueError, match=r"x_t: expected batch_size=1 rows first, got shape \(2, 3\)"):
        stream.step(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 3\), got \(1, 5\)"):
        stream.step(np.zeros((1, 5), np.float32))
    assert stream.steps == 0 and not stream.state[0][0].any()


def test_generate_and_forecast_on_streams_match_the_call_loop():
    model = rc.Sequential(rc.Embedding(6, 4, seed=0), rc.GRU(4, 8, seed=1), rc.Linear(8, 6, seed=2))
    tokens = rc.train.generate(model, [1, 2, 3], length=12, temperature=0.7, seed=5)
    # the same sampling by calling the model with its states carried, one token a call
    rng = np.random.default_rng(5)
    logits, states = model.eval()(np.array([[1], [2], [3]]))
    expected = []
    for _ in range(12):
        last = logits[-1, 0].astype(np.float64)
        probs = np.exp((last - last.max()) / 0.7)
        expected.append(int(rng.choice(6, p=probs / probs.sum())))
        logits, states = model(np.array([[expected[-1]]]), states)
    np.testing.assert_array_equal(tokens, expected)

    series = rc.Sequential(rc.LSTM(2, 6, seed=3), rc.Linear(6, 2, seed=4))
    history = np.random.default_rng(14).standard_normal((10, 3, 2)).astype(np.float32)
    forecasts = rc.train.forecast(series, history, steps=5)
    y, states = series(history)
    for step in range(5):
        np.testing.assert_array_equal(forecasts[step], y[-1])
        y, states = series(forecasts[step:step + 1], states)
