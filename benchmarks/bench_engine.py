"""The compiled backend's recurrent engine against an earlier build of it and ONNX Runtime.

Two builds of rnncore (two source trees, each with its compiled extension, e.g. the main
checkout and a branch) run in worker processes of their own; ONNX Runtime runs in this
process on the graph `rnncore.onnx.export` writes. For each case (T, B, I, H) and cell,
inference, one thread, float32, every peer is timed in every round, the rounds
interleaved (the machine drifts), and the medians over rounds are quoted, with the
GFLOP/s of the layer's GEMMs (input projection and recurrent products, 2 T B G H (I + H)
flops) and their fraction of a single-thread SGEMM peak measured in the same run
(NumPy's BLAS at 2048^3).

    python benchmarks/bench_engine.py --before ../rnncore-before/src --after src
    python benchmarks/bench_engine.py --quick

Writes benchmarks/results/engine.json and prints the table (markdown).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

CASES = {"c1": (100, 1, 8, 32), "c2": (100, 16, 32, 64), "c3": (50, 64, 128, 256), "c4": (25, 32, 512, 512),
         "c5": (200, 8, 16, 128)}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
HERE = os.path.dirname(os.path.abspath(__file__))


def layer(rc, cell, I, H):
    cls = {"lstm": rc.LSTM, "gru": rc.GRU, "rnn": rc.RNN}[cell]
    return cls(I, H, dtype=np.float32, seed=0, backend="cython")


def time_calls(fn, seconds):
    """Median seconds of one call, over calls filling about `seconds` (at least 5)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker():
    """Serve timing requests on stdin, one JSON line each: [cell, case, seconds]."""
    import rnncore as rc
    rc.set_num_threads(1)
    layers = {}
    for line in sys.stdin:
        cell, case, seconds = json.loads(line)
        T, B, I, H = CASES[case]
        if (cell, case) not in layers:
            lay = layer(rc, cell, I, H)
            lay.eval()
            x = np.random.default_rng(1).standard_normal((T, B, I), dtype=np.float32)
            layers[cell, case] = (lambda lay=lay, x=x: lay(x))
        print(json.dumps(time_calls(layers[cell, case], seconds)), flush=True)


class Worker:
    def __init__(self, src):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def time(self, cell, case, seconds):
        self.process.stdin.write(json.dumps([cell, case, seconds]) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def ort_peer(cell, case):
    import onnxruntime as ort
    import rnncore as rc
    T, B, I, H = CASES[case]
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    rc.onnx.export(layer(rc, cell, I, H), path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(1).standard_normal((T, B, I), dtype=np.float32)
    return lambda: session.run(None, {name: x})


def sgemm_peak(seconds):
    """GFLOP/s of a 2048^3 float32 matmul, NumPy's BLAS at one thread."""
    from threadpoolctl import threadpool_limits
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    with threadpool_limits(1):
        t = time_calls(lambda: a @ a, seconds)
    return 2 * 2048 ** 3 / t * 1e-9


def flops(cell, case):
    T, B, I, H = CASES[case]
    return 2 * T * B * GATES[cell] * H * (I + H)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="source tree of the earlier build (with its extension)")
    parser.add_argument("--after", default=os.path.join(HERE, "..", "src"), help="source tree of this build")
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.2, help="timed calls per peer per round")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()
    if args.before is None:
        parser.error("--before: expected the source tree of the earlier build")
    if args.quick:
        args.rounds, args.seconds = 2, 0.05
    sys.path.insert(0, os.path.abspath(args.after))
    workers = {"before": Worker(args.before), "after": Worker(args.after)}
    ort = {(cell, case): ort_peer(cell, case) for cell in args.cells for case in args.cases}
    samples = {}
    peaks = []
    for _ in range(args.rounds):
        peaks.append(sgemm_peak(args.seconds))
        for cell in args.cells:
            for case in args.cases:
                for name, w in workers.items():
                    samples.setdefault((cell, case, name), []).append(w.time(cell, case, args.seconds))
                samples.setdefault((cell, case, "onnxruntime"), []).append(time_calls(ort[cell, case], args.seconds))
    for w in workers.values():
        w.close()
    peak = statistics.median(peaks)
    rows = []
    for cell in args.cells:
        for case in args.cases:
            ms = {name: statistics.median(samples[cell, case, name]) * 1e3 for name in ("before", "after", "onnxruntime")}
            gflops = {name: flops(cell, case) / (t * 1e-3) * 1e-9 for name, t in ms.items()}
            rows.append(dict(cell=cell, case=case, shape=CASES[case], ms=ms, gflops=gflops))
    print(f"single-thread SGEMM peak (NumPy BLAS, 2048^3): {peak:.1f} GFLOP/s; medians of {args.rounds} rounds\n")
    print("| cell | case (T,B,I,H) | before ms | after ms | ORT ms | after/before | after vs ORT | "
          "after GFLOP/s (of peak) | ORT GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms, g = r["ms"], r["gflops"]
        print(f"| {r['cell']} | {r['case']} {r['shape']} | {ms['before']:.3f} | {ms['after']:.3f} | "
              f"{ms['onnxruntime']:.3f} | {ms['before'] / ms['after']:.2f}x | {ms['onnxruntime'] / ms['after']:.2f}x | "
              f"{g['after']:.1f} ({g['after'] / peak:.0%}) | {g['onnxruntime']:.1f} |")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "engine.json"), "w") as f:
        json.dump(dict(peak_gflops=peak, rounds=args.rounds, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
