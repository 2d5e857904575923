"""The graph side: a compiled training step, blocks of steps, and compiled evaluation.

Two worlds, as in orbit: `train(iterator, num_steps)` is a pure graph loop that pulls batches
from a tf.data iterator and runs `num_steps` steps without returning to Python; what needs
Python (printing, checkpoints) happens between blocks, in `fastconv.loop`. `num_steps` is a
tensor, so blocks of any length share one trace.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from fastconv.blocks import Block, Evaluation, sound
from fastconv.model import CONV_FORMS, IMAGE_SHAPE, ConvNet, cross_entropy
from fastconv.optimizers import make_optimizer, weight_averages
from fastconv.pipeline import EVALUATION_SET_SPEC, EvaluationSet

if TYPE_CHECKING:
    from fastconv.config import TrainConfig
    from fastconv.runtime import Placement


class Trainer:
    """Trains a ConvNet on batches of one-hot targets.

    Args:
      model: the network; its weights are updated in place.
      optimizer: a Keras optimizer, not yet built (`fastconv.optimizers.make_optimizer`);
        a number is the learning rate of plain SGD, the book's optimizer.
      xla: compile each shard's forward and backward pass, and the evaluation and prediction
        steps, with XLA. The loop around them drives a tf.data iterator, which XLA cannot
        compile; the shards' gradients are summed and applied in graph mode.
      conv_form: the `fastconv.model.CONV_FORMS` entry of the forpass: the book's ops by
        default; `make_trainer` passes the placement's, the engine's fastest.
      shards: split each batch into this many equal shards, each with its own forward and
        backward pass of its loss divided by `shards`, and sum their gradients: the batch's
        mean gradient, with the shards on different cores at once.
      loss_scaling: wrap the optimizer in Keras's `LossScaleOptimizer` (`mixed_float16`).
      make_batch: when the iterator yields index rows of images resident on the device
        (`fastconv.pipeline.batch_maker`), gathers each batch inside the loop; else None.
      step_summaries, log_every: the writer the step loss goes to every `log_every` steps.
      strategy: the tf.distribute strategy the model and trainer were built in, or None.
      label_smoothing: the share of each training target spread over the classes, in the
        training loss only; tta: evaluate and predict with mean logits of image and mirror.
    """

    def __init__(
        self,
        model: ConvNet,
        optimizer: keras.optimizers.Optimizer | float,
        xla: bool = False,
        shards: int = 1,
        conv_form: str = "nn",
        loss_scaling: bool = False,
        make_batch: Callable | None = None,
        step_summaries: tf.summary.SummaryWriter | None = None,
        log_every: int = 50,
        strategy: tf.distribute.Strategy | None = None,
        label_smoothing: float = 0.0,
        tta: bool = False,
    ):
        self.model = model
        self.xla = xla
        self.shards = shards
        self.conv_form = conv_form
        # Evaluation and prediction take batches of any size, which custom calls cannot:
        # they run the form's `any_batch` twin, the same kernel as an op, in graph mode.
        any_batch = CONV_FORMS[conv_form].any_batch
        self.evaluated_conv_form = any_batch or conv_form
        evaluate_with_xla = xla and any_batch is None
        # Under a tf.distribute strategy (model and trainer built in its scope), each replica
        # steps on its share of the global batch; the optimizer sums the replicas' gradients,
        # so each replica's loss is divided by their number: the sum is the global mean's.
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync if strategy else 1
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            optimizer = keras.optimizers.SGD(learning_rate=optimizer)
        self.loss_scaling, self.label_smoothing, self.tta = loss_scaling, label_smoothing, tta
        self.optimizer = (
            keras.optimizers.LossScaleOptimizer(optimizer) if loss_scaling else optimizer
        )
        # Build the optimizer's variables now: tf.function may not create them on a later trace.
        self.optimizer.build(model.weights)
        # What evaluation, prediction and export compute with: the weights' moving averages
        # when the optimizer keeps them (--ema), else the weights.
        self.evaluated_weights = weight_averages(self.optimizer) or model.weights
        # Steps run so far: the x axis of the step summaries and, with the seed, the position
        # in the data order that a resumed run continues from.
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        # The step loss goes to TensorBoard from inside the compiled loop, every `log_every`
        # steps: a summary op in the graph, no trip to the host. A warm-up turns
        # `recording` off, so the steps it undoes leave no points behind.
        self.step_summaries = step_summaries
        self.log_every = log_every
        self.recording = tf.Variable(True, trainable=False, name="recording")
        self.make_batch = make_batch
        # Each method below is replaced by its compiled form, under its own name. No
        # AutoGraph: the steps hold no control flow on tensors and the two loops are
        # written as tf.while_loop; converting them, with Keras's code, was most of the
        # tracing time.
        compiled = functools.partial(tf.function, autograph=False)
        self.shard_gradients = compiled(self.shard_gradients, jit_compile=xla)
        self.train_step = compiled(self.train_step)
        self.eval_step = compiled(self.eval_step, jit_compile=evaluate_with_xla)
        # Prediction takes arrays of any length: one trace with a free batch dimension.
        any_images = tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32)
        self.predict_step = compiled(
            self.predict_step, jit_compile=evaluate_with_xla, input_signature=[any_images]
        )
        self.train = compiled(self.train)
        self.train_one_step = compiled(self.train_one_step)
        self.evaluate = compiled(self.evaluate, input_signature=[EVALUATION_SET_SPEC])

    @property
    def variables(self) -> list[tf.Variable]:
        """All the state a step changes: the weights, the optimizer's variables, the step."""
        return [*self.model.weights, *self.optimizer.variables, self.step]

    @contextlib.contextmanager
    def state_restored(self):
        """Runs the block, then puts every variable back; no step summaries meanwhile."""
        snapshot = [v.numpy() for v in self.variables]
        self.recording.assign(False)
        try:
            yield
        finally:
            for variable, value in zip(self.variables, snapshot):
                variable.assign(value)
            self.recording.assign(True)

    @property
    def steps_done(self) -> int:  # the step counter on the host (mirrored or not)
        return int(self.step.numpy())

    def learning_rate(self) -> float:
        """The next step's learning rate on the host (a mirrored value under a strategy)."""
        return float(tf.convert_to_tensor(self.optimizer.learning_rate).numpy())

    def forpass(self, images, conv_form: str | None = None):
        """Logits as the trainer evaluates, predicts and exports them: its conv form (or
        `conv_form`), the evaluated weights (--ema's averages), with `tta` mirrors too."""
        conv_form = conv_form or self.evaluated_conv_form
        if not self.tta:
            return self.model.forpass(images, conv_form, self.evaluated_weights)
        both = tf.concat([images, tf.reverse(images, axis=[2])], axis=0)
        logits = self.model.forpass(both, conv_form, self.evaluated_weights)
        plain, mirrored = tf.split(logits, 2)
        return (plain + mirrored) / 2

    def train_step(self, images, targets):
        """One optimizer step on a batch; returns its mean loss (computed for the update,
        not the book's second forward pass after it) and correct predictions."""
        shards = self._split(images, targets)
        # Each shard's loss is divided by the number of shards and of replicas, so that the
        # sum of all their gradients is the gradient of the global batch's mean loss.
        parts = len(shards) * self.replicas
        losses, gradients, correct = zip(*(self.shard_gradients(*shard, parts) for shard in shards))
        summed = [tf.add_n(shard_gradients) for shard_gradients in zip(*gradients)]
        self.optimizer.apply_gradients(zip(summed, self.model.weights))
        # Equal shards: the mean of their means is the batch mean.
        return tf.add_n(losses) / len(losses), tf.add_n(correct)

    def shard_gradients(self, images, targets, parts: int):
        """A shard's mean loss, the gradients of that loss divided by `parts`, and its number
        of correct predictions (under loss scaling, the gradients are of the scaled loss)."""
        with tf.GradientTape() as tape:
            logits = self.model.forpass(images, self.conv_form)
            loss = cross_entropy(targets, logits, self.label_smoothing)
            scaled_loss = loss / parts if parts > 1 else loss
            if self.loss_scaling:
                scaled_loss = self.optimizer.scale_loss(scaled_loss)
        return loss, tape.gradient(scaled_loss, self.model.weights), _count_correct(targets, logits)

    def eval_step(self, images, targets):
        """Sum of losses and the confusion matrix (true class, predicted class) on a batch
        of any size; rows without a target (padding) count in neither."""
        logits = self._sharded_forpass(images)
        losses = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
        # Counts of (true class, predicted class) as one small matmul of one-hot rows
        # (tf.math.confusion_matrix traced many more ops).
        predicted = tf.one_hot(tf.argmax(logits, axis=1), targets.shape[-1])
        confusion = tf.matmul(targets, predicted, transpose_a=True)
        return tf.reduce_sum(losses), confusion

    def _sharded_forpass(self, images):
        """The logits of a batch of any size, in shards (on every core): padded with blank
        images to a multiple of the shards, the padding's logits dropped."""
        if self.shards == 1:
            return self.forpass(images)
        count = tf.shape(images)[0]
        padding = -count % self.shards
        padded = tf.pad(images, [[0, padding], [0, 0], [0, 0], [0, 0]])
        logits = [self.forpass(shard) for shard in tf.split(padded, self.shards)]
        return tf.concat(logits, axis=0)[:count]

    def predict_step(self, images):
        """The predicted class of each image."""
        return tf.argmax(self.forpass(images), axis=1)

    def _split(self, images, targets):
        """The batch's shards; one when the batch does not divide evenly (a last, short batch)."""
        if self.shards == 1 or images.shape[0] is None or images.shape[0] % self.shards:
            return [(images, targets)]
        return list(zip(tf.split(images, self.shards), tf.split(targets, self.shards)))

    def train(self, iterator, num_steps):
        """Runs `num_steps` training steps, or fewer if one leaves the run unsound: a loss
        blown up or non-finite, or a weight non-finite (`fastconv.blocks.sound`).

        Each step is checked as it ends and the loop stops at the first bad one: the host
        learns the exact step of a divergence from the read that fetches the loss.

        After a block's first step, each step's batch is made while the step before it
        runs: the batch is a loop variable, and the body pulls the next one (from the
        iterator, gathered when the images are resident) beside the step's own work, off
        the critical path (bench/RESULTS.md). A block pulls the batches of its own steps
        only, so the next block starts where it ended; one that an unsound step stopped
        before its last has pulled the batch after that step too. `num_steps` must be at
        least 1 (an InvalidArgumentError otherwise, with nothing pulled).
        """

        def go_on(steps, loss_sum, correct, ok, last_loss, batch):
            return (steps < num_steps) & ok

        def step(steps, loss_sum, correct, ok, last_loss, batch):
            # The step's number as the next batch's (augmentation's key): read before this
            # step counts itself, in program order, as the auto control dependencies keep it.
            following_step = self.step + 1
            following = tf.cond(
                steps + 1 < num_steps,
                lambda: self._next_batch(iterator, following_step),
                lambda: batch,
            )
            loss, batch_correct, ok = self._step_on_batch(*batch)
            loss = tf.cast(loss, tf.float64)
            return steps + 1, loss_sum + loss, correct + batch_correct, ok, loss, following

        zero = tf.constant(0.0, tf.float64)  # the loss sum, and the last step's loss
        start = (tf.constant(0), zero, tf.constant(0, tf.int64), True, zero)
        # The first batch is pulled before the loop: a block of no steps would lose it.
        no_steps = "a block of training steps runs at least one step (num_steps < 1)"
        with tf.control_dependencies([tf.debugging.assert_positive(num_steps, no_steps)]):
            first = self._next_batch(iterator, self.step)
        *block, _ = tf.while_loop(go_on, step, (*start, first))
        return Block(*block)

    def train_one_step(self, iterator):
        """One training step, as a block of one, in a graph without a loop: the profiler's
        Profile tab groups a marker's events into a step only where there is no loop."""
        loss, correct, ok = self._step_on_batch(*self._next_batch(iterator, self.step))
        loss = tf.cast(loss, tf.float64)
        return Block(tf.constant(1), loss, correct, ok, loss)

    def _next_batch(self, iterator, step):
        """The iterator's next batch as (images, targets): index rows of resident images are
        gathered here, as the batch of step `step` (augmentation's key)."""
        batch = next(iterator)
        return batch if self.make_batch is None else self.make_batch(batch, step)

    def _step_on_batch(self, images, targets):
        """A training step on the batch: its loss, correct predictions, and whether it left
        the run sound (`fastconv.blocks.sound`)."""
        loss, correct = self._replicated_step(images, targets)
        self.step.assign_add(1)
        if self.step_summaries is not None:
            self._write_step_loss(loss)
        return loss, correct, sound(loss, self.model.weights)

    def _replicated_step(self, images, targets):
        """The step, on every replica's share of the batch when there is a strategy."""
        if self.strategy is None:
            return self.train_step(images, targets)
        losses, correct = self.strategy.run(self.train_step, args=(images, targets))
        reduce = self.strategy.reduce
        return (
            reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None),
            reduce(tf.distribute.ReduceOp.SUM, correct, axis=None),
        )

    def _write_step_loss(self, loss):
        every = tf.constant(self.log_every, tf.int64)
        with (
            self.step_summaries.as_default(step=self.step),
            tf.summary.record_if(self.recording & tf.equal(self.step % every, 0)),
            tf.name_scope(""),  # the tag "batch_loss", not "while/batch_loss"
        ):
            tf.summary.scalar("batch_loss", loss)

    def evaluate(self, evaluation: EvaluationSet) -> Evaluation:
        """Mean loss, accuracy and confusion matrix over all of `evaluation`, in one call."""
        classes = evaluation.targets.shape[-1]

        def add_batch(i, loss_sum, confusion):
            batch_loss, batch_confusion = self.eval_step(
                evaluation.images[i], evaluation.targets[i]
            )
            return i + 1, loss_sum + batch_loss, confusion + batch_confusion

        batches = tf.shape(evaluation.images)[0]
        start = (tf.constant(0), tf.constant(0.0), tf.zeros([classes, classes]))
        _, loss_sum, confusion = tf.while_loop(lambda i, *_: i < batches, add_batch, start)
        count = tf.reduce_sum(confusion)  # the images; the padding has no target
        return Evaluation(loss_sum / count, tf.linalg.trace(confusion) / count, confusion)

    def trace_count(self) -> int:
        """How many times the compiled functions were traced (a retrace adds one)."""
        functions = (self.train, self.train_one_step, self.evaluate, self.train_step)
        functions += (self.shard_gradients, self.eval_step, self.predict_step)
        return sum(f.experimental_get_tracing_count() for f in functions)


def _count_correct(targets, logits):
    """Correct predictions among the rows with a target (an evaluation's padding has none)."""
    hits = tf.equal(tf.argmax(logits, axis=1), tf.argmax(targets, axis=1))
    return tf.reduce_sum(tf.cast(hits & (tf.reduce_max(targets, axis=1) > 0), tf.int64))


def make_trainer(
    config: TrainConfig,
    placement: Placement,
    make_batch: Callable | None = None,
    step_summaries: tf.summary.SummaryWriter | None = None,
    steps_per_epoch: int | None = None,
) -> Trainer:
    """The one way to build a trainer: a fresh network of `config`'s, stepped as `placement`
    decided, with `config`'s optimizer (a schedule spans its epochs of `steps_per_epoch`)."""
    with placement.variables_scope():
        model = ConvNet(
            config.n_kernels, config.units, seed=config.seed, dtype_policy=placement.precision
        )
        return Trainer(
            model,
            make_optimizer(config, steps_per_epoch, not_decayed=model.biases),
            xla=config.xla,
            shards=placement.shards,
            conv_form=placement.conv_form,
            loss_scaling=placement.loss_scaling,
            make_batch=make_batch,
            step_summaries=step_summaries,
            log_every=config.log_every,
            strategy=placement.strategy,
            label_smoothing=config.label_smoothing,
            tta=config.tta,
        )
