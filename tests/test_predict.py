"""scripts/predict.py: an exported model classifies IDX files, .npy arrays and PNG images."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import SCRIPTS, idx_bytes, run_script

from fastconv import data, export, pipeline
from fastconv.model import ConvNet
from fastconv.trainer import Trainer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, fashion_mnist):
    """A model trained for 300 steps on the real data, exported."""
    trainer = Trainer(ConvNet(seed=0), 0.05)
    split = data.stratified_split(fashion_mnist.train_labels)
    batches = pipeline.training_batches(
        fashion_mnist.train_images[split.train],
        fashion_mnist.train_labels[split.train],
        64,
        0,
        pipeline.Standardization(),
    )
    trainer.train(iter(batches), tf.constant(300))
    return export.export(trainer, pipeline.Standardization(), tmp_path_factory.mktemp("model"))


def predictions(stdout: str) -> list[tuple[str, int, str, float]]:
    lines = stdout.strip().splitlines()
    matches = [re.fullmatch(r"(.+)\[(\d+)\]: (.+) \((\d\.\d{3})\)", line) for line in lines]
    assert all(matches), stdout
    return [(m.group(1), int(m.group(2)), m.group(3), float(m.group(4))) for m in matches]


def test_classifies_idx_npy_and_png_as_the_model_does(model_dir, fashion_mnist, tmp_path):
    images = fashion_mnist.test_images[:6]
    idx = tmp_path / "images.idx"
    idx.write_bytes(idx_bytes(images[:3]))
    npy = tmp_path / "images.npy"
    np.save(npy, images[3:5].astype(np.int64))  # integers 0-255 of another type are accepted
    png = tmp_path / "image.png"
    png.write_bytes(tf.io.encode_png(images[5][..., None]).numpy())
    run = run_script("predict.py", str(model_dir), str(idx), str(npy), str(png))
    assert run.returncode == 0, run.stderr
    got = predictions(run.stdout)
    assert [(path, index) for path, index, _, _ in got] == [
        (str(idx), 0),
        (str(idx), 1),
        (str(idx), 2),
        (str(npy), 0),
        (str(npy), 1),
        (str(png), 0),
    ]
    classify = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    probabilities = classify(images=tf.constant(images))["probabilities"].numpy()
    assert [name for _, _, name, _ in got] == [data.CLASS_NAMES[i] for i in probabilities.argmax(1)]
    np.testing.assert_allclose([p for *_, p in got], probabilities.max(1), atol=5e-4)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("floats.npy", np.zeros((2, 28, 28), np.float32), "array of float32, expected uint8"),
        ("wide.npy", np.zeros((2, 32, 28), np.uint8), "images of shape (2, 32, 28)"),
        ("labels.idx", np.zeros(5, np.uint8), "images of shape (5,)"),
        ("empty.npy", np.zeros((0, 28, 28), np.uint8), "holds no images"),
        ("empty-ints.npy", np.zeros(0, np.int64), "holds no images"),
        ("broken.png", b"\x89PNG not really", "not a readable PNG image"),
        ("missing.idx", None, "file not found"),
        ("flat.npy", np.zeros((5, 784), np.uint8), "images of shape (5, 784), expected (28, 28)"),
        ("a-folder", "folder", "is a folder, not a file"),
        ("anim.png", b"GIF89a\x1c\0", "not an IDX file, .npy array, PNG or JPEG image (it begins"),
    ],
)
def test_bad_input_is_one_line_naming_it(model_dir, tmp_path, name, content, problem):
    path = tmp_path / name
    if isinstance(content, str):  # a folder
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None and name.endswith(".npy"):
        np.save(path, content)
    elif content is not None:
        path.write_bytes(idx_bytes(content))
    run = run_script("predict.py", str(model_dir), str(path))
    assert run.returncode == 2
    errors = run.stderr.splitlines()  # the error alone: none of TensorFlow's C++ lines
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}: {problem}"), run.stderr
    assert not run.stdout


def test_a_jpeg_is_read_by_its_content_whatever_its_name(model_dir, fashion_mnist, tmp_path):
    jpeg = tf.io.encode_jpeg(fashion_mnist.test_images[0][..., None], quality=100).numpy()
    paths = [tmp_path / name for name in ("coat.jpg", "coat.png", "coat")]
    for path in paths:
        path.write_bytes(jpeg)
    run = run_script("predict.py", str(model_dir), *map(str, paths))
    assert run.returncode == 0, run.stderr
    pixels = tf.io.decode_jpeg(jpeg, channels=1)[..., 0]
    classify = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    expected = classify(images=pixels[None])["probabilities"].numpy()[0].argmax()
    assert [(path, index, name) for path, index, name, _ in predictions(run.stdout)] == [
        (str(path), 0, data.CLASS_NAMES[expected]) for path in paths
    ]


def test_a_folder_that_is_not_a_model_is_one_line(tmp_path, fashion_mnist):
    npy = tmp_path / "images.npy"
    np.save(npy, fashion_mnist.test_images[:1])
    run = run_script("predict.py", str(tmp_path), str(npy))
    assert run.returncode == 2
    assert f"error: {tmp_path}: not a model exported by fastconv --export" in run.stderr


def test_output_that_cannot_be_written_ends_without_a_traceback(model_dir, tmp_path):
    """A reader gone (`| head`): quietly, 141, as `yes | head -1`; a full or closed output:
    one line, 120."""
    npy = tmp_path / "images.npy"
    np.save(npy, np.zeros((3, 28, 28), np.uint8))
    command = [sys.executable, str(SCRIPTS / "predict.py"), str(model_dir), str(npy)]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    with os.fdopen(write_end, "w") as gone:
        run = subprocess.run(command, stdout=gone, stderr=subprocess.PIPE, text=True)
    assert (run.returncode, run.stderr) == (141, "")
    if Path("/dev/full").exists():
        with open("/dev/full", "w") as full:
            run = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True)
        assert (run.returncode, run.stderr) == (
            120,
            "error: cannot write the output (No space left on device)\n",
        )
    run = subprocess.run(command, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1))
    assert (run.returncode, run.stderr) == (
        120,
        "error: cannot write the output: stdout is closed\n",
    )


def test_a_path_that_the_terminal_cannot_encode_is_printed_escaped(model_dir, tmp_path):
    npy = tmp_path / "이미지.npy"
    np.save(npy, np.zeros((1, 28, 28), np.uint8))
    ascii_terminal = {**os.environ, "LC_ALL": "C", "PYTHONIOENCODING": "ascii"}
    run = run_script("predict.py", str(model_dir), str(npy), env=ascii_terminal)
    assert run.returncode == 0, run.stderr
    ((name, index, _, _),) = predictions(run.stdout)
    assert (name, index) == (str(npy).encode("ascii", "backslashreplace").decode(), 0)
