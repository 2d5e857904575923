"""Faults at known points of a run, for the tests only.

The reliability tests must stop and kill runs at exact points (a step inside an epoch, the
middle of a checkpoint write, a phase of the run) without sleeps that hope to hit a window.
Two environment variables, which nothing but the tests sets, put a fault there:

    FASTCONV_TEST_SIGNAL=<point>:<SIGNAL>
        sends SIGNAL (e.g. SIGTERM) to the run's own process when it reaches <point>:
        "import" (the command line, as TensorFlow's import begins), "start-up" (the run
        folder just locked), "compile", "final-evaluation", "export", or "step-N" (after
        the first block of steps that ends at or past step N).
    FASTCONV_TEST_PAUSE_CHECKPOINT=<N>
        pauses inside the write of checkpoint number N, once its files are written and
        before the index points at it: prints "test hook: paused in the write of <path>"
        and waits for a line on stdin, or its end (the test kills the run there, or lets
        it go on).

Unset, each hook is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys

SIGNAL = "FASTCONV_TEST_SIGNAL"
PAUSE_CHECKPOINT = "FASTCONV_TEST_PAUSE_CHECKPOINT"


def reached(point: str) -> None:
    """Sends the signal FASTCONV_TEST_SIGNAL names, once, if it names `point`."""
    spec = os.environ.get(SIGNAL)
    if not spec:
        return
    where, _, name = spec.rpartition(":")
    if where == point:
        del os.environ[SIGNAL]  # once: the resumed run of a test starts clean
        os.kill(os.getpid(), signal.Signals[name])


def reached_step(step: int) -> None:
    """`reached("step-N")` for the N that FASTCONV_TEST_SIGNAL names, once `step` >= N."""
    spec = os.environ.get(SIGNAL, "")
    if spec.startswith("step-") and step >= int(spec.split(":")[0].removeprefix("step-")):
        reached(spec.split(":")[0])


def checkpoint_pause(number: int):
    """A write callback (tf.train.CheckpointOptions) that pauses inside the write of
    checkpoint `number`, or None when FASTCONV_TEST_PAUSE_CHECKPOINT names another."""
    if os.environ.get(PAUSE_CHECKPOINT) != str(number):
        return None

    def pause(save_path: str) -> None:
        print(f"test hook: paused in the write of {save_path}", flush=True)
        sys.stdin.readline()

    return pause
