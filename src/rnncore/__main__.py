"""`python -m rnncore COMMAND [options]`: see rnncore.app.cli."""
import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
