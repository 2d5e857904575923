"""The tf.data pipelines: shapes, dtypes, values, and each epoch's order."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import indexed_images, indices_of, synthetic_dataset, synthetic_images

from fastconv import data, pipeline
from fastconv.config import ConfigError, TrainConfig


def stream_of_indices(count=1000, batch_size=64, seed=3, start_step=0):
    labels = (np.arange(count) % 10).astype(np.uint8)
    return pipeline.training_batches(
        indexed_images(count), labels, batch_size, seed, pipeline.Standardization(), start_step
    )


def epochs_of_indices(count=1000, batch_size=64, seed=3, epochs=2, first_epoch=0):
    steps = count // batch_size
    dataset = stream_of_indices(count, batch_size, seed, first_epoch * steps)
    batches = [indices_of(images) for images, _ in dataset.take(steps * epochs)]
    return [np.concatenate(batches[e * steps : (e + 1) * steps]) for e in range(epochs)]


def test_training_batches_have_static_shapes_and_book_values():
    images = np.random.default_rng(0).integers(0, 256, (300, 28, 28), dtype=np.uint8)
    labels = (np.arange(300) % 10).astype(np.uint8)
    dataset = pipeline.training_batches(images, labels, 32, 0, pipeline.Standardization())
    assert dataset.element_spec[0].shape == (32, 28, 28, 1)
    assert dataset.element_spec[1].shape == (32, 10)
    batch_images, targets = next(iter(dataset))
    assert batch_images.dtype == tf.float32 and targets.dtype == tf.float32
    # Every image of the batch is one of the inputs divided by 255, with its one-hot label.
    flat_inputs = images.reshape(300, -1).astype(np.float32) / 255
    for image, target in zip(batch_images.numpy(), targets.numpy()):
        matches = np.flatnonzero(np.all(flat_inputs == image.reshape(-1), axis=1))
        assert len(matches) == 1
        np.testing.assert_array_equal(target, np.eye(10)[labels[matches[0]]])


def test_each_epoch_is_a_fresh_permutation_with_the_remainder_dropped():
    first, second = epochs_of_indices(count=1000, batch_size=64)
    assert len(first) == len(second) == 15 * 64  # 1000 // 64 steps, 40 images dropped
    assert len(set(first)) == len(first) and len(set(second)) == len(second)
    assert not np.array_equal(first, second)


def test_order_is_a_function_of_seed_and_epoch():
    run = epochs_of_indices(seed=3, epochs=3)
    again = epochs_of_indices(seed=3, epochs=3)
    other_seed = epochs_of_indices(seed=4, epochs=3)
    resumed = epochs_of_indices(seed=3, epochs=2, first_epoch=1)
    for a, b in zip(run, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(run[0], other_seed[0])
    np.testing.assert_array_equal(run[1], resumed[0])
    np.testing.assert_array_equal(run[2], resumed[1])


def test_a_stream_started_mid_epoch_continues_the_same_sequence():
    whole = [indices_of(images) for images, _ in stream_of_indices().take(40)]
    resumed = [indices_of(images) for images, _ in stream_of_indices(start_step=22).take(18)]
    for a, b in zip(whole[22:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_zscore_standardizes_the_training_images():
    images = np.random.default_rng(1).integers(0, 200, (500, 28, 28), dtype=np.uint8)
    standardize = pipeline.Standardization.named("zscore", images)
    standardized = standardize(tf.constant(images)).numpy().astype(np.float64)
    assert abs(standardized.mean()) < 1e-4
    assert abs(standardized.std() - 1) < 1e-4


def test_evaluation_set_holds_standardized_images_and_blank_padding():
    images, labels = synthetic_images(250)
    standardize = pipeline.Standardization(mean=72.9, std=90.0)
    evaluation = pipeline.evaluation_set(images, labels, 100, standardize)
    flat = tf.reshape(evaluation.images, [-1, 28, 28, 1]).numpy()
    expected = standardize(tf.constant(images[..., None])).numpy()
    np.testing.assert_array_equal(flat[:250].view(np.uint32), expected.view(np.uint32))
    assert not flat[250:].any()
    targets = tf.reshape(evaluation.targets, [-1, 10]).numpy()
    np.testing.assert_array_equal(targets[:250].argmax(1), labels)
    assert not targets[250:].any() and targets[:250].sum() == 250


def test_evaluation_set_covers_every_image_once_in_order_and_pads_with_nothing():
    images = indexed_images(2500)
    labels = (np.arange(2500) % 10).astype(np.uint8)
    evaluation = pipeline.evaluation_set(images, labels, 1000, pipeline.Standardization())
    assert evaluation.images.shape == (3, 1000, 28, 28, 1)
    assert evaluation.targets.shape == (3, 1000, 10)
    flat_images = tf.reshape(evaluation.images, [-1, 28, 28, 1])
    np.testing.assert_array_equal(indices_of(flat_images[:2500]), np.arange(2500))
    targets = tf.reshape(evaluation.targets, [-1, 10]).numpy()
    np.testing.assert_array_equal(targets[:2500].argmax(1), labels)
    assert targets[:2500].sum() == 2500 and not targets[2500:].any()  # padding counts for nothing


def test_an_evaluation_batch_larger_than_the_set_is_the_set_unpadded():
    images, labels = synthetic_images(250)
    evaluation = pipeline.evaluation_set(images, labels, 10**8, pipeline.Standardization())
    assert evaluation.images.shape == (1, 250, 28, 28, 1)  # not 10**8 images, 300 GB of blanks
    assert evaluation.targets.shape == (1, 250, 10)


def test_batch_larger_than_the_training_split_is_refused():
    dataset = synthetic_dataset(train=100, test=10)  # 80 training images after the split
    with pytest.raises(ConfigError, match="batch_size=81 is larger than the 80 training images"):
        data.book_split(dataset, TrainConfig(batch_size=81))
    assert len(data.book_split(dataset, TrainConfig(batch_size=80)).train_images) == 80


def test_the_runs_evaluation_sets_follow_its_settings():
    config = TrainConfig(eval_batch_size=50, standardize="zscore")
    split = data.book_split(synthetic_dataset(), config)
    datasets = pipeline.make_datasets(split, config)
    # 600 training images split 480 / 120: the 120 in 3 batches of 50, the 100 tests in 2.
    assert datasets.validation.images.shape == (3, 50, 28, 28, 1)
    assert datasets.test.targets.shape == (2, 50, 10)
    assert datasets.standardize == pipeline.Standardization.named("zscore", split.train_images)
    assert datasets.steps_per_epoch == split.steps_per_epoch == 480 // 128
