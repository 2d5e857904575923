"""Where XLA loses on this CPU: each piece of the training step, forward + backward, timed in
graph mode (oneDNN) and under XLA, at batch 128 on TensorFlow's default threads.

    python bench/xla_profile.py
    python bench/xla_profile.py --shard    # 64 images on one thread: a shard's work

Every piece returns its gradients and the timing loop sums them, so nothing can be pruned as
unused. Best of 5 blocks of 100 steps, in ms per step.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf

from fastconv.model import CONV_FORMS

BATCH = 128


def pieces():
    rng = tf.random.Generator.from_seed(0)
    images = rng.uniform([BATCH, 28, 28, 1])
    targets = tf.one_hot(rng.uniform([BATCH], 0, 10, tf.int32), 10)
    flat = rng.uniform([BATCH, 1960])
    conv_w = tf.Variable(rng.normal([3, 3, 1, 10]) * 0.3)
    conv_b = tf.Variable(rng.normal([10]) * 0.1)
    w1, b1 = tf.Variable(rng.normal([1960, 100]) * 0.03), tf.Variable(tf.zeros([100]))
    w2, b2 = tf.Variable(rng.normal([100, 10]) * 0.1), tf.Variable(tf.zeros([10]))
    upstream = rng.normal([BATCH, 1960])

    def conv_piece(form):
        read_out = tf.transpose(upstream) if form.images_in_columns else upstream

        def piece():
            with tf.GradientTape() as tape:
                features = form.conv_relu_pool(images, conv_w, conv_b)
                objective = tf.reduce_sum(features * read_out)
            return tape.gradient(objective, [conv_w, conv_b])

        return piece

    def dense_and_loss():
        with tf.GradientTape() as tape:
            hidden = tf.nn.relu(tf.nn.bias_add(flat @ w1, b1))
            logits = tf.nn.bias_add(hidden @ w2, b2)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
        return tape.gradient(loss, [w1, b1, w2, b2])

    def sgd_update():
        for weight in (conv_w, conv_b, w1, b1, w2, b2):
            weight.assign_sub(1e-9 * weight)
        return [conv_b]

    return {
        "conv + ReLU + pool, tf.nn.conv2d / max_pool2d": conv_piece(CONV_FORMS["nn"]),
        "conv + ReLU + pool, batch as depthwise channels": conv_piece(CONV_FORMS["batch_channels"]),
        "conv + ReLU + pool, window patches matmul + max of 4": conv_piece(
            CONV_FORMS["window_patches"]
        ),
        "dense 1960 -> 100 -> 10 + softmax cross-entropy": dense_and_loss,
        "SGD update of the 197,210 weights": sgd_update,
    }


def milliseconds_per_step(piece, jit_compile: bool, steps: int = 100, blocks: int = 5) -> float:
    compiled = tf.function(piece, jit_compile=jit_compile)

    @tf.function
    def block(num_steps):
        total = tf.constant(0.0)
        for _ in tf.range(num_steps):
            total += tf.add_n([tf.reduce_sum(g) for g in compiled()])
        return total

    block(tf.constant(3)).numpy()
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        block(tf.constant(steps)).numpy()  # host read: waits for the block
        times.append((time.perf_counter() - start) / steps * 1e3)
    return min(times)


def main():
    global BATCH
    # One shard of a 2-shard step, on one thread: its work alone, as graph mode runs it on 2
    # cores (under --xla a run gives the shards' clusters both cores' pool between them).
    if "--shard" in sys.argv[1:]:
        BATCH = 64
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    print(f"TensorFlow {tf.__version__}, batch {BATCH}, ms per step (forward + backward)")
    print(f"{'piece':50} {'graph':>7} {'XLA':>7} {'XLA/graph':>9}")
    for name, piece in pieces().items():
        graph, xla = milliseconds_per_step(piece, False), milliseconds_per_step(piece, True)
        print(f"{name:50} {graph:7.2f} {xla:7.2f} {xla / graph:8.2f}x")


if __name__ == "__main__":
    main()
