"""The fused kernel as XLA custom calls against the TensorFlow op: one SGD training step of
the book's network (forward, cross-entropy, gradient, update) on float32 Fashion-MNIST, as

    graph      graph-mode tf.function, the TensorFlow op ("fused" conv form)
    xla_call   tf.function(jit_compile=True), the custom calls ("fused_xla" conv form)
    xla_wp     tf.function(jit_compile=True), the "window_patches" conv form

in interleaved rounds (every form and batch size once per round, so that a load beside the
run slows all of them alike), reporting the median images/s over the rounds and the median
over the rounds of each form's ratio to the graph step.

    python bench/xla_custom_call.py [--rounds 7] [--seconds 0.5] [--loop]

--loop also times whole loops of steps compiled as one function (`for i in tf.range(n)`,
each batch gathered from the resident training images), every form's own: the graph form's
loop is the one the XLA loops have to beat.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

from fastconv import data
from fastconv.model import ConvNet, cross_entropy

LEARNING_RATE = 0.01
BATCHES = (128, 512)
FORMS = {
    "graph": ("fused", False),
    "xla_call": ("fused_xla", True),
    "xla_wp": ("window_patches", True),
}


def sgd_step(model: ConvNet, conv_form: str):
    def step(images, targets):
        with tf.GradientTape() as tape:
            loss = cross_entropy(targets, model.forpass(images, conv_form))
        for weight, gradient in zip(model.weights, tape.gradient(loss, model.weights)):
            weight.assign_sub(LEARNING_RATE * gradient)
        return loss

    return step


def whole_loop(model: ConvNet, conv_form: str, all_images, all_targets, batch: int):
    """n steps in one compiled function: batch i gathered from the resident arrays. Always
    called with the same n: under XLA the loop's bound is a compile-time constant (the
    while loop's maximum_iterations), so each new n compiles the function again."""
    step = sgd_step(model, conv_form)

    def loop(n):
        loss = tf.constant(0.0)
        for i in tf.range(n):
            indices = tf.range(batch) + i * batch
            loss = step(tf.gather(all_images, indices), tf.gather(all_targets, indices))
        return loss

    return loop


def images_per_second(run, images: int, seconds: float) -> float:
    """Runs `run()` (which trains on `images` images) for about `seconds`."""
    count, start = 0, time.perf_counter()
    while True:
        run().numpy()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count * images / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--rounds", type=int, default=7, help="interleaved rounds of every form (7)")
    add("--seconds", type=float, default=0.5, help="the least time of a form's round (0.5)")
    add("--loop", action="store_true", help="also time loops of 20 steps compiled as one function")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be at least 1")
    if not 0 < args.seconds < math.inf:  # NaN: a round that never ends
        parser.error(f"--seconds {args.seconds}: must be a positive number")

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    dataset = data.load(download=False)
    all_images = tf.constant(dataset.train_images[..., None] / 255, tf.float32)
    all_targets = tf.one_hot(dataset.train_labels, 10)
    runs = {}
    for name, (conv_form, xla) in FORMS.items():
        for batch in BATCHES:
            model = ConvNet(seed=0)
            step = tf.function(sgd_step(model, conv_form), jit_compile=xla, autograph=False)
            images, targets = all_images[:batch], all_targets[:batch]
            runs[name, batch] = functools.partial(step, images, targets), batch
            if args.loop:
                steps = 20
                loop = tf.function(
                    whole_loop(model, conv_form, all_images, all_targets, batch),
                    jit_compile=xla,
                )
                runs[f"{name} loop", batch] = (
                    functools.partial(loop, tf.constant(steps)),
                    steps * batch,
                )
    for run, _ in runs.values():  # compile outside the timing
        run().numpy()
    speeds = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, (run, images) in runs.items():
            speeds[key].append(images_per_second(run, images, args.seconds))
    # What else ran shows in the load (this process alone keeps it near 2 on two cores).
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"median of {args.rounds} interleaved rounds of ~{args.seconds} s, images/s")
    print(f"load average at the start {load_before}, at the end {load}")
    for batch in BATCHES:
        graph = speeds["graph", batch]
        for name, b in speeds:
            if b == batch:
                own = speeds[name, b]
                # The ratio within each round, then its median: a slow phase of the machine
                # that spans a round cancels out.
                ratio = statistics.median(x / g for x, g in zip(own, graph))
                print(
                    f"batch {batch:4d}  {name:14s} {statistics.median(own):8.0f}"
                    f"  (range {min(own):.0f}-{max(own):.0f})  x{ratio:.2f} of graph"
                )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
