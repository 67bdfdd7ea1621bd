"""`python -m rnncore COMMAND [options]`."""
import sys

from .._version import __version__
from .demo import main as demo_main

USAGE = """usage: python -m rnncore COMMAND [options]
       python -m rnncore --version

commands:
  demo    backtest a recurrent forecaster against strong baselines on the Mauna Loa CO2
          series shipped with rnncore (or your own CSV, any sampling step), print the
          errors over several forecast origins, and write a plot;
          `python -m rnncore demo --help` lists its options
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"rnncore {__version__}")
        return 0
    if argv[0] == "demo":
        return demo_main(argv[1:])
    print(USAGE, end="", file=sys.stderr)
    print(f"python -m rnncore: error: COMMAND: expected one of ['demo'], got {argv[0]!r}", file=sys.stderr)
    return 2
