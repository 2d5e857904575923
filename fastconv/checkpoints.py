"""Checkpoints of a run: the trainer's state plus the run loop's own, restored together.

A checkpoint holds the weights, the optimizer's variables (its step count, learning rate
and, under mixed_float16, the loss scale), the trainer's step counter (which, with the seed,
fixes where the data order continues, see `fastconv.pipeline.epoch_order`), and the run
loop's state as JSON (the epoch's partial sums, the history). Nothing else in a run is
random, so restoring a checkpoint resumes the run exactly.

`tf.train.CheckpointManager` writes the data files under temporary names, renames them, and
only then points its `checkpoint` index file at them (itself replaced atomically): a process
killed while saving leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from fastconv.trainer import Trainer


class Checkpoints:
    """The checkpoints in `directory`; the newest `keep` are kept."""

    def __init__(self, directory: Path, trainer: Trainer, keep: int = 3):
        self.directory = Path(directory)
        self._run_state = tf.Variable("{}", trainable=False, name="run_state")
        self._checkpoint = tf.train.Checkpoint(
            model=trainer.model,
            optimizer=trainer.optimizer,
            step=trainer.step,
            run_state=self._run_state,
        )
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, str(self.directory), max_to_keep=keep, checkpoint_name="ckpt"
        )
        self._step = trainer.step

    @staticmethod
    def exist(directory: Path) -> bool:
        """Whether `directory` holds a complete checkpoint."""
        return tf.train.latest_checkpoint(str(directory)) is not None

    @property
    def latest(self) -> str | None:
        """The newest complete checkpoint's path prefix, or None."""
        return self._manager.latest_checkpoint

    def save(self, run_state: dict) -> str:
        """Saves the trainer and `run_state` (JSON-able) as checkpoint number <step>."""
        self._run_state.assign(json.dumps(run_state))
        return self._manager.save(checkpoint_number=self._step)

    def restore_latest(self) -> dict:
        """Puts the trainer back as the latest checkpoint has it; returns its run state.

        `assert_consumed` makes a checkpoint of another network (other --kernels or --units,
        another precision's optimizer) fail loudly instead of half restoring.
        """
        if self.latest is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self._checkpoint.restore(self.latest).assert_consumed()
        return json.loads(self._run_state.numpy().decode())
