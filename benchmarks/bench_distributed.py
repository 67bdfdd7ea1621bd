"""Data parallelism on the machine at hand, and a projection to 64 nodes.

    mpirun -n 1 python benchmarks/bench_distributed.py mpi     # then -n 2
    python benchmarks/bench_distributed.py dask

mpi: one training step of rc.Sequential(rc.LSTM(8, 64), rc.Linear(64, 1)), float32, a
global batch of 64 series of 50 steps split over the ranks: the forward and backward on
a shard (compute) and DataParallel.allreduce_gradients (communication), medians of 30
steps, one thread per rank. It then projects the step to P nodes with a ring allreduce,
2 (P - 1) / P times the gradient bytes over the link plus 2 (P - 1) latencies.

dask: series scored per second by one process (the whole batch in one call), and by
rnncore.dask.score on LocalCluster of 1 and 2 single-thread worker processes.
"""
import json
import statistics
import sys
import time

import numpy as np

import rnncore as rc

T, INPUT, HIDDEN, GLOBAL_BATCH, STEPS = 50, 8, 64, 64, 30
LINK_BYTES_PER_S, LATENCY_S = 12.5e9, 5e-6  # 100 Gb/s InfiniBand-class link; 10 Gb/s Ethernet in the notes


def build():
    return rc.Sequential(rc.LSTM(INPUT, HIDDEN, seed=0), rc.Linear(HIDDEN, 1, seed=1))


def bench_mpi():
    import rnncore.distributed as rd

    rc.set_num_threads(1)
    model = build()
    dp = rd.DataParallel(model).broadcast_parameters()
    rows = rd.shard(GLOBAL_BATCH, dp.comm)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, GLOBAL_BATCH, INPUT)).astype(np.float32)[:, rows]
    target = np.zeros((T, len(rows), 1), dtype=np.float32)
    loss = rc.MSELoss()
    compute, communicate = [], []
    for step in range(STEPS + 5):
        dp.comm.Barrier()
        started = time.perf_counter()
        model.zero_grad()
        y, _ = model(x)
        loss(y, target)
        model.backward(loss.backward())
        middle = time.perf_counter()
        dp.allreduce_gradients()
        done = time.perf_counter()
        if step >= 5:
            compute.append(middle - started)
            communicate.append(done - middle)
    n_params = sum(p.size for p in model.parameters().values())
    result = {"ranks": dp.size, "parameters": n_params, "compute_ms": 1e3 * statistics.median(compute),
              "allreduce_ms": 1e3 * statistics.median(communicate)}
    if dp.rank == 0:
        print(json.dumps(result))
        grad_bytes = 4 * n_params
        one_rank_compute = result["compute_ms"] * dp.size  # the whole global batch on one rank
        for nodes in (1, 2, 8, 64):
            ring = 2 * (nodes - 1) / nodes * grad_bytes / LINK_BYTES_PER_S + 2 * (nodes - 1) * LATENCY_S
            step = one_rank_compute / nodes + 1e3 * ring
            print(f"projection P={nodes:3d}: compute {one_rank_compute / nodes:7.3f} ms + ring allreduce "
                  f"{1e3 * ring:6.3f} ms = {step:7.3f} ms/step, efficiency {one_rank_compute / nodes / step:.0%} "
                  f"(global batch {GLOBAL_BATCH}); with {GLOBAL_BATCH} series per node: "
                  f"{one_rank_compute / (one_rank_compute + 1e3 * ring):.0%}")


def bench_dask():
    import distributed

    import rnncore.dask as rdk

    rc.set_num_threads(1)
    model = build().eval()
    n_series = 20_000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, n_series, INPUT)).astype(np.float32)
    lengths = rng.integers(1, T + 1, n_series)
    started = time.perf_counter()
    expected = model(x, lengths=lengths)[0]
    print(f"one process: {n_series / (time.perf_counter() - started):9.0f} series/s")
    for workers in (1, 2):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address=None) as cluster, distributed.Client(cluster):
            rdk.score(model, x[:, :512], lengths=lengths[:512]).compute()  # the workers import rnncore
            started = time.perf_counter()
            y = rdk.score(model, x, lengths=lengths).compute()
            elapsed = time.perf_counter() - started
            print(f"dask, {workers} worker(s): {n_series / elapsed:9.0f} series/s (default chunks, "
                  f"{rdk.score(model, x, lengths=lengths).numblocks[1]} tasks), max |y - whole batch| "
                  f"{np.max(np.abs(y - expected)):.1e}")


if __name__ == "__main__":
    {"mpi": bench_mpi, "dask": bench_dask}[sys.argv[1]]()
