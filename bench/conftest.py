import os
import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from report import format_table
from worker import Worker

_rows: list[dict] = []


@pytest.fixture
def peer_worker():
    """Starts a peer in a fresh process (one at a time, so peers never share the cores)."""
    workers = []

    def start(peer_name: str) -> Worker:
        workers.append(Worker(peer_name))
        return workers[-1]

    yield start
    for worker in workers:
        worker.close()


@pytest.fixture
def record():
    """Keeps a benchmark's row for the table printed at the end of the run."""
    return _rows.append


def pytest_terminal_summary(terminalreporter):
    if _rows:
        from fastconv.runtime import cpu_name

        machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
        terminalreporter.write_sep("=", "fastconv throughput")
        terminalreporter.write_line(format_table(_rows, machine))
