"""The fallback chain when a faster backend cannot be imported: cython, else numba, else
the NumPy reference, with exactly one RuntimeWarning saying which and why.

Each case runs in a fresh interpreter, where the missing piece is made unimportable
before rnncore is imported (a None entry in sys.modules makes `import` raise
ImportError, as a missing compiled extension or package would).
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnncore as rc
from conftest import RTOL

SRC = os.path.dirname(os.path.dirname(rc.__file__))

_CHILD = textwrap.dedent("""
    import json, sys, warnings
    for name in {blocked!r}:
        sys.modules[name] = None  # import of this name now raises ImportError
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import rnncore as rc
        chosen = rc.get_backend()
        rc.get_backend()  # asked twice, warned once
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4))
    results = {{}}
    for backend in (None, "numpy"):
        layer = rc.GRU(4, 6, bidirectional=True, dtype=np.float64, seed=0, backend=backend)
        y, h = layer(x, lengths=[5, 2, 4])
        dx, dh0 = layer.backward(np.ones_like(y))
        results[str(backend)] = [a.tolist() for a in (y, h, dx, dh0, layer.grads["weight_hh_l0_reverse"])]
    json.dump(dict(backend=chosen, available=rc.backends(), results=results,
                   warnings=[(w.category.__name__, str(w.message)) for w in caught]), sys.stdout)
""")


def _run(blocked):
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("RNNCORE_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", _CHILD.format(blocked=blocked)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _check_numbers(report):
    """The default backend's numbers against the reference's, at float64's RTOL."""
    tol = RTOL[np.dtype(np.float64)]
    for got, expected in zip(report["results"]["None"], report["results"]["numpy"]):
        got, expected = np.asarray(got), np.asarray(expected)
        assert got.shape == expected.shape
        assert np.max(np.abs(got - expected)) <= tol * max(np.max(np.abs(expected)), 1e-12)


@pytest.mark.skipif("numba" not in rc.backends(), reason="numba is not installed here")
def test_without_the_compiled_extension_numba_is_used_with_one_warning():
    report = _run(["rnncore.backends.cython.backend"])
    assert report["backend"] == "numba"
    assert report["available"] == ["numba", "numpy"]
    runtime = [message for category, message in report["warnings"] if category == "RuntimeWarning"]
    assert len(runtime) == 1, report["warnings"]
    assert "'numba'" in runtime[0] and "cython" in runtime[0], runtime[0]
    _check_numbers(report)


def test_without_the_extension_and_numba_the_reference_is_used_with_one_warning():
    report = _run(["rnncore.backends.cython.backend", "numba"])
    assert report["backend"] == "numpy"
    assert report["available"] == ["numpy"]
    runtime = [message for category, message in report["warnings"] if category == "RuntimeWarning"]
    assert len(runtime) == 1, report["warnings"]
    assert "'numpy'" in runtime[0] and "cython" in runtime[0] and "numba" in runtime[0], runtime[0]
    _check_numbers(report)
