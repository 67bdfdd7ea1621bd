"""rnncore against its peers, side by side in one process.

For each case (cell, T, B, I, H) and thread count, every peer is timed for inference
(eval-mode forward) and for a training step (forward + backward): rnncore on each of its
backends, PyTorch CPU, ONNX Runtime (inference only) and the NumPy reference. The limit
is the time NumPy's BLAS takes for the same GEMMs (one input projection of all steps and
one recurrent GEMM per step; three times that work for training), so
`fraction of GEMM rate = t_gemm / t_rnncore`.

The machines drift by up to 2x within seconds, so the peers are interleaved in rounds,
repeats are pooled and medians quoted; after threaded BLAS work there is a short pause
(OpenBLAS threads spin and would slow the next peer).

    python benchmarks/bench_peers.py                 # full run, 1 and 2 threads
    python benchmarks/bench_peers.py --quick         # a smoke run
    python benchmarks/bench_peers.py --threads 1 2 4 8 16

Writes benchmarks/results/peers.json, peers.md (the README table) and peers.png.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
from threadpoolctl import threadpool_limits

import rnncore as rc

CASES = [(100, 1, 8, 32), (100, 16, 32, 64), (50, 64, 128, 256), (25, 32, 512, 512), (200, 8, 16, 128)]
CELLS = ["lstm", "gru", "rnn"]
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
PAUSE = 0.15
# one colour per peer in both panels (training has no ONNX Runtime bar)
PEER_COLORS = {"torch": "C3", "onnxruntime": "C0", "rnncore-numba": "C1", "rnncore-numpy": "C2"}


def make_layer(cell, I, H, layers, bidirectional, backend, seed=0):
    cls = {"lstm": rc.LSTM, "gru": rc.GRU, "rnn": rc.RNN}[cell]
    return cls(I, H, num_layers=layers, bidirectional=bidirectional, dtype=np.float32, seed=seed, backend=backend)


def make_torch(torch, cell, I, H, layers, bidirectional, state_dict):
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    module = cls(I, H, num_layers=layers, bidirectional=bidirectional)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    return module


def gemm_time(T, B, I, H, G, layers, directions, repeats):
    """Median time of exactly the GEMMs a forward needs, with NumPy's sgemm."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T * B, I), dtype=np.float32)
    w_ih = rng.standard_normal((G * H, I), dtype=np.float32)
    w_ih_upper = rng.standard_normal((G * H, directions * H), dtype=np.float32)
    xu = rng.standard_normal((T * B, directions * H), dtype=np.float32)
    h = rng.standard_normal((B, H), dtype=np.float32)
    w_hh = rng.standard_normal((G * H, H), dtype=np.float32)
    out = np.empty((B, G * H), dtype=np.float32)

    def run():
        for layer in range(layers):
            for _ in range(directions):
                np.dot(x if layer == 0 else xu, (w_ih if layer == 0 else w_ih_upper).T)
                for _ in range(T):
                    np.dot(h, w_hh.T, out=out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def flops(T, B, I, H, G, layers, directions):
    total = 0
    for layer in range(layers):
        width = I if layer == 0 else directions * H
        total += directions * 2 * T * B * G * H * (width + H)
    return total


def rnncore_steps(layer, x, dy, lengths=None):
    """(inference, training step) closures for an rnncore layer."""
    def infer():
        layer.eval()
        layer(x, lengths=lengths)

    def train():
        layer.train()
        layer(x, lengths=lengths)
        layer.backward(dy)
    return infer, train


def torch_steps(torch, module, x, dy):
    """(inference, training step) closures for a torch module, gradients cleared each step."""
    tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)

    def infer():
        module.eval()
        with torch.no_grad():
            module(tx)

    def train():
        module.train()
        xg = tx.clone().requires_grad_(True)
        y, _ = module(xg)
        y.backward(tdy)
        for p in module.parameters():
            p.grad = None
    return infer, train


class OrtPeer:
    def __init__(self, layer, threads):
        import onnxruntime as ort
        path = os.path.join(tempfile.mkdtemp(), "model.onnx")
        rc.onnx.export(layer, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x):
        return self.session.run(None, {self.input_name: x})


def peers_for(case, threads, args):
    """{name: (infer_fn or None, train_fn or None)} for one case."""
    cell, T, B, I, H, layers, bidirectional = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    D = 2 if bidirectional else 1
    dy = rng.standard_normal((T, B, D * H), dtype=np.float32)
    peers = {}
    reference_sd = None
    for backend in args.backends:
        layer = make_layer(cell, I, H, layers, bidirectional, backend)
        reference_sd = layer.state_dict()
        peers[f"rnncore-{backend}"] = rnncore_steps(layer, x, dy)
    if "torch" in args.peers:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            module = make_torch(torch, cell, I, H, layers, bidirectional, reference_sd)
            peers["torch"] = torch_steps(torch, module, x, dy)
    if "onnxruntime" in args.peers:
        try:
            ort_peer = OrtPeer(make_layer(cell, I, H, layers, bidirectional, "numpy"), threads)
            peers["onnxruntime"] = (lambda: ort_peer(x), None)
        except Exception as exc:  # missing package or exporter: report, keep going
            print(f"  onnxruntime unavailable for {case}: {exc}", file=sys.stderr)
    return peers


def set_threads(n):
    rc.set_num_threads(n)
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass


def time_case(case, threads, args):
    cell, T, B, I, H, layers, bidirectional = case
    peers = peers_for(case, threads, args)
    samples = {(name, mode): [] for name, fns in peers.items() for mode, fn in zip(("infer", "train"), fns) if fn}
    # warm-up: JIT compiles, first-touch allocations, ORT session init
    for name, fns in peers.items():
        for fn in fns:
            if fn:
                fn()
                fn()
    for _ in range(args.rounds):
        for (name, mode) in samples:
            fn = peers[name][0 if mode == "infer" else 1]
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                samples[(name, mode)].append(time.perf_counter() - t0)
            if threads > 1:
                time.sleep(PAUSE)
    D = 2 if bidirectional else 1
    t_gemm = gemm_time(T, B, I, H, GATES[cell], layers, D, args.rounds * args.repeats)
    return {f"{name}/{mode}": statistics.median(v) for (name, mode), v in samples.items()}, t_gemm


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5,
                        help="calls per peer per round; medians pool rounds x repeats (>= 7). The first call "
                             "after another peer can be slow (cold caches): a block of several keeps the median honest")
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--peers", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--quick", action="store_true", help="two small cases, 1 thread, few repeats")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    args.backends = args.backends or rc.backends()
    cases = [(cell, *shape, 1, False) for shape in CASES for cell in CELLS] + [("lstm", *CASES[2][:2], 128, 256, 2, True)]
    if args.quick:
        cases = cases[:2]
        args.threads, args.rounds, args.repeats = [1], 2, 2
    os.makedirs(args.out, exist_ok=True)
    results = []
    for threads in args.threads:
        set_threads(threads)
        with threadpool_limits(threads):
            for case in cases:
                times, t_gemm = time_case(case, threads, args)
                cell, T, B, I, H, layers, bidirectional = case
                row = dict(cell=cell, T=T, B=B, I=I, H=H, layers=layers, bidirectional=bidirectional,
                           threads=threads, times=times, gemm=t_gemm,
                           gflop=flops(T, B, I, H, GATES[cell], layers, 2 if bidirectional else 1) / 1e9)
                results.append(row)
                print(format_row(row, args.backends[0]), flush=True)
    meta = dict(machine=platform.machine(), processor=platform.processor() or cpu_name(), cpus=os.cpu_count(),
                python=platform.python_version(), numpy=np.__version__, rnncore=rc.__version__,
                backends=args.backends, peers=args.peers, rounds=args.rounds, repeats=args.repeats)
    with open(os.path.join(args.out, "peers.json"), "w") as f:
        json.dump(dict(meta=meta, results=results), f, indent=1)
    table = markdown(results, args.backends[0], meta)
    with open(os.path.join(args.out, "peers.md"), "w") as f:
        f.write(table)
    print(table)
    plot(results, args.backends[0], os.path.join(args.out, "peers.png"))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def ratio(times, peer, mode, ours):
    t = times.get(f"{peer}/{mode}")
    base = times.get(f"rnncore-{ours}/{mode}")
    return None if t is None or base is None else t / base


def fmt(value, digits=2):
    return "–" if value is None else f"{value:.{digits}f}"


def case_name(row):
    extra = f" x{row['layers']} bi" if row["bidirectional"] else ""
    return f"{row['cell'].upper()}{extra} ({row['T']},{row['B']},{row['I']},{row['H']})"


def format_row(row, ours):
    t = row["times"]
    return (f"{row['threads']}t {case_name(row):32s} infer {1e3 * t.get(f'rnncore-{ours}/infer', float('nan')):8.3f} ms "
            f"train {1e3 * t.get(f'rnncore-{ours}/train', float('nan')):8.3f} ms  "
            f"torch x{fmt(ratio(t, 'torch', 'infer', ours))}/x{fmt(ratio(t, 'torch', 'train', ours))} "
            f"ort x{fmt(ratio(t, 'onnxruntime', 'infer', ours))}  "
            f"gemm {100 * row['gemm'] / t.get(f'rnncore-{ours}/infer', float('inf')):5.1f}%")


def markdown(results, ours, meta):
    others = [b for b in meta["backends"] if b != ours]
    head = ["threads", "case", f"{ours} infer ms", f"{ours} train ms", "torch/ infer", "torch/ train",
            "ORT/ infer"] + [f"{b}/ infer" for b in others] + [f"{b}/ train" for b in others] + [
            "GEMM rate infer", "GEMM rate train"]
    lines = [f"Machine: {meta['processor']}, {meta['cpus']} CPUs; numpy {meta['numpy']}. Ratios are peer time / "
             f"rnncore ({ours}) time in the same run (> 1: rnncore is faster); GEMM rate is the fraction of "
             f"NumPy's sgemm rate on the same GEMMs. Medians of {meta['rounds'] * meta['repeats']} interleaved runs.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results:
        t = row["times"]
        infer = t.get(f"rnncore-{ours}/infer")
        train = t.get(f"rnncore-{ours}/train")
        cells = [str(row["threads"]), case_name(row), fmt(1e3 * infer, 3), fmt(1e3 * train, 3),
                 fmt(ratio(t, "torch", "infer", ours)), fmt(ratio(t, "torch", "train", ours)),
                 fmt(ratio(t, "onnxruntime", "infer", ours))]
        cells += [fmt(ratio(t, f"rnncore-{b}", "infer", ours)) for b in others]
        cells += [fmt(ratio(t, f"rnncore-{b}", "train", ours)) for b in others]
        cells += [f"{100 * row['gemm'] / infer:.0f}%", f"{100 * 3 * row['gemm'] / train:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results, ours, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [r for r in results if r["threads"] == min(r2["threads"] for r2 in results)]
    labels = [case_name(r) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.35 * len(rows) + 2), sharey=True)
    for ax, mode in zip(axes, ("infer", "train")):
        peers = sorted({k.split("/")[0] for r in rows for k in r["times"] if k.endswith(mode)} - {f"rnncore-{ours}"})
        ypos = np.arange(len(rows))
        height = 0.8 / max(len(peers), 1)
        for i, peer in enumerate(peers):
            values = [ratio(r["times"], peer, mode, ours) or 0 for r in rows]
            ax.barh(ypos + i * height, values, height=height, label=peer, color=PEER_COLORS.get(peer))
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_yticks(ypos + 0.4 - height / 2)
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_title(f"{mode}: peer time / rnncore-{ours} time ({rows[0]['threads']} thread)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
