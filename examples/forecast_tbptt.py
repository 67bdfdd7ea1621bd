"""One-step-ahead forecasting of a long noisy series, trained by truncated BPTT.

The series (two incommensurate oscillations with a slow amplitude change, plus noise)
is cut into parallel streams that are read in chunks, each chunk starting from the
state the previous chunk ended in: the forward sees the whole history, the backward
only the chunk. Early stopping watches a validation stretch. Metric: one-step RMSE on
the last stretch, next to the persistence baseline (tomorrow = today).

    python examples/forecast_tbptt.py [--quick]
"""
import argparse

import numpy as np

import rnncore as rc

STREAMS = 8
CHUNK = 25


def make_series(rng, length):
    t = np.arange(length)
    amplitude = 1 + 0.3 * np.sin(2 * np.pi * t / 700)
    clean = amplitude * np.sin(2 * np.pi * t / 23) + 0.5 * np.sin(2 * np.pi * t / 9.3)
    return (clean + 0.1 * rng.standard_normal(length)).astype(np.float32)


def one_step_rmse(model, series, start):
    """RMSE of predictions of series[start:] from everything before each value."""
    model.eval()
    prediction, _ = model(series[:-1, None, None])
    model.train()
    return float(np.sqrt(np.mean((prediction[start - 1:, 0, 0] - series[start:]) ** 2)))


def main(quick=False, seed=0, out=print):
    rng = np.random.default_rng(seed)
    series = make_series(rng, 3000)
    valid_start, test_start = 2000, 2500
    train = series[:valid_start]
    steps = (len(train) - 1) // STREAMS
    inputs = train[:steps * STREAMS].reshape(STREAMS, steps).T[..., None]          # (T, STREAMS, 1)
    targets = train[1:steps * STREAMS + 1].reshape(STREAMS, steps).T[..., None]

    model = rc.Sequential(rc.GRU(1, 16, seed=seed), rc.Linear(16, 1, seed=seed + 1))
    optimizer = rc.optim.Adam(model, lr=0.01)
    loss_fn = rc.MSELoss()
    stopper = rc.train.EarlyStopping(patience=4)
    history = rc.train.fit(
        lambda _: rc.train.truncated_bptt(model, loss_fn, optimizer, inputs, targets, CHUNK, max_norm=1.0)[0],
        10 if quick else 40, validate=lambda: one_step_rmse(model, series[:test_start], valid_start),
        model=model, early_stopping=stopper, progress=not quick, desc="GRU forecaster")

    model_rmse = one_step_rmse(model, series, test_start)
    persistence = float(np.sqrt(np.mean((series[test_start - 1:-1] - series[test_start:]) ** 2)))
    out(f"{len(history)} epochs of truncated BPTT ({STREAMS} streams, chunks of {CHUNK} steps)")
    out(f"test one-step RMSE: GRU {model_rmse:.4f}, persistence {persistence:.4f} (noise level 0.1)")
    return {"metric": model_rmse, "baseline": persistence}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rc.set_num_threads(1)  # the matrices are tiny: BLAS threads would only add overhead
    main(args.quick, args.seed)
