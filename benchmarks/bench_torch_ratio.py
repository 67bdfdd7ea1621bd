"""rnncore's compiled backend against PyTorch, one thread, float32: the ratio torch / ours.

A quick companion of bench_peers.py for kernel work: one layer, one direction, eval-mode
forward and a training step (forward + backward), the two libraries interleaved call by
call so that the drift of a shared machine hits both alike; medians of the repeats.

    python benchmarks/bench_torch_ratio.py                          # the default cases
    python benchmarks/bench_torch_ratio.py --cases 100,16,32,64 --cells lstm --seconds 3
    python benchmarks/bench_torch_ratio.py --variant float64        # or proj, lengths

The variants are the paths torch runs step by step even for an LSTM: float64, a
projection (proj_size = H / 2, LSTM only) and mixed lengths (from T down to T / 4,
torch given a PackedSequence, its packing and unpacking timed with it).

Prints one line per case and cell; --json PATH writes the same rows as JSON.
"""
import argparse
import json
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import rnncore as rc
from bench_peers import rnncore_steps, torch_steps

CASES = ["100,1,8,32", "100,16,32,64", "50,64,128,256", "25,32,512,512"]
WARMUP = 3


def peers(cell, T, B, I, H, variant="plain"):
    import torch
    dtype = np.float64 if variant == "float64" else np.float32
    options = dict(proj_size=H // 2) if variant == "proj" else {}
    cls = {"lstm": rc.LSTM, "gru": rc.GRU, "rnn": rc.RNN}[cell]
    layer = cls(I, H, dtype=dtype, seed=0, backend="cython", **options)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](I, H, **options)
    module = module.double() if dtype == np.float64 else module
    module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H // 2 if options else H)).astype(dtype)
    if variant != "lengths":
        ours_infer, ours_train = rnncore_steps(layer, x, dy)
        torch_infer, torch_train = torch_steps(torch, module, x, dy)
    else:
        lengths = np.linspace(T, max(1, T // 4), B).astype(np.int64)
        dy[np.arange(T)[:, None] >= lengths[None, :]] = 0
        ours_infer, ours_train = rnncore_steps(layer, x, dy, lengths)
        torch_infer, torch_train = packed_torch_steps(torch, module, x, dy, lengths)
    return {("ours", "infer"): ours_infer, ("ours", "train"): ours_train,
            ("torch", "infer"): torch_infer, ("torch", "train"): torch_train}


def packed_torch_steps(torch, module, x, dy, lengths):
    """(inference, training step) closures for torch on a PackedSequence of x."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    tx, tdy, tlen = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(lengths)

    def infer():
        module.eval()
        with torch.no_grad():
            y, _ = module(pack_padded_sequence(tx, tlen, enforce_sorted=False))
            pad_packed_sequence(y, total_length=x.shape[0])

    def train():
        module.train()
        xg = tx.clone().requires_grad_(True)
        y, _ = module(pack_padded_sequence(xg, tlen, enforce_sorted=False))
        y, _ = pad_packed_sequence(y, total_length=x.shape[0])
        y.backward(tdy)
        for p in module.parameters():
            p.grad = None
    return infer, train


def time_case(cell, T, B, I, H, seconds, variant="plain"):
    fns = peers(cell, T, B, I, H, variant)
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
    return dict(cell=cell, T=T, B=B, I=I, H=H, variant=variant, repeats=repeats,
                ours_infer_ms=med[("ours", "infer")] * 1e3, ours_train_ms=med[("ours", "train")] * 1e3,
                infer_ratio=med[("torch", "infer")] / med[("ours", "infer")],
                train_ratio=med[("torch", "train")] / med[("ours", "train")])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=CASES, help="T,B,I,H")
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case and cell")
    parser.add_argument("--variant", choices=["plain", "float64", "proj", "lengths"], default="plain")
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
                if args.variant == "proj" and cell != "lstm":
                    continue
                row = time_case(cell, T, B, I, H, args.seconds, args.variant)
                rows.append(row)
                print(f"({T},{B},{I},{H}) {cell:4s} {args.variant:7s}  infer x{row['infer_ratio']:.2f} ({row['ours_infer_ms']:.3f} ms)"
                      f"  train x{row['train_ratio']:.2f} ({row['ours_train_ms']:.3f} ms)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
