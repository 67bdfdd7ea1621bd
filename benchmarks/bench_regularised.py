"""What each regularised option costs against the plain cell, and against the only peers
that have such cells on the CPU at all.

Part 1, rnncore alone: for each case (T, B, I, H) and cell (LSTM, GRU), a plain layer and
one layer per option (layer_norm, zoneout=0.1, recurrent_dropout=0.25,
weight_dropout=0.5, and all four together), inference (an eval-mode call) and training
(a train-mode call and its backward), one thread, float32. The layers are timed in
rounds, interleaved (the machine drifts); a sample is the median call of a block of
about 0.1 s; the figure is the median of the rounds' samples, and each option's ratio is
its time over the plain layer's (target: at most 1.2). The plain layer's fraction of the
FMA peak (the products' FLOPs, 2 T B G H (I + H), three times that in training, over the
single-core peak that rnncore's probe measures in the same run) says how hard the
baseline already runs.

Part 2, peers, training, one thread, in rounds with rnncore's layer of the same option:
- a LayerNorm LSTM written in PyTorch 2.13 (the cell loop in Python over torch ops, the
  input product and its normalisation for all steps at once, nn.LayerNorm without shift
  on the two products and with one on c_t: the equations of rnncore's layer_norm=True);
- Keras 3's LSTM with recurrent_dropout=0.25 (torch backend; Keras leaves its fused path
  when recurrent dropout is on), `train_on_batch` with SGD against rnncore's forward,
  backward and an SGD step.
Target: rnncore at least 5x faster.

    python benchmarks/bench_regularised.py
    python benchmarks/bench_regularised.py --rounds 3 --cases c2 --cells lstm

Writes benchmarks/results/regularised.json and regularised.md.
"""
import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import rnncore as rc  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CASES = {"c2": (100, 16, 32, 64), "c3": (50, 64, 128, 256), "c5": (200, 8, 16, 128)}
CELLS = {"lstm": (rc.LSTM, 4), "gru": (rc.GRU, 3)}
OPTIONS = {
    "plain": {},
    "layer_norm": dict(layer_norm=True),
    "zoneout": dict(zoneout=0.1),
    "recurrent_dropout": dict(recurrent_dropout=0.25),
    "weight_dropout": dict(weight_dropout=0.5),
    "all four": dict(layer_norm=True, zoneout=0.1, recurrent_dropout=0.25, weight_dropout=0.5),
}
BLOCK_SECONDS = 0.1


def block(fn):
    """The median call of about BLOCK_SECONDS of back-to-back calls (at least 3)."""
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < BLOCK_SECONDS or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns, rounds):
    """{name: median over rounds of block(fn)}, the fns timed in turn every round."""
    for fn in fns.values():
        fn()
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(block(fn))
    return {name: statistics.median(s) for name, s in samples.items()}


def rnncore_fns(cell, case, options):
    """(inference, training) calls of an rnncore layer with `options`."""
    T, B, I, H = case
    cls, _ = CELLS[cell]
    layer = cls(I, H, seed=0, **options)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    dy = np.ones((T, B, H), np.float32)

    def infer():
        layer.eval()
        layer(x)

    def train():
        layer.train()
        layer(x)
        layer.backward(dy)
    return infer, train, layer


def sgd_step(layer, lr=1e-3):
    for name, value in layer.parameters().items():
        value -= lr * layer.grads[name]
    layer.zero_grad()


def torch_layer_norm_lstm(case):
    """The LayerNorm LSTM of rnncore's layer_norm=True, in PyTorch: (infer, train)."""
    import torch
    T, B, I, H = case
    torch.manual_seed(0)
    w_ih, w_hh = torch.nn.Linear(I, 4 * H, bias=True), torch.nn.Linear(H, 4 * H, bias=True)
    ln_ih = torch.nn.LayerNorm(4 * H, bias=False)
    ln_hh = torch.nn.LayerNorm(4 * H, bias=False)
    ln_c = torch.nn.LayerNorm(H)
    x = torch.randn(T, B, I)

    def forward():
        xp = ln_ih(x @ w_ih.weight.T) + w_ih.bias
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        ys = []
        for t in range(T):
            a = xp[t] + ln_hh(w_hh(h))
            i, f, g, o = a.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(ln_c(c))
            ys.append(h)
        return torch.stack(ys)

    def infer():
        with torch.no_grad():
            forward()

    def train():
        forward().sum().backward()
    return infer, train


def keras_recurrent_dropout_lstm(case):
    """Keras 3's LSTM(recurrent_dropout=0.25) training step (batch-first), SGD."""
    import keras
    T, B, I, H = case
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((T, I)), keras.layers.LSTM(H, recurrent_dropout=0.25,
                                                                     return_sequences=True)])
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    x = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
    target = np.zeros((B, T, H), np.float32)
    return lambda: model.train_on_batch(x, target)


def flops(cell, case):
    T, B, I, H = case
    return 2.0 * T * B * CELLS[cell][1] * H * (I + H)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--no-peers", action="store_true")
    args = parser.parse_args()
    rc.set_num_threads(1)
    from rnncore.backends.cython import _probe
    import torch
    torch.set_num_threads(1)
    peak = _probe.fma_peak("float32") * 1e9   # the probe reports GFLOP/s
    rows, peers = [], []
    with threadpool_limits(1):
        for case_name in args.cases:
            case = CASES[case_name]
            for cell in args.cells:
                fns = {}
                for option, kwargs in OPTIONS.items():
                    infer, train, _ = rnncore_fns(cell, case, kwargs)
                    fns[(option, "inference")] = infer
                    fns[(option, "training")] = train
                times = interleaved(fns, args.rounds)
                for (option, mode), seconds in times.items():
                    plain = times[("plain", mode)]
                    rows.append(dict(case=case_name, shape=case, cell=cell, option=option, mode=mode,
                                     ms=seconds * 1e3, ratio=seconds / plain,
                                     peak=flops(cell, case) * (3 if mode == "training" else 1) / seconds / peak))
                print(case_name, cell, {f"{o} {m}": round(times[(o, m)] / times[("plain", m)], 2)
                                        for o, m in times}, flush=True)
            if args.no_peers or "lstm" not in args.cells:
                continue
            infer_ln, train_ln, ln_layer = rnncore_fns("lstm", case, OPTIONS["layer_norm"])
            _, train_rd, rd_layer = rnncore_fns("lstm", case, OPTIONS["recurrent_dropout"])
            t_infer, t_train = torch_layer_norm_lstm(case)
            keras_train = keras_recurrent_dropout_lstm(case)
            times = interleaved({
                ("layer_norm", "inference", "rnncore"): infer_ln, ("layer_norm", "inference", "torch loop"): t_infer,
                ("layer_norm", "training", "rnncore"): train_ln, ("layer_norm", "training", "torch loop"): t_train,
                ("recurrent_dropout", "training", "rnncore"): lambda: (train_rd(), sgd_step(rd_layer)),
                ("recurrent_dropout", "training", "keras"): keras_train,
            }, args.rounds)
            for (option, mode, who), seconds in times.items():
                if who == "rnncore":
                    continue
                ours = times[(option, mode, "rnncore")]
                peers.append(dict(case=case_name, shape=case, option=option, mode=mode, peer=who,
                                  peer_ms=seconds * 1e3, rnncore_ms=ours * 1e3, speedup=seconds / ours))
            print(case_name, "peers", [(p["option"], p["mode"], p["peer"], round(p["speedup"], 1))
                                       for p in peers if p["case"] == case_name], flush=True)
    meta = dict(peak_gflops=peak / 1e9, machine=platform.processor() or platform.machine(), rounds=args.rounds,
                rnncore=rc.__version__, torch=torch.__version__)
    write_results("regularised", dict(meta=meta, rows=rows, peers=peers), markdown(rows, peers, meta))


def write_results(stem, data, text):
    """benchmarks/results/<stem>.json (data) and <stem>.md (text)."""
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, stem + ".json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(RESULTS, stem + ".md"), "w") as f:
        f.write(text)


def markdown(rows, peers, meta):
    lines = [f"# The regularised cells' cost (one thread, float32, {meta['rounds']} interleaved rounds, "
             f"FMA peak {meta['peak_gflops']:.0f} GF/s)", "",
             "Each option's time over the plain cell's in the same run (target: at most 1.2); the plain cell's "
             "time and fraction of the FMA peak.", "",
             "| case | cell | mode | plain ms (% peak) | " + " | ".join(o for o in OPTIONS if o != "plain") + " |",
             "|---|---|---|---|" + "---|" * (len(OPTIONS) - 1)]
    keys = sorted({(r["case"], r["cell"], r["mode"]) for r in rows}, key=lambda k: (k[0], k[1], k[2] != "inference"))
    for case, cell, mode in keys:
        of = {r["option"]: r for r in rows if (r["case"], r["cell"], r["mode"]) == (case, cell, mode)}
        plain = of["plain"]
        lines.append(f"| {case} {tuple(plain['shape'])} | {cell} | {mode} | {plain['ms']:.3g} "
                     f"({100 * plain['peak']:.0f}%) | "
                     + " | ".join(f"{of[o]['ratio']:.2f}" for o in OPTIONS if o != "plain") + " |")
    if peers:
        lines += ["", "## Against the peers that have these cells (training unless said; one thread)", "",
                  "| case | option | mode | peer | peer ms | rnncore ms | rnncore faster by |",
                  "|---|---|---|---|---|---|---|"]
        for p in peers:
            lines.append(f"| {p['case']} {tuple(p['shape'])} | {p['option']} | {p['mode']} | {p['peer']} | "
                         f"{p['peer_ms']:.3g} | {p['rnncore_ms']:.3g} | {p['speedup']:.1f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
