"""Record, or check against a record, the exact outputs and gradients of every layer
variant, cell and functional call on every backend, through the public API only.

    python tools/compare_numerics.py save  numerics.npz   # on the old code
    python tools/compare_numerics.py check numerics.npz   # on the new code: bitwise

A refactoring that must not change the numbers is checked with it: the record is taken
before, the check after, on the same machine (BLAS and CPU decide the last bits).
"""
import sys
from pathlib import Path

import numpy as np

import rnncore as rc

# every cell type and variant, as the test suite lists them
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cases import VARIANTS  # noqa: E402

# (T, B, I, H, stacked and bidirectional, with lengths): T=1/B=1, odd sizes, the small
# product's row limit (32) crossed, and packed schedules
SHAPES = [(1, 1, 3, 1, False, False), (7, 3, 5, 6, False, True), (5, 4, 3, 5, True, True),
          (4, 40, 9, 40, False, False), (6, 37, 4, 33, True, True)]


def _states(layer, B, rng, dtype):
    rows = getattr(layer, "num_directions", 1) * getattr(layer, "num_layers", 1)
    return [rng.standard_normal((rows, B, w)).astype(dtype) for w in layer.specs[0].state_sizes]


def _layer_case(cls, kwargs, shape, dtype, backend):
    T, B, I, H, deep, with_lengths = shape
    kwargs = dict(kwargs)
    if kwargs.get("proj_size", 0) >= H:
        kwargs["proj_size"] = H - 1 if H > 1 else 0
    if deep and cls is not rc.JordanRNN:
        kwargs.update(num_layers=2, bidirectional=True)
    layer = cls(I, H, dtype=dtype, seed=3, backend=backend, **kwargs)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    states = _states(layer, B, rng, dtype)
    lengths = rng.integers(1, T + 1, B) if with_lengths else None
    lstm = cls is rc.LSTM
    y, finals = layer(x, tuple(states) if lstm else states[0], lengths=lengths)
    finals = list(finals) if lstm else [finals]
    dy = rng.standard_normal(y.shape).astype(dtype)
    dfin = [rng.standard_normal(f.shape).astype(dtype) for f in finals]
    dx, d0 = layer.backward(dy, tuple(dfin) if lstm else dfin[0])
    d0 = list(d0) if lstm else [d0]
    out = {"y": y, "dx": dx}
    out.update((f"final{k}", f) for k, f in enumerate(finals))
    out.update((f"d0_{k}", d) for k, d in enumerate(d0))
    out.update((f"grad_{n}", g) for n, g in layer.grads.items())
    layer.eval()
    out["y_eval"] = layer(x, tuple(states) if lstm else states[0], lengths=lengths)[0]
    return out


def _cell_cases(dtype, backend):
    out = {}
    rng = np.random.default_rng(11)
    for name, cls, kw in (("rnncell", rc.RNNCell, {}), ("lstmcell", rc.LSTMCell, {}), ("grucell", rc.GRUCell, {})):
        cell = cls(5, 6, dtype=dtype, seed=2, backend=backend, **kw)
        x = rng.standard_normal((3, 5)).astype(dtype)
        res = cell(x)
        res = list(res) if isinstance(res, tuple) else [res]
        d = [rng.standard_normal(r.shape).astype(dtype) for r in res]
        back = cell.backward(tuple(d) if len(d) > 1 else d[0])
        dx, dstate = back
        out[f"{name}/out"] = np.stack(res) if len(res) > 1 else res[0]
        out[f"{name}/dx"] = dx
        dstate = list(dstate) if isinstance(dstate, tuple) else [dstate]
        for k, v in enumerate(dstate):
            out[f"{name}/dstate{k}"] = v
        for n, g in cell.grads.items():
            out[f"{name}/grad_{n}"] = g
    return out


def _functional_cases(dtype, backend):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 4)).astype(dtype)
    w = lambda *s: rng.standard_normal(s).astype(dtype) * 0.5  # noqa: E731
    out = {}
    y, h, c, ctx = rc.functional.lstm_forward(x, None, None, w(16, 4), w(16, 4), w(16), w(16), training=True,
                                              lengths=[6, 2, 4], reverse=True, backend=backend)
    dx, dh0, dc0, g = rc.functional.lstm_backward(ctx, np.ones_like(y), np.ones_like(h), np.ones_like(c))
    out.update({"f_lstm/y": y, "f_lstm/dx": dx, "f_lstm/dh0": dh0, "f_lstm/dc0": dc0})
    out.update((f"f_lstm/g_{k}", v) for k, v in g.items())
    y, h, ctx = rc.functional.gru_forward(x, None, w(15, 4), w(15, 5), reset_after=False, training=True,
                                          backend=backend)
    dx, dh0, g = rc.functional.gru_backward(ctx, np.ones_like(y))
    out.update({"f_gru/y": y, "f_gru/dx": dx, "f_gru/dh0": dh0})
    out.update((f"f_gru/g_{k}", v) for k, v in g.items())
    return out


def record():
    out = {}
    for backend in rc.backends():
        for dtype in (np.float32, np.float64):
            tag = f"{backend}/{np.dtype(dtype).name}"
            for name, cls, kw in VARIANTS:
                for s, shape in enumerate(SHAPES):
                    for key, value in _layer_case(cls, kw, shape, dtype, backend).items():
                        out[f"{tag}/{name}/{s}/{key}"] = value
            out.update((f"{tag}/{k}", v) for k, v in _cell_cases(dtype, backend).items())
            out.update((f"{tag}/{k}", v) for k, v in _functional_cases(dtype, backend).items())
    return out


def main(argv):
    if len(argv) != 3 or argv[1] not in ("save", "check"):
        sys.exit(__doc__)
    now = record()
    if argv[1] == "save":
        np.savez_compressed(argv[2], **now)
        print(f"recorded {len(now)} arrays on {rc.backends()}")
        return
    then = dict(np.load(argv[2]))
    missing = sorted(set(then) ^ set(now))
    differ = [k for k in then if k in now and not (then[k].shape == now[k].shape
                                                   and then[k].tobytes() == now[k].tobytes())]
    print(f"{len(now)} arrays on {rc.backends()}: {len(differ)} differ, {len(missing)} unmatched")
    for k in (differ + missing)[:20]:
        print("  ", k)
    sys.exit(1 if differ or missing else 0)


if __name__ == "__main__":
    main(sys.argv)
