"""What memory-lean BPTT (`layer(x, ..., memory="lean")`) saves and what it costs.

Part 1, time: for each case (T, B, I, H) and cell (LSTM, GRU), one training step (a
train-mode call and its backward) with memory "full" and "lean", one thread, float32,
timed in interleaved rounds (bench_regularised's `interleaved`: a sample is the median
call of a block of about 0.1 s, the figure the median over rounds). Target: lean at
most 1.35x the full path's time. The lean path reruns the forward of every segment but
the last, about sqrt(T) steps each (a multiple of 64), so a T of one segment costs
nothing extra, and a long T about one more forward (a third of a step's products).

Part 2, memory: the peak numpy allocation (tracemalloc) of one training step of an
LSTM at T=20000, B=16, I=H=256, float32, in either mode, and the step's time (the two
modes alternated, the median of --long-rounds each). "Activations" is the peak less
what both modes hold alike: the step's results y and dx, and the copy of x a training
call keeps (x and dy are allocated before). Target: the lean step's activations at
most 15% of the full step's.

    python benchmarks/bench_lean.py
    python benchmarks/bench_lean.py --rounds 3 --cases c2 --no-long

Writes benchmarks/results/lean.json and lean.md.
"""
import argparse
import platform
import statistics
import time
import tracemalloc

import numpy as np
from threadpoolctl import threadpool_limits

import rnncore as rc
from bench_regularised import interleaved, write_results

CASES = {"c2": (100, 16, 32, 64), "c3": (50, 64, 128, 256), "c5": (200, 8, 16, 128), "long": (2000, 16, 256, 256)}
CELLS = {"lstm": rc.LSTM, "gru": rc.GRU}
LONG = (20000, 16, 256, 256)


def training_step(cls, case, memory):
    T, B, I, H = case
    layer = cls(I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    dy = np.ones((T, B, H), np.float32)

    def step():
        layer(x, memory=memory)
        layer.backward(dy)
    return step


def peak_step(case, memory):
    """(peak bytes, bytes of what both modes hold, seconds) of one LSTM training step,
    from a fresh layer; y is held through the backward, as a training loop holds it."""
    T, B, I, H = case
    layer = rc.LSTM(I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    dy = np.ones((T, B, H), np.float32)
    tracemalloc.start()
    try:
        start = time.perf_counter()
        y, _ = layer(x, memory=memory)
        dx, _ = layer.backward(dy)
        seconds = time.perf_counter() - start
        # what either mode holds alike: y, dx and the layer's own copy of x (training
        # keeps the caller's x out of reach of the caller's later edits)
        return tracemalloc.get_traced_memory()[1], y.nbytes + dx.nbytes + x.nbytes, seconds
    finally:
        tracemalloc.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--long-rounds", type=int, default=2)
    parser.add_argument("--no-long", action="store_true")
    args = parser.parse_args()
    rc.set_num_threads(1)
    rows, long_rows = [], []
    with threadpool_limits(1):
        for case_name in args.cases:
            for cell in args.cells:
                case = CASES[case_name]
                times = interleaved({memory: training_step(CELLS[cell], case, memory) for memory in ("full", "lean")},
                                    args.rounds)
                rows.append(dict(case=case_name, shape=case, cell=cell, full_ms=times["full"] * 1e3,
                                 lean_ms=times["lean"] * 1e3, ratio=times["lean"] / times["full"]))
                print(case_name, cell, round(times["lean"] / times["full"], 3), flush=True)
        if not args.no_long:
            samples = {"full": [], "lean": []}
            for _ in range(args.long_rounds):
                for memory in samples:
                    samples[memory].append(peak_step(LONG, memory))
                    print("long", memory, samples[memory][-1], flush=True)
            for memory, found in samples.items():
                peak, results = max(p for p, _, _ in found), found[0][1]
                long_rows.append(dict(memory=memory, shape=LONG, peak_bytes=peak, activation_bytes=peak - results,
                                      seconds=statistics.median(s for _, _, s in found)))
    meta = dict(machine=platform.processor() or platform.machine(), rounds=args.rounds, rnncore=rc.__version__,
                backend=rc.get_backend())
    write_results("lean", dict(meta=meta, rows=rows, long=long_rows), markdown(rows, long_rows, meta))


def markdown(rows, long_rows, meta):
    lines = [f"# Memory-lean BPTT: time and memory ({meta['backend']} backend, one thread, float32)", "",
             f"Machine: {meta['machine']}; medians of {meta['rounds']} interleaved rounds.", "",
             "| case (T, B, I, H) | cell | full ms | lean ms | lean / full |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} {tuple(r['shape'])} | {r['cell']} | {r['full_ms']:.2f} | {r['lean_ms']:.2f} "
                     f"| {r['ratio']:.2f} |")
    if long_rows:
        by = {r["memory"]: r for r in long_rows}
        full, lean = by["full"], by["lean"]
        lines += ["", f"One LSTM training step at (T, B, I, H) = {tuple(full['shape'])}:", "",
                  "| memory | peak MB | activations MB | seconds |", "|---|---|---|---|"]
        for r in (full, lean):
            lines.append(f"| {r['memory']} | {r['peak_bytes'] / 1e6:.0f} | {r['activation_bytes'] / 1e6:.0f} "
                         f"| {r['seconds']:.2f} |")
        lines += ["", f"Lean activations: {lean['activation_bytes'] / full['activation_bytes']:.1%} of the full "
                      f"path's; time {lean['seconds'] / full['seconds']:.2f}x.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
