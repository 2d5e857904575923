"""A run's results: what `train_and_evaluate` returns, and what it leaves in the run folder
(metrics.json, the book's figures, the test set's TensorBoard summaries)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from fastconv import data, figures, rundir
from fastconv.config import TrainConfig
from fastconv.loop import EpochResult
from fastconv.pipeline import Datasets
from fastconv.summaries import Summaries
from fastconv.trainer import Trainer


@dataclasses.dataclass
class RunResult:
    config: TrainConfig
    history: list[EpochResult]
    val_loss: float
    val_accuracy: float
    test_loss: float
    test_accuracy: float
    compile_seconds: float
    train_seconds: float
    xla_speed_ratio: float | None  # XLA over graph-mode speed, probed on CPU runs with --xla
    trainer: Trainer = dataclasses.field(repr=False)
    checkpoint: str | None = None  # the last checkpoint saved (with a logdir)
    # This process's share of `train_seconds`: less when the run was resumed.
    train_seconds_here: float | None = None


def write_results(
    result: RunResult, logdir: Path, datasets: Datasets, summaries: Summaries
) -> None:
    """The book's figures as PNG, the test results in TensorBoard, and metrics.json, written
    last: its epochs say that the results of that many epochs are complete (`--resume`
    finishes a run whose results are missing)."""
    (logdir / "loss.png").write_bytes(figures.png_bytes(figures.loss_curves(result.history)))
    (logdir / "accuracy.png").write_bytes(figures.png_bytes(figures.accuracy_curve(result.history)))
    matrix = confusion_matrix(result.trainer, datasets.test)
    confusion_png = figures.png_bytes(figures.confusion_matrix(matrix, data.CLASS_NAMES))
    (logdir / "confusion_matrix.png").write_bytes(confusion_png)
    summaries.test_results(
        len(result.history), result.test_loss, result.test_accuracy, confusion_png
    )
    summaries.flush()
    rundir.write_json(logdir / rundir.METRICS, metrics(result, datasets.images_per_epoch))


def confusion_matrix(trainer: Trainer, dataset: tf.data.Dataset) -> np.ndarray:
    """Counts of (true class, predicted class) over an evaluation dataset."""
    matrix = tf.zeros([data.NUM_CLASSES, data.NUM_CLASSES], tf.int32)
    for images, targets in dataset:
        matrix += tf.math.confusion_matrix(
            tf.argmax(targets, axis=1), trainer.predict_step(images), data.NUM_CLASSES
        )
    return matrix.numpy()


def metrics(result: RunResult, images_per_epoch: int) -> dict:
    """The run's final numbers, as metrics.json keeps them."""
    last = result.history[-1]
    return {
        "epochs": len(result.history),
        "train_loss": last.train_loss,
        "train_accuracy": last.train_accuracy,
        "val_loss": result.val_loss,
        "val_accuracy": result.val_accuracy,
        "test_loss": result.test_loss,
        "test_accuracy": result.test_accuracy,
        "images_per_second": len(result.history) * images_per_epoch / result.train_seconds,
        "compile_seconds": result.compile_seconds,
        "train_seconds": result.train_seconds,
        "xla_speed_ratio": result.xla_speed_ratio,
    }
