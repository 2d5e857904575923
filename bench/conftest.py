import os
import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from report import format_table
from worker import Worker

_rows: list[dict] = []


class Workers:
    """The peers' processes: each started at its peer's first benchmark and kept for its later
    passes, then closed after its last, which frees its memory (and ends a Keras peer's fit).

    Only one runs a round at a time (the others wait on their pipe), so peers never share
    the cores.
    """

    def __init__(self):
        self._workers: dict[str, Worker] = {}

    def get(self, peer_name: str) -> Worker:
        if peer_name not in self._workers:
            self._workers[peer_name] = Worker(peer_name)
        return self._workers[peer_name]

    def close(self, peer_name: str) -> None:
        if peer_name in self._workers:
            self._workers.pop(peer_name).close()

    def close_all(self) -> None:
        for peer_name in list(self._workers):
            self.close(peer_name)


def pytest_configure(config):
    """Refuses at once a --benchmark-json that cannot be written: pytest-benchmark writes it
    after the whole run, where its error lost the figures and this table."""
    path = config.getoption("benchmark_json", None)
    if path is None:
        return
    folder = path.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise pytest.UsageError(
            f"--benchmark-json={path}: cannot be written (a folder, or in no writable folder)"
        )


@pytest.fixture(scope="session")
def peer_workers():
    workers = Workers()
    yield workers
    workers.close_all()


@pytest.fixture
def record():
    """Keeps a benchmark's row for the table printed at the end of the run."""
    return _rows.append


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table: ours is the last word
def pytest_terminal_summary(terminalreporter):
    if _rows:
        from fastconv.machine import cpu_family_model, cpu_name

        machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
        family, model = cpu_family_model() or (None, None)
        machine.update(cpu_family=family, cpu_model=model)
        terminalreporter.write_sep("=", "fastconv throughput")
        terminalreporter.write_line(format_table(_rows, machine))
