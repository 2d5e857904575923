"""Optimizers against their formulas, schedules at chosen steps, label smoothing, EMA, TTA."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import synthetic_dataset
from test_trainer import batch

from fastconv import data, runtime
from fastconv.config import ConfigError, TrainConfig
from fastconv.model import ConvNet, cross_entropy
from fastconv.optimizers import learning_rate, make_optimizer
from fastconv.pipeline import make_datasets
from fastconv.trainer import Trainer, make_trainer

TARGET = np.array([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]])
START = np.array([[0.3, 0.1, -0.2], [0.7, -0.4, 0.9]])
BIAS_TARGET, BIAS_START = np.array([0.5, -1.5]), np.array([0.2, 0.1])


def numpy_updates(name: str, rate: float, steps: int, decay: float, momentum: float = 0.9):
    """(kernel, bias) after `steps` updates of L = |w - TARGET|^2 / 2 + |b - BIAS_TARGET|^2 / 2,
    written from the optimizers' published formulas; decoupled weight decay (lr x decay x w,
    before the update, as Keras applies it) on the kernel only."""
    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-7
    values = [START.copy(), BIAS_START.copy()]
    targets = [TARGET, BIAS_TARGET]
    state = [{"m": np.zeros_like(v), "v": np.zeros_like(v)} for v in values]
    for t in range(1, steps + 1):
        for index, (value, target, slots) in enumerate(zip(values, targets, state)):
            gradient = value - target
            if index == 0 and decay:
                value -= rate * decay * value
            if name == "sgd":
                value -= rate * gradient
            elif name in ("momentum", "nesterov"):
                # Keras's (and Sutskever's) form: m <- mu m - lr g; w <- w + m, or for Nesterov
                # w <- w + mu m - lr g with the new m.
                slots["m"] = momentum * slots["m"] - rate * gradient
                value += (
                    momentum * slots["m"] - rate * gradient if name == "nesterov" else slots["m"]
                )
            else:  # adam, adamw: Kingma & Ba, with epsilon outside the root as in Keras
                slots["m"] = beta_1 * slots["m"] + (1 - beta_1) * gradient
                slots["v"] = beta_2 * slots["v"] + (1 - beta_2) * gradient**2
                step_size = rate * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
                value -= step_size * slots["m"] / (np.sqrt(slots["v"]) + epsilon)
    return values


@pytest.mark.parametrize(
    "name, decay",
    [
        ("sgd", None),
        ("sgd", 0.1),
        ("momentum", None),
        ("nesterov", None),
        ("adam", None),
        ("adamw", None),
        ("adamw", 0.1),
    ],
)
def test_each_optimizer_follows_its_formula(name, decay):
    config = TrainConfig(optimizer=name, learning_rate=0.1, momentum=0.8, weight_decay=decay)
    kernel, bias = tf.Variable(START, dtype=tf.float32), tf.Variable(BIAS_START, dtype=tf.float32)
    optimizer = make_optimizer(config, not_decayed=[bias])
    optimizer.build([kernel, bias])
    step = tf.function(
        lambda: optimizer.apply_gradients([(kernel - TARGET, kernel), (bias - BIAS_TARGET, bias)])
    )
    for _ in range(4):
        step()
    expected_decay = decay if decay is not None else (0.004 if name == "adamw" else 0.0)
    expected = numpy_updates(name, 0.1, 4, expected_decay, momentum=0.8)
    # float32 against float64: a few ulps of the targets' size (3.0) after four steps.
    np.testing.assert_allclose(kernel.numpy(), expected[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bias.numpy(), expected[1], rtol=1e-5, atol=1e-5)
    # The formulas differ by far more than the tolerance: the test tells them apart.
    other = numpy_updates("adam" if name == "sgd" else "sgd", 0.1, 4, expected_decay, 0.8)
    assert np.abs(kernel.numpy() - other[0]).max() > 1e-2


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_trainers_optimizer_decays_the_kernels_and_not_the_biases(name):
    """The trainer as `make_trainer` builds it, with decay 0.1 at rate 0.1: a step of zero
    gradients takes every kernel from 1.0 to 0.99 and leaves every bias at 1.0."""
    config = TrainConfig(optimizer=name, learning_rate=0.1, weight_decay=0.1)
    trainer = make_trainer(config, runtime.place(config))
    model = trainer.model
    for weight in model.weights:
        weight.assign(tf.ones_like(weight))
    zeros = [tf.zeros_like(weight) for weight in model.weights]
    trainer.optimizer.apply_gradients(zip(zeros, model.weights))
    for kernel in (model.conv_w, model.w1, model.w2):
        np.testing.assert_allclose(kernel.numpy(), 0.99, rtol=1e-6, err_msg=kernel.name)
    for bias in model.biases:
        np.testing.assert_array_equal(bias.numpy(), 1.0, err_msg=bias.name)


SCHEDULE_POINTS = {
    # schedule, warm-up epochs: {step: rate} for a peak of 0.1 over 10 epochs of 100 steps
    ("onecycle", 2): {0: 0.0, 100: 0.05, 200: 0.1, 600: 0.05, 900: 0.0125, 1000: 0.0, 1500: 0.0},
    ("onecycle", 0): {0: 0.1, 500: 0.05, 1000: 0.0},
    ("cosine", 2): {0: 0.0, 50: 0.025, 200: 0.1, 600: 0.05, 1000: 0.0, 1500: 0.0},
    ("cosine", 0): {0: 0.1, 250: 0.05 * (1 + np.cos(np.pi / 4)), 500: 0.05, 1000: 0.0},
    ("constant", 0): {0: 0.1, 999: 0.1},
}


@pytest.mark.parametrize("schedule, warmup", SCHEDULE_POINTS)
def test_schedule_values_at_chosen_steps(schedule, warmup):
    config = TrainConfig(
        learning_rate=0.1, epochs=10, schedule=schedule, warmup_epochs=float(warmup)
    )
    rate = learning_rate(config, steps_per_epoch=100)
    for step, expected in SCHEDULE_POINTS[schedule, warmup].items():
        value = rate(tf.constant(step, tf.int64)) if callable(rate) else rate
        assert float(value) == pytest.approx(expected, abs=1e-7), step


def test_the_compiled_step_follows_the_schedule_without_retracing():
    config = TrainConfig(
        batch_size=32,
        epochs=4,
        optimizer="adam",
        learning_rate=0.01,
        schedule="onecycle",
        warmup_epochs=1.0,
        augment=True,
        shift=1,
        ema=0.9,
        tta=True,
    )
    datasets = make_datasets(data.book_split(synthetic_dataset(), config), config, resident=True)
    trainer = make_trainer(config, runtime.place(config), datasets.make_batch, steps_per_epoch=15)
    iterator = iter(datasets.train())
    trainer.train(iterator, tf.constant(3))
    traced = trainer.trace_count()
    for steps in (4, 5, 7, 11):
        trainer.train(iterator, tf.constant(steps))
        expected = learning_rate(config, 15)(tf.constant(trainer.steps_done))
        assert trainer.learning_rate() == pytest.approx(float(expected), rel=1e-6)
    # 30 of 60 steps, 15 of them the warm-up: a third of the way down from the peak.
    assert trainer.steps_done == 30
    assert trainer.learning_rate() == pytest.approx(0.01 * 30 / 45, rel=1e-6)
    assert trainer.trace_count() == traced


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw"])
def test_every_optimizer_steps_at_its_schedules_rate(name):
    """Cosine decay from 0.1 over one epoch of 20 steps: 0.1, 0.05 and 0.0006 at steps 0, 10
    and 19, as the optimizer reads it when it steps. A rate left at the peak is off by 100%
    at step 19, far above the tolerance; for plain SGD the step itself is checked too."""
    config = TrainConfig(optimizer=name, learning_rate=0.1, schedule="cosine", epochs=1)
    optimizer = make_optimizer(config, steps_per_epoch=20)
    weight = tf.Variable([1.0])
    optimizer.build([weight])
    for step, expected in {0: 0.1, 10: 0.05, 19: 0.05 * (1 + np.cos(np.pi * 19 / 20))}.items():
        optimizer.iterations.assign(step)
        assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-5), step
        if name == "sgd":  # w <- w - rate * gradient, with a gradient of 1
            before = float(weight[0])
            optimizer.apply_gradients([(tf.constant([1.0]), weight)])
            assert before - float(weight[0]) == pytest.approx(expected, abs=1e-6), step


def test_warmup_needs_a_schedule_and_fits_the_run():
    with pytest.raises(ConfigError, match="needs --schedule cosine or onecycle"):
        TrainConfig(warmup_epochs=1.0)
    with pytest.raises(ConfigError, match="must be less than epochs=2"):
        TrainConfig(schedule="cosine", warmup_epochs=2.0, epochs=2)


def test_label_smoothing_changes_the_training_loss_only():
    images, targets = batch()
    smooth, plain = (Trainer(ConvNet(seed=5), 0.1, label_smoothing=amount) for amount in (0.1, 0.0))
    logits = smooth.model.forpass(images)
    smoothed = targets * 0.9 + 0.01
    eval_loss, _ = smooth.eval_step(images, targets)
    loss, _ = smooth.train_step(images, targets)
    assert float(loss) == pytest.approx(float(cross_entropy(smoothed, logits)), rel=1e-6)
    # Near-uniform logits: smoothing moves the loss by ~1e-3, 500x the tolerance above.
    assert abs(float(loss) - float(cross_entropy(targets, logits))) > 5e-4
    # Evaluation is the book's cross-entropy (summed), as without smoothing.
    assert float(eval_loss) == pytest.approx(float(plain.eval_step(images, targets)[0]), rel=1e-6)


def test_ema_is_the_moving_average_of_the_weights_and_what_evaluation_uses():
    images, targets = batch(count=64)
    config = TrainConfig(ema=0.8, learning_rate=0.1)
    model = ConvNet(seed=6)
    trainer = Trainer(model, make_optimizer(config))
    expected = None
    for _ in range(4):
        trainer.train_step(images, targets)
        weights = [w.numpy().astype(np.float64) for w in model.weights]
        # Keras's EMA starts at the weights after the first step.
        expected = (
            weights if expected is None else [0.8 * e + 0.2 * w for e, w in zip(expected, weights)]
        )
    for average, value in zip(trainer.evaluated_weights, expected):
        np.testing.assert_allclose(average.numpy(), value, rtol=1e-5, atol=1e-7)
    assert not np.allclose(trainer.evaluated_weights[2].numpy(), model.w1.numpy())
    logits = model.forpass(images, trainer.conv_form, trainer.evaluated_weights)
    np.testing.assert_array_equal(trainer.forpass(images).numpy(), logits.numpy())
    loss_sum, _ = trainer.eval_step(images, targets)
    assert float(loss_sum) / 64 == pytest.approx(float(cross_entropy(targets, logits)), rel=1e-5)


def test_tta_averages_the_logits_of_the_images_and_their_mirrors():
    images, _ = batch(count=32)
    trainer = Trainer(ConvNet(seed=7), 0.1, tta=True)
    plain = trainer.model.forpass(images, trainer.conv_form)
    mirrored = trainer.model.forpass(images[:, :, ::-1, :], trainer.conv_form)
    np.testing.assert_allclose(
        trainer.forpass(images).numpy(),
        (plain.numpy() + mirrored.numpy()) / 2,
        rtol=1e-5,
        atol=1e-6,
    )
    # Predictions and evaluation go through it: a mirrored batch scores the same.
    np.testing.assert_array_equal(
        trainer.predict_step(images).numpy(), trainer.predict_step(images[:, :, ::-1, :]).numpy()
    )
