"""One run per run folder: an advisory lock held for the run's whole life.

The lock is `flock` on `<logdir>/run.lock`, taken before the run writes anything there. The
kernel drops it when the process ends, however it ends (`kill -9` included), so a killed run
leaves no stale lock behind. The file itself stays, empty: taking the lock writes nothing,
so a resume refused after taking it leaves the folder exactly as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from fastconv.config import ConfigError

LOCK = "run.lock"


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
