"""The outer loop of a run: blocks of compiled steps, and between them everything that needs
the host (epoch ends, validation, checkpoints, summaries, progress, signals, divergence).

On a terminal, each epoch gets a live bar (Keras's Progbar) with the latest loss and
images/s, and training runs in blocks of about a twentieth of an epoch so the bar moves.
Elsewhere (CI logs, pipes) each epoch is one line, and blocks stay whole epochs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

from fastconv import faults
from fastconv.checkpoints import Checkpoints, kept, resume_hint
from fastconv.config import TrainConfig
from fastconv.interruption import Interrupted, StopRequests
from fastconv.pipeline import Datasets
from fastconv.summaries import Profiler, Summaries
from fastconv.trainer import Trainer


class TrainingDiverged(RuntimeError):
    """The training loss blew up or stopped being a finite number, or a weight did
    (`fastconv.blocks.sound`)."""


@dataclasses.dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    images_per_second: float


@dataclasses.dataclass
class LoopState:
    """What the run loop carries from block to block besides the trainer; saved with it.

    The sums are over the steps of the current epoch, so a run resumed mid-epoch reports
    the same epoch means as the run it continues.
    """

    loss_sum: float = 0.0
    correct: int = 0
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0
    history: list[EpochResult] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, state: dict) -> LoopState:
        history = [EpochResult(**epoch) for epoch in state.pop("history")]
        return cls(**state, history=history)


class RunLoop:
    """Trains up to `config.epochs` in blocks of compiled steps, answering between blocks."""

    def __init__(
        self,
        config: TrainConfig,
        trainer: Trainer,
        datasets: Datasets,
        state: LoopState,
        checkpoints: Checkpoints | None,
        summaries: Summaries | None,
        requests: StopRequests,
        log: Callable[[str], None],
        live: bool,
        folder: Path | None = None,
        agree: Callable[[StopRequests], tuple[tuple[int, str] | None, bool]] | None = None,
    ):
        self.config, self.trainer, self.datasets, self.state = config, trainer, datasets, state
        self.checkpoints, self.summaries, self.log = checkpoints, summaries, log
        self.requests = requests
        self.steps_per_epoch = datasets.steps_per_epoch
        # Workers answer together (`agree`), so their blocks end at the same steps whether
        # or not each has a terminal.
        short = live or agree is not None
        block_steps = config.steps_per_call or (
            live_block_steps(self.steps_per_epoch) if short else self.steps_per_epoch
        )
        self.steps_per_call = min(block_steps, self.steps_per_epoch)
        self.bar = EpochBar(self.steps_per_epoch) if live else None
        self.profiler = Profiler(folder, config.profile_steps)
        self.agree = agree
        self.checkpoint = checkpoints.latest if checkpoints else None
        self.saved = False  # whether the last block ended with a checkpoint
        self.seconds_here = 0.0  # training seconds of this process (a resumed run's are fewer)

    def train(self) -> None:
        """Trains up to `config.epochs`; raises TrainingDiverged or Interrupted."""
        # The data order is a function of the step: a resumed run goes on where it stopped.
        iterator = iter(self.datasets.train(self.trainer.steps_done))
        total_steps = self.config.epochs * self.steps_per_epoch
        try:
            # The trainer's step counter is the loop's position: read between blocks only.
            while (step := self.trainer.steps_done) < total_steps:
                self.train_block(iterator, step)
                faults.reached_step(self.trainer.steps_done)
                self.answer()
        finally:
            self.profiler.stop()

    def train_block(self, iterator, step: int) -> None:
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        num_steps = min(self.steps_per_call, self.steps_per_epoch - step_in_epoch)
        num_steps = self.profiler.block_length(step, num_steps)
        start = time.perf_counter()
        with self.profiler.block(step):
            if self.profiler.traces(step):
                block = self.trainer.train_one_step(iterator).fetch()
            else:
                block = self.trainer.train(iterator, tf.constant(num_steps)).fetch()
        seconds = time.perf_counter() - start
        if not block.sound:
            raise TrainingDiverged(
                f"training diverged in epoch {epoch + 1} at step "
                f"{step_in_epoch + block.steps} of {self.steps_per_epoch}: {block.trouble()}; "
                f"{kept(self.checkpoint)}; lower --learning-rate "
                f"(now {self.config.learning_rate})"
            )
        state = self.state
        state.loss_sum += block.loss_sum
        state.correct += block.correct
        state.epoch_seconds += seconds
        state.train_seconds += seconds
        self.seconds_here += seconds
        self.saved = False
        done = step_in_epoch + num_steps
        if done < self.steps_per_epoch:
            if self.bar:
                self.bar.update(done, block.loss, num_steps * self.config.batch_size / seconds)
            return
        self.finish_epoch(epoch + 1)
        self.save()

    def finish_epoch(self, epoch: int) -> None:
        """Evaluates on the validation set, appends the epoch to the history and reports it."""
        config, state = self.config, self.state
        validation = self.trainer.evaluate(self.datasets.validation)
        val_loss, val_accuracy = float(validation.loss), float(validation.accuracy)
        result = EpochResult(
            epoch,
            state.loss_sum / self.steps_per_epoch,
            state.correct / self.datasets.images_per_epoch,
            val_loss,
            val_accuracy,
            state.epoch_seconds,
            self.datasets.images_per_epoch / state.epoch_seconds,
        )
        state.history.append(result)
        state.loss_sum = state.epoch_seconds = 0.0
        state.correct = 0
        if self.bar:
            self.bar.clear()
        self.log(
            f"epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  "
            f"loss {result.train_loss:.4f}  acc {result.train_accuracy:.4f} | "
            f"val loss {val_loss:.4f}  acc {val_accuracy:.4f} | "
            f"{result.seconds:.2f} s  {result.images_per_second:,.0f} img/s"
        )
        if self.summaries:
            self.summaries.epoch(result, self.trainer.learning_rate())

    def save(self) -> None:
        if self.checkpoints:
            self.checkpoint = self.checkpoints.save(self.state.to_json())
            self.saved = True
            self.requests.kept = kept(self.checkpoint, self.config.logdir)

    def answer(self) -> None:
        """Saves on SIGUSR1; saves and stops on SIGINT or SIGTERM (of any worker)."""
        requests = self.requests
        stop, save = (
            self.agree(requests) if self.agree else (requests.stop, requests.save_requested)
        )
        if save:
            if not self.saved:
                self.save()
                self.log(f"saved {self.checkpoint} (SIGUSR1)")
            requests.save_requested = False
        if stop is None:
            return
        if not self.saved:
            self.save()
        exit_code, cause = stop
        message = f"{cause} {_position(self.trainer.steps_done, self.steps_per_epoch)}"
        if self.checkpoint:
            message += f"; saved {self.checkpoint}; {resume_hint(self.config.logdir)}"
        else:
            message += "; no --logdir, so nothing was saved"
        raise Interrupted(exit_code, message)


def _position(step: int, steps_per_epoch: int) -> str:
    """Where a run stopped: "after epoch 2", "in epoch 3 after step 14 of 50"."""
    epoch, step_in_epoch = divmod(step, steps_per_epoch)
    if step_in_epoch == 0:
        return f"after epoch {epoch}"
    return f"in epoch {epoch + 1} after step {step_in_epoch} of {steps_per_epoch}"


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
