"""What the terminal shows while a run trains.

On a terminal, each epoch gets a live bar (Keras's Progbar) with the latest loss and
images/s, and training runs in blocks of about a twentieth of an epoch so the bar moves
(a block boundary costs well under a millisecond). Elsewhere (CI logs, pipes) each epoch
is one line, and blocks stay whole epochs.
"""

from __future__ import annotations

import keras

UPDATES_PER_EPOCH = 20


def live_block_steps(steps_per_epoch: int) -> int:
    """Steps per block that update a live bar about UPDATES_PER_EPOCH times an epoch."""
    return max(1, -(-steps_per_epoch // UPDATES_PER_EPOCH))


class EpochBar:
    """A live bar for one epoch at a time."""

    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch
        self._bar = None

    def update(self, step_in_epoch: int, loss: float, images_per_second: float) -> None:
        if self._bar is None:
            self._bar = keras.utils.Progbar(
                self.steps_per_epoch, stateful_metrics=["loss", "img/s"], unit_name="step"
            )
        values = [("loss", loss), ("img/s", images_per_second)]
        # The last update is the epoch line's job; the bar stops one short and is cleared.
        self._bar.update(min(step_in_epoch, self.steps_per_epoch - 1), values)

    def clear(self) -> None:
        """Wipes the bar's line, so the epoch's summary line takes its place."""
        if self._bar is not None:
            print("\r\033[2K", end="", flush=True)
            self._bar = None
