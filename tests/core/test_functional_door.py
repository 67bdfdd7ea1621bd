"""rc.functional is the one door to the backends: the layers, the cells, the functions and
rnncore.torch reach a backend's layer_forward/layer_backward only through
`functional.run_layer`/`run_layer_backward`, once per layer (both directions in one call),
with the thread count resolved there; the arrays arrive as `validate.sequence_call`
returns them; and one mistake gets one message through every door."""
import types

import numpy as np
import pytest

import rnncore as rc
from rnncore.backends import registry
from rnncore.core import functional

T, B, I, H = 3, 2, 3, 4
F64 = np.float64


@pytest.fixture
def spy(monkeypatch, backend):
    """Records every call of `backend`'s layer_forward/layer_backward: which door it came
    through (None: around the door), the thread count and the arrays it was given."""
    module = registry.resolve(backend)
    record = types.SimpleNamespace(calls=[], door=None)

    def door(entry, name):
        def through(*args, **kwargs):
            record.door = name
            try:
                return entry(*args, **kwargs)
            finally:
                record.door = None
        return through

    def backend_call(entry, name):
        def called(*args, **kwargs):
            # the thread count is the last positional argument; masks come by keyword
            record.calls.append(dict(name=name, door=record.door, threads=args[-1], args=args))
            return entry(*args, **kwargs)
        return called

    monkeypatch.setattr(registry, "_selected", backend)  # for rnncore.torch, which runs on the selected one
    monkeypatch.setattr(functional, "run_layer", door(functional.run_layer, "run_layer"))
    monkeypatch.setattr(functional, "run_layer_backward", door(functional.run_layer_backward, "run_layer_backward"))
    monkeypatch.setattr(module, "layer_forward", backend_call(module.layer_forward, "layer_forward"))
    monkeypatch.setattr(module, "layer_backward", backend_call(module.layer_backward, "layer_backward"))
    return record


@pytest.fixture
def three_threads():
    before = rc.get_num_threads()
    rc.set_num_threads(3)
    yield
    rc.set_num_threads(before)


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, I)), rng.standard_normal((B, H))


def stacked_layer(backend):
    lstm = rc.LSTM(I, H, num_layers=2, bidirectional=True, dtype=F64, seed=0, backend=backend)
    y, _ = lstm(data()[0])
    lstm.backward(np.ones_like(y))


def cell(backend):
    gru = rc.GRUCell(I, H, dtype=F64, seed=0, backend=backend)
    h1 = gru(data()[0][0])
    gru.backward(np.ones_like(h1))


def function(backend):
    x, h0 = data()
    w = rc.GRUCell(I, H, dtype=F64, seed=0).parameters()
    y, _, ctx = rc.functional.gru_forward(x, h0, **w, training=True, backend=backend)
    rc.functional.gru_backward(ctx, np.ones_like(y))


def torch_module(backend):
    torch = pytest.importorskip("torch")
    rct = pytest.importorskip("rnncore.torch")
    torch.manual_seed(0)
    module = rct.LSTM(I, H, num_layers=2, bidirectional=True)
    y, _ = module(torch.zeros(T, B, I, requires_grad=True))
    y.sum().backward()


# (door, call on a backend, directions per backend call, layers = backend calls each way)
DOORS = [("layer", stacked_layer, 2, 2), ("cell", cell, 1, 1), ("functional", function, 1, 1),
         ("rnncore.torch", torch_module, 2, 2)]


@pytest.mark.parametrize("call, directions, layers", [d[1:] for d in DOORS], ids=[d[0] for d in DOORS])
def test_every_door_reaches_the_backend_through_functional_once_per_layer(spy, three_threads, backend, call,
                                                                          directions, layers):
    call(backend)
    names = [c["name"] for c in spy.calls]
    assert names == ["layer_forward"] * layers + ["layer_backward"] * layers
    assert [c["door"] for c in spy.calls] == ["run_layer"] * layers + ["run_layer_backward"] * layers
    # the thread count the door resolved, in both passes
    assert [c["threads"] for c in spy.calls] == [3] * (2 * layers)
    for forward in spy.calls[:layers]:
        spec, params, x, states, lengths, training, reverse, _ = forward["args"]
        assert len(params) == len(states) == len(reverse) == directions


@pytest.mark.parametrize("door", ["layer", "cell", "functional"])
def test_the_backend_gets_the_arrays_the_shared_check_returns(spy, backend, door):
    """Non-contiguous, batch-first, unbatched input arrives as C-contiguous time-major
    arrays, x a copy of its own in training, lengths int64."""
    x, h0 = data(1)
    x_given = np.asfortranarray(x.transpose(1, 0, 2))  # (B, T, I), Fortran order
    h0_given = np.asfortranarray(h0)
    if door == "layer":
        gru = rc.GRU(I, H, batch_first=True, dtype=F64, seed=0, backend=backend)
        gru(x_given, h0_given[None], lengths=[T, 1])
        gru(x_given[0], h0_given[:1])  # unbatched
    elif door == "cell":
        gru = rc.GRUCell(I, H, dtype=F64, seed=0, backend=backend)
        x_given = np.asfortranarray(x[0])
        gru(x_given, h0_given)
        gru(x_given[0], h0_given[0])  # unbatched
    else:
        x_given = np.asfortranarray(x)
        w = rc.GRUCell(I, H, dtype=F64, seed=0).parameters()
        rc.functional.gru_forward(x_given, h0_given, **{k: np.asfortranarray(v) for k, v in w.items()},
                                  lengths=[T, 1], training=True, backend=backend)
    assert spy.calls
    for c in spy.calls:
        spec, params, x_seen, states, lengths, training, reverse, _ = c["args"]
        assert x_seen.ndim == 3 and x_seen.shape[2] == I and x_seen.flags.c_contiguous
        assert not np.shares_memory(x_seen, x_given)  # training: the backward's own copy
        assert all(a.flags.c_contiguous for direction in params for a in direction.values())
        assert all(s.flags.c_contiguous and s.shape == (x_seen.shape[1], H) for d in states for s in d)
        assert lengths is None or (lengths.dtype == np.int64 and lengths.flags.c_contiguous)


def test_a_context_remembers_its_backend(monkeypatch):
    others = [name for name in rc.backends() if name != "numpy"]
    if not others:
        pytest.skip("only the reference is available here")
    reference = registry.resolve("numpy")
    entry, calls = reference.layer_backward, []

    def recorded(*args, **kwargs):
        calls.append(args)
        return entry(*args, **kwargs)

    monkeypatch.setattr(reference, "layer_backward", recorded)
    monkeypatch.setattr(registry, "_selected", "numpy")
    gru = rc.GRU(I, H, dtype=F64, seed=0)
    y, _ = gru(data()[0])
    registry.set_backend(others[0])
    gru.backward(np.ones_like(y))
    assert len(calls) == 1  # the reference ran the forward, so it runs the backward


# -- one mistake, one message, through every door ---------------------------------------------

def layer_door(x, h0, lengths=None, check_finite=True):
    gru = rc.GRU(I, H, dtype=F64, seed=0)
    return gru(x, None if h0 is None else np.asarray(h0)[None], lengths=lengths, check_finite=check_finite)


def cell_door(x, h0, lengths=None, check_finite=True):
    if lengths is not None:
        return None  # a cell takes one step: no lengths to get wrong
    return rc.GRUCell(I, H, dtype=F64, seed=0)(x if isinstance(x, list) else np.asarray(x)[0], h0,
                                               check_finite=check_finite)


def functional_door(x, h0, lengths=None, check_finite=True):
    w = rc.GRUCell(I, H, dtype=F64, seed=0).parameters()
    return rc.functional.gru_forward(x, h0, **w, lengths=lengths, check_finite=check_finite)


def poisoned(array, value):
    out = np.array(array)
    out.reshape(-1)[1] = value
    return out


X, H0 = data(2)
MISTAKES = {  # mistake: (x, h0, lengths, check_finite)
    "x_nan": (poisoned(X, np.nan), H0, None, True),
    "h0_inf": (X, poisoned(H0, np.inf), None, True),
    "h0_int": (X, H0.astype(np.int64), None, True),
    "h0_complex": (X, H0.astype(np.complex128), None, True),
    "x_ragged": ([[[1.0, 2.0]], [[1.0]]], None, None, True),
    "check_finite": (X, H0, None, "no"),
    "lengths_past_end": (X, H0, [T + 1, 1], True),
    "lengths_float": (X, H0, [1.5, 2.0], True),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_one_mistake_one_message_through_every_door(mistake):
    x, h0, lengths, check_finite = MISTAKES[mistake]
    messages = {}
    for door in (layer_door, cell_door, functional_door):
        try:
            if door(x, h0, lengths, check_finite) is None:
                continue
        except (ValueError, TypeError) as error:
            messages[door.__name__] = f"{type(error).__name__}: {error}"
        else:
            pytest.fail(f"{door.__name__} accepted {mistake}")
    assert len(messages) >= 2 and len(set(messages.values())) == 1, messages


def test_a_wrong_x_shape_names_what_each_door_takes():
    wrong = np.zeros((T, B, I + 1))
    expected = {layer_door: r"^x: expected shape \(T, B, 3\), or \(T, 3\) unbatched, with T, B >= 1, got shape "
                            r"\(3, 2, 4\)$",
                cell_door: r"^x: expected shape \(B, 3\), or \(3,\) unbatched, with B >= 1, got shape \(2, 4\)$",
                functional_door: r"^x: expected shape \(T, B, 3\) with T, B >= 1, got shape \(3, 2, 4\)$"}
    for door, message in expected.items():
        with pytest.raises(ValueError, match=message):
            door(wrong, None)
    with pytest.raises(ValueError, match=r"^x: expected shape \(B, T, 3\), or \(T, 3\) unbatched, with T, B >= 1"):
        rc.GRU(I, H, batch_first=True)(np.zeros((B, T, 0), np.float32))
