import os
import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from report import format_table
from worker import Worker

_rows: list[dict] = []


@pytest.fixture(scope="session")
def peer_worker():
    """A peer's process: started at its first benchmark, kept for its later passes.

    Only one runs a round at a time (the others wait on their pipe), so peers never share
    the cores; each holds its data and compiled step (~7.5 GB for all of them here).
    """
    workers: dict[str, Worker] = {}

    def worker_for(peer_name: str) -> Worker:
        if peer_name not in workers:
            workers[peer_name] = Worker(peer_name)
        return workers[peer_name]

    yield worker_for
    for worker in workers.values():
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
