"""Small IDX files, synthetic data sets, and running the command-line scripts, for the tests."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from fastconv import data


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """The IDX encoding of a uint8 array: magic (0, 0, type, ndim), big-endian dims, data."""
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Writes `array` as IDX; gzip-compressed when the name ends in .gz (or `compress`)."""
    payload = idx_bytes(array)
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def synthetic_images(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` random uint8 images with balanced labels 0-9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    return images, labels


def write_dataset(
    folder: Path, train: int = 600, test: int = 100, compress: bool = True, seed: int = 0
) -> Path:
    """A complete small Fashion-MNIST folder of synthetic images."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for images_key, labels_key, count in (
        ("train_images", "train_labels", train),
        ("test_images", "test_labels", test),
    ):
        images, labels = synthetic_images(count, seed)
        write_idx(folder / (data.FILES[images_key] + suffix), images)
        write_idx(folder / (data.FILES[labels_key] + suffix), labels)
    return folder


def synthetic_dataset(train: int = 600, test: int = 100) -> data.FashionMNIST:
    """An in-memory data set of random images (nothing to learn, everything to compute)."""
    train_images, train_labels = synthetic_images(train, seed=1)
    test_images, test_labels = synthetic_images(test, seed=2)
    return data.FashionMNIST(
        train_images, train_labels, test_images, test_labels, source="synthetic"
    )


SCRIPTS = Path(__file__).parents[1] / "scripts"


def run_script(name: str, *args: str, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    """Runs scripts/<name> with this interpreter; its output is captured as text."""
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def start_script(name: str, *args: str, **popen) -> subprocess.Popen:
    """Starts scripts/<name>; stdout is a line-buffered text pipe, stderr is kept apart."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        **popen,
    )


def indexed_images(count: int) -> np.ndarray:
    """Images that carry their own index in their first two pixels (base 256)."""
    images = np.zeros((count, 28, 28), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.divmod(np.arange(count), 256)
    return images


def indices_of(batch_images: tf.Tensor) -> np.ndarray:
    """Recovers the indices from a batch of (x / 255) images."""
    pixels = np.rint(batch_images.numpy()[:, 0, :2, 0] * 255).astype(int)
    return pixels[:, 0] * 256 + pixels[:, 1]


def checkpoint_values(logdir: Path) -> dict[str, np.ndarray]:
    """Every tensor of a run folder's latest checkpoint, by name (the save counter aside)."""
    reader = tf.train.load_checkpoint(str(logdir / "checkpoints"))
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if not name.startswith(("save_counter", "_CHECKPOINTABLE"))
    }
