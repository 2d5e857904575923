"""tf.data pipelines: the images stay resident as one tensor and whole batches are gathered.

Each epoch's order is a stateless function of (seed, epoch), so the batches are reshuffled
every epoch, reproducible, and the same wherever a run starts or resumes. Batching, one-hot
encoding and standardization run on whole batches: nothing is done per image.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from fastconv.data import IMAGE_SIZE, NUM_CLASSES


@dataclasses.dataclass(frozen=True)
class Standardization:
    """Pixels become (x - mean) / std; `scale` is the book's x / 255."""

    mean: float = 0.0
    std: float = 255.0

    @classmethod
    def named(cls, kind: str, train_images: np.ndarray) -> Standardization:
        """ "scale" (the book's x / 255) or "zscore" (the training images' mean and std)."""
        if kind == "scale":
            return cls()
        if kind == "zscore":
            pixels = train_images.astype(np.float64)
            return cls(mean=float(pixels.mean()), std=float(pixels.std()))
        raise ValueError(f"unknown standardization {kind!r}")

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        images = tf.cast(images, tf.float32)
        if self.mean:
            images = images - self.mean
        # A division, not a multiplication by 1 / std: bit for bit the book's x / 255.
        return images / self.std if self.std != 1.0 else images


IDENTITY = Standardization(mean=0.0, std=1.0)

# tf.data's autotuning thread made deleting an iterator wait: up to 20 s at the end of some
# 20-epoch runs on the 2-core host, and spikes in evaluation (which opens an iterator per
# pass). These pipelines only gather whole batches, so fixed settings lose nothing.
NO_AUTOTUNE = tf.data.Options()
NO_AUTOTUNE.autotune.enabled = False


def batch_maker(images: np.ndarray, labels: np.ndarray, standardize: Standardization):
    """A function from a batch of indices to (images (B, 28, 28, 1) float32, one-hot targets).

    The arrays become constants on the device of the enclosing `tf.device` scope: called in
    a tf.data map they live with the pipeline on the host; called inside the training loop
    under a GPU's scope (`fastconv.trainer.Trainer.make_batch`), the data set is resident on
    the GPU and only index rows cross to it.
    """
    images = tf.constant(np.reshape(images, (-1, IMAGE_SIZE, IMAGE_SIZE, 1)))
    labels = tf.constant(labels, tf.int32)

    def make_batch(indices):
        return (
            standardize(tf.gather(images, indices)),
            tf.one_hot(tf.gather(labels, indices), NUM_CLASSES),
        )

    return make_batch


def epoch_order(num_examples: int, batch_size: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The epoch's shuffled indices as (steps, batch_size); the remainder is dropped."""
    steps = num_examples // batch_size
    seeds = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    order = tf.random.experimental.stateless_shuffle(tf.range(num_examples), seed=seeds)
    return tf.reshape(order[: steps * batch_size], [steps, batch_size])


def training_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    standardize: Standardization,
    start_step: int = 0,
    replica_chunks: tuple[int, int, int] = (0, 1, 1),
) -> tf.data.Dataset:
    """An endless stream of training batches, `len(images) // batch_size` per epoch.

    Args:
      images: uint8 or float images, (N, 28, 28) or (N, 28, 28, 1).
      labels: class indices (N,).
      batch_size: static batch size; each epoch drops its remainder so shapes never change.
      seed: with the epoch number, fixes each epoch's order.
      standardize: applied to each gathered batch.
      start_step, replica_chunks: as for `training_order`.
    """
    rows = training_order(len(images), batch_size, seed, start_step, replica_chunks)
    return gathered(rows, batch_maker(images, labels, standardize))


def training_order(
    num_examples: int,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    replica_chunks: tuple[int, int, int] = (0, 1, 1),
) -> tf.data.Dataset:
    """The endless stream of the training batches' indices (rows of `batch_size`).

    Args:
      num_examples: training images to draw from.
      batch_size: static batch size; each epoch drops its remainder so shapes never change.
      seed: with the epoch number, fixes each epoch's order.
      start_step: the step the stream starts at, counted from the first step of epoch 0;
        a resumed run passes its step count and gets exactly the batches it had not seen.
      replica_chunks: (first, count, of): each batch is cut into `of` equal chunks, one per
        replica of a tf.distribute run, and this stream yields chunks first .. first+count-1
        of each batch in turn, for the replicas it feeds. Together the replicas see exactly
        the batches of a one-device run, so the global batch and the order stay the book's.
    """
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_examples} training images"
        )
    first_epoch, first_step = divmod(start_step, num_examples // batch_size)
    epochs = tf.data.Dataset.counter(start=first_epoch)
    rows = (
        epochs.map(lambda epoch: epoch_order(num_examples, batch_size, seed, epoch))
        .unbatch()
        .skip(first_step)  # skips index rows only: nothing is gathered for them
    )
    first, count, of = replica_chunks
    if of > 1:
        if batch_size % of:
            raise ValueError(f"batch_size={batch_size} does not split into {of} replicas")
        rows = rows.map(
            lambda row: tf.reshape(row, [of, batch_size // of])[first : first + count]
        ).unbatch()
    return rows


def evaluation_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, standardize: Standardization
) -> tf.data.Dataset:
    """Every image once, in order, in batches of `batch_size` (the last one may be smaller)."""
    rows = tf.data.Dataset.range(len(images), output_type=tf.int32).batch(batch_size)
    return gathered(rows, batch_maker(images, labels, standardize))


def gathered(index_rows: tf.data.Dataset, make_batch) -> tf.data.Dataset:
    """The batches of `index_rows`, each row's made by `make_batch` (see `batch_maker`),
    in parallel and ahead of use, with tf.data's autotuning off (see `NO_AUTOTUNE`)."""
    return (
        index_rows.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(NO_AUTOTUNE)
    )
