"""bench/book_convnet.py, the book's eager class that every "x book" ratio is measured against:
it computes the book's function and loss, steps plain SGD, and runs an epoch as the book does."""

import sys
from pathlib import Path

import numpy as np
import pytest
import reference
import tensorflow as tf
from helpers import indexed_images, indices_of

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from book_convnet import ConvolutionNetwork

WEIGHT_NAMES = ("conv_w", "conv_b", "w1", "b1", "w2", "b2")


def book_network(std=0.3, seed=0):
    """The class as the book's fit leaves it before its epochs (with the notebook's sizes),
    every variable, biases included, drawn from N(0, std) so that no term can hide."""
    network = ConvolutionNetwork(n_kernels=10, units=100, batch_size=32, learning_rate=0.1)
    network.init_weights((None, 28, 28, 1), 10)
    network.optimizer = tf.optimizers.SGD(learning_rate=network.lr)
    rng = np.random.default_rng(seed)
    for name in WEIGHT_NAMES:
        variable = getattr(network, name)
        variable.assign(rng.normal(0, std, variable.shape))
    return network


def float64_weights(network) -> list[np.ndarray]:
    return [getattr(network, name).numpy().astype(np.float64) for name in WEIGHT_NAMES]


def book_batch(count=32, seed=1):
    """Random images in the book's form, x / 255 in float64, and one-hot float64 targets."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 28, 28, 1)) / 255
    return images, np.eye(10)[rng.integers(0, 10, count)]


def test_init_weights_are_the_books_variables():
    network = ConvolutionNetwork(n_kernels=4, units=16)
    network.init_weights((None, 28, 28, 1), 10)
    shapes = [tuple(getattr(network, name).shape) for name in WEIGHT_NAMES]
    assert shapes == [(3, 3, 1, 4), (4,), (784, 16), (16,), (16, 10), (10,)]
    assert all(getattr(network, name).dtype == tf.float32 for name in WEIGHT_NAMES)
    assert not any(np.any(bias.numpy()) for bias in (network.conv_b, network.b1, network.b2))


def test_forpass_and_loss_match_the_float64_reference():
    network = book_network()
    images, targets = book_batch()
    logits = network.forpass(images).numpy()
    expected = reference.forpass(images, *float64_weights(network))
    assert np.max(np.abs(logits - expected)) / np.max(np.abs(expected)) < 1e-5
    assert network.get_loss(images, targets) == pytest.approx(
        reference.cross_entropy(targets, expected), rel=1e-5
    )
    np.testing.assert_array_equal(network.predict(images), expected.argmax(axis=1))


def test_training_is_one_sgd_step_on_the_book_loss():
    """The update divided by the learning rate is the loss's gradient, here taken by central
    differences of the float64 reference, for the output layer's weights and biases."""
    network = book_network(std=0.05)  # small weights: a softmax far from saturation
    images, targets = book_batch()
    before = float64_weights(network)
    network.training(images, targets)
    after = float64_weights(network)
    w2_index, b2_index = WEIGHT_NAMES.index("w2"), WEIGHT_NAMES.index("b2")

    def gradient(index, position, h=1e-6):
        losses = []
        for sign in (1, -1):
            weights = [w.copy() for w in before]
            weights[index][position] += sign * h
            losses.append(reference.cross_entropy(targets, reference.forpass(images, *weights)))
        return (losses[0] - losses[1]) / (2 * h)

    positions = [(b2_index, (k,)) for k in range(10)] + [(w2_index, (u, 3)) for u in range(10)]
    updates = np.array([before[i][p] - after[i][p] for i, p in positions]) / network.lr
    gradients = np.array([gradient(i, p) for i, p in positions])
    assert np.abs(gradients).max() > 1e-2  # a step large enough to measure
    np.testing.assert_allclose(updates, gradients, rtol=1e-3, atol=1e-6)


def test_train_epoch_runs_the_books_batches_and_records_their_losses():
    """gen_batch: a NumPy permutation of the images, cut into len // batch_size batches (the
    remainder dropped); after each step, get_loss reads that batch's loss back; the epoch's
    loss is the mean of those."""
    count, batch_size = 100, 32
    x = indexed_images(count)[..., None] / 255
    y = np.eye(10)[np.arange(count) % 10]
    calls = []

    class Recorded(ConvolutionNetwork):
        def training(self, x_batch, y_batch):
            calls.append(("training", indices_of(tf.constant(x_batch))))
            super().training(x_batch, y_batch)

        def get_loss(self, x_batch, y_batch):
            loss = super().get_loss(x_batch, y_batch)
            calls.append(("get_loss", indices_of(tf.constant(x_batch)), loss))
            return loss

    network = Recorded(n_kernels=2, units=8, batch_size=batch_size, learning_rate=0.1)
    network.init_weights(x.shape, 10)
    network.optimizer = tf.optimizers.SGD(learning_rate=0.1)
    np.random.seed(3)
    network.train_epoch(x, y)
    np.random.seed(3)
    order = np.random.permutation(count)[: 3 * batch_size].reshape(3, batch_size)
    assert [call[0] for call in calls] == ["training", "get_loss"] * 3
    for step, rows in enumerate(order):
        np.testing.assert_array_equal(calls[2 * step][1], rows)  # trained on the batch,
        np.testing.assert_array_equal(calls[2 * step + 1][1], rows)  # then its loss read back
    assert network.losses == [pytest.approx(np.mean([call[2] for call in calls[1::2]]))]
