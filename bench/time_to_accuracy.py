"""Time to accuracy: a recipe trained with several seeds, one fresh process each.

    python bench/time_to_accuracy.py --recipe fast --seeds 5
    python bench/time_to_accuracy.py --recipe book --seeds 5 --json book.json
    python bench/time_to_accuracy.py --recipe fast --seeds 2 -- --epochs 3   # flags for train.py

Each seed runs `scripts/train.py --recipe R --seed S` as a user would (the seed also draws
the validation split). Per seed and as mean ± standard deviation (over the seeds, n - 1) it
prints the final validation and test accuracy, the training seconds (the compiled steps,
without compilation or the validation passes: metrics.json's train_seconds), the wall
seconds of the whole process (TensorFlow's start-up, reading the data, compiling,
validating, testing, writing the run folder), and the epoch at which validation first
reached each threshold with the training seconds spent until then. The host's load average
is printed before and after: the figures are only as quiet as the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.90, 0.92)


def run_seed(recipe: str, seed: int, flags: list[str], folder: Path) -> dict:
    """One run in a fresh process; its metrics.json, with the wall seconds added."""
    logdir = folder / f"{recipe}-seed{seed}"
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "--recipe", recipe]
    command += ["--seed", str(seed), "--logdir", str(logdir), "--quiet", *flags]
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    wall_seconds = time.perf_counter() - start
    if run.returncode:
        raise SystemExit(f"error: seed {seed} failed (exit {run.returncode}): {run.stderr}")
    metrics = json.loads((logdir / "metrics.json").read_text())
    environment = json.loads((logdir / "environment.json").read_text())
    return {"seed": seed, "wall_seconds": wall_seconds, "environment": environment, **metrics}


def first_reached(history: list[dict], threshold: float) -> tuple[int, float] | None:
    """(epoch, training seconds up to its end) when validation first reached `threshold`."""
    seconds = 0.0
    for epoch in history:
        seconds += epoch["seconds"]
        if epoch["val_accuracy"] >= threshold:
            return epoch["epoch"], seconds
    return None


def summarize(run: dict) -> dict:
    """The figures of one seed's row."""
    row = {
        "seed": run["seed"],
        "val_accuracy": run["val_accuracy"],
        "test_accuracy": run["test_accuracy"],
        "train_seconds": run["train_seconds"],
        "wall_seconds": run["wall_seconds"],
    }
    for threshold in THRESHOLDS:
        reached = first_reached(run["history"], threshold)
        row[f"epoch_{threshold:.2f}"] = reached[0] if reached else None
        row[f"seconds_{threshold:.2f}"] = reached[1] if reached else None
    return row


def mean_std(values: list, digits: int) -> str:
    """'mean ± std' of the values that are not None, with how many when some are."""
    present = [value for value in values if value is not None]
    if not present:
        return "never"
    text = f"{statistics.mean(present):.{digits}f}"
    if len(present) > 1:
        text += f" ± {statistics.stdev(present):.{digits}f}"
    if len(present) < len(values):
        text += f" ({len(present)} of {len(values)})"
    return text


def table(rows: list[dict]) -> str:
    """A Markdown table: one row per seed, then mean ± std."""
    columns = ["val_accuracy", "test_accuracy", "train_seconds", "wall_seconds"]
    for threshold in THRESHOLDS:
        columns += [f"epoch_{threshold:.2f}", f"seconds_{threshold:.2f}"]
    titles = ["seed", "validation", "test", "training s", "wall s"]
    for threshold in THRESHOLDS:
        titles += [f"epoch to {threshold:.2f}", f"training s to {threshold:.2f}"]

    def digits(key: str) -> int:
        return 4 if key.endswith("accuracy") else 1

    def cell(key: str, value) -> str:
        if value is None:
            return "never"
        return f"{value:.{digits(key)}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(titles) + " |", "|" + "---:|" * len(titles)]
    for row in rows:
        lines.append(
            "| " + " | ".join([str(row["seed"])] + [cell(k, row[k]) for k in columns]) + " |"
        )
    means = [mean_std([row[key] for row in rows], digits(key)) for key in columns]
    lines.append("| mean ± std | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast", help="the recipe to run (default: fast)")
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds (default: 5)")
    parser.add_argument("--first-seed", type=int, default=42, help="the first seed (default: 42)")
    # Opened now, to append: a path that cannot be written is refused before the runs, and
    # an earlier file is kept until they have all run (then it is replaced).
    parser.add_argument(
        "--json",
        metavar="PATH",
        type=argparse.FileType("a"),
        help="also write every run's metrics here",
    )
    parser.add_argument("train_flags", nargs="*", help="after --: flags for scripts/train.py")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: must be at least 1")

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="time_to_accuracy-") as folder:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run = run_seed(args.recipe, seed, args.train_flags, Path(folder))
            runs.append(run)
            row = summarize(run)
            print(
                f"seed {seed}: validation {row['val_accuracy']:.4f}, test "
                f"{row['test_accuracy']:.4f}, training {row['train_seconds']:.1f} s, wall "
                f"{row['wall_seconds']:.1f} s",
                flush=True,
            )
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    environment = runs[0]["environment"]
    print(
        f"\nrecipe {args.recipe}, {args.seeds} seeds from {args.first_seed} | "
        f"{environment['device']} | {environment['precision']} | "
        f"TensorFlow {environment['tensorflow']}, Keras {environment['keras']}\n"
    )
    print(table([summarize(run) for run in runs]))
    if args.json:
        with args.json:
            args.json.truncate(0)
            args.json.write(json.dumps(runs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
