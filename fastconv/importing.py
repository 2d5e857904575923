"""Importing TensorFlow for the command lines, quietly.

TensorFlow's C++ start-up lines (oneDNN notices, CUDA probing on machines without a GPU) come
before its logging is set up, so TF_CPP_MIN_LOG_LEVEL does not hold them back, and they bury
the run's own lines. `import_tensorflow` imports it, and lists the GPUs (where the CUDA
probing happens), with C's stderr (file descriptor 2) going to a temporary file that is
shown only when the import fails. Its later C++ lines are held back by TF_CPP_MIN_LOG_LEVEL,
set to 3 here unless the user asks to see them: TF_CPP_MIN_LOG_LEVEL=0 shows everything.
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
    with contextlib.nullcontext() if loud else _c_stderr_held_back():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    # The ~300,000 objects the import made live as long as the process: out of the garbage
    # collector's sight, its collections (the last one at exit too) skip them.
    gc.freeze()


@contextlib.contextmanager
def _c_stderr_held_back():
    """File descriptor 2 goes to a temporary file meanwhile; what was written there is
    shown if the block raises. A process started without stderr has nothing to hold."""
    if sys.stderr is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
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
