"""The book's notebook cells, unchanged, on the real data; and the class step for step against
the book's own eager class (bench/book_convnet.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import reference
import tensorflow as tf

from fastconv import ConvolutionNetwork, pipeline
from fastconv.model import ConvNet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import book_convnet


def test_constructor_defaults_are_the_books():
    cn = ConvolutionNetwork()
    assert (cn.n_kernels, cn.units, cn.batch_size, cn.lr) == (10, 10, 32, 0.1)
    assert cn.losses == [] and cn.val_losses == []


def test_book_cells_train_and_score(book_split):
    (x_train, y_train_encoded), (x_val, y_val_encoded) = book_split
    np.random.seed(0)
    cn = ConvolutionNetwork(n_kernels=10, units=100, batch_size=128, learning_rate=0.01)
    cn.fit(x_train, y_train_encoded, x_val=x_val, y_val=y_val_encoded, epochs=3)
    assert len(cn.losses) == len(cn.val_losses) == 3
    assert cn.losses == sorted(cn.losses, reverse=True)
    assert cn.val_losses[-1] < cn.val_losses[0] < 1.0
    accuracy = cn.score(x_val, y_val_encoded)
    assert 0.75 < accuracy < 1.0
    # get_loss, predict and score say the same as a float64 NumPy evaluation of the weights.
    weights = [w.numpy().astype(np.float64) for w in cn.model.weights]
    logits = reference.forpass(x_val[:500], *weights)
    assert cn.get_loss(x_val[:500], y_val_encoded[:500]) == pytest.approx(
        reference.cross_entropy(y_val_encoded[:500], logits), rel=1e-5
    )
    agreement = np.mean(cn.predict(x_val[:500]) == logits.argmax(axis=1))
    assert agreement > 0.998  # ties within float32 rounding may flip a rare argmax
    assert cn.predict(x_val).shape == (12000,)


def test_fit_is_repeatable_under_numpy_seed(book_split):
    (x_train, y_train), _ = book_split
    losses = []
    for _ in range(2):
        np.random.seed(7)
        cn = ConvolutionNetwork(units=100, batch_size=256, learning_rate=0.01)
        cn.fit(x_train[:5120], y_train[:5120], epochs=2)
        losses.append(cn.losses)
    assert losses[0] == losses[1]


def test_soft_targets_are_refused(book_split):
    (x_train, y_train), _ = book_split
    with pytest.raises(ValueError, match="one-hot"):
        ConvolutionNetwork().fit(x_train[:64], y_train[:64] * 0.5, epochs=1)


def test_fit_steps_as_the_books_eager_class(book_split):
    """Given fastconv's initial weights and batch order, the book's eager class (bench/'s
    copy) ends its epochs with fastconv's weights and validation losses, to float32 rounding.

    fastconv's epoch loss is, as documented, the mean of the losses its steps computed for
    their updates; the book's is the mean of a second pass after each update.
    """
    (x_train, y_train), (x_val, y_val) = book_split
    x, y, x_val, y_val = x_train[:1024], y_train[:1024], x_val[:1000], y_val[:1000]
    np.random.seed(0)
    cn = ConvolutionNetwork(n_kernels=10, units=100, batch_size=32, learning_rate=0.1)
    cn.fit(x, y, epochs=2, x_val=x_val, y_val=y_val)
    update_losses = []  # per step of the book's class, its loss before the update

    class Replay(book_convnet.ConvolutionNetwork):
        """The book's class, started and fed as fastconv's fit was."""

        epochs_started = 0

        def init_weights(self, input_shape, n_classes):
            initial = ConvNet(self.n_kernels, self.units, seed=cn.seed)
            self.conv_w, self.conv_b, self.w1, self.b1, self.w2, self.b2 = (
                tf.Variable(weight) for weight in initial.weights
            )

        def gen_batch(self, x, y):
            epoch, self.epochs_started = self.epochs_started, self.epochs_started + 1
            for rows in pipeline.epoch_order(len(x), self.batch_size, cn.seed, epoch).numpy():
                yield x[rows], y[rows]

        def training(self, x, y):
            update_losses.append(self.get_loss(x, y))
            super().training(x, y)

    book = Replay(n_kernels=10, units=100, batch_size=32, learning_rate=0.1)
    book.fit(x, y, epochs=2, x_val=x_val, y_val=y_val)
    initial = ConvNet(10, 100, seed=cn.seed)
    names = ("conv_w", "conv_b", "w1", "b1", "w2", "b2")
    for name, weight, start in zip(names, cn.model.weights, initial.weights):
        expected = getattr(book, name).numpy()
        # 64 steps moved every variable by 0.05-0.16; the two agree to ~4e-6.
        assert np.abs(expected - start.numpy()).max() > 0.04, name
        np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-5, atol=2e-5, err_msg=name)
    np.testing.assert_allclose(cn.val_losses, book.val_losses, rtol=1e-5)
    epoch_means = np.mean(np.reshape(update_losses, (2, 1024 // 32)), axis=1)
    np.testing.assert_allclose(cn.losses, epoch_means, rtol=1e-5)
