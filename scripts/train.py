"""Train the book's CNN on Fashion-MNIST: `python scripts/train.py --xla` (see --help)."""

import time

STARTED_AT = time.perf_counter()  # before any import: the wall time reported includes start-up

from fastconv.cli import main_entry  # noqa: E402

if __name__ == "__main__":
    main_entry(started_at=STARTED_AT)
