"""What a block of compiled training steps returns, and its scalars once on the host; when a
step leaves the run unsound."""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

from fastconv.data import NUM_CLASSES

# A step loss a thousand times an untrained network's (its even guess: ln 10 = 2.30) means the
# run has blown up: a learning rate far too high has wrecked the weights (dead ReLUs). Such a
# run does not come back; going on, it ends at chance, 10%, with checkpoints saved as if it
# had trained. So it stops at that step, as a run whose loss turns non-finite does.
BLOWN_UP_LOSS = 1000 * math.log(NUM_CLASSES)


def sound(loss: tf.Tensor, weights) -> tf.Tensor:
    """Whether a step left the run sound: its loss below BLOWN_UP_LOSS (which NaN and
    infinity are not) and every weight finite."""
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(w)) for w in weights])
    return (loss < BLOWN_UP_LOSS) & finite


class Block(NamedTuple):
    """What a block of training steps returns: a handful of scalars, fetched by the host in
    one read (`fetch`).

    The loss is summed in float64, where adding float32 losses is exact, so epoch means come
    out bit for bit the same however the epoch was cut into blocks (or resumed between them).
    """

    steps: tf.Tensor  # steps run: fewer than asked when one left the run unsound
    loss_sum: tf.Tensor  # the sum of their losses, float64
    correct: tf.Tensor  # correct predictions among their images, int64
    sound: tf.Tensor  # whether the last step left the run sound (`sound`)
    last_loss: tf.Tensor  # the last step's loss, float64

    @property
    def loss(self) -> tf.Tensor:
        """The block's mean loss."""
        return self.loss_sum / tf.cast(self.steps, tf.float64)

    def fetch(self) -> BlockResult:
        """The scalars on the host, in one read, which waits for the block. float64 holds
        each of them exactly (the counts stay far below 2**53)."""
        steps, loss_sum, correct, ok, last = tf.stack(
            [tf.cast(t, tf.float64) for t in self]
        ).numpy()
        return BlockResult(int(steps), float(loss_sum), int(correct), bool(ok), float(last))


class BlockResult(NamedTuple):
    """A block's scalars, on the host."""

    steps: int
    loss_sum: float
    correct: int
    sound: bool
    last_loss: float

    @property
    def loss(self) -> float:
        return self.loss_sum / self.steps

    def trouble(self) -> str:
        """What left the run unsound at the block's last step."""
        if not math.isfinite(self.last_loss):
            return f"the loss became {self.last_loss}"
        if self.last_loss >= BLOWN_UP_LOSS:
            return (
                f"the loss reached {self.last_loss:.3g}, over a thousand times an untrained "
                f"network's {math.log(NUM_CLASSES):.2f}"
            )
        return "a weight became non-finite"


class Evaluation(NamedTuple):
    """What `Trainer.evaluate` returns: the mean loss, the accuracy, and the confusion matrix
    (counts of true class by predicted class, float32: exact far beyond these counts)."""

    loss: tf.Tensor
    accuracy: tf.Tensor
    confusion: tf.Tensor
