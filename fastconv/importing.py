"""Importing TensorFlow for the command lines: quietly, and in the background.

TensorFlow's C++ start-up lines (oneDNN notices, CUDA probing on machines without a GPU) come
before its logging starts, so TF_CPP_MIN_LOG_LEVEL does not hold them back, and they bury the
run's own lines: while it imports, C's stderr (file descriptor 2) goes to a temporary file,
shown only when the import fails. TF_CPP_MIN_LOG_LEVEL=0 lets them through.

The import takes about 3 s on a CPU machine and needs none of the command's own work: the
training command reads and checks the data meanwhile (`TensorFlowImport`), so a bad file is
still refused at once, and a good one costs no time (0.25-0.45 s of a run, measured).
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import threading

THREAD_NAME = "fastconv-import-tensorflow"


def import_tensorflow() -> None:
    """Imports TensorFlow quietly, in this thread."""
    TensorFlowImport(background=False).wait()


def still_importing() -> bool:
    """Whether a `TensorFlowImport` is still at work (a command refused meanwhile exits
    without waiting for it: see `fastconv.cli.exit_promptly`)."""
    return any(t.name == THREAD_NAME and t.is_alive() for t in threading.enumerate())


class TensorFlowImport:
    """`import tensorflow`, in a thread of its own unless not `background`; `wait` ends it.

    While it runs, C's stderr goes to the temporary file, and Python's `sys.stderr` to a
    copy of the real one, so what the command prints meanwhile (a bad file's error) is seen.
    The import's thread hands C's stderr back as it ends; `wait`, in the command's thread,
    hands back Python's.
    """

    def __init__(self, background: bool = True):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self._thread = None
        self._error: BaseException | None = None
        self._file = self._stderr = self._stderr_copy = None
        self._printed = ""  # what TensorFlow wrote to C's stderr
        self._imported = False  # by this object, and not yet waited for
        if "tensorflow" in sys.modules:
            return  # imported already
        self._imported = True
        # Not wanted loud, and a stderr to keep (a command started with stderr closed has none).
        if os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0" and sys.stderr is not None:
            self._capture_c_stderr()
        if not background:
            self._import()
            return
        self._thread = threading.Thread(target=self._import, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Returns once TensorFlow is imported; a failed import raises its error, after the
        lines TensorFlow printed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._stderr_copy is not None:  # only now: the command may print to it till here
            if sys.stderr is self._stderr_copy:
                sys.stderr = self._stderr
            self._stderr_copy.close()
            self._stderr_copy = None
        if self._error is not None:
            if isinstance(self._error, Exception):  # not for a Ctrl-C
                sys.stderr.write(self._printed)
            raise self._error
        if self._imported:
            # The ~300,000 objects the import made live as long as the process: out of the
            # garbage collector's sight, a run's one full collection took 0.15 s less.
            gc.freeze()
            self._imported = False

    def _capture_c_stderr(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed as the import ends
        sys.stderr.flush()
        self._stderr_copy = open(  # noqa: SIM115 - closed in wait(), after the last use
            os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace"
        )
        self._stderr, sys.stderr = sys.stderr, self._stderr_copy
        os.dup2(self._file.fileno(), 2)

    def _import(self) -> None:
        try:
            import tensorflow  # noqa: F401
        except BaseException as error:
            self._error = error
        finally:
            if self._file is not None:
                os.dup2(self._stderr_copy.fileno(), 2)
                self._file.seek(0)
                self._printed = self._file.read().decode(errors="replace")
                self._file.close()
