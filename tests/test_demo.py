"""`python -m rnncore demo` as a user runs it: in a subprocess, from the installed or
source-tree package."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rnncore as rc

SRC = Path(rc.__file__).resolve().parents[1]  # where the rnncore under test is installed


def run(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "rnncore", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_quick_demo_beats_seasonal_naive_and_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "forecast.png"
    done = run("demo", "--quick", "--no-progress", "--plot", str(plot), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "beats the seasonal-naive baseline" in done.stdout
    rows = {line.split()[0]: float(line.split()[-2]) for line in done.stdout.splitlines()
            if line.strip().startswith(("LSTM forecast", "seasonal naive"))}
    assert rows["LSTM"] < rows["seasonal"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(plot) in done.stdout


def test_demo_reads_a_csv_column(tmp_path):
    # a clean seasonal series with a trend: the recurrent forecaster must follow both
    import numpy as np
    months = np.arange(150)
    values = 10 + 0.05 * months + np.sin(2 * np.pi * months / 12)
    csv = tmp_path / "series.csv"
    csv.write_text("t,other,value\n" + "".join(f"{m},0,{v:.4f}\n" for m, v in zip(months, values)))
    done = run("demo", "--quick", "--no-plot", "--no-progress", "--csv", str(csv), "--column", "value",
               "--horizon", "12", "--cell", "gru", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "GRU forecast" in done.stdout


@pytest.mark.parametrize("args, message", [
    (("demo", "--csv", "no_such_file.csv"), "--csv: cannot read"),
    (("demo", "--hidden-size", "0"), "--hidden-size: expected an integer >= 1"),
    (("demo", "--cell", "tcn"), "--cell"),
    (("demo", "--column", "x"), "--column: expected it only together with --csv"),
    (("frobnicate",), "COMMAND: expected one of ['demo']"),
])
def test_bad_options_exit_nonzero_with_a_message(tmp_path, args, message):
    done = run(*args, "--no-plot", cwd=tmp_path) if args[0] == "demo" else run(*args, cwd=tmp_path)
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.parametrize("content, message", [
    ("a,b\n1,2\n", "expected at least"),
    ("a,b\n1,2\n3,oops\n", "expected a finite number in column 'b' on line 3"),
    ("just a header\n", "expected a header row and data rows"),
])
def test_bad_csv_exits_nonzero_with_a_message(tmp_path, content, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    done = run("demo", "--no-plot", "--csv", str(csv), cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.parametrize("args", [(), ("--help",)])
def test_usage(tmp_path, args):
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 0
    assert "usage: python -m rnncore" in done.stdout and "demo" in done.stdout
