"""rnncore's own thread splits, alone in one process: one thread against two, and at two
threads the split by rows against the split by hidden units.

For each case (T, B, I, H) and cell, inference, float32, three modes are timed in every
round, the rounds interleaved (the machine drifts): one thread; two threads split by row
slices (each thread runs the whole time loop on its rows); two threads split by blocks of
hidden units (a barrier per step). A sample is the median call over about 80 ms of
back-to-back calls, so that the first call after a pause (threads waking) does not
dominate; the figure is the median of the rounds' samples. Nothing else runs in the
process: the peers' thread pools, which disturb the two-thread timings of
bench_peers.py at small sizes, are not loaded.

    python benchmarks/bench_threads.py
    python benchmarks/bench_threads.py --rounds 3 --cells lstm

Writes benchmarks/results/threads.json and threads.md.
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import rnncore as rc
from rnncore.backends.cython import backend as compiled
from rnncore.core.spec import CellSpec

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CASES = [(200, 1, 16, 256), (100, 2, 64, 512), (100, 4, 64, 256), (200, 8, 16, 128), (50, 64, 128, 256)]
CELLS = {"lstm": rc.LSTM, "gru": rc.GRU}
SAMPLE_SECONDS = 0.08
PAUSE = 0.15


def sample(layer, x):
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < SAMPLE_SECONDS or len(times) < 3:
        t0 = time.perf_counter()
        layer(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_case(cell, case, rounds):
    T, B, I, H = case
    layer = CELLS[cell](I, H, seed=0)
    layer.eval()
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    modes = {"1 thread": (1, None), "2 threads, rows": (2, 0), "2 threads, units": (2, 10 ** 9)}
    samples = {mode: [] for mode in modes}
    saved = compiled.UNIT_SPLIT_BELOW_ROWS
    try:
        for _ in range(rounds):
            for mode, (threads, below) in modes.items():
                rc.set_num_threads(threads)
                compiled.UNIT_SPLIT_BELOW_ROWS = saved if below is None else below
                samples[mode].append(sample(layer, x))
                time.sleep(PAUSE)
    finally:
        compiled.UNIT_SPLIT_BELOW_ROWS = saved
    return {mode: statistics.median(values) for mode, values in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    rows = []
    with threadpool_limits(1):
        for cell in args.cells:
            for case in CASES:
                times = run_case(cell, case, args.rounds)
                one = times["1 thread"]
                units = compiled._unit_threads(_spec(cell, case), compiled._slots(case[0], case[1], None), 1, 2,
                                               False, False)
                rows.append(dict(cell=cell, case=list(case), ms={k: v * 1e3 for k, v in times.items()},
                                 default=units > 1))
                print(f"{cell} {case}: " + ", ".join(f"{k} {v * 1e3:.3f} ms ({one / v:.2f}x)"
                                                     for k, v in times.items()), flush=True)
    lines = ["rnncore alone, inference, float32; medians of interleaved rounds; speed-up over one thread in "
             "brackets. 'default' is the split rnncore picks at 2 threads.", "",
             "| case | 1 thread ms | 2 threads, rows | 2 threads, units | default |", "|---|---|---|---|---|"]
    for row in rows:
        ms = row["ms"]
        one = ms["1 thread"]
        lines.append(f"| {row['cell'].upper()} {tuple(row['case'])} | {one:.3f} | "
                     f"{ms['2 threads, rows']:.3f} ({one / ms['2 threads, rows']:.2f}x) | "
                     f"{ms['2 threads, units']:.3f} ({one / ms['2 threads, units']:.2f}x) | "
                     f"{'units' if row['default'] else 'rows'} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "threads.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out, "threads.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _spec(cell, case):
    return CellSpec(cell, case[2], case[3], reset_after=True) if cell == "gru" else CellSpec(cell, case[2], case[3])


if __name__ == "__main__":
    main()
