"""The IDX reader, the search for the data set, and the book's split."""

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import idx_bytes, synthetic_images, write_dataset, write_idx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastconv import cli, data
from fastconv.config import TrainConfig


@pytest.fixture
def no_default_dirs(monkeypatch, tmp_path):
    """Points Keras's cache and Debian's folder at empty places and clears the env var."""
    monkeypatch.setattr(data, "KERAS_CACHE", tmp_path / "keras-cache")
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    return tmp_path


@pytest.mark.parametrize("name", ["images.gz", "images"])
def test_read_idx_round_trips_gzip_and_raw(tmp_path, name):
    images, _ = synthetic_images(7)
    path = write_idx(tmp_path / name, images)
    np.testing.assert_array_equal(data.read_idx(path), images)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    path = write_idx(tmp_path / "labels-without-suffix", labels, compress=True)
    np.testing.assert_array_equal(data.read_idx(path), labels)


def corrupt(kind: str) -> bytes:
    good = idx_bytes(synthetic_images(3)[0])
    return {
        "empty": b"",
        "truncated gzip": gzip.compress(good)[:-40],
        "bad magic": b"\x08\x03" + good[2:],
        "not bytes": good[:2] + b"\x0d" + good[3:],
        "header cut short": good[:9],
        "truncated data": good[:-5],
        "trailing data": good + b"\0",
        "zero dimensions": b"\0\0\x08\0",
    }[kind]


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "file is empty"),
        ("truncated gzip", "corrupt or truncated gzip"),
        ("bad magic", "bad magic number"),
        ("not bytes", "not unsigned bytes"),
        ("header cut short", "cut short"),
        ("truncated data", "needs"),
        ("trailing data", "needs"),
        ("zero dimensions", "cut short"),
    ],
)
def test_read_idx_names_the_file_and_the_problem(tmp_path, kind, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(corrupt(kind))
    with pytest.raises(data.DataError, match=message) as error:
        data.read_idx(path)
    assert str(error.value).startswith(str(path))
    assert "\n" not in str(error.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(data.DataError, match="file not found"):
        data.read_idx(tmp_path / "nothing-here")


@pytest.mark.parametrize(
    "images_shape, labels, message",
    [
        ((5, 28, 28), np.arange(4, dtype=np.uint8), "4 labels for the 5 images"),
        ((5, 28, 28), np.array([0, 1, 2, 10, 3], np.uint8), "label 10 at index 3 is outside 0-9"),
        ((5, 27, 27), np.arange(5, dtype=np.uint8), r"images of shape \(27, 27\)"),
        ((5, 28, 28), np.zeros((5, 2), np.uint8), r"labels of shape \(5, 2\)"),
        ((0, 28, 28), np.zeros(0, np.uint8), "holds no images"),
    ],
)
def test_images_and_labels_must_agree(tmp_path, images_shape, labels, message):
    images_path = write_idx(tmp_path / "images", np.zeros(images_shape, np.uint8))
    labels_path = write_idx(tmp_path / "labels", labels)
    with pytest.raises(data.DataError, match=message):
        data.read_images_and_labels(images_path, labels_path)


def test_locate_prefers_an_explicit_folder_then_the_env_var(no_default_dirs, monkeypatch):
    explicit = write_dataset(no_default_dirs / "explicit")
    from_env = write_dataset(no_default_dirs / "env")
    keras_cache = write_dataset(data.KERAS_CACHE)
    write_dataset(data.DEBIAN_DIR)
    assert data.locate(explicit) == explicit
    assert data.locate() == keras_cache
    monkeypatch.setenv(data.ENV_VAR, str(from_env))
    assert data.locate() == from_env


def test_locate_falls_back_to_debian_folder(no_default_dirs):
    debian = write_dataset(data.DEBIAN_DIR, compress=False)
    assert data.locate(download=False) == debian
    loaded = data.load(download=False)
    assert loaded.train_images.shape == (600, 28, 28)
    assert loaded.test_labels.shape == (100,)


def test_explicit_folder_is_never_replaced(no_default_dirs):
    write_dataset(data.DEBIAN_DIR)
    with pytest.raises(data.DataError, match="no such directory"):
        data.locate(no_default_dirs / "typo")
    partial = write_dataset(no_default_dirs / "partial")
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="missing t10k-labels-idx1-ubyte"):
        data.locate(partial)


def test_a_folder_this_user_may_not_look_into_is_passed_over_or_named(no_default_dirs, monkeypatch):
    """Keras's cache in the home of another user (mode 0700, as in containers run under
    another uid) made Path.is_file raise PermissionError, a traceback: the search goes on to
    Debian's folder, and --data-dir says it cannot read it. Simulated, as the tests may run
    as root, who may look anywhere."""
    locked = write_dataset(data.KERAS_CACHE)
    debian = write_dataset(data.DEBIAN_DIR)
    is_file = Path.is_file

    def refused(path):
        if locked in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        return is_file(path)

    monkeypatch.setattr(Path, "is_file", refused)
    assert data.locate(download=False) == debian
    said = f"{locked}: cannot read (Permission denied) (--data-dir)"
    with pytest.raises(data.DataError, match=f"^{re.escape(said)}$"):
        data.locate(locked)


def test_downloads_into_keras_cache_when_nothing_is_found(no_default_dirs, monkeypatch):
    # Keras's downloader fetches file:// URLs as it fetches https:// ones.
    mirror = write_dataset(no_default_dirs / "mirror")
    monkeypatch.setenv("FASHION_MNIST_ORIGIN", mirror.as_uri() + "/")
    assert data.locate() == data.KERAS_CACHE
    assert data.load().train_images.shape == (600, 28, 28)


def test_without_download_nothing_found_is_data_not_found(no_default_dirs):
    with pytest.raises(data.DataNotFound, match="download not attempted"):
        data.load(download=False)


def test_the_command_imports_tensorflow_quietly_before_it_downloads(no_default_dirs, monkeypatch):
    """Keras's downloader imports TensorFlow: the command first looks without downloading,
    and imports TensorFlow its own quiet way before it downloads."""
    mirror = write_dataset(no_default_dirs / "mirror")
    monkeypatch.setenv("FASHION_MNIST_ORIGIN", mirror.as_uri() + "/")
    fetched_at_import = []
    monkeypatch.setattr(
        cli,
        "import_tensorflow",
        lambda: fetched_at_import.append(sorted(data.KERAS_CACHE.glob("*"))),
    )
    dataset = cli.read_data(TrainConfig())
    assert fetched_at_import == [[]]  # imported once, before the first file was fetched
    assert dataset.source == data.KERAS_CACHE
    assert dataset.train_images.shape == (600, 28, 28)


def test_offline_without_data_says_how_to_get_it(no_default_dirs, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_ORIGIN", (no_default_dirs / "no-mirror").as_uri() + "/")
    with pytest.raises(data.DataError) as error:
        data.locate()
    message = str(error.value)
    assert "download failed" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
    assert str(data.DEBIAN_DIR) in message


def test_real_fashion_mnist_is_complete(fashion_mnist):
    assert fashion_mnist.train_images.shape == (60000, 28, 28)
    assert fashion_mnist.test_images.shape == (10000, 28, 28)
    assert fashion_mnist.train_images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(fashion_mnist.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(fashion_mnist.test_labels), [1000] * 10)


def test_book_split_is_stratified_80_20(fashion_mnist):
    labels = fashion_mnist.train_labels
    split = data.stratified_split(labels, 0.2, seed=42)
    assert (len(split.train), len(split.validation)) == (48000, 12000)
    np.testing.assert_array_equal(np.bincount(labels[split.train]), [4800] * 10)
    np.testing.assert_array_equal(np.bincount(labels[split.validation]), [1200] * 10)
    everything = np.concatenate([split.train, split.validation])
    np.testing.assert_array_equal(np.sort(everything), np.arange(60000))


def test_book_split_takes_the_stratified_training_images(fashion_mnist):
    split = data.book_split(fashion_mnist, TrainConfig())
    assert split.steps_per_epoch == 48000 // 128
    indices = data.stratified_split(fashion_mnist.train_labels).train
    np.testing.assert_array_equal(split.train_images, fashion_mnist.train_images[indices])


def test_book_split_refuses_images_and_labels_of_different_lengths():
    images, labels = synthetic_images(100)
    dataset = data.FashionMNIST(images[:99], labels, images, labels, source="synthetic")
    with pytest.raises(data.DataError, match="99 training images but 100 labels"):
        data.book_split(dataset, TrainConfig(batch_size=10))


def test_split_depends_on_the_seed_alone(fashion_mnist):
    labels = fashion_mnist.train_labels
    first, again = data.stratified_split(labels, seed=42), data.stratified_split(labels, seed=42)
    other = data.stratified_split(labels, seed=7)
    np.testing.assert_array_equal(first.validation, again.validation)
    assert not np.array_equal(np.sort(first.validation), np.sort(other.validation))


# The IDX reader, fuzzed: whatever the bytes, the result is an array or a DataError.
idx_headers = st.builds(
    lambda type_code, dims: bytes([0, 0, type_code, len(dims)]) + np.asarray(dims, ">u4").tobytes(),
    st.sampled_from([0x08, 0x08, 0x09, 0x0D]),
    st.lists(st.integers(0, 40) | st.integers(0, 2**32 - 1), max_size=4),
)
idx_like = st.builds(lambda header, body: header + body, idx_headers, st.binary(max_size=3000))
gzipped = st.builds(
    lambda payload, cut: gzip.compress(payload)[:cut], idx_like, st.integers(0, 4000)
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=200) | idx_like | gzipped)
def test_read_idx_never_fails_but_with_data_error(tmp_path, raw):
    path = tmp_path / "fuzzed"
    path.write_bytes(raw)
    try:
        array = data.read_idx(path)
    except data.DataError as error:
        assert str(error).startswith(f"{path}: ")
    else:
        assert array.dtype == np.uint8 and array.ndim >= 1
