"""Checkpoints of a run: the trainer's state plus the run loop's own, restored together.

A checkpoint holds the weights, the optimizer's variables (its step count, learning rate
and, under mixed_float16, the loss scale), the trainer's step counter (which, with the seed,
fixes where the data order continues, see `fastconv.pipeline.epoch_order`), and the run
loop's state as JSON (the epoch's partial sums, the history). Nothing else in a run is
random, so restoring a checkpoint resumes the run exactly.

`tf.train.CheckpointManager` writes the data files under temporary names (`ckpt-N_temp/`),
renames them, and only then points its `checkpoint` index file at them (itself replaced
atomically). The index is the commit point: a checkpoint newer than the one it names was
cut short by a kill and is removed as debris, with the temporary files of a failed write.
A resumed run reads its checkpoint whole before trusting it (every tensor carries a
checksum): a damaged one is named and the next older one taken; a missing or unreadable
index is rebuilt from the checkpoints present.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import tensorflow as tf

from fastconv import faults, rundir
from fastconv.config import ConfigError, TrainConfig
from fastconv.trainer import Trainer

INDEX = "checkpoint"
NAME = "ckpt"
_NUMBERED = re.compile(rf"{NAME}-(\d+)")
_STEP = "step/.ATTRIBUTES/VARIABLE_VALUE"
_RUN_STATE = "run_state/.ATTRIBUTES/VARIABLE_VALUE"


class NothingToResume(ConfigError):
    """--resume named a run folder without a readable checkpoint in it."""


@dataclasses.dataclass(frozen=True)
class Start:
    """The checkpoint a resumed run starts from, read whole and found intact.

    Attributes:
      path: its path prefix (`.../checkpoints/ckpt-N`).
      step: the training steps it holds.
      run_state: the run loop's state saved with it.
      notes: what was wrong on the way to it (damaged newer checkpoints, the index).
    """

    path: str
    step: int
    run_state: dict
    notes: tuple[str, ...] = ()


def present(directory: Path) -> bool:
    """Whether `directory` holds checkpoints or their index, readable or not."""
    return (directory / INDEX).exists() or any(directory.glob(f"{NAME}-*.index"))


def find_start(directory: Path) -> Start:
    """The newest intact checkpoint of those the index lists (of those present, when the
    index is missing or unreadable). Reads only; NothingToResume when there is none."""
    directory = Path(directory)
    listed, notes = _listed(directory)
    if listed is None:
        listed = sorted(_numbers_present(directory))
        if listed:
            notes.append(
                f"note: {directory / INDEX} is missing or unreadable; it will be rebuilt from "
                f"the checkpoints present ({', '.join(f'{NAME}-{n}' for n in listed)})"
            )
    damaged = []  # (path, what is wrong with it), newest first
    for number in reversed(listed):
        path = str(directory / f"{NAME}-{number}")
        try:
            tensors = _read_whole(path)
        except (tf.errors.OpError, ValueError, IndexError, OSError) as error:
            damaged.append((path, str(error).splitlines()[0]))
            continue
        notes += [
            f"warning: checkpoint {bad} is damaged ({why}); skipped it" for bad, why in damaged
        ]
        run_state = json.loads(tensors[_RUN_STATE].decode())
        return Start(path, int(tensors[_STEP]), run_state, tuple(notes))
    if damaged:
        raise NothingToResume(
            f"{directory}: no intact checkpoint to resume from; "
            + "; ".join(f"{bad} is damaged ({why})" for bad, why in damaged)
        )
    raise NothingToResume(
        f"{directory}: no checkpoint to resume from (the run stopped before its first); "
        f"remove {directory.parent} and start again, or start in a new --logdir"
    )


def _listed(directory: Path) -> tuple[list[int] | None, list[str]]:
    """The numbers of the checkpoints the index lists, oldest first, up to the latest it
    names; None when there is no readable index."""
    if not (directory / INDEX).exists():
        return None, []
    # TensorFlow logs an unreadable index in two warnings, at each read; the run's note
    # (`find_start`) says it once.
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")
    try:
        state = tf.train.get_checkpoint_state(str(directory))
    except Exception:  # a garbled text proto: the parser's own errors, of several kinds
        state = None
    finally:
        logger.setLevel(level)
    if state is None or not state.model_checkpoint_path:
        return None, []
    latest = _number(state.model_checkpoint_path)
    numbers = {_number(path) for path in state.all_model_checkpoint_paths} | {latest}
    return sorted(n for n in numbers if n is not None and n <= latest), []


def _read_whole(path: str) -> dict:
    """Every tensor of the checkpoint at `path`: reading them checks each one's checksum."""
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _number(path: str) -> int | None:
    match = _NUMBERED.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def _numbers_present(directory: Path) -> set[int]:
    return {n for p in directory.glob(f"{NAME}-*.index") if (n := _number(p.stem)) is not None}


def discard_uncommitted(directory: Path, start: Start) -> None:
    """Makes `start` the index's latest checkpoint and removes the debris of cut-short writes.

    An intact index that names `start` is the commit point: anything newer was never
    committed and goes. Otherwise (no index, an unreadable one, or one naming a damaged
    checkpoint) the index is rebuilt from the checkpoints present, and the damaged ones
    stay where they are, as the run's notes named them, until a save of the same number
    replaces them.
    """
    number = _number(start.path)
    listed, _ = _listed(directory)
    if listed and listed[-1] == number:
        clean(directory, number)
        return
    older = [*sorted(n for n in _numbers_present(directory) if n < number), number]
    times = [(directory / f"{NAME}-{n}.index").stat().st_mtime for n in older]
    # The index as CheckpointManager writes it (a CheckpointState in text form, its paths
    # relative): oldest first, with times after the last preserved one, so the manager goes
    # on deleting the older ones in turn. Written whole, then renamed, as the manager does.
    state = [f'model_checkpoint_path: "{NAME}-{number}"']
    state += [f'all_model_checkpoint_paths: "{NAME}-{n}"' for n in older]
    state += [f"all_model_checkpoint_timestamps: {time!r}" for time in times]
    state.append(f"last_preserved_timestamp: {min(times) - 1!r}")
    partial = directory / f"{INDEX}.tmp-rebuilt"
    partial.write_text("\n".join(state) + "\n")
    os.replace(partial, directory / INDEX)
    clean(directory, None)


def clean(directory: Path, latest: int | None) -> None:
    """Removes what interrupted or failed writes left: temporary files and folders, data
    files without their index, and checkpoints newer than `latest` (the index's latest)."""
    for path in directory.iterdir():
        name = path.name
        if name.endswith("_temp") or ".tempstate" in name or name.startswith(INDEX + ".tmp"):
            _remove(path)
            continue
        number = _number(name.split(".", 1)[0])
        if number is None:
            continue
        if latest is not None and number > latest:
            _remove(path)  # written, but never committed by the index
        elif ".data-" in name and not (directory / f"{NAME}-{number}.index").exists():
            _remove(path)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


class NothingToDo(Exception):
    """--resume of a run that has trained and reported all its epochs: nothing to change."""


def starting_point(
    config: TrainConfig, folder: Path | None, steps_per_epoch: int, resume: bool
) -> Start | None:
    """The checkpoint the run continues from, or None for a new run.

    Raises ConfigError for a new run over a folder that holds checkpoints, or anything but
    an empty run folder's lock (`fastconv.rundir.require_fresh`), NothingToResume
    without an intact checkpoint to resume from, ConfigError for `--epochs` below what the
    run has trained, and NothingToDo when the run has trained and reported all its epochs
    (unless it is to be exported).
    """
    directory = folder / rundir.CHECKPOINTS if folder else None
    if not resume:
        if directory and present(directory):
            raise ConfigError(
                f"{folder} already holds a run's checkpoints: continue it with --resume, "
                "or choose another --logdir"
            )
        if folder:
            rundir.require_fresh(folder)
        return None
    if directory is None:
        raise NothingToResume("resuming needs the run folder (--logdir) of the run to continue")
    start = find_start(directory)
    epochs_done, steps_into_next = divmod(start.step, steps_per_epoch)
    trained = f"{epochs_done} epoch(s)"
    if steps_into_next:
        trained += f" and {steps_into_next} step(s) of the next"
    if start.step > config.epochs * steps_per_epoch:
        raise ConfigError(
            f"--epochs {config.epochs}: the run in {folder} has trained {trained} already "
            f"(up to {start.path}); a resumed run cannot train fewer, so nothing was changed"
        )
    finished = start.step == config.epochs * steps_per_epoch
    if finished and not config.export_dir and _reported_epochs(folder) == epochs_done:
        raise NothingToDo(
            f"{folder}: the run has trained and reported its {epochs_done} epoch(s) "
            "already; nothing to do (give a larger --epochs to train it further)"
        )
    return start


def _reported_epochs(folder: Path) -> int | None:
    """The epochs metrics.json reports (written last of the results), or None."""
    try:
        return rundir.read_json(folder / rundir.METRICS).get("epochs")
    except (OSError, ValueError, AttributeError):
        return None


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
        self._keep = keep
        self._manager = self._new_manager()
        self._trainer = trainer

    def _new_manager(self) -> tf.train.CheckpointManager:
        """A manager of the checkpoints the index on disk lists."""
        return tf.train.CheckpointManager(
            self._checkpoint, str(self.directory), max_to_keep=self._keep, checkpoint_name=NAME
        )

    @property
    def latest(self) -> str | None:
        """The newest complete checkpoint's path prefix, or None."""
        return self._manager.latest_checkpoint

    def bytes_needed(self) -> int:
        """The room still needed for the checkpoints kept and the one being written (a
        checkpoint is about the size of the variables it holds, plus its metadata)."""
        size = sum(v.numpy().nbytes for v in self._trainer.variables) + 2**14
        held = sum(p.stat().st_size for p in self.directory.glob(f"{NAME}-*") if p.is_file())
        return max(0, (self._keep + 1) * size - held)

    def save(self, run_state: dict) -> str:
        """Saves the trainer and `run_state` (JSON-able) as checkpoint number <step>.

        A failed write (a full disk) is a RunFolderError naming it; its temporary files
        are removed and the last good checkpoint stays the latest.
        """
        self._run_state.assign(json.dumps(run_state))
        number = self._trainer.steps_done
        pause = faults.checkpoint_pause(number)
        options = (
            tf.train.CheckpointOptions(experimental_write_callbacks=[pause]) if pause else None
        )
        try:
            return self._manager.save(checkpoint_number=number, options=options)
        except (OSError, tf.errors.OpError) as error:
            self._manager = self._new_manager()  # this one had counted the failed save
            committed = self.latest
            clean(self.directory, _number(committed) if committed else None)
            raise rundir.RunFolderError(
                f"cannot save checkpoint {self.directory / f'{NAME}-{number}'} "
                f"({rundir.reason(error)}); {kept(committed)}"
            ) from None

    def restore(self, start: Start) -> dict:
        """Puts the trainer back as checkpoint `start` has it; returns its run state.

        `assert_consumed` makes a checkpoint of another network (other --kernels or --units,
        another precision's optimizer) fail loudly instead of half restoring.
        """
        try:
            self._checkpoint.restore(start.path).assert_consumed()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise ConfigError(
                f"{start.path} does not fit this run's network and optimizer: "
                f"{str(error).splitlines()[0]}"
            ) from None
        return json.loads(self._run_state.numpy().decode())


def kept(checkpoint: str | None, logdir: str | None = None) -> str:
    """What a run that ends now keeps, as its last message says it; with the way to resume
    it when `logdir` is given."""
    if not checkpoint:
        return "no checkpoint had been saved"
    text = f"the last good checkpoint, {checkpoint}, is kept"
    return f"{text}; {resume_hint(logdir)}" if logdir else text


def resume_hint(logdir: str | None) -> str:
    return f"resume with: python scripts/train.py --logdir {logdir} --resume"
