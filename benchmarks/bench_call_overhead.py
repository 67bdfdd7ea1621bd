"""Per-call cost of a one-step layer call: rc.LSTM(8, 32), T=1, B=1, eval, on each backend
(median of rounds of 2000 calls; the kernel itself is a few microseconds)."""
import statistics
import time

import numpy as np

import rnncore as rc


def per_call_us(layer, x, calls=2000, rounds=15):
    for _ in range(200):
        layer(x)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            layer(x)
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def main():
    x = np.random.default_rng(0).standard_normal((1, 1, 8)).astype(np.float32)
    for backend in rc.backends():
        layer = rc.LSTM(8, 32, seed=0, backend=backend).eval()
        print(f"{backend:7s} LSTM(8, 32) T=1 B=1 eval: {per_call_us(layer, x):6.1f} us per call")


if __name__ == "__main__":
    main()
