"""`python scripts/train.py` / `fastconv-train`: the flags, generated from TrainConfig's fields."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
import typing
from pathlib import Path

from fastconv import data, faults, rundir, workers
from fastconv.config import ConfigError, TrainConfig, flag_name, flag_of
from fastconv.importing import import_tensorflow
from fastconv.interruption import (
    OUTPUT_FAILED,
    Interrupted,
    error_line,
    escaping_output,
    output_failure,
    stop_at_once,
)
from fastconv.workers import WorkersLost

# Flags of the command, not of the run's configuration.
COMMAND_FLAGS = ("resume", "quiet")


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field, from the field's `Flag`, plus --resume and --quiet.

    Flags left out are absent from the parsed namespace (their default is SUPPRESS), so
    `given_settings` knows exactly which ones the command line named.
    """
    parser = argparse.ArgumentParser(
        description="Train the CNN of 'Do it! 딥러닝 입문' (chapter 08-4) on Fashion-MNIST. "
        "Every default is the book's run.",
        argument_default=argparse.SUPPRESS,
    )
    types = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag, name = flag_of(field), flag_name(field.name)
        if types[field.name] is bool:
            # --augment and --no-augment: a recipe's switch can be turned off beside it.
            action = argparse.BooleanOptionalAction
            parser.add_argument(name, dest=field.name, action=action, help=flag.help_text())
            continue
        default = flag.default_help or field.default
        kind = _value_type(types[field.name])
        parser.add_argument(
            name,
            dest=field.name,
            type=_value_parser(flag, kind),
            choices=flag.choices,
            metavar=flag.metavar or {int: "N", float: "X"}.get(kind),
            help=f"{flag.help_text()} (default: {default})",
        )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --logdir from its latest checkpoint, up to --epochs; "
        "flags left out keep the run's values",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print only the final results and errors (default: a line per epoch, and a live "
        "bar on a terminal)",
    )
    return parser


def _value_type(annotation) -> type:
    """int for `int | None`, and so on: the type a flag's text becomes."""
    options = [kind for kind in typing.get_args(annotation) if kind is not type(None)]
    return options[0] if options else annotation


_NUMBER_NAMES = {int: "a whole number", float: "a number"}  # in a flag error, for a user


def _value_parser(flag, kind: type):
    """Text -> value for argparse: parsed, then checked by the setting's own check."""
    parse = flag.parse or kind

    def parse_value(text: str):
        try:
            value = parse(text)
        except ValueError as error:
            what = str(error) if flag.parse else f"is not {_NUMBER_NAMES.get(kind, kind.__name__)}"
            raise argparse.ArgumentTypeError(f"{text!r} {what}") from None
        # argparse itself checks choices, and says so in its own words.
        if flag.check is not None and flag.choices is None and not flag.check(value):
            raise argparse.ArgumentTypeError(f"{text!r} {flag.requirement}")
        return value

    parse_value.__name__ = kind.__name__  # argparse names the type in some messages
    return parse_value


def given_settings(args: argparse.Namespace) -> dict:
    """The TrainConfig settings the command line named, whatever their value."""
    return {key: value for key, value in vars(args).items() if key not in COMMAND_FLAGS}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The configuration of a new run: the recipe's settings (the book's by default), with
    the flags given."""
    return TrainConfig.from_recipe(**given_settings(args))


def main(argv: list[str] | None = None, started_at: float | None = None) -> int:
    """Runs the CLI; returns the process exit code. `started_at` is the process's start.

    Exit codes: 0 done (or nothing to do), 2 a bad flag, data file, configuration or run
    folder, 1 the training diverged, 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM),
    141 the output's reader went away, 120 the output could not be written.
    """
    started_at = started_at if started_at is not None else time.perf_counter()
    escaping_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    resume, quiet = getattr(args, "resume", False), getattr(args, "quiet", False)
    if resume and not getattr(args, "logdir", None):
        parser.error("argument --resume: needs the --logdir of the run to continue")
    if sys.stdout is None:  # started with its output closed (`>&-`)
        error_line("cannot write the output: stdout is closed; nothing was started")
        return OUTPUT_FAILED

    def log(line: str) -> None:
        if line.startswith("warning:"):  # also under --quiet, with the errors
            print(line, file=sys.stderr, flush=True)
        elif not quiet:
            print(line, flush=True)

    try:
        # Until the run answers signals itself, a stop ends the process at once: there is
        # nothing to save yet.
        with stop_at_once("during start-up"):
            result = _train_from_flags(parser, args, resume, log)
    except Interrupted as error:
        error_line(error)
        return error.exit_code
    if isinstance(result, int):
        return result
    total_seconds = time.perf_counter() - started_at
    training = f"training {result.train_seconds:.1f} s"
    if result.train_seconds_here is not None and result.train_seconds_here < result.train_seconds:
        training = (  # a resumed run: this process trained only its share
            f"training {result.train_seconds_here:.1f} s here, {result.train_seconds:.1f} s in "
            "the whole run"
        )
    return say(
        f"validation accuracy {result.val_accuracy:.4f} (loss {result.val_loss:.4f}) | "
        f"test accuracy {result.test_accuracy:.4f} (loss {result.test_loss:.4f})\n"
        f"compile {result.compile_seconds:.1f} s | {training} | "
        f"total wall time {total_seconds:.1f} s | run folder {result.folder}",
        f"the run is done; its results are in {result.folder}",
    )


def say(text: str, otherwise: str) -> int:
    """Prints `text` to stdout now: 0, or where it cannot be written, the exit code of that,
    with a line on stderr that ends with `otherwise` (what is true all the same)."""
    try:
        print(text, flush=True)
    except OSError as error:
        exit_code, cause = output_failure(error)
        error_line(f"{cause}; {otherwise}")
        return exit_code
    return 0


def _train_from_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, resume: bool, log):
    """The run the flags ask for: its RunResult, or the exit code of a run refused.

    The data are read and split before TensorFlow is imported: a bad file or flag is
    refused in a blink.
    """
    try:
        config = configure(args, resume)
        split = data.book_split(read_data(config), config)
        require_profile_fits(config, split.steps_per_epoch)
    except ConfigError as error:
        if error.field and not resume:  # a flag's value that the run cannot take
            parser.error(f"argument {flag_name(error.field)}: {error.value!r} {error.requirement}")
        error_line(error)
        return 2
    except data.DataError as error:
        error_line(error)
        return 2

    faults.reached("import")
    import_tensorflow()
    from fastconv import runtime
    from fastconv.checkpoints import NothingToDo
    from fastconv.loop import TrainingDiverged
    from fastconv.run import train_and_evaluate

    try:
        log(" | ".join(f"{name} {version}" for name, version in runtime.versions().items()))
        log("config: " + " ".join(f"{key}={value}" for key, value in config.to_dict().items()))
    except OSError as error:
        exit_code, cause = output_failure(error)
        stopped = f"{cause}: stopped during start-up; nothing was saved"
        raise Interrupted(exit_code, stopped) from None
    live = sys.stdout.isatty() and not getattr(args, "quiet", False)
    try:
        return train_and_evaluate(config, split, log=log, resume=resume, live_progress=live)
    except NothingToDo as done:
        return say(str(done), "nothing was changed")
    except ConfigError as error:
        error_line(error)
        return 2
    except TrainingDiverged as error:
        error_line(error)
        return 1
    except WorkersLost as error:
        error_line(error)
        return WorkersLost.exit_code


def read_data(config: TrainConfig) -> data.FashionMNIST:
    """The data set; where it must be downloaded, TensorFlow is imported first (quietly:
    Keras's downloader imports it)."""
    try:
        return data.load(config.data_dir, download=False)
    except data.DataNotFound:
        import_tensorflow()
        return data.load(config.data_dir)


def require_profile_fits(config: TrainConfig, steps_per_epoch: int) -> None:
    """--profile-steps within the run's steps (a window past its end would trace nothing)."""
    if config.profile_steps is None:
        return
    first, last = config.profile_steps
    if last > config.epochs * steps_per_epoch:
        raise ConfigError.invalid(
            "profile_steps",
            f"{first},{last}",
            f"reaches past the run's last step, {config.epochs * steps_per_epoch} "
            f"({config.epochs} epochs of {steps_per_epoch} steps)",
        )


def configure(args: argparse.Namespace, resume: bool) -> TrainConfig:
    """The run's configuration: from the flags, or for --resume the saved run's with the
    flags' changes."""
    if not resume:
        config = config_from_args(args)
        return dataclasses.replace(config, logdir=config.logdir or str(rundir.default_logdir()))
    saved = Path(args.logdir) / rundir.CONFIG
    if not saved.is_file() and "TF_CONFIG" in os.environ:  # a worker's folder on its machine
        with contextlib.suppress(ConfigError):  # a TF_CONFIG of no cluster names none
            saved = workers.own_folder(args.logdir, "multi-worker") / rundir.CONFIG
    if not saved.is_file():
        raise ConfigError(f"{saved}: not found; is {args.logdir} a fastconv run folder?")
    try:
        saved_config = TrainConfig(**rundir.read_json(saved))
    except (ValueError, TypeError) as error:  # JSON syntax, unknown fields, bad values
        raise ConfigError(f"{saved}: not a fastconv configuration ({error})") from None
    return resumed(saved_config, given_settings(args))


def main_entry(started_at: float | None = None) -> None:
    """The console script `fastconv-train`, and scripts/train.py."""
    sys.exit(main(started_at=started_at))


def resumed(saved: TrainConfig, given: dict) -> TrainConfig:
    """The configuration a resumed run continues with: the saved run's, with the settings
    `given` (those named on the command line, whatever their value) applied where they may
    change, and refused where they take part in the arithmetic and differ."""
    changes = {}
    for field in dataclasses.fields(TrainConfig):
        name = field.name
        if name not in given or given[name] == getattr(saved, name):
            continue
        # A schedule runs to the last epoch: more epochs would change every rate after it.
        if name == "epochs" and saved.schedule != "constant":
            raise ConfigError(
                f"--epochs {given[name]}: the run's --schedule {saved.schedule} ends at its last "
                f"epoch, {saved.epochs}, so a resumed run keeps its epochs (start a new --logdir "
                "to train longer)"
            )
        if not flag_of(field).resumable:
            raise ConfigError(
                f"{name}={given[name]!r} differs from the resumed run's "
                f"{name}={getattr(saved, name)!r}; a resumed run keeps its configuration "
                "(start a new --logdir to change it)"
            )
        changes[name] = given[name]
    return dataclasses.replace(saved, **changes)
