"""rnncore's compiled backend against PyTorch, one thread, float32: the ratio torch / ours.

A quick companion of bench_peers.py for kernel work: one layer, one direction, eval-mode
forward and a training step (forward + backward), the two libraries interleaved call by
call so that the drift of a shared machine hits both alike; medians of the repeats.

    python benchmarks/bench_torch_ratio.py                          # the default cases
    python benchmarks/bench_torch_ratio.py --cases 100,16,32,64 --cells lstm --seconds 3

Prints one line per case and cell; --json PATH writes the same rows as JSON.
"""
import argparse
import json
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import rnncore as rc
from bench_peers import make_layer, make_torch, rnncore_steps, torch_steps

CASES = ["100,1,8,32", "100,16,32,64", "50,64,128,256", "25,32,512,512"]
WARMUP = 3


def peers(cell, T, B, I, H):
    import torch
    layer = make_layer(cell, I, H, 1, False, "cython")
    module = make_torch(torch, cell, I, H, 1, False, layer.state_dict())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    ours_infer, ours_train = rnncore_steps(layer, x, dy)
    torch_infer, torch_train = torch_steps(torch, module, x, dy)
    return {("ours", "infer"): ours_infer, ("ours", "train"): ours_train,
            ("torch", "infer"): torch_infer, ("torch", "train"): torch_train}


def time_case(cell, T, B, I, H, seconds):
    fns = peers(cell, T, B, I, H)
    for fn in fns.values():
        for _ in range(WARMUP):
            fn()
    start = time.perf_counter()
    for fn in fns.values():
        fn()
    repeats = max(5, int(seconds / max(time.perf_counter() - start, 1e-6)))
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    med = {key: statistics.median(v) for key, v in times.items()}
    return dict(cell=cell, T=T, B=B, I=I, H=H, repeats=repeats,
                ours_infer_ms=med[("ours", "infer")] * 1e3, ours_train_ms=med[("ours", "train")] * 1e3,
                infer_ratio=med[("torch", "infer")] / med[("ours", "infer")],
                train_ratio=med[("torch", "train")] / med[("ours", "train")])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=CASES, help="T,B,I,H")
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case and cell")
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    rc.set_num_threads(1)
    rows = []
    with threadpool_limits(1):
        for case in args.cases:
            T, B, I, H = (int(v) for v in case.split(","))
            for cell in args.cells:
                row = time_case(cell, T, B, I, H, args.seconds)
                rows.append(row)
                print(f"({T},{B},{I},{H}) {cell:4s}  infer x{row['infer_ratio']:.2f} ({row['ours_infer_ms']:.3f} ms)"
                      f"  train x{row['train_ratio']:.2f} ({row['ours_train_ms']:.3f} ms)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
