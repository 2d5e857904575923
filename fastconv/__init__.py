"""fastconv: a graph-compiled trainer of the CNN of 'Do it! 딥러닝 입문', chapter 08-4.

from fastconv import ConvolutionNetwork   # the book's class, compiled underneath
from fastconv import TrainConfig, train_and_evaluate
"""

import os

__version__ = "0.1.0"

# fastconv is built on Keras's TensorFlow backend. Keras reads KERAS_BACKEND (or keras.json's
# "backend") as it is imported, and another backend would fail to import or not be
# TensorFlow's: every Keras import in fastconv comes after this package's.
os.environ["KERAS_BACKEND"] = "tensorflow"

__all__ = ["ConvolutionNetwork", "TrainConfig", "__version__", "train_and_evaluate"]

# Where each public name lives. They are imported on first use, so that `import fastconv`
# (and the CLI's --help and flag errors) does not wait for TensorFlow to load.
_EXPORTS = {
    "ConvolutionNetwork": "fastconv.book",
    "TrainConfig": "fastconv.config",
    "train_and_evaluate": "fastconv.run",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")
