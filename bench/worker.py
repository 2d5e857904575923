"""A peer's own process: thread settings are per process, so each peer gets a fresh one.

The parent (a pytest-benchmark test) sends "round"; the worker runs one round, times it
itself (for a Keras peer: a callback's stamps around one epoch of its long fit) and answers
("done", seconds). "stop" ends the peer. The parent's own timer, around the pipe, is what
pytest-benchmark's statistics show; the table uses the worker's seconds.
"""

from __future__ import annotations

import contextlib
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
        serve_rounds, work_per_round, details = peers.build(peers.BY_NAME[peer_name])
    except Exception as error:  # tell the parent rather than leave it waiting
        connection.send(("error", f"{type(error).__name__}: {error}"))
        return
    import tensorflow as tf

    details["tensorflow"] = tf.__version__
    connection.send(("ready", work_per_round, details))

    stopped = False

    def wait() -> bool:
        nonlocal stopped
        stopped = stopped or connection.recv() != "round"
        return not stopped

    rounds = peers.Rounds(wait, done=lambda seconds: connection.send(("done", seconds)))
    try:
        serve_rounds(rounds)
    except Exception as error:
        connection.send(("error", f"{type(error).__name__}: {error}"))
        return
    while rounds.wait():  # a peer whose rounds are all run (a Keras fit that has ended)
        connection.send(("error", f"{peer_name} has run all the rounds it was built for"))


class Worker:
    """The parent's handle on a peer's process."""

    def __init__(self, peer_name: str):
        self.peer_name = peer_name
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=serve, args=(child, peer_name), daemon=True)
        self._process.start()
        child.close()  # the peer's end is its process's alone: its death ends a recv()
        reply = self._receive()
        if reply[0] == "error":
            self.close()
            raise RuntimeError(f"peer {peer_name} failed to start: {reply[1]}")
        _, self.work_per_round, self.details = reply
        self.round_seconds: list[float] = []  # every round's seconds, warm-up rounds included

    def run_round(self) -> None:
        self._connection.send("round")
        reply = self._receive()
        if reply[0] == "error":
            raise RuntimeError(f"peer {self.peer_name}: {reply[1]}")
        self.round_seconds.append(reply[1])

    def _receive(self):
        """The peer's next reply; RuntimeError, not a wait for good, when its process died."""
        try:
            return self._connection.recv()
        except EOFError:
            self._process.join(timeout=30)
            code = self._process.exitcode
            raise RuntimeError(
                f"peer {self.peer_name}'s process ended (exit code {code})"
            ) from None

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):  # the peer has already gone
                self._connection.send("stop")
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
