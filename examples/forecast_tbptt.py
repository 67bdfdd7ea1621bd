"""One-step-ahead forecasting of a long noisy chaotic series, trained by truncated BPTT.

The series is the Mackey-Glass delay equation (dx/dt = 0.2 x(t-17) / (1 + x(t-17)^10)
- 0.1 x(t), the classic chaotic benchmark), sampled every 3 time units, standardised,
plus noise of sd 0.1. It is cut into parallel streams that are read in chunks, each
chunk starting from the state the previous chunk ended in: the forward sees the whole
history, the backward only the chunk. Early stopping watches a validation stretch.
Metric: one-step RMSE on the last stretch, next to persistence (tomorrow = today) and a
least-squares AR(p), p chosen on the validation stretch. A sum of sines (this example's
former series) is a linear recursion that an AR(16) forecasts to the noise level; the
Mackey-Glass dynamics are not.

    python examples/forecast_tbptt.py [--quick]
"""
import argparse

import numpy as np

import rnncore as rc

STREAMS = 8
CHUNK = 25


AR_ORDERS = (2, 4, 8, 16, 32)


def make_series(rng, length):
    return rc.forecasting.mackey_glass(length, seed=rng).astype(np.float32)


def autoregression(series, p, fit_end):
    """One-step predictions of series[p:] by an AR(p) with intercept fitted by least
    squares on series[:fit_end]."""
    series = series.astype(np.float64)
    lags = np.column_stack([np.ones(len(series) - p)] + [series[p - j:len(series) - j] for j in range(1, p + 1)])
    coef = np.linalg.lstsq(lags[:fit_end - p], series[p:fit_end], rcond=None)[0]
    return lags @ coef


def ar_rmse(series, valid_start, test_start):
    """The AR(p) with the best validation RMSE, p in AR_ORDERS: (p, test RMSE)."""
    def rmse(p, start, stop):
        predicted = autoregression(series, p, valid_start)[start - p:stop - p]
        return float(np.sqrt(np.mean((predicted - series[start:stop]) ** 2)))
    p = min(AR_ORDERS, key=lambda p: rmse(p, valid_start, test_start))
    return p, rmse(p, test_start, len(series))


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
        15 if quick else 40, validate=lambda: one_step_rmse(model, series[:test_start], valid_start),
        model=model, early_stopping=stopper, progress=not quick, desc="GRU forecaster")

    model_rmse = one_step_rmse(model, series, test_start)
    persistence = float(np.sqrt(np.mean((series[test_start - 1:-1] - series[test_start:]) ** 2)))
    p, ar = ar_rmse(series, valid_start, test_start)
    out(f"{len(history)} epochs of truncated BPTT ({STREAMS} streams, chunks of {CHUNK} steps)")
    out(f"test one-step RMSE: GRU {model_rmse:.4f}, least-squares AR({p}) {ar:.4f}, persistence {persistence:.4f} "
        "(noise level 0.1)")
    return {"metric": model_rmse, "baseline": ar, "weakest_baseline": persistence}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rc.set_num_threads(1)  # the matrices are tiny: BLAS threads would only add overhead
    main(args.quick, args.seed)
