"""The book's network: its six variables and `forpass`, nothing else."""

from __future__ import annotations

import keras
import tensorflow as tf

from fastconv.data import IMAGE_SIZE, NUM_CLASSES

KERNEL_SIZE = 3
POOLED_SIZE = IMAGE_SIZE // 2  # the 2x2 max pool halves 28 to 14


class ConvNet(tf.Module):
    """conv 3x3 SAME (+ bias) -> ReLU -> max pool 2x2 -> flatten -> dense + ReLU -> dense logits.

    The variables are those of the book's `ConvolutionNetwork.init_weights`: glorot_uniform
    weights, zero biases, float32, in the book's order `[conv_w, conv_b, w1, b1, w2, b2]`.
    """

    def __init__(
        self, n_kernels: int = 10, units: int = 100, seed: int | None = None, name: str = "conv_net"
    ):
        super().__init__(name=name)
        self.n_kernels, self.units = n_kernels, units
        # One generator for the three draws: distinct weights, reproducible from `seed`.
        glorot = keras.initializers.GlorotUniform(seed=keras.random.SeedGenerator(seed))
        n_features = POOLED_SIZE * POOLED_SIZE * n_kernels
        with self.name_scope:
            self.conv_w = tf.Variable(
                glorot((KERNEL_SIZE, KERNEL_SIZE, 1, n_kernels)), name="conv_w"
            )
            self.conv_b = tf.Variable(tf.zeros([n_kernels]), name="conv_b")
            self.w1 = tf.Variable(glorot((n_features, units)), name="w1")
            self.b1 = tf.Variable(tf.zeros([units]), name="b1")
            self.w2 = tf.Variable(glorot((units, NUM_CLASSES)), name="w2")
            self.b2 = tf.Variable(tf.zeros([NUM_CLASSES]), name="b2")

    @property
    def weights(self) -> list[tf.Variable]:
        """The trainable variables in the book's order."""
        return [self.conv_w, self.conv_b, self.w1, self.b1, self.w2, self.b2]

    def forpass(self, images: tf.Tensor) -> tf.Tensor:
        """Logits (B, 10) for images (B, 28, 28, 1), exactly the book's `forpass`."""
        conv = tf.nn.conv2d(images, self.conv_w, strides=1, padding="SAME") + self.conv_b
        pooled = tf.nn.max_pool2d(tf.nn.relu(conv), ksize=2, strides=2, padding="VALID")
        flat = tf.reshape(pooled, [tf.shape(images)[0], -1])
        hidden = tf.nn.relu(tf.matmul(flat, self.w1) + self.b1)
        return tf.matmul(hidden, self.w2) + self.b2

    __call__ = forpass


def cross_entropy(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """The book's loss: mean softmax cross-entropy of one-hot targets and logits."""
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits))
