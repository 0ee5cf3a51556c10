"""``python -m steepest``: the same program as the ``steepest`` command (see :mod:`steepest.cli`)."""
import sys

from steepest.cli import main

if __name__ == "__main__":
    sys.exit(main())
