"""`python scripts/train.py` / `fastconv-train`: the flags, generated from TrainConfig's fields."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import gc
import os
import sys
import threading
import time
import typing
from pathlib import Path

from fastconv import data, faults, prepared, rundir
from fastconv.config import ConfigError, TrainConfig, flag_of, resumed
from fastconv.importing import TensorFlowImport, still_importing
from fastconv.interruption import Interrupted, stop_at_once

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
        flag = flag_of(field)
        name = flag.name or "--" + field.name.replace("_", "-")
        if types[field.name] is bool:
            # --augment and --no-augment: a recipe's switch can be turned off beside it.
            action = argparse.BooleanOptionalAction
            parser.add_argument(name, dest=field.name, action=action, help=flag.help)
            continue
        default = flag.default_help or field.default
        kind = _value_type(types[field.name])
        parser.add_argument(
            name,
            dest=field.name,
            type=_value_parser(flag, kind),
            choices=flag.choices,
            metavar=flag.metavar or {int: "N", float: "X"}.get(kind),
            help=f"{flag.help} (default: {default})",
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


def _value_parser(flag, kind: type):
    """Text -> value for argparse: parsed, then checked by the setting's own check."""
    parse = flag.parse or kind

    def parse_value(text: str):
        try:
            value = parse(text)
        except ValueError as error:
            what = str(error) if flag.parse else f"is not a {kind.__name__}"
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
    folder, 1 the training diverged, 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM).
    """
    started_at = started_at if started_at is not None else time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    resume, quiet = getattr(args, "resume", False), getattr(args, "quiet", False)
    if resume and not getattr(args, "logdir", None):
        parser.error("argument --resume: needs the --logdir of the run to continue")

    def log(line: str) -> None:
        if line.startswith("warning:"):  # also under --quiet, with the errors
            print(line, file=sys.stderr, flush=True)
        elif not quiet:
            print(line, flush=True)

    try:
        # Until the run answers signals itself, a stop ends the process at once: there is
        # nothing to save yet.
        with stop_at_once("during start-up"):
            result = _run(parser, args, resume, log)
    except Interrupted as error:
        print(f"error: {error}", file=sys.stderr)
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
    print(
        f"validation accuracy {result.val_accuracy:.4f} (loss {result.val_loss:.4f}) | "
        f"test accuracy {result.test_accuracy:.4f} (loss {result.test_loss:.4f})"
    )
    print(
        f"compile {result.compile_seconds:.1f} s | {training} | "
        f"total wall time {total_seconds:.1f} s | run folder {result.config.logdir}"
    )
    return 0


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, resume: bool, log):
    """The run the flags ask for: its RunResult, or the exit code of a run refused."""
    try:
        config = configure(args, resume)
        # The data are read, split and prepared while TensorFlow imports: a bad file fails in
        # a blink, and the evaluation sets are ready when TensorFlow is.
        importing = TensorFlowImport()
        faults.reached("import")
        split = data.book_split(read_data(config, importing), config)
        require_profile_fits(config, len(split.train_images) // config.batch_size)
        arrays = prepared.prepare(split, config)
    except ConfigError as error:
        if error.field and not resume:  # a flag's value that the run cannot take
            parser.error(f"argument {flag_name(error.field)}: {error.value!r} {error.requirement}")
        print(f"error: {error}", file=sys.stderr)
        return 2
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    importing.wait()
    from fastconv import runtime
    from fastconv.loop import TrainingDiverged
    from fastconv.resume import NothingToDo
    from fastconv.run import train_and_evaluate

    log(" | ".join(f"{name} {version}" for name, version in runtime.versions().items()))
    log("config: " + " ".join(f"{key}={value}" for key, value in config.to_dict().items()))
    live = sys.stdout.isatty() and not getattr(args, "quiet", False)
    try:
        return train_and_evaluate(config, arrays, log=log, resume=resume, live_progress=live)
    except NothingToDo as done:
        print(done)
        return 0
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def read_data(config: TrainConfig, importing: TensorFlowImport) -> data.FashionMNIST:
    """The data set, read while TensorFlow imports; where it must be downloaded, after the
    import (Keras's downloader imports TensorFlow: not from two threads at once)."""
    try:
        return data.load(config.data_dir, download=False)
    except data.DataNotFound:
        importing.wait()
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


def flag_name(field: str) -> str:
    """The command-line flag of a TrainConfig field."""
    flag = flag_of(TrainConfig.__dataclass_fields__[field])
    return flag.name or "--" + field.replace("_", "-")


def configure(args: argparse.Namespace, resume: bool) -> TrainConfig:
    """The run's configuration: from the flags, or for --resume the saved run's with the
    flags' changes."""
    if not resume:
        config = config_from_args(args)
        return dataclasses.replace(config, logdir=config.logdir or str(rundir.default_logdir()))
    saved = Path(args.logdir) / rundir.CONFIG
    if not saved.is_file():
        raise ConfigError(f"{saved}: not found; is {args.logdir} a fastconv run folder?")
    try:
        saved_config = TrainConfig(**rundir.read_json(saved))
    except (ValueError, TypeError) as error:  # JSON syntax, unknown fields, bad values
        raise ConfigError(f"{saved}: not a fastconv configuration ({error})") from None
    return resumed(saved_config, given_settings(args))


def main_entry(started_at: float | None = None) -> None:
    """The console script `fastconv-train`, and scripts/train.py."""
    try:
        code = main(started_at=started_at)
    except SystemExit as refused:  # argparse's refusal of a flag, perhaps mid-import
        code = refused.code if isinstance(refused.code, int) else 2
    exit_promptly(code)


def exit_promptly(code: int) -> typing.NoReturn:
    """Ends the process with `code` as soon as its work is done: the exit handlers run and
    the output is flushed, then the process ends without the rest of Python's shutdown, all
    of it for nothing here: its last garbage collection walked every object TensorFlow made
    (0.6 s), and its teardown of TensorFlow's modules took 0.05 s more. That holds while
    every file is closed and no other thread is at work, as at the end of a command; with a
    non-daemon thread still alive, Python's own exit waits for it (without the collection).

    Output that cannot be written (a full disk, a reader gone) is one line on stderr and
    exit code 120, as Python's own exit gives. A command refused while TensorFlow still
    imports in the background ends without waiting for the import (or for the exit handlers
    it may be registering): it has written nothing but its output.
    """
    if not still_importing():
        others = [t for t in threading.enumerate() if t is not threading.main_thread()]
        if any(not thread.daemon for thread in others):
            gc.freeze()
            sys.exit(code)
        atexit._run_exitfuncs()  # what sys.exit runs: logging's shutdown, the libraries' own
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # a process started with it closed has none
                stream.flush()
        except ValueError:  # closed by the command: nothing left in it
            pass
        except OSError as error:
            with contextlib.suppress(OSError):
                os.write(2, f"error: cannot write the output ({error.strerror})\n".encode())
            code = code or 120
    os._exit(code)
