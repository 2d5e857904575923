"""Is `--xla` worth it on this CPU? Its steps timed against graph mode's, at a run's start.

Both are timed in the run's own process on the run's own data: graph mode by a twin trainer
(its own weights, graph-mode steps, the same shards and precision) that is thrown away after.
They share the thread settings (`fastconv.runtime.thread_counts` does not depend on XLA), so
the comparison is the one a user makes by leaving out `--xla`.
"""

from __future__ import annotations

import math
import time

import tensorflow as tf

from fastconv import runtime
from fastconv.model import ConvNet
from fastconv.trainer import Trainer


def xla_speed_ratio(trainer: Trainer, train: tf.data.Dataset, steps: int = 50, rounds: int = 3):
    """Speed of the trainer's XLA steps over graph mode's: best of `rounds` blocks of `steps`
    steps each from the stream `train`. Leaves the trainer as it was."""
    with trainer.state_restored():
        xla_seconds = block_seconds(trainer, iter(train), steps, rounds)
    model = trainer.model
    twin = Trainer(
        ConvNet(model.n_kernels, model.units, seed=0, dtype_policy=model.dtype_policy.name),
        trainer.learning_rate,
        xla=False,
        shards=trainer.shards,
        conv_form=runtime.conv_form(xla=False, on_gpu=False),  # the probe runs on a CPU only
    )
    twin.make_batch = trainer.make_batch
    return block_seconds(twin, iter(train), steps, rounds) / xla_seconds


def block_seconds(trainer: Trainer, iterator, steps: int, rounds: int) -> float:
    """The best time of `rounds` blocks of `steps` steps, after a step that compiles."""
    trainer.train(iterator, tf.constant(1))
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        trainer.train(iterator, tf.constant(steps)).loss.numpy()  # host read: waits
        best = min(best, time.perf_counter() - start)
    return best
