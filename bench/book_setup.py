"""What the benchmarks' peers take from the book: its data as the book prepares them, and its
network written with Keras (section 08-5's model, without the dropout).

Imported by bench/peers.py and the end-to-end scripts, from this folder (they put it on
sys.path with this checkout's fastconv).
"""

from __future__ import annotations

import numpy as np


def book_arrays(dtype=np.float64) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The book's three sets as (x, y): images (N, 28, 28, 1) / 255 and one-hot targets, in
    `dtype` (the book's NumPy arrays are float64; Keras's users hand `fit` float32).

    "train" and "validation" are the book's stratified 48,000 / 12,000 split of the training
    images (`random_state=42`), "test" the 10,000 test images.
    """
    from fastconv import data

    dataset = data.load(download=False)
    split = data.stratified_split(dataset.train_labels)

    def arrays(images, labels):
        x = (images.reshape(-1, 28, 28, 1) / 255).astype(dtype)
        return x, np.eye(10, dtype=dtype)[labels]

    return {
        "train": arrays(dataset.train_images[split.train], dataset.train_labels[split.train]),
        "validation": arrays(
            dataset.train_images[split.validation], dataset.train_labels[split.validation]
        ),
        "test": arrays(dataset.test_images, dataset.test_labels),
    }


def keras_network():
    """The book's network as a `keras.Sequential`: conv 3x3 SAME with ReLU, 2x2 max pool,
    flatten, dense 100 with ReLU, dense 10 logits (the loss takes them `from_logits`)."""
    import keras

    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(10, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
