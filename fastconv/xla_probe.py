"""Is `--xla` worth it on this CPU? Its steps timed against graph mode's, at a run's start.

Both are timed in the run's own process on the run's own data: graph mode by a twin trainer
(its own weights, graph-mode steps, the same shards and precision) that is thrown away after.
They share the run's thread settings, which are XLA's (`fastconv.runtime.thread_counts`).
Where those differ from graph mode's own (with shards on a CPU), the twin runs on threads a
run without `--xla` would not give it: on 2 cores, 7-19% slower than on its own (bench/
RESULTS.md), so there the ratio flatters XLA and the run's note says on whose threads.
"""

from __future__ import annotations

import dataclasses
import math
import time

import tensorflow as tf

from fastconv.config import TrainConfig
from fastconv.runtime import Placement, fastest_conv_form
from fastconv.trainer import Trainer, make_trainer


def xla_speed_ratio(
    trainer: Trainer,
    train: tf.data.Dataset,
    config: TrainConfig,
    placement: Placement,
    steps: int = 50,
    rounds: int = 3,
) -> float:
    """Speed of the trainer's XLA steps over graph mode's: best of `rounds` blocks of `steps`
    steps each from the stream `train`. `trainer` is the run's, made from `config` and
    `placement`; it is left as it was."""
    with trainer.state_restored():
        xla_seconds = block_seconds(trainer, iter(train), steps, rounds)
    graph_placement = dataclasses.replace(
        placement, conv_form=fastest_conv_form(xla=False, on_gpu=placement.on_gpu)
    )
    # The twin's learning rate is constant: a schedule costs a few scalar ops per step, and
    # this way the twin needs no steps per epoch.
    twin_config = dataclasses.replace(config, xla=False, schedule="constant", warmup_epochs=0.0)
    twin = make_trainer(twin_config, graph_placement, trainer.make_batch)
    return block_seconds(twin, iter(train), steps, rounds) / xla_seconds


def block_seconds(trainer: Trainer, iterator, steps: int, rounds: int) -> float:
    """The best time of `rounds` blocks of `steps` steps, after a step that compiles."""
    trainer.train(iterator, tf.constant(1))
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        trainer.train(iterator, tf.constant(steps)).fetch()  # host read: waits
        best = min(best, time.perf_counter() - start)
    return best
