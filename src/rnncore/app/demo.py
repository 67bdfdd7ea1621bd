"""`python -m rnncore demo`: a recurrent forecaster against strong baselines, on a real
series, by rolling-origin backtest; a thin command line over `rnncore.forecasting`.

The default series is the monthly Mauna Loa CO2 record shipped in rnncore/data (see the
README there for source and licence), a series that linear models forecast well;
`--series mackey-glass` generates a chaotic one that they do not; `--csv` takes the
user's own. At each of
`--origins` origins, `--step` values apart and the last one `--horizon` values before
the end, every model is fitted on the values before the origin and forecasts the next
`--horizon`; the table shows each one's RMSE and MAE over the origins (mean and spread)
and overall. The recurrent model (`forecasting.Forecaster`) forecasts the correction to
the LinearAR baseline of the table, so it is judged against exactly what it corrects.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .._version import __version__
from ..core.functional import get_backend, set_num_threads
from ..toolkit.forecasting import (CELLS, MIN_WINDOWS, Forecaster, LinearAR, MissingValueError, Persistence,
                          SeasonalNaive, backtest, infer_season, mackey_glass, read_csv)

DEFAULT_CSV = Path(__file__).parent.parent / "data" / "co2_mauna_loa_monthly.csv"
DEFAULT_NAME = "Mauna Loa CO2, monthly mean (ppm), 1958-2001"
MACKEY_GLASS_NAME = "Mackey-Glass (delay 17, every 3rd step), standardised, plus noise of sd 0.1; generated"
MACKEY_GLASS_LENGTH = 800


class DemoError(Exception):
    """A problem with the user's options or data, reported without a traceback."""


def load(args):
    """(values (n, k) with the target first, dates or None, column names, series name)."""
    if args.series == "mackey-glass":
        return mackey_glass(MACKEY_GLASS_LENGTH, seed=args.seed)[:, None], None, ["x"], MACKEY_GLASS_NAME
    if args.csv is None:
        table = read_csv(DEFAULT_CSV, ["co2_ppm"])
        return table.values, table.dates, table.columns, DEFAULT_NAME
    try:
        table = read_csv(args.csv, args.column or [-1], args.date_column, args.delimiter, args.fill)
    except MissingValueError as error:
        raise DemoError(f"--csv: {str(error).split('; fill gaps')[0]}; pass --fill linear or --fill ffill "
                        "to fill gaps") from None
    except (OSError, ValueError) as error:
        raise DemoError(f"--csv: {error}") from None
    name = f"{args.csv}, column {table.columns[0]!r}"
    if len(table.columns) > 1:
        name += f" (inputs {', '.join(map(repr, table.columns[1:]))})"
    return table.values, table.dates, table.columns, name


def models(args, season, ar_order):
    """The recurrent model and the baselines, by display name; the model first."""
    model = Forecaster(cell=args.cell, window=args.window, horizon=args.horizon, season=season,
                       hidden_size=args.hidden_size, epochs=args.epochs, seed=args.seed, ar_order=ar_order,
                       ensemble=args.ensemble, verbose=not args.no_progress)
    estimators = {f"{args.cell.upper()} forecaster": model, f"LinearAR({ar_order})": LinearAR(ar_order)}
    if season is not None:
        estimators.update({f"LinearAR(2, seasonal={season})": LinearAR(2, seasonal=season),
                           "seasonal naive + drift": SeasonalNaive(season, drift=True),
                           "seasonal naive": SeasonalNaive(season)})
    estimators["persistence"] = Persistence()
    return estimators


def plot(path, values, dates, origin, forecasts, label, title):
    """Write the series around the last origin with each forecast from it; returns the Figure."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no display, no global state
    import matplotlib.dates as mdates

    horizon = len(next(iter(forecasts.values())))
    start = max(0, origin - 6 * horizon)
    x = np.arange(len(values)) if dates is None else dates
    figure = Figure(figsize=(9, 4.5), dpi=110)
    axes = figure.add_subplot()
    axes.plot(x[start:origin + horizon], values[start:origin + horizon], color="black", linewidth=1.2,
              label="actual")
    styles = [dict(color="tab:blue", linewidth=1.8), dict(color="tab:orange", linestyle="--", linewidth=1.2)]
    for (name, forecast), style in zip(forecasts.items(), styles):
        axes.plot(x[origin:origin + horizon], forecast, label=name, **style)
    axes.axvline(x[origin - 1] + (x[origin] - x[origin - 1]) / 2, color="gray", linestyle=":", linewidth=1)
    if dates is not None:
        locator = mdates.AutoDateLocator()
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    else:
        axes.set_xlabel("step from the start of the series")
    axes.set_ylabel(label)
    axes.set_title(title, fontsize=9)
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return figure


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m rnncore demo",
        description="Backtest a recurrent forecaster against strong baselines (LinearAR by least squares, "
                    "seasonal naive with and without drift, persistence) on a series of any sampling step: "
                    "the Mauna Loa CO2 record shipped with rnncore, or your own CSV (a header row; an ISO "
                    "date or datetime first column is read as the time axis).")
    parser.add_argument("--version", action="version", version=f"rnncore {__version__}")
    data = parser.add_argument_group("data")
    data.add_argument("--series", choices=["co2", "mackey-glass"], default="co2",
                      help="a built-in series: the shipped CO2 record (default), or a generated chaotic "
                           "Mackey-Glass series (no seasons; default horizon 20)")
    data.add_argument("--csv", metavar="PATH", help="a CSV file with a header row (default: the shipped CO2 series)")
    data.add_argument("--column", metavar="NAME|INDEX", action="append",
                      help="the column to forecast (default: the last); repeat it to add input columns "
                           "(covariates) after the target")
    data.add_argument("--date-column", metavar="NAME|INDEX", default="auto",
                      help="the dates' column (default: the first column when it holds ISO dates or datetimes)")
    data.add_argument("--delimiter", metavar="CHAR", help="the CSV delimiter (default: sniffed among , ; tab |)")
    data.add_argument("--fill", choices=["linear", "ffill"],
                      help="fill missing cells by linear interpolation or with the last known value "
                           "(default: refuse them)")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--horizon", type=int, help="steps forecast at each origin (default 36; 20 for "
                                                        "mackey-glass)")
    evaluation.add_argument("--season", type=int,
                            help="season length (default: from the dates' step: 12 monthly, 52 weekly, 7 daily, "
                                 "24 hourly, 4 quarterly; else 12)")
    evaluation.add_argument("--origins", type=int, help="backtest origins (default 5; 3 with --quick)")
    evaluation.add_argument("--step", type=int, help="values between origins (default: the season, or the "
                                                     "horizon without one)")
    model = parser.add_argument_group("model")
    model.add_argument("--cell", choices=sorted(CELLS), default="lstm", help="recurrent cell (default lstm)")
    model.add_argument("--hidden-size", type=int, default=16, help="hidden units (default 16)")
    model.add_argument("--window", type=int, help="steps the network reads (default: max(2 * season, horizon), "
                                                  "capped by the series' length)")
    model.add_argument("--epochs", type=int, help="most epochs; early stopping may end sooner "
                                                  "(default 200; 30 with --quick)")
    model.add_argument("--ensemble", type=int, help="networks averaged (default 3; 1 with --quick)")
    model.add_argument("--seed", type=int, default=0,
                       help="seed of the weights and batches, and of the generated series' noise (default 0)")
    output = parser.add_argument_group("output")
    output.add_argument("--quick", action="store_true", help="a short run, for CI")
    output.add_argument("--json", metavar="PATH", help="write every model's metrics per origin and overall")
    output.add_argument("--plot", metavar="PATH", default="rnncore_demo.png",
                        help="where to write the PNG plot (default rnncore_demo.png)")
    output.add_argument("--no-plot", action="store_true", help="skip the plot (no matplotlib needed)")
    output.add_argument("--threads", type=int, default=1,
                        help="BLAS and kernel threads (default 1: the model is small enough that more only add "
                             "overhead)")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _check_options(args, parser):
    for name in ("season", "horizon", "hidden_size", "epochs", "threads", "origins", "step", "window",
                 "ensemble"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {value}")
    if args.seed < 0:
        parser.error(f"--seed: expected an integer >= 0, got {args.seed}")
    for name in ("column", "delimiter", "fill"):
        if getattr(args, name) is not None and args.csv is None:
            parser.error(f"--{name}: expected it only together with --csv")
    if args.csv is not None and args.series != "co2":
        parser.error(f"--series: expected it or --csv, not both, got --series {args.series}")
    if args.delimiter is not None and len(args.delimiter.replace("\\t", "\t")) != 1:
        parser.error(f"--delimiter: expected one character, got {args.delimiter!r}")
    if args.delimiter is not None:
        args.delimiter = args.delimiter.replace("\\t", "\t")
    if args.date_column in ("none", "None"):
        args.date_column = None
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot: matplotlib is not installed (pip install 'rnncore[demo]'), or pass --no-plot")


def _scores(result):
    keys = ("rmse", "mae", "mean_rmse", "std_rmse", "mean_mae", "std_mae", "overall_rmse", "overall_mae")
    return {key: result[key] for key in keys}


def run(args, out=print):
    """Load, backtest every model, print the table, write the JSON and the plot; returns
    a dict of the results (with the plot's Figure under "figure" when one is drawn)."""
    quick = args.quick
    args.epochs = args.epochs or (30 if quick else 200)
    args.ensemble = args.ensemble or (1 if quick else 3)
    origins = args.origins or (3 if quick else 5)
    values, dates, columns, name = load(args)
    generated = args.series == "mackey-glass"
    season = args.season if generated else args.season or infer_season(dates) or 12
    horizon = args.horizon or (20 if generated else 36)
    args.horizon = horizon
    step = args.step or season or horizon
    n = len(values)
    # the earliest origin must leave the network a validation stretch and some windows to learn from
    needed = (origins - 1) * step + 3 * horizon + MIN_WINDOWS + (season or 0)
    if n < needed:
        raise DemoError(f"--csv: expected at least {needed} values for --horizon {horizon}, --season {season}, "
                        f"--origins {origins} and --step {step}, got {n}")
    first_train = n - horizon - step * (origins - 1)
    # the same autoregression is a baseline and the base the network corrects
    ar_order = max(1, min(2 * (season or horizon), (first_train - horizon) // 4 - 1))
    estimators = models(args, season, ar_order)
    model_name = next(iter(estimators))
    span = "" if dates is None else f", {dates[0]} to {dates[-1]}"
    out(f"series: {name}: {n} values{span}; " + (f"season {season}" if season else "no season"))
    out(f"backtest: {origins} origins {step} values apart, each forecasting the next {horizon} from the "
        f"values before it (backend {get_backend()})")

    results, seconds = {}, {}
    for label, estimator in estimators.items():
        started = time.perf_counter()
        try:
            results[label] = backtest(estimator, values, origins=origins, horizon=horizon, step=step)
        except ValueError as error:
            raise DemoError(f"--csv: {error} (try a shorter --horizon, fewer --origins or a smaller --step)") \
                from None
        seconds[label] = time.perf_counter() - started
    baselines = [label for label in results if label != model_name]
    best = min(baselines, key=lambda label: results[label]["mean_rmse"])

    out(f"  {'':<30}{'RMSE mean +- sd':>19}{'MAE mean +- sd':>19}{'overall RMSE':>14}")
    for label, result in results.items():
        out(f"  {label:<30}{result['mean_rmse']:>10.4g} +- {result['std_rmse']:<5.2g}"
            f"{result['mean_mae']:>10.4g} +- {result['std_mae']:<5.2g}{result['overall_rmse']:>14.4g}")
    model, baseline = results[model_name], results[best]
    wins = sum(m < b for m, b in zip(model["rmse"], baseline["rmse"]))
    ratio = model["mean_rmse"] / baseline["mean_rmse"] if baseline["mean_rmse"] else float("inf")
    verdict = "beats" if ratio < 1 else "does not beat"
    out(f"the {model_name} {verdict} the strongest baseline, {best} (mean RMSE ratio {ratio:.3f}; better at "
        f"{wins} of {origins} origins); trained in {seconds[model_name]:.1f} s")

    origin_dates = None if dates is None else [str(dates[t]) for t in model["origins"]]
    result = {"series": name, "values": n, "season": season, "horizon": horizon, "step": step,
              "origins": model["origins"], "origin_dates": origin_dates, "model": model_name,
              "strongest_baseline": best, "beats_strongest_baseline": bool(ratio < 1),
              "seconds": seconds[model_name],
              "metrics": {label: _scores(r) for label, r in results.items()}}
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        except OSError as error:
            raise DemoError(f"--json: cannot write {args.json}: {error.strerror or error}") from None
        out(f"metrics written to {Path(args.json).resolve()}")
    if not args.no_plot:
        last = model["origins"][-1]
        title = (f"{name}\nlast origin: {model_name} RMSE {model['rmse'][-1]:.3g}, {best} "
                 f"{baseline['rmse'][-1]:.3g}; over {origins} origins: {model['mean_rmse']:.3g} vs "
                 f"{baseline['mean_rmse']:.3g}")
        forecasts = {model_name: model["forecasts"][-1], best: baseline["forecasts"][-1]}
        result["figure"] = plot(args.plot, values[:, 0], dates, last, forecasts, columns[0], title)
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
