"""``python -m steepest.bench.worker``: one benchmark worker process (see :func:`runner.worker_main`)."""
import sys

from .runner import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
