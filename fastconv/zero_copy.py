"""NumPy arrays handed to TensorFlow as they are, without a copy.

`tf.constant` copies an array into memory that TensorFlow allocates. For a run's data set
(the training images and the standardized evaluation sets, about 110 MB) that copy is mostly
page faults on fresh memory: 0.1-0.2 s of every run's start-up on these hosts. DLPack hands
TensorFlow the array's own memory, which it accepts where the data start on its alignment
(64 bytes; a tensor there it cannot use would abort the process), so the arrays meant for
it are made there with `empty`. Importing this module does not import TensorFlow: the
arrays are made while TensorFlow imports.
"""

from __future__ import annotations

import math

import numpy as np

ALIGNMENT = 64  # bytes: Eigen's, which TensorFlow checks its tensors' data against


def empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialized C-contiguous array whose data start at an `ALIGNMENT` boundary."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    buffer = np.empty(size + ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    return buffer[start : start + size].view(dtype).reshape(shape)


def aligned(array: np.ndarray) -> bool:
    """Whether TensorFlow can take `array` as it is (`to_tensor`)."""
    return (
        array.flags.c_contiguous
        and array.flags.writeable  # DLPack cannot say read-only: NumPy refuses those
        and array.size > 0
        and array.ctypes.data % ALIGNMENT == 0
    )


def to_tensor(array: np.ndarray):
    """`array` as a tensor on the device of the enclosing `tf.device` scope, as `tf.constant`
    makes it; on a CPU in the array's own memory where it is `aligned` (else a copy).

    The tensor keeps the array alive, and shares it: the array must not change after.
    """
    import tensorflow as tf

    if not aligned(array):
        return tf.constant(array)
    # from_dlpack makes the tensor on the host; identity puts it on the scope's device,
    # and on a CPU passes the same memory through.
    return tf.identity(tf.experimental.dlpack.from_dlpack(array.__dlpack__()))
