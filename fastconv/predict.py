"""`python scripts/predict.py MODEL INPUT...` / `fastconv-predict`: classify images with an
exported model (`--export`).

Inputs are IDX image files (gzip or raw, like Fashion-MNIST's), NumPy `.npy` arrays of uint8
images (28, 28) or (N, 28, 28), and PNG or JPEG images of 28 x 28 pixels (colour is turned to
grey), each told by its content, not its name.
Each image gets one line: where it came from, its class, and the class's probability.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fastconv.data import IMAGE_SIZE, DataError, read_idx
from fastconv.importing import import_tensorflow
from fastconv.interruption import (
    OUTPUT_FAILED,
    READER_GONE,
    error_line,
    escaping_output,
    output_failure,
)

# What an input holds is told by its first bytes, whatever its name.
NPY_MAGIC = b"\x93NUMPY"
PICTURE_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG"}
IDX_MAGIC = (b"\0\0", b"\x1f\x8b")  # raw, or gzip-compressed


def read_images(path: Path) -> np.ndarray:
    """The uint8 images (N, 28, 28) in one input file; DataError naming it otherwise."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file")
    try:
        with open(path, "rb") as file:
            head = file.read(8)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    picture = next((kind for magic, kind in PICTURE_MAGIC.items() if head.startswith(magic)), None)
    if head.startswith(NPY_MAGIC):
        images = _read_npy(path)
    elif picture:
        images = _read_picture(path, picture)
    elif head.startswith(IDX_MAGIC) or not head:
        images = read_idx(path)
    else:
        raise DataError(
            f"{path}: not an IDX file, .npy array, PNG or JPEG image (it begins {head[:4].hex()})"
        )
    if images.size == 0:
        raise DataError(f"{path}: holds no images")
    if images.ndim not in (2, 3) or images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{path}: images of shape {images.shape}, expected ({IMAGE_SIZE}, {IMAGE_SIZE}) "
            f"or (N, {IMAGE_SIZE}, {IMAGE_SIZE})"
        )
    return images if images.ndim == 3 else images[np.newaxis]


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npy array ({error})") from None
    # Pixels as the model takes them: integers 0-255. Floats may be already scaled (0-1)
    # or standardized, which would be silently misread, so they are refused.
    if array.size == 0:
        raise DataError(f"{path}: holds no images")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
            raise DataError(f"{path}: array of {array.dtype}, expected uint8 pixels 0-255")
        array = array.astype(np.uint8)
    return array


def _read_picture(path: Path, kind: str) -> np.ndarray:
    """A PNG or JPEG image as grey uint8 pixels (colour turned to grey)."""
    import_tensorflow()  # only now, and without its C++ start-up lines
    import tensorflow as tf

    try:
        image = tf.io.decode_image(path.read_bytes(), channels=1, expand_animations=False)
    except tf.errors.InvalidArgumentError:
        raise DataError(f"{path}: not a readable {kind} image") from None
    return image.numpy()[..., 0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Classify Fashion-MNIST-style images with a model saved by --export."
    )
    parser.add_argument("model", help="the folder --export wrote (a SavedModel)")
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        help="IDX image files, .npy uint8 arrays, 28x28 PNGs or JPEGs",
    )
    return parser


def load_classifier(directory: str):
    """The exported model's serving function and class names; DataError if it is not one."""
    import_tensorflow()  # only now, and without its C++ start-up lines
    import tensorflow as tf

    from fastconv.export import SIGNATURE

    try:
        model = tf.saved_model.load(directory)
        classify = model.signatures[SIGNATURE]
        class_names = [name.decode() for name in model.class_names.numpy()]
    except (OSError, KeyError, AttributeError, ValueError):
        raise DataError(f"{directory}: not a model exported by fastconv --export") from None
    return classify, class_names


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 an input or model it cannot read, 141 the output's reader went
    away (quietly, as `yes | head -1`), 120 the output could not be written."""
    escaping_output()
    args = build_parser().parse_args(argv)
    if sys.stdout is None:  # started with its output closed (`>&-`)
        error_line("cannot write the output: stdout is closed")
        return OUTPUT_FAILED
    try:
        images = {path: read_images(path) for path in args.inputs}  # all checked before any work
        classify, class_names = load_classifier(args.model)
    except DataError as error:
        error_line(error)
        return 2
    try:
        for path, batch in images.items():
            probabilities = classify(images=batch)["probabilities"].numpy()
            for index, row in enumerate(probabilities):
                label = int(np.argmax(row))
                print(f"{path}[{index}]: {class_names[label]} ({row[label]:.3f})")
        sys.stdout.flush()  # here, where a failure is caught, not at the exit
    except OSError as error:
        exit_code, cause = output_failure(error)
        if exit_code != READER_GONE:
            error_line(cause)
        return exit_code
    return 0


def main_entry() -> None:
    """The console script `fastconv-predict`, and scripts/predict.py."""
    sys.exit(main())
