"""Run folders for the fault tests: small finished runs, copies, snapshots, and disks that
are full or read-only (tmpfs mounts where this process may mount; skipped where it may not).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tensorflow as tf
from helpers import start_script

STEPS_PER_EPOCH = 50  # 2,000 synthetic images: 1,600 to train, in batches of 32
DATA = "data-00000-of-00001"  # the one data file of a checkpoint


def flags(data_dir: Path, logdir: Path, *more: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--logdir", str(logdir), "--batch-size", "32", *more]


def with_env(**variables: str) -> dict:
    """This environment plus `variables` (the test hooks of fastconv.faults)."""
    return {**os.environ, **variables}


def wait_for_line(process: subprocess.Popen, pattern: str) -> str:
    """Reads the run's output up to a line matching `pattern`; kills the run if none comes."""
    for line in process.stdout:
        if re.search(pattern, line):
            return line
    process.kill()
    raise AssertionError(f"the run ended without printing {pattern!r}: {process.stderr.read()}")


@contextlib.contextmanager
def run_paused_in_checkpoint(data_dir: Path, logdir: Path, *more: str, step: int = 50):
    """scripts/train.py on the small data set, held by its test hook inside the write of its
    checkpoint at `step`; `go_on` lets it continue. Killed when the block ends, if still alive."""
    run = start_script(
        "train.py",
        *flags(data_dir, logdir, *more),
        stdin=subprocess.PIPE,
        env=with_env(FASTCONV_TEST_PAUSE_CHECKPOINT=str(step)),
    )
    try:
        wait_for_line(run, r"^test hook: paused in the write of")
        yield run
    finally:
        run.kill()


def go_on(run: subprocess.Popen) -> None:
    """Lets a run held by the checkpoint hook continue: the line it waits for on its stdin."""
    run.stdin.write("\n")
    run.stdin.flush()


def signal_delivered(pid: int, number: int) -> bool:
    """Whether no signal `number` waits for process `pid` any more (Linux: /proc's pending
    masks). Once delivered, a second one of the same number cannot merge with it."""
    status = Path(f"/proc/{pid}/status").read_text()
    pending = re.findall(r"^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)$", status, re.MULTILINE)
    return not any(int(mask, 16) >> (number - 1) & 1 for mask in pending)


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file under `folder`: its size, modification time and content's hash."""
    return {
        str(path.relative_to(folder)): (
            path.stat().st_size,
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def debris(folder: Path) -> list[str]:
    """What interrupted writes leave: temporary files and folders anywhere under `folder`."""
    patterns = ("*_temp", "*.tempstate*", "*.partial*", "checkpoint.tmp*")
    return sorted(str(path) for pattern in patterns for path in folder.rglob(pattern))


def read_whole(prefix: Path) -> None:
    """Reads every tensor of a checkpoint, which checks each one's checksum."""
    reader = tf.train.load_checkpoint(str(prefix))
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A tmpfs of `size` mounted at `path` for the block: a disk that fills up, or a
    read-only one. Skips the test where this process may not mount (not root)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "fastconv-test", str(path)],
        capture_output=True,
        text=True,
    )
    if mount.returncode:
        pytest.skip(
            f"cannot mount a tmpfs here, so no full or read-only disk to test on: "
            f"{mount.stderr.strip()}"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder this process cannot write in: read-only by its mode, or for root (whom
    modes do not stop) a read-only tmpfs."""
    if os.geteuid() != 0:
        path.mkdir(parents=True)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    with tmpfs(path, "1m", read_only=True):
        yield path


def fill(disk: Path, leave: int) -> None:
    """Fills the disk at `disk` up to `leave` bytes free (a file `filler` there)."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as filler:
        filler.write(b"\0" * max(0, free - leave))
