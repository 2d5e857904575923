"""Where a run starts: from nothing, or for `--resume` from the run folder's newest intact
checkpoint, with the epochs asked for checked against the epochs done.

Everything here reads and refuses before the run writes anything: a refused resume leaves
the folder exactly as it was.
"""

from __future__ import annotations

from pathlib import Path

from fastconv import checkpoints, rundir
from fastconv.checkpoints import NothingToResume, Start
from fastconv.config import PRECISIONS, ConfigError, TrainConfig
from fastconv.model import usable_conv_form


def _counts(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_count(n) for n in value)


def _count(value) -> bool:
    return type(value) is int and value >= 1


# What each recorded setting may be (`fastconv.runtime.Placement.record`), given the
# resumed run's configuration: a form with fastconv's own op cannot run under --xla.
_VALID = {
    "shards": lambda value, config: _count(value),
    "threads": lambda value, config: value is None or _counts(value),
    "precision": lambda value, config: value in PRECISIONS and value != "auto",
    "conv_form": lambda value, config: usable_conv_form(value, config.xla),
    "replicas": lambda value, config: _count(value),
}


class NothingToDo(Exception):
    """--resume of a run that has trained and reported all its epochs: nothing to change."""


def starting_point(
    config: TrainConfig, folder: Path | None, steps_per_epoch: int, resume: bool
) -> Start | None:
    """The checkpoint the run continues from, or None for a new run.

    Raises ConfigError for a new run over a folder that holds checkpoints, NothingToResume
    without an intact checkpoint to resume from, ConfigError for `--epochs` below what the
    run has trained, and NothingToDo when the run has trained and reported all its epochs
    (unless it is to be exported).
    """
    directory = folder / rundir.CHECKPOINTS if folder else None
    if not resume:
        if directory and checkpoints.present(directory):
            raise ConfigError(
                f"{folder} already holds a run's checkpoints: continue it with --resume, "
                "or choose another --logdir"
            )
        return None
    if directory is None:
        raise NothingToResume("resuming needs the run folder (--logdir) of the run to continue")
    start = checkpoints.find_start(directory)
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


def recorded_settings(folder: Path, config: TrainConfig) -> tuple[dict | None, list[str]]:
    """The settings the run resolved from its machine when it started, as
    `fastconv.runtime.place` takes them, and a note for any that this version, this machine
    or `config` cannot honour."""
    record = rundir.recorded_placement(folder)
    if record is None:
        note = f"note: {folder} records no settings resolved from its machine; resolving them here"
        return None, [note]
    valid = {
        name: record[name]
        for name, ok in _VALID.items()
        if name in record and ok(record[name], config)
    }
    if "conv_form" not in valid:  # the threads were chosen for the form's engine
        valid.pop("threads", None)
    if valid.get("threads"):
        valid["threads"] = tuple(valid["threads"])
    lost = [f"{name} {record.get(name)!r}" for name in _VALID if name not in valid]
    notes = []
    if lost:
        notes.append(
            f"warning: cannot resume with the run's {', '.join(lost)} (in "
            f"{folder / rundir.ENVIRONMENT}); this machine's choice may compute differently"
        )
    return valid, notes
