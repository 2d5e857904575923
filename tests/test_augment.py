"""Augmentation: flips and shifts as specified, a function of (seed, step), the same in the
compiled loop and in the tf.data stream."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import synthetic_dataset, synthetic_images

from fastconv import data, pipeline
from fastconv.augment import Augmentation
from fastconv.config import TrainConfig
from fastconv.model import ConvNet
from fastconv.run import train_and_evaluate
from fastconv.trainer import Trainer


def dot_images(count: int, row: int, column: int) -> tf.Tensor:
    """`count` black uint8 images (count, 28, 28, 1) with one white pixel at (row, column)."""
    images = np.zeros((count, 28, 28, 1), np.uint8)
    images[:, row, column] = 255
    return tf.constant(images)


def test_each_image_is_flipped_then_shifted_as_drawn():
    augmentation = Augmentation(seed=3, max_shift=2)
    images = dot_images(64, row=10, column=3)
    out = augmentation(images, tf.constant(5, tf.int64)).numpy()
    flips, down, right = (t.numpy() for t in augmentation.draws(tf.constant(5, tf.int64), 64))
    assert out.shape == (64, 28, 28, 1) and out.dtype == np.float32
    for image, flip, dy, dx in zip(out[..., 0], flips, down, right):
        # The mirror of column 3 is column 24; then the shift moves the dot by (dy, dx).
        expected = np.zeros((28, 28), np.float32)
        expected[10 + dy, (24 if flip else 3) + dx] = 255
        np.testing.assert_array_equal(image, expected)
    # The draws cover what was specified: both flips, every shift in [-2, 2], nothing beyond.
    assert flips.any() and not flips.all()
    assert set(down) == set(right) == {-2, -1, 0, 1, 2}


def test_pixels_shifted_out_of_the_image_are_gone_and_the_border_is_background():
    augmentation = Augmentation(seed=0, max_shift=3)
    out = augmentation(dot_images(256, row=0, column=0), tf.constant(1, tf.int64)).numpy()
    flips, down, right = (t.numpy() for t in augmentation.draws(tf.constant(1, tf.int64), 256))
    column = np.where(flips, 27, 0) + right
    kept = (down >= 0) & (column >= 0) & (column <= 27)
    assert kept.any() and not kept.all()
    np.testing.assert_array_equal(out.sum(axis=(1, 2, 3)), np.where(kept, 255.0, 0.0))


def test_flips_alone_when_the_shift_is_0():
    augmentation = Augmentation(seed=1, max_shift=0)
    images, _ = synthetic_images(32)
    images = tf.constant(images[..., None])
    out = augmentation(images, tf.constant(2, tf.int64)).numpy()
    flips, down, right = (t.numpy() for t in augmentation.draws(tf.constant(2, tf.int64), 32))
    assert not down.any() and not right.any() and 0 < flips.sum() < 32
    expected = np.where(flips[:, None, None, None], images.numpy()[:, :, ::-1], images.numpy())
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_the_augmentation_is_a_function_of_seed_and_step():
    images = tf.constant(synthetic_images(64)[0][..., None])

    def augmented(seed, step):
        return Augmentation(seed, max_shift=2)(images, tf.constant(step, tf.int64)).numpy()

    np.testing.assert_array_equal(augmented(7, 100), augmented(7, 100))
    assert not np.array_equal(augmented(7, 100), augmented(7, 101))
    assert not np.array_equal(augmented(7, 100), augmented(8, 100))


def test_a_replicas_share_is_augmented_as_in_the_whole_batch():
    augmentation = Augmentation(seed=4, max_shift=2)
    images = tf.constant(synthetic_images(64)[0][..., None])
    step = tf.constant(9, tf.int64)
    whole = augmentation(images, step).numpy()
    for part in range(4):
        share = augmentation(images[part * 16 : (part + 1) * 16], step, part, parts=4)
        np.testing.assert_array_equal(share.numpy(), whole[part * 16 : (part + 1) * 16])


def test_batches_keep_their_shape_and_labels():
    images, labels = synthetic_images(100)
    plain = pipeline.batch_maker(images, labels, pipeline.Standardization())
    augmented = pipeline.batch_maker(
        images, labels, pipeline.Standardization(), Augmentation(seed=0, max_shift=2)
    )
    indices = tf.constant([5, 17, 3, 99])
    (plain_images, plain_targets) = plain(indices)
    (images_out, targets) = augmented(indices, tf.constant(0, tf.int64))
    assert images_out.shape == plain_images.shape == (4, 28, 28, 1)
    assert images_out.dtype == tf.float32
    np.testing.assert_array_equal(targets.numpy(), plain_targets.numpy())
    assert not np.array_equal(images_out.numpy(), plain_images.numpy())


@pytest.mark.parametrize("start_step", [0, 23])
def test_the_stream_augments_each_step_as_the_compiled_loop_does(start_step):
    """The stream's batches equal what `make_batch` gathers in the loop at the same step."""
    config = TrainConfig(batch_size=32, augment=True, shift=2, standardize="zscore", seed=5)
    split = data.book_split(synthetic_dataset(), config)
    streamed = pipeline.make_datasets(split, config, resident=False)
    resident = pipeline.make_datasets(split, config, resident=True)
    stream, rows = iter(streamed.train(start_step)), iter(resident.train(start_step))
    for step in range(start_step, start_step + 20):
        images, targets = next(stream)
        expected_images, expected_targets = resident.make_batch(next(rows), step)
        np.testing.assert_array_equal(images.numpy(), expected_images.numpy())
        np.testing.assert_array_equal(targets.numpy(), expected_targets.numpy())


def test_augmented_training_is_the_same_resident_or_streamed():
    config = TrainConfig(batch_size=32, augment=True, shift=1)
    dataset = synthetic_dataset()
    runs = []
    for resident in (False, True):
        datasets = pipeline.make_datasets(
            data.book_split(dataset, config), config, resident=resident
        )
        trainer = Trainer(ConvNet(seed=3), 0.05, shards=2, make_batch=datasets.make_batch)
        trainer.step.assign(7)  # as a run resumed at step 7 is
        trainer.train(iter(datasets.train(7)), tf.constant(20))
        runs.append([w.numpy() for w in trainer.model.weights])
    for streamed, resident in zip(*runs):
        np.testing.assert_allclose(resident, streamed, rtol=1e-5, atol=1e-7)


def test_a_run_with_shifts_scores_the_validation_and_test_images_as_they_are():
    """--augment --shift 2 changes the training batches only: the run's validation and test
    scores are its final weights' on the images unchanged. (Without TTA, whose mirrors
    would hide a flip of the evaluated images.)"""
    config = TrainConfig(epochs=1, batch_size=32, augment=True, shift=2, learning_rate=0.05)
    dataset = synthetic_dataset()
    result = train_and_evaluate(config, dataset, log=lambda line: None)
    split = data.book_split(dataset, config)
    standardize = pipeline.Standardization.named(config.standardize, split.train_images)

    def scored(images, labels):
        evaluation = pipeline.evaluation_set(images, labels, config.eval_batch_size, standardize)
        return result.trainer.evaluate(evaluation)

    validation = scored(split.validation_images, split.validation_labels)
    test = scored(split.test_images, split.test_labels)
    # The same computation on the same weights: equal but for summation order.
    assert result.val_loss == pytest.approx(float(validation.loss), rel=1e-6)
    assert result.val_accuracy == pytest.approx(float(validation.accuracy), abs=1e-9)
    assert result.test_loss == pytest.approx(float(test.loss), rel=1e-6)
    assert result.test_accuracy == pytest.approx(float(test.accuracy), abs=1e-9)
    # Shifted as a training batch is, the validation images score differently, by far more
    # than the tolerance above.
    shifted = Augmentation(config.seed, config.shift)(split.validation_images[..., None], 0)
    moved = scored(shifted.numpy()[..., 0], split.validation_labels)
    assert abs(float(moved.loss) - result.val_loss) > 1e-4 * result.val_loss
