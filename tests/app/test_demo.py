"""`python -m rnncore demo` as a user runs it: in a subprocess, from the installed or
source-tree package, on the shipped series and on generated CSV files of other sampling
steps; and in process where the plot itself is checked."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnncore as rc
from rnncore.app import demo

SRC = Path(rc.__file__).resolve().parents[1]  # where the rnncore under test is installed


def run(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "rnncore", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def run_in_process(*args):
    parser = demo.build_parser()
    options = parser.parse_args(list(args))
    demo._check_options(options, parser)
    lines = []
    return demo.run(options, out=lines.append), lines


def write_csv(path, dates, values, header="date,value", delimiter=","):
    rows = [delimiter.join([str(d), *(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row)])
            for d, row in zip(dates, values)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def weekly(n=312):
    dates = np.datetime64("2015-01-04") + np.arange(n) * np.timedelta64(7, "D")
    values = 20 + 5 * np.sin(2 * np.pi * np.arange(n) / 52) + 0.2 * np.random.default_rng(0).standard_normal(n)
    return dates, values[:, None].tolist()


def daily(n=300):
    dates = np.datetime64("2021-01-01") + np.arange(n)
    values = 100 + 10 * np.sin(2 * np.pi * np.arange(n) / 7) + np.random.default_rng(1).standard_normal(n)
    return dates, values[:, None].tolist()


def test_quick_demo_on_the_shipped_series_writes_metrics_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    plot, metrics = tmp_path / "forecast.png", tmp_path / "metrics.json"
    done = run("demo", "--quick", "--no-progress", "--plot", str(plot), "--json", str(metrics), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(metrics.read_text())
    assert result["season"] == 12 and result["horizon"] == 36 and len(result["origins"]) == 3
    assert result["origin_dates"][-1] == "1999-01"
    scores = result["metrics"]
    assert set(scores) == {"LSTM forecaster", "LinearAR(24)", "LinearAR(2, seasonal=12)", "seasonal naive + drift",
                           "seasonal naive", "persistence"}
    for score in scores.values():
        assert len(score["rmse"]) == len(score["mae"]) == 3
        assert score["mean_rmse"] == pytest.approx(np.mean(score["rmse"]))
        assert score["std_rmse"] == pytest.approx(np.std(score["rmse"]))
    # the published figure of the shipped seasonal naive with drift on the last origin
    assert scores["seasonal naive + drift"]["rmse"][-1] == pytest.approx(0.62, abs=0.005)
    model = scores["LSTM forecaster"]["mean_rmse"]
    assert result["strongest_baseline"] == "LinearAR(24)"
    assert model < 0.7 * scores["seasonal naive + drift"]["mean_rmse"]
    assert model < 1.05 * scores["LinearAR(24)"]["mean_rmse"]
    assert "the LSTM forecaster" in done.stdout and "strongest baseline, LinearAR(24)" in done.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generated_chaotic_series_where_the_recurrent_model_earns_its_place(tmp_path):
    metrics = tmp_path / "m.json"
    done = run("demo", "--series", "mackey-glass", "--quick", "--no-plot", "--no-progress", "--json", str(metrics),
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(metrics.read_text())
    assert result["season"] is None and result["horizon"] == 20 and result["strongest_baseline"] == "LinearAR(40)"
    assert set(result["metrics"]) == {"LSTM forecaster", "LinearAR(40)", "persistence"}
    # ~0.32 against ~0.58: the dynamics are nonlinear, which no autoregression follows
    assert result["metrics"]["LSTM forecaster"]["mean_rmse"] < 0.7 * result["metrics"]["LinearAR(40)"]["mean_rmse"]


def test_weekly_csv_infers_a_52_week_season_and_the_model_keeps_up(tmp_path):
    csv = write_csv(tmp_path / "weekly.csv", *weekly(), header="week,sales")
    metrics = tmp_path / "m.json"
    done = run("demo", "--quick", "--no-plot", "--no-progress", "--csv", str(csv), "--horizon", "12",
               "--cell", "gru", "--json", str(metrics), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(metrics.read_text())
    assert result["season"] == 52 and result["step"] == 52
    scores = result["metrics"]
    # a clean weekly cycle: the old fixed 48-step window scored 16x worse than seasonal naive here
    assert scores["GRU forecaster"]["mean_rmse"] < 1.2 * scores["seasonal naive"]["mean_rmse"]


def test_daily_csv_plots_a_line_in_time_order(tmp_path):
    pytest.importorskip("matplotlib")
    dates, values = daily()
    order = np.random.default_rng(2).permutation(len(dates))  # rows out of order: read back in date order
    csv = write_csv(tmp_path / "daily.csv", dates[order], [values[i] for i in order], header="day;visits",
                    delimiter=";")
    result, lines = run_in_process("--quick", "--no-progress", "--csv", str(csv), "--horizon", "14",
                                   "--plot", str(tmp_path / "daily.png"))
    assert result["season"] == 7 and "season 7" in lines[0]
    figure = result["figure"]
    for line in figure.axes[0].get_lines()[:3]:
        x = np.asarray(line.get_xdata())
        assert x.dtype.kind == "M"                    # dates, on matplotlib's date axis
        assert np.all(np.diff(x) == np.timedelta64(1, "D"))   # one per day, in time order: no bars
    actual = figure.axes[0].get_lines()[0]
    assert actual.get_xdata()[-1] == dates[-1]


def test_covariate_columns_and_a_given_delimiter(tmp_path):
    dates, values = daily(200)
    rows = [[v[0], float(i % 7)] for i, v in enumerate(values)]
    csv = write_csv(tmp_path / "two.csv", dates, rows, header="day|visits|weekday", delimiter="|")
    metrics = tmp_path / "m.json"
    done = run("demo", "--quick", "--no-plot", "--no-progress", "--csv", str(csv), "--column", "visits",
               "--column", "weekday", "--delimiter", "|", "--horizon", "7", "--json", str(metrics), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "(inputs 'weekday')" in done.stdout
    assert json.loads(metrics.read_text())["values"] == 200


def test_missing_values_refused_then_filled(tmp_path):
    dates, values = weekly(200)
    values[50] = [""]
    csv = write_csv(tmp_path / "gaps.csv", dates, values, header="week,sales")
    done = run("demo", "--quick", "--no-plot", "--no-progress", "--csv", str(csv), "--horizon", "8",
               "--season", "13", cwd=tmp_path)
    assert done.returncode == 2
    assert "line 52: missing value in column 'sales'" in done.stderr and "--fill linear" in done.stderr
    done = run("demo", "--quick", "--no-plot", "--no-progress", "--csv", str(csv), "--horizon", "8",
               "--season", "13", "--fill", "linear", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("args, message", [
    (("demo", "--csv", "no_such_file.csv"), "--csv: cannot read"),
    (("demo", "--hidden-size", "0"), "--hidden-size: expected an integer >= 1"),
    (("demo", "--origins", "0"), "--origins: expected an integer >= 1"),
    (("demo", "--cell", "tcn"), "--cell"),
    (("demo", "--column", "x"), "--column: expected it only together with --csv"),
    (("demo", "--fill", "linear"), "--fill: expected it only together with --csv"),
    (("demo", "--series", "mackey-glass", "--csv", "x.csv"), "--series: expected it or --csv, not both"),
    (("frobnicate",), "COMMAND: expected one of ['demo']"),
])
def test_bad_options_exit_nonzero_with_a_message(tmp_path, args, message):
    done = run(*args, "--no-plot", cwd=tmp_path) if args[0] == "demo" else run(*args, cwd=tmp_path)
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.parametrize("content, message", [
    ("a,b\n1,2\n", "expected at least"),
    ("a,b\n1,2\n3,oops\n", "line 3: expected a number in column 'b', got 'oops'"),
    ("just a header\n", "expected a header row and data rows"),
])
def test_bad_csv_exits_nonzero_with_a_message(tmp_path, content, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    done = run("demo", "--no-plot", "--csv", str(csv), cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr


def test_help_does_not_promise_monthly_data_only(tmp_path):
    done = run("demo", "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "monthly series" not in done.stdout and "--delimiter" in done.stdout and "--fill" in done.stdout


@pytest.mark.parametrize("args", [(), ("--help",)])
def test_usage(tmp_path, args):
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 0
    assert "usage: python -m rnncore" in done.stdout and "demo" in done.stdout


@pytest.mark.parametrize("args", [("--version",), ("demo", "--version")])
def test_version(tmp_path, args):
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"rnncore {rc.__version__}"
