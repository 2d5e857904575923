"""Stopping a run cleanly: signals become requests that the run loop answers between blocks.

A block of compiled steps cannot be cut in the middle, and Python runs signal handlers only
between bytecodes, so the handlers just take note; the run loop looks after each block,
saves a checkpoint, and stops or goes on.
"""

from __future__ import annotations

import signal
import threading


class Interrupted(Exception):
    """The run stopped on a signal after saving a checkpoint."""

    def __init__(self, signal_number: int, message: str):
        super().__init__(message)
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signal_number


class StopRequests:
    """While active: SIGINT (Ctrl-C) and SIGTERM ask the run to stop after the current block,
    SIGUSR1 asks for a checkpoint after it. A second Ctrl-C stops at once (KeyboardInterrupt),
    keeping the last checkpoint.

    Outside the main thread, where Python cannot install handlers, it does nothing.
    """

    STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
    SAVE_SIGNAL = getattr(signal, "SIGUSR1", None)  # not on Windows

    def __init__(self):
        self.stop_signal: int | None = None
        self.save_requested = False
        self._previous = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for number in self.STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._on_stop)
            if self.SAVE_SIGNAL is not None:
                self._previous[self.SAVE_SIGNAL] = signal.signal(self.SAVE_SIGNAL, self._on_save)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _on_stop(self, number, frame) -> None:
        if self.stop_signal is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: the user will not wait for the block
        self.stop_signal = number

    def _on_save(self, number, frame) -> None:
        self.save_requested = True
