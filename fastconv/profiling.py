"""`--profile-steps START,STOP`: a TensorBoard profiler trace of those training steps.

Steps are counted from 1 over the whole run. Inside the window each step runs as a block of
its own, wrapped in `tf.profiler.experimental.Trace("train", step_num=...)` with the data
fetch inside it (the compiled loop pulls its batch), so TensorBoard's Profile tab finds the
step markers and breaks each step's time down. Outside the window blocks run as usual.
The trace lands in <logdir>/plugins/profile/<time>/, where the Profile tab looks.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf


class Profiler:
    """Cuts blocks at the window's edges and records the steps inside it."""

    def __init__(self, logdir: str | None, steps: tuple[int, int] | None):
        self.logdir = logdir
        self.first, self.last = steps if steps and logdir else (None, None)
        self.active = False

    def block_length(self, step: int, num_steps: int) -> int:
        """How many of the `num_steps` planned after `step` steps done may run as one block."""
        if self.first is None or step >= self.last:
            return num_steps
        if step + 1 >= self.first:  # inside the window: one step per block, each marked
            return 1
        return min(num_steps, self.first - 1 - step)  # stop just before the window

    @contextlib.contextmanager
    def block(self, step: int):
        """Runs the block that follows `step` steps done: traced when it lies in the window."""
        if self.first is None or not self.first <= step + 1 <= self.last:
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
