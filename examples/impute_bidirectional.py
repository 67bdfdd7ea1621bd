"""Missing-value imputation in a multivariate series with a bidirectional LSTM.

Three sensors see two shared hidden oscillations, each its own mix, plus noise; stretches
of 6 to 14 steps go missing at random in each sensor. The model reads every window both
ways (bidirectional LSTM), with the missing values zeroed and a 0/1 observed flag per
sensor, and is trained to fill values hidden from it (MSELoss with a mask: only the
hidden entries count). Metric: RMSE on the missing entries of held-out windows, next to
per-sensor linear interpolation, shape-preserving cubic (PCHIP) interpolation, and the
strongest simple rival: least-squares regression of each sensor on the other two where
both are observed (three mixes of two oscillations: any one is nearly a linear function
of the others), linear interpolation elsewhere.

    python examples/impute_bidirectional.py [--quick]
"""
import argparse

import numpy as np
from scipy.interpolate import PchipInterpolator

import rnncore as rc

SENSORS = 3
WINDOW = 48
MIXING = np.array([[1.0, 0.3], [0.5, -1.0], [-0.8, 0.6]])


def make_windows(rng, count):
    """Values (WINDOW, count, SENSORS) and their observed mask (1 = observed)."""
    t = np.arange(WINDOW)[:, None]
    periods = rng.uniform(10, 20, (2, count))
    phases = rng.uniform(0, 2 * np.pi, (2, count))
    latent = np.stack([np.sin(2 * np.pi * t / periods[k] + phases[k]) for k in range(2)], axis=-1)
    values = latent @ MIXING.T + 0.05 * rng.standard_normal((WINDOW, count, SENSORS))
    observed = np.ones_like(values)
    for b in range(count):
        for s in range(SENSORS):
            gap = rng.integers(6, 15)
            start = rng.integers(1, WINDOW - gap - 1)  # gaps inside the window: interpolation has both ends
            observed[start:start + gap, b, s] = 0
    return values.astype(np.float32), observed.astype(np.float32)


def model_inputs(values, observed):
    return np.concatenate([values * observed, observed], axis=-1)


def interpolate(values, observed, method="linear"):
    """Each sensor's gaps filled from its own observed values in the window."""
    filled = values.copy()
    t = np.arange(WINDOW)
    for b in range(values.shape[1]):
        for s in range(SENSORS):
            known = observed[:, b, s] > 0
            if method == "linear":
                filled[~known, b, s] = np.interp(t[~known], t[known], values[known, b, s])
            else:
                filled[~known, b, s] = PchipInterpolator(t[known], values[known, b, s])(t[~known])
    return filled


def cross_sensor(train_values, values, observed):
    """Each sensor regressed (least squares, with intercept) on the other two, fitted on
    fully observed training steps; applied where both others are observed, linear
    interpolation elsewhere."""
    filled = interpolate(values, observed)
    for s in range(SENSORS):
        others = [o for o in range(SENSORS) if o != s]
        rows = train_values.reshape(-1, SENSORS)
        design = np.column_stack([rows[:, others], np.ones(len(rows))])
        coef = np.linalg.lstsq(design, rows[:, s], rcond=None)[0]
        usable = (observed[..., s] == 0) & (observed[..., others].min(axis=-1) > 0)
        filled[..., s][usable] = (values[..., others] @ coef[:-1] + coef[-1])[usable]
    return filled


def main(quick=False, seed=0, out=print):
    rng = np.random.default_rng(seed)
    hidden = 32
    model = rc.Sequential(rc.LSTM(2 * SENSORS, hidden, bidirectional=True, seed=seed),
                          rc.Linear(2 * hidden, SENSORS, seed=seed + 1))
    optimizer = rc.optim.Adam(model, lr=0.01)
    loss_fn = rc.MSELoss()
    steps = 60 if quick else 300
    for _ in range(steps):
        values, observed = make_windows(rng, 32)
        rc.train.train_step(model, loss_fn, optimizer, model_inputs(values, observed), values,
                            max_norm=1.0, mask=1 - observed)

    values, observed = make_windows(np.random.default_rng(seed + 100), 256)
    missing = observed == 0
    model.eval()
    filled, _ = model(model_inputs(values, observed))
    model_rmse = float(np.sqrt(np.mean((filled[missing] - values[missing]) ** 2)))

    def rmse(filled_values):
        return float(np.sqrt(np.mean((filled_values[missing] - values[missing]) ** 2)))

    train_values, _ = make_windows(np.random.default_rng(seed + 200), 256)
    linear, pchip = rmse(interpolate(values, observed)), rmse(interpolate(values, observed, "pchip"))
    regression = rmse(cross_sensor(train_values, values, observed))
    out(f"{steps} training batches; {int(missing.sum())} missing values in 256 held-out windows")
    out(f"RMSE on the missing values: bidirectional LSTM {model_rmse:.4f}, regression on the other sensors "
        f"{regression:.4f}, PCHIP interpolation {pchip:.4f}, linear interpolation {linear:.4f}")
    return {"metric": model_rmse, "baseline": regression, "weakest_baseline": linear}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rc.set_num_threads(1)  # the matrices are tiny: BLAS threads would only add overhead
    main(args.quick, args.seed)
