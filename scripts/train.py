"""Train the book's CNN on Fashion-MNIST: `python scripts/train.py --xla` (see --help)."""

import time

STARTED_AT = time.perf_counter()  # before any import: the wall time reported includes start-up

import sys  # noqa: E402

from fastconv.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(started_at=STARTED_AT))
