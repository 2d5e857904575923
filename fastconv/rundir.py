"""The run folder (`--logdir`): where a run keeps everything it writes.

    runs/20261125-224501/
      run.lock            held by the run while it lives (`RunLock`): one run per folder
      config.json         the resolved configuration (what `--resume` continues)
      environment.json    versions, device, and the settings resolved from the machine
      metrics.json        final losses, accuracies, speeds and times
      checkpoints/        tf.train.CheckpointManager's files
      train/, validation/ TensorBoard event files
      plugins/profile/    profiler traces (with --profile-steps)
      *.png               the book's figures

Every JSON file is written whole or not at all (a temporary file, then a rename), so a run
killed at any moment never leaves half a file behind.

One run per run folder: an advisory lock (`flock` on run.lock) is held for the run's whole
life, taken before the run writes anything there. The kernel drops it when the process ends,
however it ends (`kill -9` included), so a killed run leaves no stale lock behind. The file
itself stays, empty: taking the lock writes nothing, so a resume refused after taking it
leaves the folder exactly as it was. A run that ends having written nothing else (a refused
one) removes the lock file and the folders it made, so it leaves no trace either.

A new run takes an empty or new folder only (`require_fresh`): one that holds another run,
or files of the user's, is refused before the run writes anything there.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from fastconv.config import ConfigError, TrainConfig

RUNS = Path("runs")
CONFIG = "config.json"
ENVIRONMENT = "environment.json"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
PARTIAL = ".partial"
LOCK = "run.lock"
WORKER = re.compile(r"worker-\d+")  # the folders of a multi-worker run's other workers

# The errors of a file that cannot be written where it should: the folder is missing, not a
# folder, read-only, not ours, or full.
WRITE_ERRNOS = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EIO,
)


class RunFolderError(ConfigError):
    """A folder of the run (`--logdir`, `--export`) cannot be made or written; the message
    names it and says why, in the operating system's words."""


def default_logdir(now: datetime.datetime | None = None) -> Path:
    """runs/<date-time>, with a suffix when a run of the same second already took the name."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate, number = RUNS / stamp, 1
    while candidate.exists():
        number += 1
        candidate = RUNS / f"{stamp}-{number}"
    return candidate


@contextlib.contextmanager
def claimed(logdir: str | os.PathLike) -> Iterator[Path]:
    """The run folder, made if need be and locked for as long as the block runs.

    The lock comes before anything else is written: a second run on the folder is refused
    (`FolderInUse`) and leaves it as it was. A folder that cannot be made or
    written is a RunFolderError, before any work. When the block ends with nothing written
    in the folder but the lock file, the lock file and the folders made go again.
    """
    folder = Path(logdir)
    require_utf8("--logdir", folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--logdir {folder}: is a file, not a folder")
    made = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    found = {path.name for path in folder.iterdir()} if not made else set()
    lock = RunLock(folder)
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as error:
            why = reason(error)
            raise RunFolderError(f"--logdir {folder}: cannot write there ({why})") from None
        for partial in folder.glob("*" + PARTIAL):  # a run killed inside write_json
            partial.unlink()
        yield folder
    finally:
        with contextlib.suppress(OSError):
            if LOCK not in found and {path.name for path in folder.iterdir()} == found | {LOCK}:
                (folder / LOCK).unlink()  # still held: no other run can be in the folder
        lock.release()
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()  # where empty


def require_utf8(flag: str, folder: Path) -> None:
    """Refuses a folder whose path is not UTF-8 (bytes a file system allows, which Python
    holds as surrogates): TensorFlow takes file names as UTF-8 text only. A relative path
    is made absolute for that, which needs the current folder: refused too where it is gone."""
    try:
        str(folder.absolute()).encode()
    except UnicodeEncodeError:
        raise RunFolderError(
            f"{flag} {folder}: the name is not UTF-8, which TensorFlow needs; choose another"
        ) from None
    except OSError as error:  # a relative name, and the current folder removed
        raise RunFolderError(
            f"{flag} {folder}: the current folder is gone ({error.strerror}); start the run "
            "from another, or give a full path"
        ) from None


def require_fresh(folder: Path) -> None:
    """Refuses, for a new run, a folder that holds anything but its lock and its workers'
    folders: another run (one without checkpoints: `fastconv.checkpoints` names those), or
    files of the user's, which the run would overwrite."""
    held = sorted(
        path.name
        for path in folder.iterdir()
        if path.name != LOCK and not WORKER.fullmatch(path.name)
    )
    if not held:
        return
    try:
        TrainConfig(**read_json(folder / CONFIG))
    except (OSError, ValueError, TypeError):  # no fastconv configuration: not a run folder
        names = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise RunFolderError(
            f"--logdir {folder}: the folder is not empty and is not a fastconv run folder (it "
            f"holds {names}); choose an empty or new folder"
        ) from None
    raise RunFolderError(
        f"--logdir {folder}: holds another run (its {CONFIG}); a new run needs an empty or new "
        "folder: choose another --logdir"
    )


def write_json(path: Path, value) -> None:
    """Writes `value` as JSON atomically: readers see the old file or the new, never a part
    (nor, when the write fails, a partial file)."""
    partial = path.with_name(path.name + PARTIAL)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(value, indent=2) + "\n")
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def require_space(folder: Path, needed: int) -> None:
    """Refuses, before training, a run folder without room for `needed` bytes."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RunFolderError(
            f"--logdir {folder}: {free / 2**20:.1f} MiB free, and the run's checkpoints need "
            f"about {needed / 2**20:.1f} MiB"
        )


def read_json(path: Path):
    return json.loads(path.read_text())


def recorded_placement(folder: Path) -> dict | None:
    """The settings a run resolved from its machine when it started (environment.json's
    "placement"), or None for a run folder without them."""
    path = folder / ENVIRONMENT
    try:
        record = read_json(path).get("placement")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as error:
        raise ConfigError(f"{path}: not a fastconv environment record ({error})") from None
    if record is not None and not isinstance(record, dict):
        raise ConfigError(f"{path}: its placement is not a record: {record!r}")
    return record


def reason(error: BaseException) -> str:
    """Why a write failed, in the operating system's words (or the error's own)."""
    return write_failure(error) or str(error).splitlines()[0]


def write_failure(error: BaseException) -> str | None:
    """The operating system's words when `error` is a failure to write a file (no space, a
    read-only or missing folder, no permission); None for any other error.

    TensorFlow's file errors (tf.errors.OpError) carry those words in their message."""
    if isinstance(error, OSError):
        return error.strerror if error.errno in WRITE_ERRNOS else None
    text = str(error)
    return next((os.strerror(n) for n in WRITE_ERRNOS if os.strerror(n) in text), None)


class FolderInUse(ConfigError):
    """Another run holds the run folder."""


class RunLock:
    """The lock on a run folder; `acquire` takes it or raises FolderInUse, `release` drops it."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Takes the lock without waiting. Raises FolderInUse when another process (or
        another run of this one) holds it; OSError when the file cannot be made."""
        # O_CREAT on an existing file changes nothing: a refused run leaves the folder as it was.
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(
                f"{self.path.parent}: another run is using this run folder; wait for it to "
                "end, or choose another --logdir"
            ) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing drops the lock
            self._fd = None
