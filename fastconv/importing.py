"""Importing TensorFlow for the command lines: quietly, and in the background.

TensorFlow's C++ start-up lines (oneDNN notices, CUDA probing on machines without a GPU) come
before its logging starts, so TF_CPP_MIN_LOG_LEVEL does not hold them back, and they bury the
run's own lines: the import writes C's stderr (file descriptor 2) to a temporary file, shown
only when the import fails. TF_CPP_MIN_LOG_LEVEL=0 lets them through.

The import takes about 3 s on a CPU machine, and needs none of the command's own work: the
training command reads and checks the data meanwhile (`TensorFlowImport`), so a bad file is
still refused at once, and a good one costs no time (0.3-0.4 s of a run, measured).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading

THREAD_NAME = "fastconv-import-tensorflow"


def import_tensorflow() -> None:
    """Imports TensorFlow quietly, and waits for it."""
    TensorFlowImport().wait()


def still_importing() -> bool:
    """Whether a `TensorFlowImport` is still at work (a command refused meanwhile exits
    without waiting for it: see `fastconv.cli.exit_promptly`)."""
    return any(t.name == THREAD_NAME and t.is_alive() for t in threading.enumerate())


class TensorFlowImport:
    """`import tensorflow`, started in a thread of its own; `wait` joins it.

    While it runs, C's stderr goes to the temporary file and Python's `sys.stderr` to a copy
    of the real one, so what the command prints meanwhile (a bad file's error) is seen.
    """

    def __init__(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self._thread = None
        self._error: BaseException | None = None
        self._python_stderr = self._stderr_copy = self._file = None
        self._printed = ""  # what TensorFlow wrote to C's stderr
        if "tensorflow" in sys.modules:
            return  # imported already
        if os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0":  # not wanted loud
            self._capture_c_stderr()
        self._thread = threading.Thread(target=self._import, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Returns once TensorFlow is imported; a failed import raises its error, after the
        lines TensorFlow printed."""
        if self._thread is None:
            return
        self._thread.join()
        self._thread = None
        if self._stderr_copy is not None:
            self._stderr_copy.close()  # only now: the command may have printed to it till here
        if self._error is not None:
            sys.stderr.write(self._printed)
            raise self._error

    def _capture_c_stderr(self) -> None:
        sys.stderr.flush()
        self._python_stderr = sys.stderr
        copy = os.dup(2)
        self._stderr_copy = open(  # noqa: SIM115 - closed in wait(), after the last use
            copy, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace"
        )
        sys.stderr = self._stderr_copy
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed as the import ends
        os.dup2(self._file.fileno(), 2)

    def _import(self) -> None:
        try:
            import tensorflow  # noqa: F401
        except BaseException as error:
            self._error = error
        finally:
            if self._file is not None:
                self._release_c_stderr()

    def _release_c_stderr(self) -> None:
        os.dup2(self._stderr_copy.fileno(), 2)
        sys.stderr = self._python_stderr
        self._file.seek(0)
        self._printed = self._file.read().decode(errors="replace")
        self._file.close()
