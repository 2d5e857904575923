"""A run's results: what `train_and_evaluate` returns, and what it leaves in the run folder
(metrics.json, the book's figures, the test set's TensorBoard summaries)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

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
    # The test set's counts of (true class, predicted class).
    test_confusion: np.ndarray | None = dataclasses.field(default=None, repr=False)


def curve_pngs(history: list[EpochResult]) -> dict[str, bytes]:
    """The per-epoch figures as PNG, by the names they get in the run folder."""
    return {
        "loss.png": figures.png_bytes(figures.loss_curves(history)),
        "accuracy.png": figures.png_bytes(figures.accuracy_curve(history)),
    }


def write_results(
    result: RunResult,
    logdir: Path,
    datasets: Datasets,
    summaries: Summaries,
    curves: dict[str, bytes],
) -> None:
    """The book's figures as PNG (the `curve_pngs` of the run's history, and the test set's
    confusion matrix), the test results in TensorBoard, and metrics.json, written last: its
    epochs say that the results of that many epochs are complete (`--resume` finishes a run
    whose results are missing)."""
    for name, png in curves.items():
        (logdir / name).write_bytes(png)
    confusion = figures.confusion_matrix(result.test_confusion, data.CLASS_NAMES)
    confusion_png = figures.png_bytes(confusion)
    (logdir / "confusion_matrix.png").write_bytes(confusion_png)
    summaries.test_results(
        len(result.history), result.test_loss, result.test_accuracy, confusion_png
    )
    summaries.flush()
    rundir.write_json(logdir / rundir.METRICS, metrics(result, datasets.images_per_epoch))


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
        # Per epoch: losses, accuracies, training seconds (bench/time_to_accuracy.py).
        "history": [dataclasses.asdict(epoch) for epoch in result.history],
    }
