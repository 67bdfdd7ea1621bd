"""`python -m rnncore demo`: train a recurrent forecaster on a real monthly series and
compare its multi-step forecast of the held-out last months with a seasonal-naive one.

The default series is the Mauna Loa CO2 record shipped in rnncore/data (see the README
there for source and licence). The model reads the series' month-to-month changes,
standardised, and predicts the next change; the forecast is rolled out from the end of
the known history, feeding each predicted change back in, and summed onto the last
known level. The last `horizon` values are the test set, the `horizon` before them the
validation set (early stopping); the rest trains. The seasonal-naive baseline repeats
the last known season: value[t] = value[t - season].
"""
import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

from ._backend import get_backend, set_num_threads
from .layers import GRU, LSTM, RNN
from .losses import MSELoss
from .nn import Linear, Sequential
from .optim import Adam
from .train import EarlyStopping, fit, forecast, train_step

DEFAULT_CSV = Path(__file__).with_name("data") / "co2_mauna_loa_monthly.csv"
CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}

# Training windows: long enough to hold several seasons of context, short enough that
# a batch of them is cheap with the NumPy reference backend.
WINDOW = 48
BATCH = 32
BATCHES_PER_EPOCH = 4
MAX_GRAD_NORM = 1.0
LEARNING_RATE = 0.01


class DemoError(Exception):
    """A problem with the user's options or data, reported without a traceback."""


def load_series(path, column):
    """The numeric column `column` (a header name or a 0-based index) of a CSV file with
    a header row, as float64; the column's name; and the first column's cells (dates,
    usually) as strings."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as error:
        raise DemoError(f"--csv: cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise DemoError(f"--csv: {path} is not a readable CSV text file ({error})") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise DemoError(f"--csv: expected a header row and data rows in {path}, got {len(rows)} row(s)")
    header = [name.strip() for name in rows[0]]
    if column is None:
        index = len(header) - 1
    elif column.lstrip("-").isdigit():
        index = int(column)
        if not 0 <= index < len(header):
            raise DemoError(f"--column: expected an index in [0, {len(header) - 1}] or a name in {header}, "
                            f"got {column}")
    elif column in header:
        index = header.index(column)
    else:
        raise DemoError(f"--column: expected a name in {header} or a 0-based index, got {column!r}")
    values = []
    for line, row in enumerate(rows[1:], start=2):
        cell = row[index].strip() if index < len(row) else ""
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DemoError(f"--csv: expected a finite number in column {header[index]!r} on line {line} "
                            f"of {path}, got {cell!r}")
        values.append(value)
    return np.asarray(values), header[index], [row[0].strip() for row in rows[1:]]


def decimal_years(labels):
    """Year + (month - 1) / 12 for labels that all start YYYY-MM, else None."""
    years = []
    for label in labels:
        parts = label.split("-")
        if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit() and 1 <= int(parts[1]) <= 12):
            return None
        years.append(int(parts[0]) + (int(parts[1]) - 1) / 12)
    return np.asarray(years)


def seasonal_naive(history, season, steps):
    """Repeat the last `season` known values over the next `steps`."""
    last_season = history[-season:]
    return np.resize(last_season, steps)


def rmse(prediction, actual):
    return float(np.sqrt(np.mean((prediction - actual) ** 2)))


class Forecaster:
    """A recurrent layer and a Linear head over the standardised month-to-month changes."""

    def __init__(self, series, train_end, cell, hidden_size, seed):
        self.series = series
        changes = np.diff(series)
        train_changes = changes[:train_end - 1]
        self.mean = float(train_changes.mean())
        # a constant series has no spread to divide by; 1 keeps the scale unchanged
        self.scale = float(train_changes.std()) or 1.0
        self.inputs = ((changes - self.mean) / self.scale).astype(np.float32)
        self.train_inputs = self.inputs[:train_end - 1]
        self.window = min(WINDOW, len(self.train_inputs) - 1)
        self.model = Sequential(CELLS[cell](1, hidden_size, seed=seed), Linear(hidden_size, 1, seed=seed + 1))
        self.optimizer = Adam(self.model, lr=LEARNING_RATE)
        self.loss = MSELoss()
        self.rng = np.random.default_rng(seed)

    def train_epoch(self, epoch):
        total = 0.0
        for _ in range(BATCHES_PER_EPOCH):
            starts = self.rng.integers(0, len(self.train_inputs) - self.window, BATCH)
            steps = starts[None, :] + np.arange(self.window)[:, None]  # (window, BATCH)
            x = self.train_inputs[steps][..., None]
            target = self.train_inputs[steps + 1][..., None]
            loss, _ = train_step(self.model, self.loss, self.optimizer, x, target, max_norm=MAX_GRAD_NORM)
            total += loss
        return total / BATCHES_PER_EPOCH

    def forecast(self, end, steps):
        """Levels for series[end:end + steps], knowing series[:end]."""
        history = self.inputs[:end - 1][:, None, None]
        changes = forecast(self.model, history, steps)[:, 0, 0].astype(np.float64)
        return self.series[end - 1] + np.cumsum(changes * self.scale + self.mean)


def plot(path, series, times, test_start, prediction, baseline, label, title):
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no display, no global state

    context = max(0, test_start - 8 * len(prediction))
    months = np.arange(len(series)) if times is None else times
    test_months = months[test_start:test_start + len(prediction)]
    figure = Figure(figsize=(9, 4.5), dpi=110)
    axes = figure.add_subplot()
    axes.plot(months[context:], series[context:], color="black", linewidth=1.2, label="actual")
    axes.plot(test_months, baseline, color="tab:orange", linestyle="--", linewidth=1.2, label="seasonal naive")
    axes.plot(test_months, prediction, color="tab:blue", linewidth=1.8, label="forecast")
    axes.axvline((months[test_start - 1] + months[test_start]) / 2, color="gray", linestyle=":", linewidth=1)
    axes.set_xlabel("step from the start of the series" if times is None else "year")
    axes.set_ylabel(label)
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m rnncore demo",
        description="Train a recurrent forecaster on a monthly series (default: Mauna Loa CO2, shipped with "
                    "rnncore), forecast the last --horizon values from the history before them, and compare "
                    "the error with a seasonal-naive forecast.")
    parser.add_argument("--csv", metavar="PATH", help="a CSV file with a header row (default: the shipped CO2 series)")
    parser.add_argument("--column", metavar="NAME|INDEX", help="the CSV column to forecast (default: the last)")
    parser.add_argument("--season", type=int, default=12, help="season length for the baseline (default 12)")
    parser.add_argument("--horizon", type=int, default=36, help="test (and validation) length (default 36)")
    parser.add_argument("--cell", choices=sorted(CELLS), default="lstm", help="recurrent cell (default lstm)")
    parser.add_argument("--hidden-size", type=int, help="hidden units (default 32; 16 with --quick)")
    parser.add_argument("--epochs", type=int, help="most epochs; early stopping may end sooner "
                                                   "(default 200; 25 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and batches (default 0)")
    parser.add_argument("--quick", action="store_true", help="a short run, for CI")
    parser.add_argument("--plot", metavar="PATH", default="rnncore_demo.png",
                        help="where to write the PNG plot (default rnncore_demo.png)")
    parser.add_argument("--no-plot", action="store_true", help="skip the plot (no matplotlib needed)")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS and kernel threads (default 1: the model is small enough that more only add "
                             "overhead)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _check_options(args, parser):
    for name in ("season", "horizon", "hidden_size", "epochs", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {value}")
    if args.seed < 0:
        parser.error(f"--seed: expected an integer >= 0, got {args.seed}")
    if args.column is not None and args.csv is None:
        parser.error("--column: expected it only together with --csv")
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot: matplotlib is not installed (pip install 'rnncore[demo]'), or pass --no-plot")


def run(args, out=print):
    """Train, forecast, compare; returns a dict of the results."""
    quick = args.quick
    hidden_size = args.hidden_size or (16 if quick else 32)
    epochs = args.epochs or (25 if quick else 200)
    patience = 10 if quick else 25
    if args.csv is None:
        series, label, times = load_series(DEFAULT_CSV, "co2_ppm")
        name = "Mauna Loa CO2, monthly mean (ppm), 1958-2001"
    else:
        series, label, times = load_series(args.csv, args.column)
        name = f"{args.csv}, column {label!r}"
    horizon, season = args.horizon, args.season
    train_end = len(series) - 2 * horizon
    minimum_train = max(2 * season, 12)
    if train_end < minimum_train:
        raise DemoError(f"--csv: expected at least {2 * horizon + minimum_train} values for --horizon {horizon} "
                        f"and --season {season} ({minimum_train} to train on), got {len(series)}")
    test_start = train_end + horizon

    out(f"series: {name}: {len(series)} values; train {train_end}, validation {horizon}, test {horizon}")
    forecaster = Forecaster(series, train_end, args.cell, hidden_size, args.seed)
    out(f"model: {args.cell.upper()}({hidden_size}) -> Linear({hidden_size}, 1), "
        f"{forecaster.model.num_parameters()} parameters, backend {get_backend()}")

    def validation_rmse():
        return rmse(forecaster.forecast(train_end, horizon), series[train_end:test_start])

    stopper = EarlyStopping(patience=patience)
    started = time.perf_counter()
    history = fit(forecaster.train_epoch, epochs, validate=validation_rmse, model=forecaster.model,
                  early_stopping=stopper, progress=not args.no_progress, desc=f"training {args.cell}")
    seconds = time.perf_counter() - started
    out(f"trained {len(history)} epochs in {seconds:.1f} s; best validation RMSE {stopper.best:.4g} "
        f"at epoch {stopper.best_step}")

    actual = series[test_start:]
    prediction = forecaster.forecast(test_start, horizon)
    baseline = seasonal_naive(series[:test_start], season, horizon)
    result = dict(model_rmse=rmse(prediction, actual), baseline_rmse=rmse(baseline, actual),
                  model_mae=float(np.mean(np.abs(prediction - actual))),
                  baseline_mae=float(np.mean(np.abs(baseline - actual))), epochs=len(history), seconds=seconds)
    out(f"test set: the last {horizon} values, forecast from the history before them")
    out(f"  {'':<16}{'RMSE':>10}{'MAE':>10}")
    out(f"  {args.cell.upper() + ' forecast':<16}{result['model_rmse']:>10.4g}{result['model_mae']:>10.4g}")
    out(f"  {'seasonal naive':<16}{result['baseline_rmse']:>10.4g}{result['baseline_mae']:>10.4g}")
    ratio = result["model_rmse"] / result["baseline_rmse"] if result["baseline_rmse"] else math.inf
    verdict = "beats" if ratio < 1 else "does not beat"
    out(f"the {args.cell.upper()} {verdict} the seasonal-naive baseline (RMSE ratio {ratio:.3f})")
    if not args.no_plot:
        title = (f"{name}\n{args.cell.upper()} forecast RMSE {result['model_rmse']:.3g} vs seasonal naive "
                 f"{result['baseline_rmse']:.3g} over the last {horizon} values")
        plot(args.plot, series, decimal_years(times), test_start, prediction, baseline, label, title)
        out(f"plot written to {Path(args.plot).resolve()}")
    return result


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_options(args, parser)
    set_num_threads(args.threads)
    try:
        run(args)
    except DemoError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"{parser.prog}: error: --plot: cannot write {args.plot}: {error.strerror or error}", file=sys.stderr)
        return 2
    return 0
