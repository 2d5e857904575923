"""A run's results: what `train_and_evaluate` returns, and what it leaves in the run folder:
metrics.json, the book's figures as PNG (train and validation loss per epoch, the book's plot;
accuracy per epoch; the test set's confusion matrix) and the test set's TensorBoard summaries.

Matplotlib's Agg backend draws without a screen, so figures are made on servers and in CI.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed: before pyplot is imported

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from fastconv import data, rundir
from fastconv.config import TrainConfig
from fastconv.loop import EpochResult
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
    trainer: Trainer = dataclasses.field(repr=False)
    checkpoint: str | None = None  # the last checkpoint saved (with a logdir)
    # This process's share of `train_seconds`: less when the run was resumed.
    train_seconds_here: float | None = None
    # The test set's counts of (true class, predicted class).
    test_confusion: np.ndarray | None = dataclasses.field(default=None, repr=False)
    folder: Path | None = None  # this worker's run folder (with a logdir)


def write_results(
    result: RunResult, logdir: Path, images_per_epoch: int, summaries: Summaries
) -> None:
    """The book's figures as PNG, the test results in TensorBoard, and metrics.json, written
    last: its epochs say that the results of that many epochs are complete (`--resume`
    finishes a run whose results are missing)."""
    (logdir / "loss.png").write_bytes(png_bytes(loss_curves(result.history)))
    (logdir / "accuracy.png").write_bytes(png_bytes(accuracy_curve(result.history)))
    confusion_png = png_bytes(confusion_matrix(result.test_confusion, data.CLASS_NAMES))
    (logdir / "confusion_matrix.png").write_bytes(confusion_png)
    summaries.test_results(
        len(result.history), result.test_loss, result.test_accuracy, confusion_png
    )
    summaries.flush()
    rundir.write_json(logdir / rundir.METRICS, metrics(result, images_per_epoch))


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
        # Per epoch: losses, accuracies, training seconds (bench/time_to_accuracy.py).
        "history": [dataclasses.asdict(epoch) for epoch in result.history],
    }


SIZE_INCHES = (6.4, 4.8)
DPI = 100  # with SIZE_INCHES: 640 x 480 pixels


def _per_epoch(axes, history, what: str, names: tuple[str, str], title: str) -> None:
    epochs = [e.epoch for e in history]
    for name in names:
        axes.plot(epochs, [getattr(e, name) for e in history], label=name)
    axes.set(xlabel="epoch", ylabel=what, title=title)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axes.legend()


def loss_curves(history) -> plt.Figure:
    """The book's plot after `fit`: train and validation loss per epoch."""
    figure, axes = plt.subplots(figsize=SIZE_INCHES, dpi=DPI)
    _per_epoch(axes, history, "loss", ("train_loss", "val_loss"), "Loss per epoch")
    return figure


def accuracy_curve(history) -> plt.Figure:
    figure, axes = plt.subplots(figsize=SIZE_INCHES, dpi=DPI)
    _per_epoch(axes, history, "accuracy", ("train_accuracy", "val_accuracy"), "Accuracy per epoch")
    return figure


def confusion_matrix(matrix: np.ndarray, class_names) -> plt.Figure:
    """Counts of (true class, predicted class), each cell labelled with its count."""
    figure, axes = plt.subplots(figsize=(8, 8), dpi=DPI)
    axes.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test set)")
    threshold = matrix.max() / 2
    for (row, column), count in np.ndenumerate(matrix):
        color = "white" if count > threshold else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=color, fontsize=8)
    # Margins fixed for the class names: tight_layout would draw the figure one more time.
    figure.subplots_adjust(left=0.17, bottom=0.17, right=0.97, top=0.94)
    return figure


def png_bytes(figure: plt.Figure) -> bytes:
    """The figure as PNG, and the figure closed (pyplot keeps every open figure alive)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
