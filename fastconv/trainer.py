"""The graph side: a compiled training step, blocks of steps, and compiled evaluation.

Two worlds, as in orbit: `train(iterator, num_steps)` is a pure graph loop that pulls batches
from a tf.data iterator and runs `num_steps` SGD steps without returning to Python; everything
that needs Python (printing, logging, checkpoints) happens between blocks, in `fastconv.run`.
`num_steps` is a tensor, so blocks of any length share one trace.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from fastconv.model import ConvNet, cross_entropy


class Trainer:
    """Trains a ConvNet with SGD; `xla` compiles the per-batch steps with `jit_compile`.

    XLA goes on the step only (as Keras does): the loop around it drives a tf.data iterator,
    which XLA cannot compile.
    """

    def __init__(self, model: ConvNet, learning_rate: float, xla: bool = False):
        self.model = model
        self.xla = xla
        self.optimizer = keras.optimizers.SGD(learning_rate=learning_rate)
        # Build the optimizer's variables now: tf.function may not create them on a later trace.
        self.optimizer.build(model.weights)
        self.train_step = tf.function(self._train_step, jit_compile=xla)
        self.eval_step = tf.function(self._eval_step, jit_compile=xla)
        # Prediction takes arrays of any length: relax the batch size instead of retracing.
        self.predict_step = tf.function(self._predict_step, jit_compile=xla, reduce_retracing=True)
        self.train = tf.function(self._train)
        self.evaluate = tf.function(self._evaluate)

    @property
    def variables(self) -> list[tf.Variable]:
        """All the state a step changes: the weights and the optimizer's variables."""
        return self.model.weights + list(self.optimizer.variables)

    def _train_step(self, images, targets):
        """One SGD step on a batch; returns its loss and number of correct predictions.

        The loss is the one computed for the update (before it), not the book's second
        forward pass after it: the same information for half the forward work.
        """
        with tf.GradientTape() as tape:
            logits = self.model.forpass(images)
            loss = cross_entropy(targets, logits)
        gradients = tape.gradient(loss, self.model.weights)
        self.optimizer.apply_gradients(zip(gradients, self.model.weights))
        return loss, _count_correct(targets, logits)

    def _eval_step(self, images, targets):
        """Sum of losses and number of correct predictions on a batch."""
        logits = self.model.forpass(images)
        losses = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
        return tf.reduce_sum(losses), _count_correct(targets, logits)

    def _predict_step(self, images):
        """The predicted class of each image."""
        return tf.argmax(self.model.forpass(images), axis=1)

    def _train(self, iterator, num_steps):
        """Runs `num_steps` training steps.

        Returns their mean loss, their accuracy, and whether every weight is still finite
        (so the host learns of a divergence from the same read that fetches the loss).
        """
        loss_sum = tf.constant(0.0)
        correct = tf.constant(0, tf.int64)
        images_seen = tf.constant(0, tf.int64)
        for _ in tf.range(num_steps):
            images, targets = next(iterator)
            loss, batch_correct = self.train_step(images, targets)
            loss_sum += loss
            correct += batch_correct
            images_seen += tf.shape(images, out_type=tf.int64)[0]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(w)) for w in self.model.weights])
        return (
            loss_sum / tf.cast(num_steps, tf.float32),
            tf.cast(correct, tf.float32) / tf.cast(images_seen, tf.float32),
            finite,
        )

    def _evaluate(self, dataset):
        """Mean loss and accuracy over every batch of `dataset`, in one call."""
        loss_sum = tf.constant(0.0)
        correct = tf.constant(0, tf.int64)
        count = tf.constant(0, tf.int64)
        for images, targets in dataset:
            batch_loss, batch_correct = self.eval_step(images, targets)
            loss_sum += batch_loss
            correct += batch_correct
            count += tf.shape(images, out_type=tf.int64)[0]
        count = tf.cast(count, tf.float32)
        return loss_sum / count, tf.cast(correct, tf.float32) / count

    def trace_count(self) -> int:
        """How many times the compiled functions were traced (a retrace adds one)."""
        functions = (self.train, self.evaluate, self.train_step, self.eval_step)
        return sum(f.experimental_get_tracing_count() for f in functions)


def _count_correct(targets, logits):
    hits = tf.equal(tf.argmax(logits, axis=1), tf.argmax(targets, axis=1))
    return tf.reduce_sum(tf.cast(hits, tf.int64))
