"""Random flips and shifts of a training batch, as a stateless function of (seed, step).

The random draws come from `tf.random.stateless_*` keyed by the run's seed and the step's
number, so a batch is augmented the same way whether it is gathered inside the compiled loop
(images resident on the device) or in the tf.data stream, in a run or in its resumed
continuation. Nothing is interpolated: each image is multiplied on each side by a matrix of
zeros and ones, so every output pixel is exactly an input pixel or 0. (Two batched matmuls
of 28x28 matrices took a third of the time of the same re-indexing by `tf.gather`.)
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

# Folded into the (seed, step) key, so these draws are not the bits that
# `fastconv.pipeline.epoch_order` shuffles with under the key (seed, epoch).
_SALT = 0x5EED_A116


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Flips each image left-right with probability 1/2 and shifts it by (dy, dx), each drawn
    uniformly from [-max_shift, max_shift]; vacated pixels take the value 0, the background
    of raw Fashion-MNIST images (so apply it before standardizing).

    Attributes:
      seed: the run's seed.
      max_shift: the largest shift in pixels, along each axis.
    """

    seed: int
    max_shift: int = 0

    def __call__(self, images: tf.Tensor, step, part=0, parts: int = 1) -> tf.Tensor:
        """`images` (B, H, W, 1) of step `step`, augmented, as float32 of the same shape.

        The draws are made for a batch of `parts * B` images, of which this batch is part
        number `part`: a replica's share of a global batch gets the draws that a one-device
        run gives the same images.
        """
        batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
        flips, shifts_y, shifts_x = self.draws(step, batch * parts)
        share = slice(part * batch, (part + 1) * batch)
        flips, shifts_y, shifts_x = flips[share], shifts_y[share], shifts_x[share]
        # Output pixel (i, j) of an image shifted by (dy, dx) is input pixel (i - dy, j - dx);
        # flipped first, input column j is W-1-j. A source outside the image matches no
        # column of the one-hot matrix, so the pixel is 0.
        rows = tf.range(height)[None, :] - shifts_y[:, None]
        columns = tf.range(width)[None, :] - shifts_x[:, None]
        columns = tf.where(flips[:, None], width - 1 - columns, columns)
        pixels = tf.cast(images[..., 0], tf.float32)
        # One-hot (B, output index, input index) matrices pick the rows, then the columns.
        # Flips alone leave the rows: one matmul, half the time.
        if self.max_shift:
            pixels = tf.matmul(tf.one_hot(rows, height), pixels)
        moved = tf.matmul(pixels, tf.one_hot(columns, width), transpose_b=True)
        return moved[..., None]

    def draws(self, step, count) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(flips (count,) bool, shifts down (count,), shifts right (count,)) of `step`."""
        key = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        key = tf.random.experimental.stateless_fold_in(key, _SALT)
        flip_key, shift_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        flips = tf.random.stateless_uniform([count], flip_key, 0, 2, tf.int32) == 1
        shifts = tf.random.stateless_uniform(
            [2, count], shift_key, -self.max_shift, self.max_shift + 1, tf.int32
        )
        return flips, shifts[0], shifts[1]
