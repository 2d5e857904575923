"""End to end: the book's whole run as a user runs it, from process start to the final accuracy.

    python bench/end_to_end.py [--epochs 20] [--repeats N] [--book-epochs 3] [--json FILE]

20 epochs at batch 128, the validation set evaluated after each, the test set at the end, for:

- `python scripts/train.py` in float32 (its default) and `--precision mixed_bfloat16`, each
  with and without `--xla` (below the table, `--xla`'s speed over the graph path's), each
  with a fresh `--logdir` in a temporary folder: its training-step and compile seconds are
  read from the run folder's metrics.json, the time between its epoch lines from when they
  reach this process;
- bench/keras_end_to_end.py: the same work with Keras `fit(..., validation_data=...)` and
  `evaluate`, steps_per_execution 50, in float32 and mixed_bfloat16;
- bench/book_end_to_end.py: the book's eager class; it runs `--book-epochs` epochs and the
  rest of its 20 is EXTRAPOLATED from them (its first epoch as measured, the others at the
  median of the later ones), so its row says so and its accuracies are after those epochs.

Each is its own process, started from here: wall is the time from its start to the line
that carries its final accuracy (the Python interpreter's start included; its exit is
listed apart). `python -c "import tensorflow"` is timed on its own, once untimed first so
that every process finds TensorFlow's files in the page cache. With --repeats N the
contenders run in turn N times, and each figure is the median of its N.

Not part of `pytest bench/`: it runs for minutes and prints one markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/\d+ .*\|\s+([\d.]+) s\s")


@dataclasses.dataclass(frozen=True)
class Contender:
    label: str
    kind: str  # "fastconv", "keras", "book"
    flags: tuple[str, ...] = ()


CONTENDERS = (
    Contender("fastconv, float32 (default)", "fastconv"),
    Contender(
        "fastconv, --precision mixed_bfloat16", "fastconv", ("--precision", "mixed_bfloat16")
    ),
    Contender("fastconv, --xla", "fastconv", ("--xla",)),
    Contender(
        "fastconv, --xla --precision mixed_bfloat16",
        "fastconv",
        ("--xla", "--precision", "mixed_bfloat16"),
    ),
    Contender("Keras fit, float32, spe 50", "keras", ("--precision", "float32")),
    Contender("Keras fit, mixed_bfloat16, spe 50", "keras", ("--precision", "mixed_bfloat16")),
    Contender("the book's eager class", "book"),
)

# `python -c "import tensorflow"`, timed to the line it prints once imported: like the runs'
# walls, it leaves out the exit (TensorFlow's teardown takes about half a second).
IMPORT = ["-c", "import tensorflow; print('imported')"]
# The parts of a run's wall time, in the table's order; see FOOTNOTES.
PARTS = ("steps", "import", "compile", "per_epoch", "end", "rest")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--epochs", type=int, default=20, help="epochs of every run (default: 20, the book's)")
    add("--repeats", type=int, default=1, help="runs of each contender, in turn (default: 1)")
    add(
        "--book-epochs",
        type=int,
        default=3,
        help="epochs the book's class really runs; the rest is extrapolated (default: 3)",
    )
    add(
        "--only",
        default="fastconv,keras,book",
        help="comma-separated kinds to run (default: fastconv,keras,book)",
    )
    # Opened now, to append: a path that cannot be written is refused before the runs, and
    # an earlier file is kept until they have all run (then it is replaced).
    add(
        "--json",
        metavar="FILE",
        type=argparse.FileType("a"),
        help="also write every run's figures to FILE",
    )
    args = parser.parse_args(argv)
    for flag in ("epochs", "repeats", "book_epochs"):
        if (value := getattr(args, flag)) < 1:
            parser.error(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    kinds, known = set(args.only.split(",")), dict.fromkeys(c.kind for c in CONTENDERS)
    if unknown := kinds - known.keys():
        parser.error(
            f"--only {args.only}: no kind {', '.join(sorted(unknown))} ({', '.join(known)})"
        )
    contenders = [c for c in CONTENDERS if c.kind in kinds]

    timed(IMPORT)  # untimed: TensorFlow's files into the page cache
    imports, runs = [], {c.label: [] for c in contenders}
    for repeat in range(1, args.repeats + 1):
        imports.append(timed(IMPORT).stamp(lambda line: line == "imported"))
        for contender in contenders:
            print(f"repeat {repeat}/{args.repeats}: {contender.label} ...", file=sys.stderr)
            runs[contender.label].append(run(contender, args.epochs, args.book_epochs))
    import_seconds = statistics.median(imports)
    rows = [
        {"label": label, **median_of(results, import_seconds)} for label, results in runs.items()
    ]
    print(table(rows, args, import_seconds, runs))
    if args.json:
        with args.json:
            args.json.truncate(0)
            json.dump({"import_seconds": imports, "runs": runs, "rows": rows}, args.json, indent=1)


@dataclasses.dataclass
class Timed:
    """A finished process: each line of its output with the seconds since its start."""

    lines: list[tuple[float, str]]
    exit_seconds: float

    def stamp(self, predicate) -> float:
        return next(seconds for seconds, line in self.lines if predicate(line))


def timed(arguments: list[str]) -> Timed:
    """Runs `python ARGUMENTS` in the repository with this checkout's fastconv."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",  # each line arrives when it is printed
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
    }
    lines = []
    with tempfile.TemporaryFile("w+") as errors:
        start = time.perf_counter()
        with subprocess.Popen(
            [sys.executable, *arguments],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        ) as process:
            for line in process.stdout:
                lines.append((time.perf_counter() - start, line.rstrip("\n")))
        exit_seconds = time.perf_counter() - start
        if process.returncode:
            errors.seek(0)
            sys.exit(
                f"python {' '.join(arguments)} failed ({process.returncode}):\n"
                + errors.read()[-3000:]
            )
    return Timed(lines, exit_seconds)


def run(contender: Contender, epochs: int, book_epochs: int) -> dict:
    """One run of `contender`: its wall seconds, their parts and its accuracies."""
    if contender.kind == "fastconv":
        return _fastconv(contender.flags, epochs)
    if contender.kind == "keras":
        return _keras(contender.flags, epochs)
    return _book(epochs, min(book_epochs, epochs))


def _fastconv(flags: tuple[str, ...], epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fastconv-e2e-") as folder:
        logdir = Path(folder) / "run"
        process = timed(
            ["scripts/train.py", "--epochs", str(epochs), "--logdir", str(logdir), *flags]
        )
        metrics = json.loads((logdir / "metrics.json").read_text())
    wall = process.stamp(lambda line: line.startswith("validation accuracy"))
    epoch_lines = [(s, float(m[2])) for s, line in process.lines if (m := EPOCH_LINE.match(line))]
    # Between one epoch line and the next: the checkpoint after the first, the second's steps,
    # its validation and summaries. The first epoch's interval also holds the set-up after
    # compiling (summaries of the graph): its share is estimated as the median of the others'.
    outside = [
        (later - earlier) - steps
        for (earlier, _), (later, steps) in itertools.pairwise(epoch_lines)
    ]
    per_epoch = sum(outside) + statistics.median(outside) if outside else None
    return {
        "wall": wall,
        "exit": process.exit_seconds - wall,
        "steps": metrics["train_seconds"],
        "compile": metrics["compile_seconds"],
        "per_epoch": per_epoch,
        "end": wall - epoch_lines[-1][0],  # last checkpoint, test set, metrics, figures
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "epochs_run": metrics["epochs"],
    }


def _json_line(process: Timed) -> tuple[float, dict]:
    """The stamp and the content of the JSON line a bench script prints at its end."""
    seconds, line = next((s, line) for s, line in process.lines if line.startswith("{"))
    return seconds, json.loads(line)


def _keras(flags: tuple[str, ...], epochs: int) -> dict:
    process = timed(["bench/keras_end_to_end.py", "--epochs", str(epochs), *flags])
    wall, report = _json_line(process)
    train, validation = report["epoch_train_seconds"], report["epoch_validation_seconds"]
    # The first epoch traces and compiles the steps and the validation function; its excess
    # over the median epoch is counted as compile, and only when there are other epochs.
    excess = report.get("first_epoch_excess_seconds", {"train": 0.0, "validation": 0.0})
    return {
        "wall": wall,
        "exit": process.exit_seconds - wall,
        "steps": sum(train) - excess["train"],
        "compile": excess["train"] + excess["validation"] if epochs > 1 else None,
        "per_epoch": sum(validation) - excess["validation"] + report["fit_between_epochs_seconds"],
        "end": report["seconds"]["test"],
        "val_accuracy": report["val_accuracy"],
        "test_accuracy": report["test_accuracy"],
        "epochs_run": epochs,
    }


def _book(epochs: int, epochs_run: int) -> dict:
    process = timed(["bench/book_end_to_end.py", "--epochs", str(epochs_run)])
    wall, report = _json_line(process)
    train, validation = report["epoch_train_seconds"], report["epoch_validation_seconds"]
    steps, per_epoch = _extrapolated(train, epochs), _extrapolated(validation, epochs)
    return {
        "wall": wall - sum(train) - sum(validation) + steps + per_epoch,
        "exit": process.exit_seconds - wall,
        "steps": steps,  # the book's epochs: with its second forward pass per batch
        "compile": 0.0,  # eager: nothing is compiled
        "per_epoch": per_epoch,
        "end": report["seconds"]["test"],  # score on the validation and the test images
        "val_accuracy": report["val_accuracy"],
        "test_accuracy": report["test_accuracy"],
        "epochs_run": epochs_run,
    }


def _extrapolated(seconds: list[float], epochs: int) -> float:
    """`epochs` epochs' seconds from the first ones: the first as measured, each later one at
    the median of the later ones measured (or of the first, if it is the only one)."""
    if len(seconds) >= epochs:
        return sum(seconds[:epochs])
    later = seconds[1:] or seconds
    return seconds[0] + (epochs - 1) * statistics.median(later)


def median_of(results: list[dict], import_seconds: float) -> dict:
    """Each figure's median over the repeats, and the parts derived from them."""
    row = {}
    for key in results[0]:
        values = [r[key] for r in results if r[key] is not None]
        row[key] = statistics.median(values) if values else None
    row["repeats"] = len(results)
    row["import"] = import_seconds
    row["outside"] = row["wall"] - row["steps"]
    row["rest"] = row["outside"] - sum(row[part] or 0.0 for part in PARTS[1:-1])
    # The measure: everything outside the steps but importing TensorFlow, the exit
    # included, per second of steps.
    row["outside_share"] = (row["outside"] + row["exit"] - import_seconds) / row["steps"]
    return row


FOOTNOTES = """\
- wall: from the process's start to the line with its final accuracy (exit: after it, apart).
- steps: the training steps. fastconv: `train_seconds` of metrics.json (its blocks of compiled
  steps). Keras: each epoch from `on_epoch_begin` to its validation's start, less the first
  epoch's excess over the median epoch (counted as compile). The book: `train_epoch`, which
  holds its permutation and its SECOND forward pass per batch (fastconv and Keras make one).
- outside: wall - steps; it is import + compile + per epoch + end + rest.
- import: `python -c "import tensorflow"`, timed on its own to a line it prints once imported
  (interpreter start included, exit not); the same figure in every row.
- compile: fastconv: `compile_seconds` of metrics.json (training and evaluation functions).
  Keras: estimated, the first epoch's excess over the median epoch (steps and validation).
- per epoch: the work between epochs' steps. fastconv: from one epoch line to the next, less
  the epoch's steps (validation, checkpoint, summaries, log line); the first epoch's share
  estimated as the median of the others'. Keras: the validation passes (less the first's
  excess) and fit's own work between epochs. The book: its validation loss (`get_loss`).
- end: after the last epoch. fastconv: last checkpoint, test set, metrics.json, figures,
  confusion matrix. Keras: `evaluate` on the test set. The book: `score` on validation and test.
- rest: outside - the parts before it: the interpreter's start, imports beyond TensorFlow's,
  reading the data, building the model, fit's set-up; fastconv's run folder and summaries.
- outside but import, % of steps: (wall + exit - steps - import) / steps, the issue's 20%
  measure: everything but the steps and TensorFlow's import, until the process has ended.
- x Keras: Keras's fastest row's seconds over this row's (above 1: faster than Keras).
"""


def table(
    rows: list[dict], args: argparse.Namespace, import_seconds: float, runs: dict[str, list[dict]]
) -> str:
    keras = [r for r in rows if r["label"].startswith("Keras")]
    keras_wall = min((r["wall"] for r in keras), default=None)
    keras_steps = min((r["steps"] for r in keras), default=None)
    header = (
        "| run | wall s | steps s | outside s | import s | compile s | per epoch s | end s "
        "| rest s | exit s | outside but import, % of steps | val acc | test acc "
        "| x Keras wall | x Keras steps |"
    )
    lines = [
        f"End to end, {args.epochs} epochs, validation after each, test set at the end "
        f"(batch 128); medians of {args.repeats} repeat(s). {_machine()}",
        "",
        header,
        "|---" + "|---:" * 14 + "|",
    ]
    for row in rows:
        accuracies = [f"{row['val_accuracy']:.4f}", f"{row['test_accuracy']:.4f}"]
        label = row["label"]
        if row["epochs_run"] < args.epochs:
            run_epochs = f"{row['epochs_run']} epoch{'s' if row['epochs_run'] != 1 else ''}"
            label += f", EXTRAPOLATED from {run_epochs}"
            accuracies = [f"{a} (after {run_epochs})" for a in accuracies]
        cells = [
            label,
            *(_seconds(row[key]) for key in ("wall", "steps", "outside", *PARTS[1:], "exit")),
            f"{100 * row['outside_share']:.0f}%",
            *accuracies,
            _ratio(keras_wall, row["wall"]),
            _ratio(keras_steps, row["steps"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if ratios := xla_over_graph(runs):
        lines += ["", *ratios]
    lines += ["", FOOTNOTES]
    return "\n".join(lines)


def xla_over_graph(runs: dict[str, list[dict]]) -> list[str]:
    """Each `--xla` run's speed over its graph twin's (the same flags without `--xla`), wall
    and steps: issue #27's measure. Each repeat's two runs are minutes apart at most, so the
    ratio is taken within each repeat: their median, and their range when there are several."""
    label_of = {c.flags: c.label for c in CONTENDERS if c.kind == "fastconv"}
    lines = []
    for flags, label in label_of.items():
        twin = label_of.get(tuple(flag for flag in flags if flag != "--xla"))
        if "--xla" in flags and label in runs and twin in runs:
            pairs = list(zip(runs[twin], runs[label]))
            wall, steps = (
                _speed([graph[key] / xla[key] for graph, xla in pairs]) for key in ("wall", "steps")
            )
            lines.append(f"- {label} over {twin}: wall {wall}, steps {steps}")
    if lines:
        lines.insert(0, "`--xla` over the graph path (the graph run's seconds / `--xla`'s):")
    return lines


def _speed(ratios: list[float]) -> str:
    """The median of `ratios`, and their range when there are several: "1.02x (0.95-1.10)"."""
    median = f"{statistics.median(ratios):.2f}x"
    return median if len(ratios) == 1 else f"{median} ({min(ratios):.2f}-{max(ratios):.2f})"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ratio(reference: float | None, value: float) -> str:
    return f"{reference / value:.2f}x" if reference else "-"


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    versions = ", ".join(
        f"{package} {metadata.version(package)}" for package in ("tensorflow", "keras")
    )
    return f"Host: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, {versions}."


if __name__ == "__main__":
    main()
