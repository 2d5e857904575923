"""The run folder (`--logdir`): where a run keeps everything it writes.

    runs/20261125-224501/
      config.json         the resolved configuration (what `--resume` continues)
      environment.json    versions and device
      metrics.json        final losses, accuracies, speeds and times
      checkpoints/        tf.train.CheckpointManager's files
      train/, validation/ TensorBoard event files
      plugins/profile/    profiler traces (with --profile-steps)
      *.png               the book's figures

Every JSON file is written whole or not at all (a temporary file, then a rename), so a run
killed at any moment never leaves half a file behind.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

RUNS = Path("runs")
CONFIG = "config.json"
ENVIRONMENT = "environment.json"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"


def default_logdir(now: datetime.datetime | None = None) -> Path:
    """runs/<date-time>, with a suffix when a run of the same second already took the name."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate, number = RUNS / stamp, 1
    while candidate.exists():
        number += 1
        candidate = RUNS / f"{stamp}-{number}"
    return candidate


def write_json(path: Path, value) -> None:
    """Writes `value` as JSON atomically: readers see the old file or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(partial, path)


def read_json(path: Path):
    return json.loads(path.read_text())
