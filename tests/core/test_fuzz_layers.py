"""The layer API on the default backend against the NumPy reference, over random
configurations: cell kind and variant, dtype, T, B, I, H, layers, directions, bias,
lengths, batch_first, initial states given or not, final-state gradients given or not.

tests/test_backends.py covers a hand-picked list of edges; this draws the combinations
nobody picked. Forward (outputs, final states) and backward (input, initial-state and
every parameter gradient) must agree to conftest's RTOL. The examples are derandomized:
every run draws the same few hundred cases, so a failure reproduces.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnncore as rc
from cases import VARIANTS, back, build, call, random_states
from conftest import assert_close

DEFAULT = rc.get_backend()

pytestmark = pytest.mark.skipif(DEFAULT == "numpy", reason="the default backend is the reference itself")


@st.composite
def configurations(draw):
    name, cls, kwargs = draw(st.sampled_from(VARIANTS))
    T = draw(st.integers(1, 12))
    B = draw(st.integers(1, 6))
    lengths = draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B))
    return dict(
        name=name, cls=cls, kwargs=kwargs, T=T, B=B, lengths=lengths,
        I=draw(st.integers(1, 9)), H=draw(st.integers(1, 12)),
        layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()), bias=draw(st.booleans()),
        batch_first=draw(st.booleans()), states=draw(st.booleans()), dstates=draw(st.booleans()),
        dtype=draw(st.sampled_from([np.float64, np.float32])), seed=draw(st.integers(0, 2**16)),
    )


def _run(layer, c, x, states, dy, dstates):
    """Forward and backward: every result by name, time-major."""
    def to_layout(a):
        return a.transpose(1, 0, 2) if c["batch_first"] else a
    y, finals = call(layer, to_layout(x), states, lengths=c["lengths"])
    dx, dstates0 = back(layer, to_layout(dy), dstates)
    results = {"y": to_layout(y), "dx": to_layout(dx)}
    for letter, final, d0 in zip("hc", finals, dstates0):
        results[f"{letter}_n"], results[f"d{letter}0"] = final, d0
    results.update({f"grad {name}": g.copy() for name, g in layer.grads.items()})
    return results


@settings(max_examples=500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(c=configurations())
def test_default_backend_matches_reference(c):
    dtype = c["dtype"]
    layers = [build(c["cls"], c["kwargs"], c["I"], c["H"], dtype=dtype, seed=c["seed"], backend=backend,
                    bias=c["bias"], num_layers=c["layers"], bidirectional=c["bidirectional"],
                    batch_first=c["batch_first"])
              for backend in ("numpy", None)]
    reference, default = layers
    default.load_state_dict(reference.state_dict())
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((c["T"], c["B"], c["I"])).astype(dtype)
    states = random_states(reference, c["B"], rng, dtype) if c["states"] else None
    dy = rng.standard_normal((c["T"], c["B"], reference.output_width)).astype(dtype)
    dstates = random_states(reference, c["B"], rng, dtype) if c["dstates"] else None
    expected = _run(reference, c, x, states, dy, dstates)
    actual = _run(default, c, x, states, dy, dstates)
    assert sorted(actual) == sorted(expected)
    for what, want in expected.items():
        assert_close(actual[what], want, dtype, what=f"{DEFAULT} {c['name']}: {what}")
