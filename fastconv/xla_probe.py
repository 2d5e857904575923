"""Is `--xla` worth it on this CPU? Its steps timed against graph mode's, at a run's start.

Graph mode trains fastest with thread settings of its own (one thread per op and the shards
side by side, `fastconv.runtime.thread_counts`), and TensorFlow fixes its threads once per
process, so an XLA run cannot time graph mode fairly in its own process. The graph steps are
timed in a short child process (`python -m fastconv.xla_probe SETTINGS`, about 3 s) set up as
a graph-mode run would be, on random images of the same shape (these kernels take the same
time whatever the pixels), and the XLA steps in the run's own process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from fastconv.trainer import Trainer


def block_seconds(trainer: Trainer, iterator, steps: int, rounds: int) -> float:
    """The best time of `rounds` blocks of `steps` steps, after a step that compiles."""
    trainer.train(iterator, tf.constant(1))
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        trainer.train(iterator, tf.constant(steps)).loss.numpy()  # host read: waits
        best = min(best, time.perf_counter() - start)
    return best


def graph_block_seconds(**settings) -> float | None:
    """`block_seconds` of graph mode at its best, measured in a child process; None if the
    child could not run (the probe only informs, it must never stop a run).

    `settings`: n_kernels, units, precision, batch_size, shards, steps, rounds.
    """
    try:
        child = subprocess.run(
            [sys.executable, "-m", "fastconv.xla_probe", json.dumps(settings)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            check=True,
        )
        return float(child.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _time_graph_mode(settings: dict) -> float:
    from fastconv import pipeline, runtime
    from fastconv.model import ConvNet

    runtime.set_threads(runtime.thread_counts(settings["shards"], xla=False))
    count = settings["batch_size"] * 8
    images = np.random.default_rng(0).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = np.arange(count) % 10
    batches = pipeline.training_batches(
        images, labels, settings["batch_size"], 0, pipeline.Standardization()
    )
    model = ConvNet(
        settings["n_kernels"], settings["units"], seed=0, dtype_policy=settings["precision"]
    )
    trainer = Trainer(model, 0.01, xla=False, shards=settings["shards"])
    return block_seconds(trainer, iter(batches), settings["steps"], settings["rounds"])


if __name__ == "__main__":
    print(_time_graph_mode(json.loads(sys.argv[1])))
