"""What a block of compiled training steps returns, and its scalars once on the host."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class Block(NamedTuple):
    """What a block of training steps returns: a handful of scalars, fetched by the host in
    one read (`fetch`).

    The loss is summed in float64, where adding float32 losses is exact, so epoch means come
    out bit for bit the same however the epoch was cut into blocks (or resumed between them).
    """

    steps: tf.Tensor  # steps run: fewer than asked when one turned the loss or a weight non-finite
    loss_sum: tf.Tensor  # the sum of their losses, float64
    correct: tf.Tensor  # correct predictions among their images, int64
    finite: tf.Tensor  # whether the loss and every weight were finite after the last step

    @property
    def loss(self) -> tf.Tensor:
        """The block's mean loss."""
        return self.loss_sum / tf.cast(self.steps, tf.float64)

    def fetch(self) -> BlockResult:
        """The scalars on the host, in one read, which waits for the block. float64 holds
        each of them exactly (the counts stay far below 2**53)."""
        steps, loss_sum, correct, finite = tf.stack([tf.cast(t, tf.float64) for t in self]).numpy()
        return BlockResult(int(steps), float(loss_sum), int(correct), bool(finite))


class BlockResult(NamedTuple):
    """A block's scalars, on the host."""

    steps: int
    loss_sum: float
    correct: int
    finite: bool

    @property
    def loss(self) -> float:
        return self.loss_sum / self.steps


class Evaluation(NamedTuple):
    """What `Trainer.evaluate` returns: the mean loss, the accuracy, and the confusion matrix
    (counts of true class by predicted class, float32: exact far beyond these counts)."""

    loss: tf.Tensor
    accuracy: tf.Tensor
    confusion: tf.Tensor
