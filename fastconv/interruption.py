"""Stopping a run cleanly: signals become requests that the run answers where it can.

A block of compiled steps cannot be cut in the middle, and Python runs signal handlers only
between bytecodes of the main thread, so the handlers just take note; the run answers at
its next answering point (between blocks, after compiling, before exporting ...), saves what
it has, and stops with a message that says where and what was kept.

A second stop signal cannot wait for that: the main thread may be inside a long compiled
block, where no Python handler runs until the block returns. The C-level handler also
writes each signal's number to a wakeup pipe (`signal.set_wakeup_fd`), and a watcher
thread reading it ends the process at once on the second one (`os._exit`, as a `kill -9`
would, which the checkpoints survive).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading


class Interrupted(BaseException):
    """The run stopped on a signal; the message says where, and what was saved.

    A BaseException, as KeyboardInterrupt is: no `except Exception` on the way may swallow it.
    """

    def __init__(self, signal_number: int, message: str):
        super().__init__(message)
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signal_number


def signal_name(number: int) -> str:
    return signal.Signals(number).name


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_at_once(where: str):
    """While active, SIGINT and SIGTERM raise Interrupted at once, saying "`where`; nothing
    was saved": for the start of a process, before it has anything to save."""

    def interrupt(number, frame):
        raise Interrupted(
            number, f"interrupted by {signal_name(number)} {where}; nothing was saved"
        )

    with _handlers(dict.fromkeys(STOP_SIGNALS, interrupt)):
        yield


@contextlib.contextmanager
def _handlers(handlers: dict):
    """Installs the handlers (in the main thread only: elsewhere Python cannot)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class StopRequests:
    """While active: SIGINT (Ctrl-C) and SIGTERM ask the run to stop at its next answering
    point, SIGUSR1 asks for a checkpoint there. A second SIGINT or SIGTERM ends the process
    at once with 128 + its number, keeping the last checkpoint saved.

    `kept` says what a stop keeps; the run updates it as it saves checkpoints. Outside the
    main thread, where Python cannot install handlers, it does nothing.
    """

    SAVE_SIGNAL = getattr(signal, "SIGUSR1", None)  # not on Windows

    def __init__(self, kept: str = "no checkpoint was saved"):
        self.stop_signal: int | None = None
        self.save_requested = False
        self.kept = kept
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> StopRequests:
        handlers = dict.fromkeys(STOP_SIGNALS, self._on_stop)
        if self.SAVE_SIGNAL is not None:
            handlers[self.SAVE_SIGNAL] = self._on_save
        self._stack.enter_context(_handlers(handlers))
        if threading.current_thread() is threading.main_thread():
            self._stack.enter_context(self._watcher())
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def check(self, where: str) -> None:
        """Answers a stop request: raises Interrupted saying `where` and what is kept."""
        if self.stop_signal is not None:
            name = signal_name(self.stop_signal)
            raise Interrupted(self.stop_signal, f"interrupted by {name} {where}; {self.kept}")

    def _on_stop(self, number, frame) -> None:
        if self.stop_signal is None:
            self.stop_signal = number

    def _on_save(self, number, frame) -> None:
        self.save_requested = True

    @contextlib.contextmanager
    def _watcher(self):
        """Ends the process on the second stop signal, whatever the main thread is doing."""
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

        def watch() -> None:
            stops = 0
            while numbers := os.read(read_end, 64):
                stops += sum(number in STOP_SIGNALS for number in numbers)
                if stops >= 2:
                    number = next(n for n in reversed(numbers) if n in STOP_SIGNALS)
                    line = f"error: interrupted again by {signal_name(number)}: stopped at once"
                    with contextlib.suppress(OSError):  # unbuffered: no lock the main thread holds
                        os.write(2, f"{line}; {self.kept}\n".encode())
                    os._exit(128 + number)

        thread = threading.Thread(target=watch, name="fastconv-stop-watcher", daemon=True)
        thread.start()
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous)
            os.close(write_end)  # the watcher reads the end of the pipe and returns
            thread.join()
            os.close(read_end)
