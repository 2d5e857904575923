"""Importing TensorFlow for the command lines, quietly.

TensorFlow's C++ start-up lines (oneDNN notices, CUDA probing on machines without a GPU) come
before its logging is set up, so TF_CPP_MIN_LOG_LEVEL does not hold them back, and they bury
the run's own lines. `import_tensorflow` imports it, and lists the GPUs (where the CUDA
probing happens), with C's stderr (file descriptor 2) going to a temporary file that is
shown only when the import fails. Its later C++ lines are held back by TF_CPP_MIN_LOG_LEVEL,
set to 3 here unless the user asks to see them: TF_CPP_MIN_LOG_LEVEL=0 shows everything.

Where TF_XLA_FLAGS is set, nothing is held back. TensorFlow reads it as it lists the devices,
and on a flag it does not know (or a file of flags it cannot open) it ends the process at
once, exit code 1, with a line of its own that names the flag: no Python code runs after it
to show what was held back, so that line must go straight to the terminal.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile


def import_tensorflow() -> None:
    """Imports TensorFlow and lists its GPUs, quietly (see the module's docstring)."""
    if "tensorflow" in sys.modules:
        return
    loud = os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"
    if not loud:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    hold_back = not loud and not os.environ.get("TF_XLA_FLAGS")
    with _c_stderr_held_back() if hold_back else contextlib.nullcontext():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    # The ~300,000 objects the import made live as long as the process: out of the garbage
    # collector's sight, its collections (the last one at exit too) skip them.
    gc.freeze()


@contextlib.contextmanager
def _c_stderr_held_back():
    """File descriptor 2 goes to a temporary file meanwhile; what was written there is
    shown if the block raises. A process started without stderr has nothing to hold, and
    one without a writable temporary folder (a read-only root) nowhere to hold it."""
    try:
        held = tempfile.TemporaryFile() if sys.stderr else None  # noqa: SIM115 (`with held` below)
    except OSError:
        held = None
    if held is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
