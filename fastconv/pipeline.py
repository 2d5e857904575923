"""tf.data pipelines: the images stay resident as one tensor and whole batches are gathered.

Each epoch's order is a stateless function of (seed, epoch), so the batches are reshuffled
every epoch, reproducible, and the same wherever a run starts or resumes. Batching, one-hot
encoding and standardization run on whole batches: nothing is done per image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from fastconv.augment import Augmentation
from fastconv.config import TrainConfig
from fastconv.data import IMAGE_SIZE, NUM_CLASSES, BookSplit

# A training set up to this size is kept on the device (Fashion-MNIST's is 38 MB) and each
# batch gathered inside the compiled loop; a larger one streams from host memory, prefetched.
RESIDENT_BYTES = 2**30


# tf.data's autotuning thread made deleting an iterator wait, for seconds at the end of some
# runs on a 2-core host (bench/RESULTS.md). These pipelines only gather whole batches, so
# fixed settings lose nothing.
NO_AUTOTUNE = tf.data.Options()
NO_AUTOTUNE.autotune.enabled = False


@dataclasses.dataclass(frozen=True)
class Standardization:
    """Pixels become (x - mean) / std; the default is the book's x / 255."""

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

    def __call__(self, images):
        """A tensor of images standardized, in the graph (batches, evaluation sets, exports)."""
        images = tf.cast(images, tf.float32)
        if self.mean:
            images = images - self.mean
        # A division, not a multiplication by 1 / std: bit for bit the book's x / 255.
        return images / self.std if self.std != 1.0 else images


IDENTITY = Standardization(mean=0.0, std=1.0)


def plain(function: Callable) -> Callable:
    """`function` for tf.data to trace as it is, not rewritten by AutoGraph: the pipelines'
    functions hold no control flow on tensors, and the rewrite only costs start-up time."""
    return tf.autograph.experimental.do_not_convert(function)


def batch_maker(
    images: np.ndarray,
    labels: np.ndarray,
    standardize: Standardization,
    augmentation: Augmentation | None = None,
):
    """A function from a batch of indices to (images (B, 28, 28, 1) float32, one-hot targets).

    The arrays become tensors on the device of the enclosing `tf.device` scope: called in
    a tf.data map they live with the pipeline on the host; called inside the training loop
    under a GPU's scope (`fastconv.trainer.Trainer.make_batch`), the data set is resident on
    the GPU and only index rows cross to it. With an `augmentation`, the gathered images
    are augmented, before standardizing, as the batch of step `step` (and a replica's share,
    `part` of `parts`, as `Augmentation` says); without, `step` and `part` go unused.
    """
    images = tf.constant(np.reshape(images, (-1, IMAGE_SIZE, IMAGE_SIZE, 1)))
    labels = tf.constant(labels, tf.int32)

    def make_batch(indices, step=None, part=0, parts=1):
        batch_images = tf.gather(images, indices)
        if augmentation is not None:
            batch_images = augmentation(batch_images, step, part, parts)
        return (
            standardize(batch_images),
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
    augmentation: Augmentation | None = None,
) -> tf.data.Dataset:
    """An endless stream of training batches, `len(images) // batch_size` per epoch.

    Args:
      images: uint8 or float images, (N, 28, 28) or (N, 28, 28, 1).
      labels: class indices (N,).
      batch_size: static batch size; each epoch drops its remainder so shapes never change.
      seed: with the epoch number, fixes each epoch's order.
      standardize: applied to each gathered batch.
      start_step, replica_chunks: as for `training_order`.
      augmentation: applied to each gathered batch, keyed by its step, before standardizing.
    """
    make_batch = batch_maker(images, labels, standardize, augmentation)
    if augmentation is None:
        rows = training_order(len(images), batch_size, seed, start_step, replica_chunks)
        return gathered(rows, make_batch)
    rows = training_order(
        len(images), batch_size, seed, start_step, replica_chunks, with_steps=True
    )
    parts = replica_chunks[2]
    return gathered(rows, lambda row, step, part: make_batch(row, step, part, parts))


def training_order(
    num_examples: int,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    replica_chunks: tuple[int, int, int] = (0, 1, 1),
    with_steps: bool = False,
) -> tf.data.Dataset:
    """The endless stream of the training batches' indices (rows of `batch_size`).

    Args:
      num_examples: training images to draw from.
      batch_size: static batch size; each epoch drops its remainder so shapes never change.
        It fits the examples (`fastconv.data.require_batch_fits`).
      seed: with the epoch number, fixes each epoch's order.
      start_step: the step the stream starts at, counted from the first step of epoch 0;
        a resumed run passes its step count and gets exactly the batches it had not seen.
      replica_chunks: (first, count, of): each batch is cut into `of` equal chunks, one per
        replica of a tf.distribute run, and this stream yields chunks first .. first+count-1
        of each batch in turn, for the replicas it feeds. Together the replicas see exactly
        the batches of a one-device run, so the global batch and the order stay the book's.
      with_steps: yield (row, step, part): the row, the number of its step counted as
        `start_step` is, and which chunk of its batch it is (0 without replica chunks).
    """
    steps_per_epoch = num_examples // batch_size
    first_epoch, first_step = divmod(start_step, steps_per_epoch)
    epochs = tf.data.Dataset.counter(start=first_epoch)
    rows = epochs.map(plain(lambda epoch: epoch_order(num_examples, batch_size, seed, epoch)))
    rows = rows.unbatch()
    if with_steps:
        steps = tf.data.Dataset.counter(start=first_epoch * steps_per_epoch)
        rows = tf.data.Dataset.zip(rows, steps, tf.data.Dataset.from_tensors(0).repeat())
    rows = rows.skip(first_step)  # skips index rows only: nothing is gathered for them
    first, count, of = replica_chunks
    if of > 1:
        if batch_size % of:
            raise ValueError(f"batch_size={batch_size} does not split into {of} replicas")

        def chunks(row, *step_and_part):
            shares = tf.reshape(row, [of, batch_size // of])[first : first + count]
            if not step_and_part:
                return shares
            return shares, tf.fill([count], step_and_part[0]), tf.range(first, first + count)

        rows = rows.map(plain(chunks)).unbatch()
    return rows


class EvaluationSet(NamedTuple):
    """Every image of a set once, in order, standardized, in batches of a static size, as
    two tensors resident on the device of the enclosing `tf.device` scope.

    images: (batches, batch_size, 28, 28, 1) float32.
    targets: one-hot, (batches, batch_size, 10) float32. The last batch is padded with blank
      images whose targets are all zero, so they add nothing to a loss or a count.

    Evaluated every epoch, the set is made once: no tf.data iterator per pass, and every
    batch has the same shape.
    """

    images: tf.Tensor
    targets: tf.Tensor


def evaluation_set(
    images: np.ndarray, labels: np.ndarray, batch_size: int, standardize: Standardization
) -> EvaluationSet:
    """Every image once, in order, in batches of `batch_size` (see `EvaluationSet`), or in
    one batch when the set is smaller: padding past the set would be work and memory for
    nothing (a batch of 10**8 images asked for is 300 GB of blanks)."""
    count = len(images)
    batch_size = min(batch_size, count)
    batches = -(-count // batch_size)
    padding = [0, batches * batch_size - count]
    standardized = standardize(np.reshape(images, (count, IMAGE_SIZE, IMAGE_SIZE, 1)))
    blank_padded = tf.pad(standardized, [padding, [0, 0], [0, 0], [0, 0]])
    targets = tf.pad(tf.one_hot(labels, NUM_CLASSES), [padding, [0, 0]])
    return EvaluationSet(
        tf.reshape(blank_padded, [batches, batch_size, IMAGE_SIZE, IMAGE_SIZE, 1]),
        tf.reshape(targets, [batches, batch_size, NUM_CLASSES]),
    )


EVALUATION_SET_SPEC = EvaluationSet(  # any number of batches of any size: one trace
    tf.TensorSpec([None, None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32),
    tf.TensorSpec([None, None, NUM_CLASSES], tf.float32),
)


def gathered(index_rows: tf.data.Dataset, make_batch) -> tf.data.Dataset:
    """The batches of `index_rows`, each row's made by `make_batch` (see `batch_maker`),
    in parallel and ahead of use, with tf.data's autotuning off (see `NO_AUTOTUNE`)."""
    return (
        index_rows.map(plain(make_batch), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(NO_AUTOTUNE)
    )


@dataclasses.dataclass(frozen=True)
class Datasets:
    """The tf.data pipelines of a run, built from the arrays of the book's split."""

    validation: EvaluationSet
    test: EvaluationSet
    steps_per_epoch: int
    batch_size: int
    standardize: Standardization
    # With the training set resident on the device, the training stream yields index rows
    # and this gathers their batch inside the compiled loop (`Trainer.make_batch`); else None.
    make_batch: Callable | None
    training_from: Callable[[int], tf.data.Dataset]

    def train(self, start_step: int = 0) -> tf.data.Dataset:
        """The endless training stream from `start_step` on (a resumed run's step count)."""
        return self.training_from(start_step)

    @property
    def images_per_epoch(self) -> int:
        return self.steps_per_epoch * self.batch_size


def make_datasets(
    split: BookSplit,
    config: TrainConfig,
    strategy: tf.distribute.Strategy | None = None,
    resident: bool = False,
) -> Datasets:
    """The run's pipelines.

    Under a strategy, each worker's stream yields its replicas' shares of every global batch.
    `resident` keeps the training images as one tensor on the device of the enclosing
    `tf.device` scope, and the stream yields only the batches' indices.
    """
    images, labels = split.train_images, split.train_labels
    standardize = Standardization.named(config.standardize, images)
    augmentation = Augmentation(config.seed, config.shift) if config.augment else None
    make_batch = batch_maker(images, labels, standardize, augmentation) if resident else None

    def stream(start_step: int, replica_chunks=(0, 1, 1)) -> tf.data.Dataset:
        return training_batches(
            images,
            labels,
            config.batch_size,
            config.seed,
            standardize,
            start_step,
            replica_chunks,
            augmentation,
        )

    def training_from(start_step: int) -> tf.data.Dataset:
        if resident:
            order = training_order(len(images), config.batch_size, config.seed, start_step)
            return order.prefetch(2).with_options(NO_AUTOTUNE)
        if strategy:

            def worker_training(context: tf.distribute.InputContext):
                local = context.num_replicas_in_sync // context.num_input_pipelines
                first = context.input_pipeline_id * local
                return stream(start_step, (first, local, context.num_replicas_in_sync))

            return strategy.distribute_datasets_from_function(worker_training)
        return stream(start_step)

    def evaluation(images, labels) -> EvaluationSet:
        return evaluation_set(images, labels, config.eval_batch_size, standardize)

    return Datasets(
        validation=evaluation(split.validation_images, split.validation_labels),
        test=evaluation(split.test_images, split.test_labels),
        steps_per_epoch=split.steps_per_epoch,
        batch_size=config.batch_size,
        standardize=standardize,
        make_batch=make_batch,
        training_from=training_from,
    )
