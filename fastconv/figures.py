"""The book's figures, as PNG: train and validation loss per epoch (the book's plot), train
and validation accuracy per epoch, and the test set's confusion matrix.

Matplotlib's Agg backend draws without a screen, so figures are made on servers and in CI.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display needed: before pyplot is imported

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

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
