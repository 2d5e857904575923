"""A peer's own process: thread settings are per process, so each peer gets a fresh one.

The parent (a pytest-benchmark test) sends "round" and times the reply; the worker runs one
round and answers. The pipe adds well under a millisecond to rounds of a second or more.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def serve(connection, peer_name: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(HERE))
    import peers

    try:
        run_round, work_per_round, details = peers.build(peers.BY_NAME[peer_name])
    except Exception as error:  # tell the parent rather than leave it waiting
        connection.send(("error", f"{type(error).__name__}: {error}"))
        return
    import tensorflow as tf

    details["tensorflow"] = tf.__version__
    connection.send(("ready", work_per_round, details))
    while connection.recv() == "round":
        run_round()
        connection.send("done")


class Worker:
    """The parent's handle on a peer's process."""

    def __init__(self, peer_name: str):
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=serve, args=(child, peer_name), daemon=True)
        self._process.start()
        reply = self._connection.recv()
        if reply[0] == "error":
            self.close()
            raise RuntimeError(f"peer {peer_name} failed to start: {reply[1]}")
        _, self.work_per_round, self.details = reply

    def run_round(self) -> None:
        self._connection.send("round")
        self._connection.recv()

    def close(self) -> None:
        if self._process.is_alive():
            self._connection.send("stop")
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
