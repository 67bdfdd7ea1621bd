"""Data-parallel training over MPI: every rank holds the whole model and trains on its own
shard of each global batch; the gradients are averaged over the ranks before each step,
so every rank takes the same step and ends with the same weights, those of one process
training on the whole batches.

The task: predict the sum of a noisy sequence's first half minus its second half, from
the whole sequence (a GRU, its last step, a Linear), 64 sequences per global batch.

    mpirun -n 4 python examples/train_data_parallel.py
    mpirun -n 4 --hostfile hosts python examples/train_data_parallel.py   # on a cluster

(As root in a container, Open MPI also needs --allow-run-as-root; on a laptop with
fewer cores than ranks, --oversubscribe.) Rank 0 prints the loss and writes the
checkpoint; any rank that raises ends the whole job through MPI_Abort.
"""
import argparse
import os
import tempfile

import numpy as np

import rnncore as rc
import rnncore.distributed as rd

STEPS, GLOBAL_BATCH, T = 60, 64, 20


def global_batch(step):
    """The same on every rank: drawn from the step number alone."""
    rng = np.random.default_rng(step)
    x = rng.standard_normal((T, GLOBAL_BATCH, 1)).astype(np.float32)
    target = (x[:T // 2].sum(axis=0) - x[T // 2:].sum(axis=0)) / np.sqrt(T)
    return x, target


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--checkpoint", default=os.path.join(tempfile.gettempdir(), "rnncore_data_parallel.npz"))
    args = parser.parse_args()
    with rd.abort_on_error():
        model = rc.Sequential(rc.GRU(1, 32, seed=0), rc.LastStep(), rc.Linear(32, 1, seed=1))
        dp = rd.DataParallel(model).broadcast_parameters()
        optimizer = rc.optim.Adam(model, lr=1e-2)
        rows = rd.shard(GLOBAL_BATCH, dp.comm)
        for step in range(args.steps):
            x, target = global_batch(step)
            # dp's backward averages the gradients, so the clipping sees the global norm
            loss, _ = rc.train.train_step(dp, rc.MSELoss(), optimizer, x[:, rows], target[rows], max_norm=1.0)
            # the mean of the shards' losses is the global batch's loss (equal shards)
            loss = dp.comm.allreduce(loss) / dp.size
            if dp.rank == 0 and (step % 10 == 0 or step == args.steps - 1):
                print(f"step {step:3d}  loss {loss:.4f}  ({dp.size} ranks, {len(rows)} sequences each)", flush=True)
        dp.save(args.checkpoint, optimizer)
        if dp.rank == 0:
            print(f"saved {args.checkpoint}; resume on every rank with rc.load(path, optimizer)")


if __name__ == "__main__":
    main()
