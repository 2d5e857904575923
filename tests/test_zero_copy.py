"""Arrays handed to TensorFlow without a copy, and the copy where that cannot be done."""

import gc

import numpy as np
import pytest
import tensorflow as tf

from fastconv import zero_copy


def test_empty_arrays_start_on_the_alignment_tensorflow_needs():
    for shape, dtype in (((3,), np.uint8), ((1000, 28, 28), np.uint8), ((7, 10), np.float32)):
        array = zero_copy.empty(shape, dtype)
        assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous
        assert array.ctypes.data % zero_copy.ALIGNMENT == 0
        assert zero_copy.shareable(array)


def test_an_aligned_array_becomes_a_tensor_in_its_own_memory():
    array = zero_copy.empty((100, 28, 28), np.uint8)
    array[...] = 3
    tensor = zero_copy.to_tensor(array)
    array[5, 6, 7] = 200  # seen through the tensor: nothing was copied
    assert tensor.dtype == tf.uint8 and tensor.shape == (100, 28, 28)
    assert int(tensor[5, 6, 7]) == 200
    assert int(tf.reduce_sum(tf.cast(tensor, tf.int64))) == 3 * array.size - 3 + 200


def test_the_tensor_keeps_the_memory_alive_after_the_array_is_gone():
    array = zero_copy.empty((1000, 100), np.float32)
    array[...] = 0.5
    tensor = zero_copy.to_tensor(array)
    del array
    gc.collect()
    np.testing.assert_array_equal(tensor.numpy(), np.full((1000, 100), 0.5, np.float32))


@pytest.mark.parametrize("kind", ["unaligned", "strided", "read-only", "other byte order", "empty"])
def test_arrays_tensorflow_cannot_take_as_they_are_are_copied(kind):
    source = zero_copy.empty((65, 10), np.float32)
    source[...] = np.arange(650, dtype=np.float32).reshape(65, 10)
    array = {
        "unaligned": source.reshape(-1)[1:],  # 4 bytes past the boundary
        "strided": source[:, ::2],
        "read-only": source.view(),  # aligned: refused for being read-only alone
        "other byte order": zero_copy.empty((65, 10), ">f4"),  # aligned, big-endian
        "empty": source[:0],
    }[kind]
    if kind == "read-only":
        array.flags.writeable = False
    if kind == "other byte order":
        array[...] = source
    assert not zero_copy.shareable(array)
    tensor = zero_copy.to_tensor(array)
    np.testing.assert_array_equal(tensor.numpy(), array)
    if array.size and array.flags.writeable:
        array.reshape(-1)[0] = -1  # the tensor holds a copy
        assert tensor.numpy().reshape(-1)[0] != -1
    if kind == "read-only":
        source[0, 0] = -1  # the memory the refused view shows: the tensor holds a copy
        assert tensor.numpy()[0, 0] == 0


def test_under_a_device_scope_the_tensor_is_on_that_device():
    array = zero_copy.empty((4, 4), np.float32)
    array[...] = 1
    with tf.device("/CPU:0"):
        tensor = zero_copy.to_tensor(array)
    assert tensor.device.endswith("CPU:0")
    np.testing.assert_array_equal(tensor.numpy(), np.ones((4, 4), np.float32))
