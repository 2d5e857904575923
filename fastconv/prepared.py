"""The run's arrays made ready for TensorFlow, in NumPy: how pixels are standardized, and the
evaluation sets standardized and padded into batches.

Importing this module does not import TensorFlow: the training command prepares its arrays
while TensorFlow imports in a thread of its own (`fastconv.importing`), where writing 70 MB
of fresh memory costs the run nothing. `fastconv.pipeline` then hands them to TensorFlow,
on a CPU without a copy (`fastconv.zero_copy`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from fastconv import zero_copy
from fastconv.config import TrainConfig
from fastconv.data import IMAGE_SIZE, NUM_CLASSES, BookSplit


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

    def __call__(self, images):
        """A tensor of images standardized, in the graph (training batches, exports)."""
        import tensorflow as tf  # here: this module is imported before TensorFlow is

        images = tf.cast(images, tf.float32)
        if self.mean:
            images = images - self.mean
        # A division, not a multiplication by 1 / std: bit for bit the book's x / 255.
        return images / self.std if self.std != 1.0 else images

    def into(self, out: np.ndarray, images: np.ndarray) -> None:
        """Writes the standardized `images` to the float32 array `out`, in NumPy: the same
        float32 operations as `__call__`, so the same numbers to the last bit."""
        np.copyto(out, images, casting="unsafe")
        if self.mean:
            np.subtract(out, np.float32(self.mean), out=out)
        if self.std != 1.0:
            np.divide(out, np.float32(self.std), out=out)


IDENTITY = Standardization(mean=0.0, std=1.0)


class EvaluationArrays(NamedTuple):
    """Every image of a set once, in order, in batches of a static size, as the compiled
    evaluation takes them (`fastconv.pipeline.EvaluationSet`).

    images: standardized, (batches, batch_size, 28, 28, 1) float32.
    targets: one-hot, (batches, batch_size, 10) float32. The last batch is padded with blank
      images whose targets are all zero, so they add nothing to a loss or a count.
    """

    images: np.ndarray
    targets: np.ndarray


def evaluation_arrays(
    images: np.ndarray, labels: np.ndarray, batch_size: int, standardize: Standardization
) -> EvaluationArrays:
    """`images` and `labels` as `EvaluationArrays`, in memory TensorFlow takes as it is."""
    count = len(images)
    batches = -(-count // batch_size)
    standardized = zero_copy.empty((batches, batch_size, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
    flat = standardized.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1)
    standardize.into(flat[:count], np.reshape(images, (count, IMAGE_SIZE, IMAGE_SIZE, 1)))
    flat[count:] = 0  # blank images
    targets = zero_copy.empty((batches, batch_size, NUM_CLASSES), np.float32)
    flat_targets = targets.reshape(-1, NUM_CLASSES)
    flat_targets[:] = 0  # the padding's rows stay all zero: no target
    flat_targets[np.arange(count), labels] = 1
    return EvaluationArrays(standardized, targets)


@dataclasses.dataclass(frozen=True)
class PreparedSplit:
    """The book's split with its standardization and its evaluation sets made (`prepare`)
    for the settings they depend on (`config.standardize`, `config.eval_batch_size`)."""

    split: BookSplit
    standardize: Standardization
    validation: EvaluationArrays
    test: EvaluationArrays
    settings: tuple[str, int]


def prepare(split: BookSplit | PreparedSplit, config: TrainConfig) -> PreparedSplit:
    """The split's validation and test sets as `config` evaluates them; a split prepared
    for the same settings as it is."""
    settings = (config.standardize, config.eval_batch_size)
    if isinstance(split, PreparedSplit):
        if split.settings == settings:
            return split
        split = split.split
    standardize = Standardization.named(config.standardize, split.train_images)

    def evaluation(images, labels):
        return evaluation_arrays(images, labels, config.eval_batch_size, standardize)

    return PreparedSplit(
        split,
        standardize,
        evaluation(split.validation_images, split.validation_labels),
        evaluation(split.test_images, split.test_labels),
        settings,
    )
