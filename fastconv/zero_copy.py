"""NumPy arrays handed to TensorFlow as they are, without a copy (on a CPU).

`tf.constant` copies an array into memory that TensorFlow allocates. For a run's data set
(the training images and the standardized evaluation sets, about 110 MB) that copy is mostly
page faults on fresh memory: 0.1-0.2 s of every run's start-up on these hosts. DLPack hands
TensorFlow the array's own memory instead. TensorFlow needs its tensors' data to start on a
64-byte boundary (it aborts the process on an op over one that does not), so the arrays
meant for it are made there with `empty`, and any other array is copied. Importing this
module does not import TensorFlow: the arrays are made while TensorFlow imports.
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


def shareable(array: np.ndarray) -> bool:
    """Whether TensorFlow can take `array` as it is (`to_tensor`)."""
    return (
        array.flags.c_contiguous
        and array.flags.writeable  # DLPack cannot say read-only: NumPy refuses those
        and array.dtype.isnative  # nor another byte order
        and array.size > 0
        and array.ctypes.data % ALIGNMENT == 0
    )


def to_tensor(array: np.ndarray):
    """`array` as a tensor on the device of the enclosing `tf.device` scope, as `tf.constant`
    makes it; on a CPU in the array's own memory where it is `shareable` (else a copy).

    The tensor keeps the array alive, and shares it: the array must not change after.
    """
    import tensorflow as tf

    if not shareable(array):
        return tf.constant(array)
    # from_dlpack makes the tensor on the host; identity puts it on the scope's device,
    # and on a CPU passes the same memory through.
    return tf.identity(tf.experimental.dlpack.from_dlpack(array.__dlpack__()))
