"""fastconv.native.custom_calls.xla_conv_relu_pool: the fused kernel as XLA custom calls, inside
tf.function(jit_compile=True), against the TensorFlow op on the same kernel and TensorFlow's
ops in float64."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from fastconv import native
from fastconv.model import conv_relu_pool_nn
from fastconv.native.custom_calls import XLA_BACKWARD, XLA_FORWARD, xla_conv_relu_pool


def values_and_gradients(conv_relu_pool, images, conv_w, conv_b, upstream):
    """The features (14*14*K, B) and the gradients of sum(features * upstream) in the kernel
    and the bias."""
    with tf.GradientTape() as tape:
        tape.watch([conv_w, conv_b])
        features = conv_relu_pool(images, conv_w, conv_b)
        objective = tf.reduce_sum(features * upstream)
    return [features, *tape.gradient(objective, [conv_w, conv_b])]


def custom_calls(*args):
    return tf.function(
        lambda *args: values_and_gradients(xla_conv_relu_pool, *args), jit_compile=True
    )(*args)


def fused_op(*args):
    return tf.function(lambda *args: values_and_gradients(native.conv_relu_pool, *args))(*args)


def reference(*args):
    """TensorFlow's ops in float64 (the book's (B, features) layout turned to columns)."""
    args = [tf.cast(a, tf.float64) for a in args]
    return values_and_gradients(lambda *a: tf.transpose(conv_relu_pool_nn(*a)), *args)


def layer_inputs(images, seed, bias=0.1):
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.5, (3, 3, 1, 10))
    conv_b = rng.normal(bias, 0.1, 10)
    upstream = rng.normal(size=(1960, len(images)))
    return [tf.constant(v, tf.float32) for v in (images, conv_w, conv_b, upstream)]


def assert_near_both(actual, fused, expected):
    """The custom calls' features and kernel and bias gradients within 1e-5 of their
    largest entry of float64's, of the op's and of float64's."""
    for name, a, f, e in zip(("features", "d kernel", "d bias"), actual, fused, expected):
        scale = np.abs(e.numpy()).max()
        np.testing.assert_allclose(a.numpy(), f.numpy(), rtol=0, atol=1e-5 * scale, err_msg=name)
        np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=0, atol=1e-5 * scale, err_msg=name)


@pytest.mark.needs_fused_op
@pytest.mark.parametrize("batch", [1, 7, 128, 129, 513])
def test_custom_calls_equal_the_fused_op_and_float64_on_real_images(fashion_mnist, batch):
    """Batches of part of a block of lanes (1, 7; a block is 8 or 16 images), whole blocks
    (128), a block and one image over (129, 513). The features must be the op's bit for bit
    (the same kernel); the kernel and bias gradients the op's but for the order of float32
    sums (the op's follows TensorFlow's threads, which earlier runs in the process may have
    set), and both within 1e-5 of their largest entry of float64's: one SGD step at lr 0.01
    from either lands within 1e-7 of that entry, where a wrong window or a lost lane is off
    by a term. Real images hold ties (the zero background), which the first position wins in
    all three."""
    inputs = layer_inputs(fashion_mnist.train_images[:batch, ..., None] / 255, seed=batch)
    actual, fused, expected = custom_calls(*inputs), fused_op(*inputs), reference(*inputs)
    np.testing.assert_array_equal(actual[0].numpy(), fused[0].numpy())
    assert_near_both(actual, fused, expected)


@pytest.mark.needs_fused_op
def test_ties_go_to_the_first_position_as_in_the_fused_op():
    """Kernels with only their centre tap, on images whose 2x2 windows are flat, make the
    four convs of every window equal while the four 3x3 patches under them differ: the
    gradient then depends on which position wins. The first does, in the op and in
    TensorFlow's max-pool gradient (a positive bias keeps every window on)."""
    rng = np.random.default_rng(3)
    images = np.kron(rng.random((20, 14, 14, 1)), np.ones((1, 2, 2, 1)))
    images, conv_w, conv_b, upstream = layer_inputs(images, seed=0, bias=3.0)
    conv_w = conv_w * np.pad(np.ones((1, 1, 1, 1)), [[1, 1], [1, 1], [0, 0], [0, 0]])
    inputs = images, conv_w, conv_b, upstream
    actual, fused, expected = custom_calls(*inputs), fused_op(*inputs), reference(*inputs)
    assert_near_both(actual, fused, expected)


@pytest.mark.needs_fused_op
def test_a_nan_pixel_gives_nan_where_the_fused_op_does():
    """A diverging run must be seen to diverge under XLA too: NaN in the NaN pixel's
    windows, the other images untouched, and the gradients the op's, NaN included."""
    images = np.full((18, 28, 28, 1), 0.5)
    images[0, 9, 13, 0] = np.nan  # in pool window (4, 6); its conv outputs reach (8-10, 12-14)
    inputs = layer_inputs(images, seed=1)
    actual, fused = custom_calls(*inputs), fused_op(*inputs)
    by_window = actual[0].numpy().reshape(14, 14, 10, 18)
    assert np.isnan(by_window[4, 6, :, 0]).all() and np.isnan(by_window[5, 7, :, 0]).all()
    assert not np.isnan(by_window[..., 1:]).any()
    np.testing.assert_array_equal(actual[0].numpy(), fused[0].numpy())
    for name, a, f in zip(("d kernel", "d bias"), actual[1:], fused[1:]):  # NaN where the op's is
        np.testing.assert_allclose(a.numpy(), f.numpy(), rtol=1e-5, equal_nan=True, err_msg=name)


@pytest.mark.needs_fused_op
def test_the_images_gradient_where_asked_for_is_the_fused_ops(fashion_mnist):
    """Training never asks for it, but where a caller does it must not be missing or wrong."""
    images, conv_w, conv_b, upstream = layer_inputs(
        fashion_mnist.train_images[:7, ..., None] / 255, seed=5
    )

    def images_gradient(conv_relu_pool):
        def gradient(images):
            with tf.GradientTape() as tape:
                tape.watch(images)
                objective = tf.reduce_sum(conv_relu_pool(images, conv_w, conv_b) * upstream)
            return tape.gradient(objective, images)

        return gradient

    actual = tf.function(images_gradient(xla_conv_relu_pool), jit_compile=True)(images)
    expected = tf.function(images_gradient(native.conv_relu_pool))(images)
    scale = np.abs(expected.numpy()).max()
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=0, atol=1e-5 * scale)


@pytest.mark.needs_fused_op
@pytest.mark.parametrize("threads", [2, 3, 16])
def test_threads_change_nothing_down_to_the_last_bit(fashion_mnist, monkeypatch, threads):
    """The targets spread the blocks of images over the threads TensorFlow's intra-op
    setting names (read when traced), each thread taking the next block free; the gradient
    sums each block on its own and adds them up in block order, so a run is reproducible
    whichever thread took which block, and however many there were."""
    inputs = layer_inputs(fashion_mnist.train_images[:200, ..., None] / 255, seed=4)
    results = {}
    for count in (1, threads):
        monkeypatch.setattr(
            tf.config.threading, "get_intra_op_parallelism_threads", lambda count=count: count
        )
        results[count] = custom_calls(*inputs)
    for name, one, many in zip(("features", "d kernel", "d bias"), results[1], results[threads]):
        np.testing.assert_array_equal(many.numpy(), one.numpy(), err_msg=name)


@pytest.mark.needs_fused_op
def test_the_compiled_program_calls_the_targets_and_no_convolution():
    """The custom calls are in the optimized HLO (a silent fallback to TensorFlow's ops
    would not pass), and the images' gradient, which nobody asked for, is not."""
    inputs = layer_inputs(np.zeros((32, 28, 28, 1)), seed=2)
    step = tf.function(
        lambda *args: values_and_gradients(xla_conv_relu_pool, *args), jit_compile=True
    )
    hlo = step.experimental_get_compiler_ir(*inputs)(stage="optimized_hlo")
    assert f'custom_call_target="{XLA_FORWARD}"' in hlo
    assert f'custom_call_target="{XLA_BACKWARD}"' in hlo
    assert "convolution(" not in hlo


@pytest.mark.needs_fused_op
@pytest.mark.parametrize(
    "target, config, said",
    [
        (
            XLA_FORWARD,
            "batch=4 height=27 width=28 kernels=10 threads=2",
            "fastconv_conv_relu_pool: cannot compute batch=4 height=27 .*must be even",
        ),
        (
            XLA_BACKWARD,
            "batch=4",
            'fastconv_conv_relu_pool_grad: backend_config must be "batch=B .*", got "batch=4"',
        ),
    ],
)
def test_an_error_inside_a_target_is_one_exception_line_naming_it(target, config, said):
    """What a target cannot compute fails the call with the target's reason, in a Python
    exception of one line, and the process goes on."""
    native.ops()
    images, winner = tf.zeros([4, 28, 28, 1]), tf.zeros([1960, 4], tf.uint8)
    operands = [images, tf.zeros([3, 3, 1, 10]), tf.zeros([10])]
    results = [tf.TensorSpec([1960, 4]), tf.TensorSpec([1960, 4], tf.uint8)]
    if target == XLA_BACKWARD:
        operands = [images, winner, tf.zeros([1960, 4])]
        results = [tf.TensorSpec([3, 3, 1, 10]), tf.TensorSpec([10])]
    call = tf.function(
        lambda *operands: xla.custom_call_v2(target, operands, results, backend_config=config),
        jit_compile=True,
    )
    with pytest.raises(tf.errors.InternalError, match=said) as raised:
        call(*operands)
    assert len(str(raised.value).splitlines()) == 1, str(raised.value)


@pytest.mark.needs_fused_op
def test_shapes_it_cannot_take_are_told_when_traced():
    def traced(images_spec, kernel=(3, 3, 1, 10), bias=(10,)):
        return tf.function(
            lambda images: xla_conv_relu_pool(images, tf.zeros(kernel), tf.zeros(bias)),
            jit_compile=True,
            input_signature=[images_spec],
        ).get_concrete_function()

    with pytest.raises(ValueError, match=r"batch size must be known when traced"):
        traced(tf.TensorSpec([None, 28, 28, 1]))
    with pytest.raises(ValueError, match=r"even height and width, got \(4, 27, 28, 1\)"):
        traced(tf.TensorSpec([4, 27, 28, 1]))
    with pytest.raises(ValueError, match=r"kernel must be \(3, 3, 1, kernels\), got \(5, 5"):
        traced(tf.TensorSpec([4, 28, 28, 1]), kernel=(5, 5, 1, 10))
    with pytest.raises(ValueError, match=r"bias must be \(kernels,\) = \(10,\), got \(9,\)"):
        traced(tf.TensorSpec([4, 28, 28, 1]), bias=(9,))


def test_without_the_library_it_raises_the_loaders_reason(monkeypatch):
    monkeypatch.setattr(native, "_load", lambda: (None, "turned off by FASTCONV_NATIVE=0"))
    with pytest.raises(native.NativeUnavailable, match=r"^turned off by FASTCONV_NATIVE=0$"):
        xla_conv_relu_pool(tf.zeros([4, 28, 28, 1]), tf.zeros([3, 3, 1, 10]), tf.zeros([10]))
