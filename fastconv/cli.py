"""`python scripts/train.py` / `fastconv-train`: the flags, generated from TrainConfig's fields."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import typing
from pathlib import Path

from fastconv import data, rundir
from fastconv.config import ConfigError, TrainConfig, flag_of, resumed

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
            parser.add_argument(name, dest=field.name, action="store_true", help=flag.help)
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
    """Runs the CLI; returns the process exit code. `started_at` is the process's start."""
    started_at = started_at if started_at is not None else time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    resume, quiet = getattr(args, "resume", False), getattr(args, "quiet", False)
    if resume and not getattr(args, "logdir", None):
        parser.error("argument --resume: needs the --logdir of the run to continue")
    try:
        config = configure(args, resume)
        # The data are read and split before TensorFlow starts: a bad file fails in a blink.
        arrays = data.book_split(data.load(config.data_dir), config)
    except ConfigError as error:
        if error.field and not resume:  # a flag's value that the run cannot take
            parser.error(f"argument {flag_name(error.field)}: {error.value!r} {error.requirement}")
        print(f"error: {error}", file=sys.stderr)
        return 2
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # TensorFlow's C++ start-up chatter (oneDNN notices, CUDA probing on machines without a
    # GPU) buries the run's own lines; failures still reach us as Python exceptions.
    # A user who wants the chatter sets TF_CPP_MIN_LOG_LEVEL=0.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from fastconv import runtime  # imports TensorFlow, so only now
    from fastconv.interruption import Interrupted
    from fastconv.loop import TrainingDiverged
    from fastconv.run import train_and_evaluate

    def log(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    log(" | ".join(f"{name} {version}" for name, version in runtime.versions().items()))
    log("config: " + " ".join(f"{key}={value}" for key, value in config.to_dict().items()))
    try:
        result = train_and_evaluate(
            config, arrays, log=log, resume=resume, live_progress=sys.stdout.isatty() and not quiet
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (TrainingDiverged, Interrupted) as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code if isinstance(error, Interrupted) else 1
    except KeyboardInterrupt:
        print(
            "error: interrupted again before the block finished; "
            f"the last checkpoint in {config.logdir} is kept",
            file=sys.stderr,
        )
        return 130
    total_seconds = time.perf_counter() - started_at
    print(
        f"validation accuracy {result.val_accuracy:.4f} (loss {result.val_loss:.4f}) | "
        f"test accuracy {result.test_accuracy:.4f} (loss {result.test_loss:.4f})"
    )
    print(
        f"compile {result.compile_seconds:.1f} s | training {result.train_seconds:.1f} s | "
        f"total wall time {total_seconds:.1f} s | run folder {result.config.logdir}"
    )
    return 0


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


def main_entry() -> None:
    """The console script `fastconv-train`."""
    sys.exit(main())
