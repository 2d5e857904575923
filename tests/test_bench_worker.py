"""bench/worker.py: each peer of `pytest bench/` in a process of its own."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"

# A Keras peer built with -1 threads: TensorFlow's check fails and the process aborts.
DYING_PEER = f"""
import os, sys
sys.path.insert(0, {str(BENCH)!r})
os.environ["BENCH_KERAS_THREADS"] = "-1x1"
from worker import Worker
try:
    Worker("keras_fit")
except RuntimeError as error:
    print(error)
"""


def test_a_peer_whose_process_dies_is_reported_not_waited_for():
    """The parent kept the peer's end of the pipe open, so its recv() never ended: pytest
    hung for good. Run in a process of its own, so that a hang fails at the timeout."""
    run = subprocess.run(
        [sys.executable, "-c", DYING_PEER], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "peer keras_fit's process ended (exit code -6)\n", run.stderr
