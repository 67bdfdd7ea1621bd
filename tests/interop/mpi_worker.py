"""One rank of the data-parallel tests, run by tests/interop/test_distributed.py as
``mpirun -n N python mpi_worker.py SCENARIO OUT_DIR``. Each rank writes what it ended
with to OUT_DIR/rank<r>.npz; the test compares the ranks with each other and with one
process doing the whole global batch (the functions below are shared with it)."""
import sys

import numpy as np

import rnncore as rc

T, INPUT, HIDDEN, OUTPUT = 7, 3, 5, 2


def build(seed=0):
    """The model every rank and the single process train: a float64 LSTM and a Linear."""
    return rc.Sequential(rc.LSTM(INPUT, HIDDEN, dtype=np.float64, seed=seed),
                         rc.Linear(HIDDEN, OUTPUT, dtype=np.float64, seed=seed + 1))


def batch(step, n_items):
    """The global batch of a step: the same on every rank, from the step alone."""
    rng = np.random.default_rng(1000 + step)
    x = rng.standard_normal((T, n_items, INPUT))
    return x, np.sin(x[..., :OUTPUT].cumsum(axis=0))


def gradients(model, x, target):
    """The gradient of the mean squared error over (x, target), left in model.grads."""
    model.train()
    model.zero_grad()
    loss = rc.MSELoss()
    y, _ = model(x, None)
    loss(y, target)
    model.backward(loss.backward())


def train(model, optimizer, rows, steps, first=0):
    """`steps` steps from step `first`: even steps one train_step, odd ones a truncated-BPTT
    pass in chunks of 3, both clipping the global norm to 0.5. `rows` selects this rank's
    items of each global batch of 12 (all of them in one process)."""
    for step in range(first, first + steps):
        x, target = batch(step, 12)
        x, target = x[:, rows], target[:, rows]
        if step % 2 == 0:
            rc.train.train_step(model, rc.MSELoss(), optimizer, x, target, max_norm=0.5)
        else:
            rc.train.truncated_bptt(model, rc.MSELoss(), optimizer, x, target, chunk=3, max_norm=0.5)


def main(scenario, out_dir):
    # only under mpirun: the test imports this file for its functions, without MPI
    import rnncore.distributed as rd
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
    results = {}
    with rd.abort_on_error():
        if scenario == "grads":
            # every rank starts from other weights: the broadcast must make them rank 0's
            model = build(seed=rank)
            x, target = batch(0, 12)
            for mode in ("fast", "exact"):
                dp = rd.DataParallel(model, mode=mode).broadcast_parameters()
                rows = rd.shard(12)
                gradients(model, x[:, rows], target[:, rows])
                dp.allreduce_gradients()
                results.update({f"{mode}/{n}": g.copy() for n, g in model.grads.items()})
            # 10 items over 2 or 3 ranks: unequal shards, weighted by their sizes
            x, target = batch(1, 10)
            rows = rd.shard(10)
            gradients(model, x[:, rows], target[:, rows])
            dp.allreduce_gradients(count=len(rows))
            results.update({f"uneven/{n}": g.copy() for n, g in model.grads.items()})
            results["rows"] = rows
        elif scenario == "train":
            model = build(seed=rank)
            dp = rd.DataParallel(model).broadcast_parameters()
            train(dp, rc.optim.Adam(model, lr=1e-2), rd.shard(12), steps=20)
            results.update(model.state_dict())
        elif scenario == "checkpoint":
            model = build()
            dp = rd.DataParallel(model)
            optimizer = rc.optim.Adam(model, lr=1e-2)
            train(dp, optimizer, rd.shard(12), steps=4)
            dp.save(f"{out_dir}/model.npz", optimizer)
            saved = model.state_dict()
            train(dp, optimizer, rd.shard(12), steps=4, first=4)
            results.update({f"straight/{n}": v for n, v in model.state_dict().items()})
            # every rank resumes from the one file rank 0 wrote
            resumed_optimizer = rc.optim.Adam(build(seed=7), lr=1e-2)
            resumed = rc.load(f"{out_dir}/model.npz", optimizer=resumed_optimizer)
            results.update({f"loaded/{n}": v for n, v in resumed.state_dict().items()})
            results.update({f"saved/{n}": v for n, v in saved.items()})
            train(rd.DataParallel(resumed), resumed_optimizer, rd.shard(12), steps=4, first=4)
            results.update({f"resumed/{n}": v for n, v in resumed.state_dict().items()})
        elif scenario == "raise":
            model = build()
            dp = rd.DataParallel(model)
            if rank == 1:
                raise ValueError("deliberate failure on rank 1")
            dp.allreduce_gradients()  # the others wait here for rank 1, which never comes
        else:
            raise ValueError(f"scenario: expected grads, train, checkpoint or raise, got {scenario!r}")
    np.savez(f"{out_dir}/rank{rank}.npz", **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
