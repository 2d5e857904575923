"""`--profile-steps START,STOP`: a TensorBoard profiler trace of those training steps.

Steps are counted from 1 over the whole run. Inside the window each step runs on its own,
through the trainer's loop-free one-step function (xprof groups a marker's events into a
step only when the traced graph holds no while loop), wrapped in
`tf.profiler.experimental.Trace("train", step_num=...)` with the data fetch inside it, so
TensorBoard's Profile tab finds the steps and breaks each one's time down. The trace runs
from one step before the window to one step after it, because xprof leaves out the steps at
a trace's edges when it can't tell that they are whole. Outside it blocks run as usual.
The trace lands in <logdir>/plugins/profile/<time>/, where the Profile tab looks.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf


class Profiler:
    """Cuts blocks at the window's edges and records the steps inside it."""

    def __init__(self, logdir: str | None, steps: tuple[int, int] | None):
        self.logdir = logdir
        self.first, self.last = None, None  # the steps traced: the window and a step each side
        if steps and logdir:
            self.first, self.last = max(1, steps[0] - 1), steps[1] + 1
        self.active = False

    def block_length(self, step: int, num_steps: int) -> int:
        """How many of the `num_steps` planned after `step` steps done may run as one block."""
        if self.first is None or step >= self.last:
            return num_steps
        if step + 1 >= self.first:  # inside the window: one step per block, each marked
            return 1
        return min(num_steps, self.first - 1 - step)  # stop just before the window

    def traces(self, step: int) -> bool:
        """Whether the step after `step` steps done is traced."""
        return self.first is not None and self.first <= step + 1 <= self.last

    @contextlib.contextmanager
    def block(self, step: int):
        """Runs the block that follows `step` steps done, traced when `traces(step)`."""
        if not self.traces(step):
            yield
            return
        if not self.active:
            tf.profiler.experimental.start(self.logdir)
            self.active = True
        with tf.profiler.experimental.Trace("train", step_num=step + 1, _r=1):
            yield
        if step + 1 == self.last:
            self.stop()

    def stop(self) -> None:
        """Ends the trace and writes it (also when the run stops inside the window)."""
        if self.active:
            tf.profiler.experimental.stop()
            self.active = False
