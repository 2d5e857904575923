"""TensorBoard event files of a run: the run folder itself, `train/`, `validation/`, `test/`.

    ./           the configuration as hparams: the HParams session of the run, whose metric
                 columns are the scalars of the three folders below
    train/       batch_loss every --log-every steps (written by the compiled loop itself),
                 epoch_loss, epoch_accuracy, images_per_second, learning_rate per epoch,
                 the graph of one training step
    validation/  epoch_loss, epoch_accuracy per epoch
    test/        loss, accuracy and the confusion matrix image, once at the end

The epoch scalars share names between train/ and validation/, so TensorBoard draws the
two curves of the book's figure in one chart.

`Profiler` answers --profile-steps START,STOP, steps counted from 1 over the whole run.
Inside the window each step runs on its own, through the trainer's loop-free one-step
function (xprof groups a marker's events into a step only when the traced graph holds no
while loop), wrapped in `tf.profiler.experimental.Trace("train", step_num=...)` with the data
fetch inside it, so TensorBoard's Profile tab finds the steps and breaks each one's time down.
The trace runs from one step before the window to one step after it, because xprof leaves
out the steps at a trace's edges when it can't tell that they are whole. Outside it, blocks
run as usual. The trace lands in <logdir>/plugins/profile/<time>/, where the Profile tab looks.
"""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.image import metadata as image_metadata

from fastconv.model import IMAGE_SHAPE
from fastconv.trainer import Trainer

WRITERS = ("train", "validation", "test")
# The HParams dashboard's metric columns: (folder, tag), each the last value of that scalar.
METRICS = (
    ("validation", "epoch_accuracy"),
    ("validation", "epoch_loss"),
    ("test", "accuracy"),
    ("test", "loss"),
    ("train", "epoch_accuracy"),
    ("train", "epoch_loss"),
)


class Summaries:
    """The run's summary writers: one per folder of `WRITERS`, and the session's own."""

    def __init__(self, logdir: Path):
        self.train, self.validation, self.test = (
            tf.summary.create_file_writer(str(Path(logdir) / name)) for name in WRITERS
        )
        # The HParams session lives in the run folder itself: its metrics are looked up in
        # the folders below it, so validation and test results become columns too (a session
        # in train/ would see the training scalars alone).
        self.session = tf.summary.create_file_writer(str(logdir))

    def hparams(self, config: dict, run_name: str) -> None:
        """The configuration as TensorBoard hparams (which take numbers, booleans and strings:
        None becomes "none", a tuple "a,b"), with `METRICS` as the metric columns."""
        values = {key: _hparam(value) for key, value in config.items()}
        metrics = [
            hparams_api.Metric(tag, group=folder, display_name=f"{tag} ({folder})")
            for folder, tag in METRICS
        ]
        with self.session.as_default():
            hparams_api.hparams_config(
                hparams=[hparams_api.HParam(key) for key in values], metrics=metrics
            )
            hparams_api.hparams(values, trial_id=run_name)

    def graph(self, trainer: Trainer, batch_size: int) -> None:
        """The graph of one training step on `batch_size` images, for the Graphs tab."""
        step = trainer.train_step.get_concrete_function(
            tf.TensorSpec([batch_size, *IMAGE_SHAPE], tf.float32),
            tf.TensorSpec([batch_size, 10], tf.float32),
        )
        with self.train.as_default():
            tf.summary.graph(step.graph)

    def epoch(self, epoch, learning_rate: float) -> None:
        """One point per epoch on each epoch curve; `epoch` is a `fastconv.run.EpochResult`."""
        with self.train.as_default(step=epoch.epoch):
            tf.summary.scalar("epoch_loss", epoch.train_loss)
            tf.summary.scalar("epoch_accuracy", epoch.train_accuracy)
            tf.summary.scalar("images_per_second", epoch.images_per_second)
            tf.summary.scalar("learning_rate", learning_rate)
        with self.validation.as_default(step=epoch.epoch):
            tf.summary.scalar("epoch_loss", epoch.val_loss)
            tf.summary.scalar("epoch_accuracy", epoch.val_accuracy)
        self.flush()  # a user watching TensorBoard sees the epoch as it ends

    def test_results(self, step: int, loss: float, accuracy: float, confusion_png: bytes) -> None:
        with self.test.as_default(step=step):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("accuracy", accuracy)
            # As tf.summary.image writes an image (width, height, then the PNG), from the
            # PNG at hand, rather than decode it for tf.summary.image to encode it again.
            width, height = struct.unpack(">II", confusion_png[16:24])  # the PNG's IHDR chunk
            tf.summary.write(
                "confusion_matrix",
                tf.constant([str(width), str(height), confusion_png]),
                metadata=image_metadata.create_summary_metadata(
                    display_name=None, description=None
                ),
            )

    def flush(self) -> None:
        for writer in (self.train, self.validation, self.test, self.session):
            writer.flush()

    def close(self) -> None:
        for writer in (self.train, self.validation, self.test, self.session):
            writer.close()

    def __enter__(self) -> Summaries:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # a full disk fails the close too
            self.close()


def _hparam(value):
    if value is None:
        return "none"
    if isinstance(value, tuple | list):
        return ",".join(str(item) for item in value)
    if isinstance(value, str):  # a path whose bytes are not UTF-8 (surrogates): escaped
        return value.encode(errors="surrogateescape").decode(errors="backslashreplace")
    return value


class Profiler:
    """Cuts blocks at the window's edges and records the steps inside it."""

    def __init__(self, logdir: str | Path | None, steps: tuple[int, int] | None):
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
            tf.profiler.experimental.start(str(self.logdir))
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
