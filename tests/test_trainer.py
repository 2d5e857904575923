"""The compiled trainer: XLA and graph agree, SGD is SGD, nothing retraces, loss falls."""

import dataclasses
import re
from functools import partial

import numpy as np
import pytest
import tensorflow as tf
from helpers import synthetic_dataset, synthetic_images

from fastconv import data, pipeline, run, runtime
from fastconv.config import TrainConfig
from fastconv.loop import TrainingDiverged
from fastconv.model import ConvNet, cross_entropy
from fastconv.pipeline import make_datasets
from fastconv.run import compile_trainer, train_and_evaluate
from fastconv.trainer import Trainer, make_trainer


def batch(count=64, seed=0):
    images, labels = synthetic_images(count, seed)
    return (
        tf.constant(images[..., None] / 255, tf.float32),
        tf.one_hot(labels, 10, dtype=tf.float32),
    )


def assert_steps_agree(expected: Trainer, actual: Trainer, images, targets, steps: int = 3):
    """Both trainers take `steps` steps on the batch: same losses, counts and weights.

    Several steps, so that differences beyond float32 rounding would compound.
    """
    for _ in range(steps):
        expected_loss, expected_correct = expected.train_step(images, targets)
        actual_loss, actual_correct = actual.train_step(images, targets)
        np.testing.assert_allclose(actual_loss.numpy(), expected_loss.numpy(), rtol=1e-5)
        assert int(actual_correct) == int(expected_correct)
    for e, a in zip(expected.model.weights, actual.model.weights):
        np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=1e-5, atol=1e-6)
    assert actual.optimizer.iterations.numpy() == expected.optimizer.iterations.numpy() == steps


def test_xla_and_graph_steps_agree_to_float32_rounding():
    images, targets = batch()
    graph, xla = (Trainer(ConvNet(seed=3), 0.1, xla=flag) for flag in (False, True))
    assert_steps_agree(graph, xla, images, targets)


@pytest.mark.needs_fused_op
@pytest.mark.parametrize("batch_size", [1, 7, 128, 129, 513])
def test_the_xla_run_steps_as_the_graph_run_with_fastconvs_kernel_as_custom_calls(batch_size):
    """The trainers a CPU run makes with and without --xla: the same steps to float32
    rounding (far inside one SGD update), and the compiled step calls the kernel's targets,
    so a silent fall-back to XLA's own conv cannot pass as the fast path."""
    images, targets = batch(count=batch_size)
    graph, xla = (
        make_trainer(config, runtime.place(config))
        for config in (TrainConfig(batch_size=batch_size, xla=flag) for flag in (False, True))
    )
    assert (graph.conv_form, xla.conv_form) == ("fused", "fused_xla")
    assert_steps_agree(graph, xla, images, targets)
    shard = (images[: batch_size // xla.shards], targets[: batch_size // xla.shards], xla.shards)
    hlo = xla.shard_gradients.experimental_get_compiler_ir(*shard)(stage="optimized_hlo")
    assert 'custom_call_target="fastconv_conv_relu_pool"' in hlo
    assert 'custom_call_target="fastconv_conv_relu_pool_grad"' in hlo
    assert "convolution(" not in hlo


@pytest.mark.parametrize("xla", [False, True])
def test_sharded_step_equals_the_whole_batch_step(xla):
    """Averaging the gradients of equal shards gives the batch's mean gradient."""
    images, targets = batch(count=128)
    whole, sharded = (Trainer(ConvNet(seed=8), 0.1, xla=xla, shards=n) for n in (1, 2))
    assert_steps_agree(whole, sharded, images, targets)
    # A batch that does not split evenly trains whole, with its gradient unscaled.
    odd_whole, odd_sharded = (Trainer(ConvNet(seed=8), 0.1, xla=xla, shards=n) for n in (1, 2))
    assert_steps_agree(odd_whole, odd_sharded, images[:33], targets[:33])
    # Evaluation batches have a dynamic size (a short last batch): each is padded to a
    # multiple of the shards and the padding's logits dropped, down to a single image.
    any_size = [tf.TensorSpec([None, 28, 28, 1]), tf.TensorSpec([None, 10])]
    sharded_eval = tf.function(partial(Trainer.eval_step, sharded), input_signature=any_size)
    whole_eval = tf.function(partial(Trainer.eval_step, whole), input_signature=any_size)
    for count in (128, 33, 1):
        sharded_loss, sharded_confusion = sharded_eval(images[:count], targets[:count])
        whole_loss, whole_confusion = whole_eval(images[:count], targets[:count])
        np.testing.assert_allclose(sharded_loss.numpy(), whole_loss.numpy(), rtol=1e-5)
        np.testing.assert_array_equal(sharded_confusion.numpy(), whole_confusion.numpy())
        assert sharded_confusion.numpy().sum() == count
    assert sharded_eval.experimental_get_tracing_count() == 1

    def matmuls(function):
        graph = function.get_concrete_function(*any_size).graph
        return sum(op.type == "MatMul" for op in graph.get_operations())

    # A forpass per shard (each of the two dense layers' matmuls), and the confusion matrix's.
    assert matmuls(sharded_eval) - 1 == 2 * (matmuls(whole_eval) - 1)


def test_train_step_is_plain_sgd_on_the_book_loss():
    images, targets = batch()
    model = ConvNet(seed=4)
    before = [v.numpy() for v in model.weights]
    with tf.GradientTape() as tape:
        expected_loss = cross_entropy(targets, model.forpass(images))
    gradients = [g.numpy() for g in tape.gradient(expected_loss, model.weights)]
    loss, _ = Trainer(model, 0.05, xla=False).train_step(images, targets)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-6)
    for old, gradient, new in zip(before, gradients, model.weights):
        np.testing.assert_allclose(new.numpy(), old - 0.05 * gradient, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("xla", [False, True])
def test_nothing_retraces_after_the_first_epoch(xla):
    images, labels = synthetic_images(640)
    trainer = Trainer(ConvNet(seed=0), 0.01, xla=xla)
    standardize = pipeline.Standardization()
    iterator = iter(pipeline.training_batches(images, labels, 32, 0, standardize))

    def evaluation(count):
        return pipeline.evaluation_set(images[:count], labels[:count], 100, standardize)

    trainer.train(iterator, tf.constant(20))  # the first epoch traces everything
    trainer.evaluate(evaluation(640))
    trainer.predict_step(tf.constant(images[:100, ..., None], tf.float32))
    traced = trainer.trace_count()
    for num_steps, count in ((20, 640), (7, 250), (13, 99)):
        trainer.train(iterator, tf.constant(num_steps))
        trainer.evaluate(evaluation(count))
        trainer.predict_step(tf.constant(images[:count, ..., None], tf.float32))
    assert trainer.trace_count() == traced


def test_compile_warm_up_leaves_no_trace_in_the_run(monkeypatch):
    """A run with the warm-up step that compiles it ends bit for bit as a run without one."""
    config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, seed=9)
    dataset = synthetic_dataset()
    warm_ups = []

    def counted_warm_up(trainer, datasets, *args):
        warm_ups.append(trainer.steps_done)
        return compile_trainer(trainer, datasets, *args)

    monkeypatch.setattr(run, "compile_trainer", counted_warm_up)
    warmed = train_and_evaluate(config, dataset, log=lambda line: None)
    assert warm_ups == [0]  # the run did warm up, before its first step
    # Without the warm-up, the first block compiles the loop as it runs.
    monkeypatch.setattr(run, "compile_trainer", lambda trainer, datasets, *args: 0.0)
    cold = train_and_evaluate(config, dataset, log=lambda line: None)
    assert warm_ups == [0]
    assert warmed.trainer.optimizer.iterations.numpy() == 2 * (480 // 32)
    assert warmed.trainer.steps_done == cold.trainer.steps_done
    for a, b in zip(warmed.trainer.variables, cold.trainer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    timings = ("seconds", "images_per_second")
    assert [dataclasses.replace(e, **dict.fromkeys(timings, 0)) for e in warmed.history] == [
        dataclasses.replace(e, **dict.fromkeys(timings, 0)) for e in cold.history
    ]
    assert (warmed.test_loss, warmed.test_accuracy) == (cold.test_loss, cold.test_accuracy)


def test_blocks_of_steps_cover_the_epoch():
    config = TrainConfig(epochs=1, batch_size=32, steps_per_call=4, seed=9)
    result = train_and_evaluate(config, synthetic_dataset(), log=lambda line: None)
    assert result.trainer.optimizer.iterations.numpy() == 480 // 32


def test_diverging_loss_stops_the_run_at_the_step_that_diverged():
    config = TrainConfig(epochs=3, batch_size=32, learning_rate=1e10, steps_per_call=5)
    with pytest.raises(TrainingDiverged) as diverged:
        train_and_evaluate(config, synthetic_dataset(), log=lambda line: None)
    message = str(diverged.value)
    assert re.match(
        r"training diverged in epoch 1 at step \d+ of 15: the loss (became|reached)", message
    )
    bad_step = int(re.match(r".* at step (\d+)", message).group(1))
    # The named step is the first bad one: the same steps one at a time stay sound before it.
    placement = runtime.place(config)
    trainer = Trainer(ConvNet(seed=42), 1e10, shards=placement.shards)
    datasets = make_datasets(data.book_split(synthetic_dataset(), config), config)
    iterator = iter(datasets.train())
    for _ in range(bad_step - 1):
        assert bool(trainer.train(iterator, tf.constant(1)).sound)
    assert not bool(trainer.train(iterator, tf.constant(1)).sound)


@pytest.mark.parametrize("resident", [False, True])
def test_blocks_of_any_length_train_on_the_batches_of_single_steps(resident):
    """A block pulls each step's batch while the step before it runs, and only the batches
    of its own steps: however the steps are cut into blocks, each trains on the stream's
    batches in order, augmented as the batch of its own step, and the stream is left where
    single steps leave it. Resumed at step 7, the 12 steps cross an epoch (15 steps)."""
    config = TrainConfig(batch_size=32, augment=True, shift=1)
    datasets = make_datasets(
        data.book_split(synthetic_dataset(), config), config, resident=resident
    )
    start_step = 7

    def trained(plan):
        """Steps as `plan` cuts them: a number is a block of that many, "one" the loop-free
        one-step function (the profiler's), which pulls its batch as the step starts."""
        trainer = Trainer(ConvNet(seed=0), 0.05, shards=2, make_batch=datasets.make_batch)
        trainer.step.assign(start_step)  # as a run resumed at step 7 is
        iterator = iter(datasets.train(start_step))
        for part in plan:
            if part == "one":
                trainer.train_one_step(iterator)
            else:
                assert int(trainer.train(iterator, tf.constant(part)).steps) == part
        assert int(trainer.step) == start_step + 12
        return [w.numpy() for w in trainer.model.weights], tf.nest.flatten(next(iterator))

    single_weights, single_next = trained(["one"] * 12)
    for plan in ([12], [5, 7], [2, 3, 7], [1, "one", 4, "one", "one", 4]):
        weights, following = trained(plan)
        for a, b in zip(following, single_next):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        for a, b in zip(weights, single_weights):
            np.testing.assert_array_equal(a, b)


def test_a_block_of_no_steps_is_refused_and_pulls_nothing():
    images, labels = synthetic_images(640)
    trainer = Trainer(ConvNet(seed=0), 0.05)
    iterator = iter(pipeline.training_batches(images, labels, 32, 0, pipeline.IDENTITY))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least one step"):
        trainer.train(iterator, tf.constant(0))
    expected = next(iter(pipeline.training_batches(images, labels, 32, 0, pipeline.IDENTITY)))
    np.testing.assert_array_equal(next(iterator)[0].numpy(), expected[0].numpy())
    assert int(trainer.step) == 0


def test_a_block_stops_at_its_first_non_finite_step():
    trainer = Trainer(ConvNet(seed=0), 1e10)
    images, labels = synthetic_images(640)
    iterator = iter(pipeline.training_batches(images, labels, 32, 0, pipeline.IDENTITY))
    block = trainer.train(iterator, tf.constant(20))
    assert not bool(block.sound)
    assert 1 <= int(block.steps) < 20
    assert int(trainer.step) == int(block.steps)


def test_a_block_stops_at_a_loss_blown_up_though_finite():
    """A loss a thousand times an untrained network's is a run that has blown up."""

    class BlowsUpAtStep3(Trainer):
        def train_step(self, images, targets):
            loss, correct = super().train_step(images, targets)
            return tf.where(self.step >= 2, tf.constant(1e6), loss), correct

    trainer = BlowsUpAtStep3(ConvNet(seed=0), 0.01)
    images, labels = synthetic_images(640)
    iterator = iter(pipeline.training_batches(images, labels, 32, 0, pipeline.IDENTITY))
    block = trainer.train(iterator, tf.constant(10)).fetch()
    assert (block.steps, block.sound, block.last_loss) == (3, False, 1e6)
    assert block.trouble() == (
        "the loss reached 1e+06, over a thousand times an untrained network's 2.30"
    )


def test_loss_falls_on_real_data(fashion_mnist):
    split = data.stratified_split(fashion_mnist.train_labels)
    standardize = pipeline.Standardization()
    iterator = iter(
        pipeline.training_batches(
            fashion_mnist.train_images[split.train],
            fashion_mnist.train_labels[split.train],
            128,
            42,
            standardize,
        )
    )
    validation = pipeline.evaluation_set(
        fashion_mnist.train_images[split.validation],
        fashion_mnist.train_labels[split.validation],
        1000,
        standardize,
    )
    trainer = Trainer(ConvNet(seed=42), 0.01)
    initial_loss, initial_accuracy, _ = (v.numpy() for v in trainer.evaluate(validation))
    block_losses = [float(trainer.train(iterator, tf.constant(100)).loss) for _ in range(4)]
    val_loss, val_accuracy, confusion = (v.numpy() for v in trainer.evaluate(validation))
    # The confusion matrix counts each image once by (true, predicted) class, padding left out.
    labels = fashion_mnist.train_labels[split.validation]
    predictions = np.concatenate(
        [trainer.predict_step(batch).numpy() for batch in validation.images]
    )[: len(labels)]
    expected = np.zeros((10, 10))
    np.add.at(expected, (labels, predictions), 1)
    np.testing.assert_array_equal(confusion, expected)
    assert val_accuracy == pytest.approx(np.trace(expected) / len(labels), abs=1e-7)
    assert initial_loss > 2.0 and initial_accuracy < 0.3  # chance level before training
    assert block_losses == sorted(block_losses, reverse=True)
    assert val_loss < 0.75 * initial_loss
    assert val_accuracy > 0.7


def test_training_images_resident_on_the_device_train_exactly_as_the_stream():
    """The GPU path (images kept on the device, batches gathered in the loop), run on this
    machine's device: the CPU where TensorFlow sees no GPU, as on this project's machines."""
    config = TrainConfig(batch_size=32)
    dataset = synthetic_dataset()
    runs = []
    for resident in (False, True):
        datasets = make_datasets(data.book_split(dataset, config), config, resident=resident)
        trainer = Trainer(ConvNet(seed=3), 0.05, shards=2, make_batch=datasets.make_batch)
        block = trainer.train(iter(datasets.train(7)), tf.constant(20))
        runs.append((float(block.loss), [w.numpy() for w in trainer.model.weights]))
    streamed, resident = runs
    assert datasets.train().element_spec == tf.TensorSpec([32], tf.int32)  # indices only
    # The same batches and steps; inside one graph, the gather may fuse with the step's ops
    # and round differently in the last bit.
    assert resident[0] == pytest.approx(streamed[0], rel=1e-6)
    for a, b in zip(resident[1], streamed[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
