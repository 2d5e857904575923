"""The network computes the book's function, with the book's variables."""

import numpy as np
import pytest
import reference
import tensorflow as tf

from fastconv.model import CONV_FORMS, ConvNet, cross_entropy


def randomized(model: ConvNet, seed: int = 0) -> ConvNet:
    """Gives every variable, biases included, random values, so no term can hide."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))
    return model


def relative_error(actual, expected) -> float:
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def test_book_network_has_197210_parameters():
    model = ConvNet(n_kernels=10, units=100)
    shapes = [tuple(v.shape) for v in model.weights]
    assert shapes == [(3, 3, 1, 10), (10,), (1960, 100), (100,), (100, 10), (10,)]
    assert sum(int(np.prod(shape)) for shape in shapes) == 197_210


def test_weights_are_glorot_uniform_and_biases_zero():
    model = ConvNet(n_kernels=10, units=100, seed=1)
    for weight, fan_in, fan_out in (
        (model.conv_w, 9, 90),
        (model.w1, 1960, 100),
        (model.w2, 100, 10),
    ):
        limit = np.sqrt(6 / (fan_in + fan_out))
        values = weight.numpy()
        assert np.abs(values).max() <= limit
        assert np.abs(values).max() > 0.9 * limit  # spread over the whole range
        assert abs(values.mean()) < 0.1 * limit
    for bias in (model.conv_b, model.b1, model.b2):
        assert not np.any(bias.numpy())


def test_seed_fixes_the_weights():
    first, again, other = ConvNet(seed=5), ConvNet(seed=5), ConvNet(seed=6)
    for a, b in zip(first.weights, again.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(first.w1.numpy(), other.w1.numpy())


@pytest.mark.parametrize("n_kernels, units", [(10, 100), (4, 16)])
def test_forpass_matches_float64_reference(n_kernels, units):
    model = randomized(ConvNet(n_kernels, units))
    images = np.random.default_rng(1).random((16, 28, 28, 1)).astype(np.float32)
    logits = model.forpass(tf.constant(images)).numpy()
    expected = reference.forpass(images, *(v.numpy().astype(np.float64) for v in model.weights))
    assert relative_error(logits, expected) < 1e-5


def test_loss_is_mean_softmax_cross_entropy():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, (32, 10)).astype(np.float32)
    targets = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)]
    loss = float(cross_entropy(tf.constant(targets), tf.constant(logits)))
    assert loss == pytest.approx(reference.cross_entropy(targets, logits), rel=1e-6)


@pytest.mark.parametrize("conv_form", CONV_FORMS)
def test_every_conv_form_of_the_forpass_matches_float64_reference(conv_form):
    model = randomized(ConvNet(10, 100), seed=3)
    images = np.random.default_rng(4).random((16, 28, 28, 1)).astype(np.float32)
    # In the engine the form runs in (XLA for custom calls).
    forpass = tf.function(
        lambda x: model.forpass(x, conv_form), jit_compile=CONV_FORMS[conv_form].xla
    )
    logits = forpass(tf.constant(images)).numpy()
    expected = reference.forpass(images, *(v.numpy().astype(np.float64) for v in model.weights))
    assert relative_error(logits, expected) < 1e-5


@pytest.mark.parametrize(
    "conv_form, jit_compile", [("batch_channels", False), ("window_patches", True)]
)
def test_batch_reshaping_forms_take_any_batch_size_in_one_trace(conv_form, jit_compile):
    model = randomized(ConvNet(10, 100), seed=6)
    forpass = tf.function(
        lambda x: model.forpass(x, conv_form),
        input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)],
        jit_compile=jit_compile,
    )
    rng = np.random.default_rng(7)
    for count in (1, 5, 64):
        images = rng.random((count, 28, 28, 1)).astype(np.float32)
        expected = reference.forpass(images, *(v.numpy().astype(np.float64) for v in model.weights))
        assert relative_error(forpass(images).numpy(), expected) < 1e-5
    assert forpass.experimental_get_tracing_count() == 1


FORMS_AND_ENGINES = [
    (name, jit_compile)
    for name, form in CONV_FORMS.items()
    for jit_compile in (False, True)
    if form.xla in (None, jit_compile)  # each form in the engines it runs in
]


def pooled_features(conv_form, jit_compile, images, conv_w, conv_b) -> np.ndarray:
    """A form's conv + ReLU + pool features as (B, 14, 14, K)."""
    form = CONV_FORMS[conv_form]
    flat = tf.function(form.conv_relu_pool, jit_compile=jit_compile)(images, conv_w, conv_b)
    flat = tf.transpose(flat) if form.images_in_columns else flat
    return flat.numpy().reshape(images.shape[0], 14, 14, -1)


@pytest.mark.parametrize("conv_form, jit_compile", FORMS_AND_ENGINES)
def test_a_window_holding_a_nan_pools_to_nan_in_every_form(conv_form, jit_compile):
    """A diverging run must be seen to diverge in every form, the export's included: NaN is
    neither taken for 'not above zero' by the ReLU nor passed over by the max, as
    TensorFlow's max_pool2d and XLA's max on a CPU pass over it ([nan, 1, 2, 3] -> 3)."""
    images = np.full((2, 28, 28, 1), 0.5, np.float32)
    images[0, 9, 13, 0] = np.nan  # its conv outputs reach rows 8-10, columns 12-14
    kernels = tf.fill([3, 3, 1, 10], -1.0)  # every other output below zero: ReLU's 0
    features = pooled_features(conv_form, jit_compile, tf.constant(images), kernels, tf.zeros([10]))
    nan_windows = np.zeros((2, 14, 14, 10), bool)
    nan_windows[0, 4:6, 6:8] = True  # the windows of rows 8-11, columns 12-15
    np.testing.assert_array_equal(np.isnan(features), nan_windows)
    assert (features[~nan_windows] == 0).all()


@pytest.mark.parametrize("conv_form, jit_compile", FORMS_AND_ENGINES)
def test_a_nan_weight_makes_its_kernels_features_nan_in_every_form(conv_form, jit_compile):
    """A NaN in one kernel makes every window of that kernel all NaN: TensorFlow's pool
    takes such a window to the lowest float, which the ReLU makes 0, a finite feature."""
    images = tf.constant(np.random.default_rng(8).random((3, 28, 28, 1)), tf.float32)
    kernels = np.random.default_rng(9).normal(0, 0.5, (3, 3, 1, 10)).astype(np.float32)
    kernels[1, 1, 0, 3] = np.nan
    features = pooled_features(conv_form, jit_compile, images, tf.constant(kernels), tf.zeros([10]))
    assert np.isnan(features[..., 3]).all()
    assert not np.isnan(np.delete(features, 3, axis=-1)).any()


def flat_regions(rng, count):
    """Images like Fashion-MNIST's: a zero background and blocks of one grey each, where
    equal patches give equal conv values, so the pool meets ties: in the background, and
    inside the blocks, where they weigh in the kernels' gradient."""
    images = np.zeros((count, 28, 28, 1))
    for image in images:
        for _ in range(3):
            top, left = rng.integers(0, 20, 2)
            image[top : top + rng.integers(4, 9), left : left + rng.integers(4, 9)] = rng.random()
    return images


@pytest.mark.needs_fused_op
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("pixels", ["random", "flat regions"])
def test_conv_relu_pool_forms_equal_the_books_order_in_values_and_gradients(jit_compile, pixels):
    rng = np.random.default_rng(5)
    images = rng.random((8, 28, 28, 1)) if pixels == "random" else flat_regions(rng, 8)
    images = tf.constant(images, tf.float32)
    conv_w = tf.Variable(rng.normal(0, 0.5, (3, 3, 1, 10)), dtype=tf.float32)
    conv_b = tf.Variable(rng.normal(0, 0.5, 10), dtype=tf.float32)
    if pixels == "flat regions":
        assert tied_windows_with_signal(images, conv_w) > 100
    upstream = tf.constant(rng.normal(size=(8, 1960)), tf.float32)

    def values_and_gradients(conv_relu_pool, images_in_columns=False):
        @tf.function(jit_compile=jit_compile)
        def run():
            with tf.GradientTape() as tape:
                tape.watch(images)
                flat = conv_relu_pool(images, conv_w, conv_b)
                if images_in_columns:
                    flat = tf.transpose(flat)
                # A random linear read-out, so every output gets its own gradient.
                objective = tf.reduce_sum(flat * upstream)
            return [flat, *tape.gradient(objective, [conv_w, conv_b, images])]

        return [t.numpy() for t in run()]

    expected = values_and_gradients(book_conv_relu_pool)
    # The forms that run in this engine: XLA cannot compile fastconv's op, nor graph mode
    # run its custom calls.
    forms = {name: form for name, form in CONV_FORMS.items() if form.xla in (None, jit_compile)}
    for form_name, form in forms.items():
        names = ["values", "d conv_w", "d conv_b", "d images"]
        if pixels == "flat regions" and form_name == "window_patches":
            # Where a window holds equal maxima, MaxPoolGrad gives the first the gradient and
            # reduce_max shares it: the same weight gradients, since the tied patches are
            # equal, but not the same image gradient, which training never uses.
            names.remove("d images")
        actual = values_and_gradients(form.conv_relu_pool, form.images_in_columns)
        for name, a, e in zip(names, actual, expected):
            assert relative_error(a, e) < 1e-5, (form_name, name)


def tied_windows_with_signal(images, conv_w):
    """Pooling windows of the conv whose maximum, not zero, is reached more than once."""
    conv = tf.nn.conv2d(images, conv_w, strides=1, padding="SAME").numpy()
    windows = conv.reshape(conv.shape[0], 14, 2, 14, 2, -1)
    maxima = windows.max(axis=(2, 4), keepdims=True)
    ties = (windows == maxima).sum(axis=(2, 4)) > 1
    return int((ties & (maxima[:, :, 0, :, 0] != 0)).sum())


def book_conv_relu_pool(images, conv_w, conv_b):
    """The book's lines, in the book's order: conv + bias, ReLU, then pool."""
    c_out = tf.nn.conv2d(images, conv_w, strides=1, padding="SAME") + conv_b
    r_out = tf.nn.relu(c_out)
    p_out = tf.nn.max_pool2d(r_out, ksize=2, strides=2, padding="VALID")
    return tf.reshape(p_out, [images.shape[0], -1])
