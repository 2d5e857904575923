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

Output that cannot be written is a stop request too. A reader that went away (`| head`) ends
a Unix tool (SIGPIPE, which Python ignores, leaves the write failing with EPIPE): the run
stops at its next answering point, having saved what it has, with the shell's code for it,
141. A full or broken output ends it the same way with 120, Python's own code for output it
could not write.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import sys
import threading
from collections.abc import Callable

# The exit codes of output that cannot be written: its reader went away (128 + SIGPIPE, as
# the shell reports a writer killed by SIGPIPE), or a write failed otherwise (Python's).
READER_GONE = 128 + signal.SIGPIPE
OUTPUT_FAILED = 120


class Interrupted(BaseException):
    """The run stopped on a signal, or on output it could not write; the message says where,
    and what was saved. `exit_code`: 128 + the signal's number, READER_GONE or OUTPUT_FAILED.

    A BaseException, as KeyboardInterrupt is: no `except Exception` on the way may swallow it.
    """

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code


def signal_name(number: int) -> str:
    return signal.Signals(number).name


def describe_stop(exit_code: int) -> str:
    """What a stop's exit code tells of the worker that was asked to stop, for the others:
    "was interrupted by SIGTERM"."""
    if exit_code == READER_GONE:
        return "lost its output's reader"
    if exit_code == OUTPUT_FAILED:
        return "could not write its output"
    return f"was interrupted by {signal_name(exit_code - 128)}"


def escaping_output() -> None:
    """Characters that stdout's encoding lacks (the book's Korean title on an ASCII terminal,
    a path's bytes that are not UTF-8) printed as escapes (`\\ub525`), as Python prints them
    on stderr, instead of a UnicodeEncodeError; on stderr too, where it is not Python's own."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def error_line(error) -> None:
    """An error's one line on stderr, where stderr can take it."""
    with contextlib.suppress(OSError):
        print(f"error: {error}", file=sys.stderr, flush=True)


def output_failure(error: OSError) -> tuple[int, str]:
    """The exit code and the words for a failure to write the command's output."""
    if error.errno == errno.EPIPE:
        return READER_GONE, "the output's reader went away"
    return OUTPUT_FAILED, f"cannot write the output ({error.strerror or error})"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_at_once(where: str):
    """While active, SIGINT and SIGTERM raise Interrupted at once, saying "`where`; nothing
    was saved": for the start of a process, before it has anything to save."""

    def interrupt(number, frame):
        raise Interrupted(
            128 + number, f"interrupted by {signal_name(number)} {where}; nothing was saved"
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
    main thread, where Python cannot install handlers, the signals are not answered.
    `stop`: the exit code and the cause of the first stop asked for, or None.
    """

    SAVE_SIGNAL = getattr(signal, "SIGUSR1", None)  # not on Windows

    def __init__(self, kept: str = "no checkpoint was saved"):
        self.stop: tuple[int, str] | None = None
        self.save_requested = False
        self.kept = kept
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> StopRequests:
        handlers = dict.fromkeys(STOP_SIGNALS, self._on_stop)
        if self.SAVE_SIGNAL is not None:
            handlers[self.SAVE_SIGNAL] = self._on_save
        self._installed = handlers
        self._stack.enter_context(_handlers(handlers))
        if threading.current_thread() is threading.main_thread():
            self._stack.enter_context(self._watcher())
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def reclaim(self) -> None:
        """Installs the handlers again. TensorFlow's distributed runtime, when it starts, puts
        a handler of its own on SIGTERM (in C++, where Python does not see it)."""
        if threading.current_thread() is threading.main_thread():
            for number, handler in self._installed.items():
                signal.signal(number, handler)

    def check(self, where: str) -> None:
        """Answers a stop request: raises Interrupted saying `where` and what is kept."""
        if self.stop is not None:
            exit_code, cause = self.stop
            raise Interrupted(exit_code, f"{cause} {where}; {self.kept}")

    def guarded(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """`log`, with a line it cannot write (an OSError) turned into a stop request; the
        lines after it are dropped."""
        failed = False

        def guarded_log(line: str) -> None:
            nonlocal failed
            if failed:
                return
            try:
                log(line)
            except OSError as error:
                failed = True
                exit_code, cause = output_failure(error)
                self.stop = self.stop or (exit_code, f"{cause}: stopped")

        return guarded_log

    def _on_stop(self, number, frame) -> None:
        if self.stop is None:
            self.stop = (128 + number, f"interrupted by {signal_name(number)}")

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
