"""The book's `ConvolutionNetwork`, with its constructor, methods and lists, compiled inside.

The notebook cells of chapter 08-4 run unchanged:

    cn = ConvolutionNetwork(n_kernels=10, units=100, batch_size=128, learning_rate=0.01)
    cn.fit(x_train, y_train_encoded, x_val=x_val, y_val=y_val_encoded, epochs=20)
    cn.score(x_val, y_val_encoded)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from fastconv import data, pipeline, runtime
from fastconv.config import TrainConfig
from fastconv.data import IMAGE_SIZE
from fastconv.trainer import make_trainer

# Evaluation only reads: big batches amortize the per-call cost.
_EVAL_BATCH_SIZE = 1000


class ConvolutionNetwork:
    """The book's class, backed by fastconv's compiled trainer.

    Takes the arrays the book passes: images (N, 28, 28, 1) already scaled (the book's
    `x / 255`) and one-hot targets (N, 10). Each epoch is one compiled call over a tf.data
    pipeline that reshuffles the batches (seeded from NumPy's global generator, so
    `np.random.seed` makes a fit repeatable) and drops the remainder, as `gen_batch` does.

    One difference from the book: `losses` records, per epoch, the mean of the losses the
    training steps computed for their updates, not a second forward pass after each update.
    """

    def __init__(self, n_kernels=10, units=10, batch_size=32, learning_rate=0.1, xla=False):
        self.n_kernels = n_kernels
        self.kernel_size = 3
        self.units = units
        self.batch_size = batch_size
        self.lr = learning_rate
        self.xla = xla
        self.losses = []
        self.val_losses = []
        self.model = None
        self.trainer = None
        # Drawn by `fit`: it fixes the initial weights (`ConvNet(seed=...)`) and each epoch's
        # batch order (`pipeline.epoch_order`), so a fit can be replayed elsewhere.
        self.seed = None

    def fit(self, x, y, epochs=100, x_val=None, y_val=None):
        """Initializes the weights and an SGD optimizer, then trains for `epochs` epochs."""
        images, labels = _as_images(x), _as_labels(y, "y")
        self.seed = seed = int(np.random.randint(2**31 - 1))
        config = TrainConfig(
            n_kernels=self.n_kernels,
            units=self.units,
            batch_size=self.batch_size,
            learning_rate=self.lr,
            seed=seed,
            xla=self.xla,
        )
        data.require_batch_fits(config, len(images))
        self.trainer = make_trainer(config, runtime.place(config))
        self.model = self.trainer.model
        batches = iter(
            pipeline.training_batches(images, labels, self.batch_size, seed, pipeline.IDENTITY)
        )
        steps_per_epoch = tf.constant(len(images) // self.batch_size)
        for _ in range(epochs):
            loss = self.trainer.train(batches, steps_per_epoch).loss
            self.losses.append(float(loss))
            if x_val is not None:
                self.val_losses.append(self.get_loss(x_val, y_val))

    def forpass(self, x):
        """Logits for images (N, 28, 28, 1), as the book's `forpass`."""
        return self.model.forpass(tf.constant(_as_images(x)))

    def predict(self, x):
        """The class index of the largest logit, per image."""
        images = tf.constant(_as_images(x))
        predictions = [
            self.trainer.predict_step(images[start : start + _EVAL_BATCH_SIZE]).numpy()
            for start in range(0, len(images), _EVAL_BATCH_SIZE)
        ]
        return np.concatenate(predictions)

    def score(self, x, y):
        """Accuracy of `predict(x)` against one-hot targets `y`."""
        return np.mean(self.predict(x) == np.argmax(y, axis=1))

    def get_loss(self, x, y):
        """Mean softmax cross-entropy of the network on (x, y), as a float."""
        return float(self.trainer.evaluate(self._evaluation_set(x, y)).loss)

    def _evaluation_set(self, x, y):
        return pipeline.evaluation_set(
            _as_images(x), _as_labels(y, "y_val"), _EVAL_BATCH_SIZE, pipeline.IDENTITY
        )


def _as_images(x) -> np.ndarray:
    images = np.asarray(x, dtype=np.float32)
    if images.shape[1:] not in ((IMAGE_SIZE, IMAGE_SIZE, 1), (IMAGE_SIZE, IMAGE_SIZE)):
        raise ValueError(f"images of shape {images.shape}, expected (N, 28, 28, 1)")
    return images


def _as_labels(y, name: str) -> np.ndarray:
    """Class indices of one-hot targets; anything else is refused rather than guessed at."""
    y = np.asarray(y)
    if y.ndim != 2 or not np.all((y == 0) | (y == 1)) or not np.all(y.sum(axis=1) == 1):
        raise ValueError(
            f"{name} must be one-hot targets of shape (N, classes), got shape {y.shape}"
        )
    return np.argmax(y, axis=1)
