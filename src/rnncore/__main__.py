"""`python -m rnncore COMMAND [options]`."""
import sys

USAGE = """usage: python -m rnncore COMMAND [options]

commands:
  demo    train an LSTM forecaster on the Mauna Loa CO2 series shipped with rnncore (or
          your own CSV), print its test error next to a seasonal-naive baseline, and
          write a plot; `python -m rnncore demo --help` lists its options
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if argv[0] == "demo":
        from .demo import main as demo_main
        return demo_main(argv[1:])
    print(USAGE, end="", file=sys.stderr)
    print(f"python -m rnncore: error: COMMAND: expected one of ['demo'], got {argv[0]!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
