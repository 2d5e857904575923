"""Fashion-MNIST on disk: finding the four IDX files, reading and validating them, the split.

Everything here is NumPy; the tf.data side lives in `fastconv.pipeline`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
from isal import igzip, isal_zlib  # ISA-L's gzip: the 26 MB of images in half zlib's time

from fastconv.config import RECIPES, ConfigError, TrainConfig

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28

# The four files under the names Zalando published them (and Keras and Debian keep).
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
KERAS_CACHE = Path("~/.keras/datasets/fashion-mnist")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FASHION_MNIST_DIR"
HOW_TO_GET = (
    "install Debian's package (apt-get install dataset-fashion-mnist) or pass "
    "--data-dir DIR holding the four IDX files"
)

_IDX_UBYTE = 0x08  # the only element type Fashion-MNIST uses


class DataError(Exception):
    """The data set is missing or a file of it is not what it must be; the message names it."""


class DataNotFound(DataError):
    """No folder searched holds the data set, and no download was attempted."""


@dataclasses.dataclass(frozen=True)
class FashionMNIST:
    """The data set as uint8 arrays: images (N, 28, 28), labels (N,) in 0..9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: Path


@dataclasses.dataclass(frozen=True)
class Split:
    """Indices into the training images: the book's stratified train / validation split."""

    train: np.ndarray
    validation: np.ndarray


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file of unsigned bytes, gzip-compressed or raw, as an array of its shape.

    Raises DataError naming the file for anything that is not a complete, well-formed file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = igzip.decompress(raw)
        except (EOFError, OSError, isal_zlib.error) as error:
            raise DataError(f"{path}: corrupt or truncated gzip data ({error})") from None
    if not raw:
        raise DataError(f"{path}: file is empty")
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    if raw[2] != _IDX_UBYTE:
        raise DataError(f"{path}: IDX element type 0x{raw[2]:02x} is not unsigned bytes (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header declares {ndim} dimensions but is cut short")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + math.prod(shape)  # Python's integers: no overflow on absurd sizes
    if len(raw) != expected:
        raise DataError(f"{path}: holds {len(raw)} bytes but its header {shape} needs {expected}")
    try:
        return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)
    except ValueError:  # an empty array whose other dimensions exceed what NumPy can index
        raise DataError(f"{path}: IDX dimensions {shape} are too large") from None


def read_images_and_labels(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads a pair of IDX files and checks that they describe the same labelled images."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:  # e.g. a labels file in the images' place: say what it holds
        hint = " (is it a labels file?)" if images.ndim == 1 else ""
        raise DataError(
            f"{images_path}: holds an array of shape {images.shape}, expected images "
            f"(N, {IMAGE_SIZE}, {IMAGE_SIZE}){hint}"
        )
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{images_path}: images of shape {images.shape[1:]}, "
            f"expected (N, {IMAGE_SIZE}, {IMAGE_SIZE})"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: labels of shape {labels.shape}, expected (N,)")
    if len(images) == 0:
        raise DataError(f"{images_path}: holds no images")
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for the {len(images)} images "
            f"of {images_path.name}"
        )
    if labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(f"{labels_path}: label {labels[bad]} at index {bad} is outside 0-9")
    return images, labels


def find_file(folder: Path, stem: str) -> Path | None:
    """The file `stem` or `stem.gz` in `folder`, the compressed one first; None if neither.
    PermissionError where this user may not look into `folder` (or a folder above it)."""
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def holds_dataset(folder: Path) -> bool:
    try:
        return all(find_file(folder, stem) for stem in FILES.values())
    except PermissionError:  # a folder this user may not look into holds no data for it
        return False


def candidate_dirs() -> list[Path]:
    """Where the data set is looked for when no folder is given, in order."""
    found = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
    return [*found, KERAS_CACHE.expanduser(), DEBIAN_DIR]


def locate(data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The folder to read from: `data_dir`, else $FASHION_MNIST_DIR, Keras's cache, Debian's.

    An explicit folder is used as given, never replaced by another. When no candidate holds
    the data, Keras downloads it into its cache, where the network allows.
    """
    if data_dir is not None:
        folder = Path(data_dir)
        try:
            if not folder.is_dir():
                raise DataError(f"{folder}: no such directory (--data-dir)")
            missing = [stem for stem in FILES.values() if not find_file(folder, stem)]
        except OSError as error:
            raise DataError(f"{folder}: cannot read ({error.strerror}) (--data-dir)") from None
        if missing:
            raise DataError(f"{folder}: missing {', '.join(missing)} (.gz or raw)")
        return folder
    searched = candidate_dirs()
    for folder in searched:
        if holds_dataset(folder):
            return folder
    if download:
        try:
            return _download(KERAS_CACHE.expanduser())
        except Exception as error:  # any failure to fetch means: no data here
            reason = f"download failed: {str(error).splitlines()[0] if str(error) else error!r}"
        raise DataError(f"Fashion-MNIST not found in {_joined(searched)} ({reason}); {HOW_TO_GET}")
    raise DataNotFound(
        f"Fashion-MNIST not found in {_joined(searched)} (download not attempted); {HOW_TO_GET}"
    )


def _joined(folders: list[Path]) -> str:
    return ", ".join(map(str, folders))


def _download(folder: Path) -> Path:
    """Fetches the four files with Keras's downloader; the origin can be overridden for tests."""
    from keras.utils import get_file  # imported late: only this rare path needs it

    origin = os.environ.get("FASHION_MNIST_ORIGIN", KERAS_ORIGIN)
    # get_file falls back to /tmp when its cache folder does not exist yet: make it first.
    folder.mkdir(parents=True, exist_ok=True)
    for stem in FILES.values():
        get_file(stem + ".gz", origin + stem + ".gz", cache_dir=str(folder), cache_subdir=".")
    return folder


def load(data_dir: str | os.PathLike | None = None, download: bool = True) -> FashionMNIST:
    """Finds, reads and validates the training and test files."""
    folder = locate(data_dir, download)
    path = {key: find_file(folder, stem) for key, stem in FILES.items()}
    train = read_images_and_labels(path["train_images"], path["train_labels"])
    test = read_images_and_labels(path["test_images"], path["test_labels"])
    return FashionMNIST(*train, *test, source=folder)


def stratified_split(labels: np.ndarray, validation_fraction: float = 0.2, seed: int = 42) -> Split:
    """Holds out `validation_fraction` of every class, chosen at random with `seed`.

    On Fashion-MNIST's 60,000 images with the defaults: 48,000 / 12,000, every class
    4,800 / 1,200, as the book's `train_test_split(..., stratify=y, random_state=42)`.
    """
    rng = np.random.default_rng(seed)
    train, validation = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held_out = round(len(members) * validation_fraction)
        validation.append(members[:held_out])
        train.append(members[held_out:])
    return Split(
        train=rng.permutation(np.concatenate(train)),
        validation=rng.permutation(np.concatenate(validation)),
    )


@dataclasses.dataclass(frozen=True)
class BookSplit:
    """The arrays a run trains, validates and tests on: the book's split of the training
    images, and the test set; and the training steps an epoch of them makes."""

    train_images: np.ndarray
    train_labels: np.ndarray
    validation_images: np.ndarray
    validation_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: Path
    # Each epoch drops the remainder of the training images, as the book does.
    steps_per_epoch: int


def book_split(dataset: FashionMNIST, config: TrainConfig) -> BookSplit:
    """The run's arrays, split as `config` says, and its steps per epoch. The one place a
    batch is checked against the training set: a larger one is a ConfigError."""
    if len(dataset.train_images) != len(dataset.train_labels):
        raise DataError(
            f"{len(dataset.train_images)} training images but {len(dataset.train_labels)} labels"
        )
    split = stratified_split(dataset.train_labels, config.validation_fraction, config.seed)
    require_batch_fits(config, len(split.train), len(dataset.train_images))
    return BookSplit(
        dataset.train_images[split.train],
        dataset.train_labels[split.train],
        dataset.train_images[split.validation],
        dataset.train_labels[split.validation],
        dataset.test_images,
        dataset.test_labels,
        dataset.source,
        steps_per_epoch=len(split.train) // config.batch_size,
    )


def require_batch_fits(config: TrainConfig, train_size: int, total: int | None = None) -> None:
    """A batch fits the training images (epochs drop their remainder: none would be left).

    With `total`, the images the split held `train_size` of, a batch of the recipe's size
    is the split's fault: the refusal names --validation-fraction, not a flag not given.
    """
    if config.batch_size <= train_size:
        return
    recipes = RECIPES[config.recipe].get("batch_size", TrainConfig.batch_size)
    if total is None or config.batch_size != recipes:
        requirement = f"is larger than the {train_size} training images"
        raise ConfigError.invalid("batch_size", config.batch_size, requirement)
    raise ConfigError.invalid(
        "validation_fraction",
        config.validation_fraction,
        f"leaves {train_size} of the {total} training images, fewer than a batch "
        f"(--batch-size {config.batch_size})",
    )
