"""`python scripts/train.py` / `fastconv-train`: flags mapped one to one onto TrainConfig."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from fastconv import data, rundir
from fastconv.config import (
    DEVICE_PATTERN,
    PRECISIONS,
    STANDARDIZATIONS,
    STRATEGIES,
    ConfigError,
    TrainConfig,
    resumed,
)

DEFAULTS = TrainConfig()


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _device(text: str) -> str:
    if not DEVICE_PATTERN.fullmatch(text.lower()):
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, cpu, gpu or gpu:N")
    return text.lower()


def _step_range(text: str) -> tuple[int, int]:
    try:
        first, last = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not two steps START,STOP") from None
    if not 1 <= first <= last:
        raise argparse.ArgumentTypeError(f"{text!r} needs 1 <= START <= STOP")
    return first, last


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the CNN of 'Do it! 딥러닝 입문' (chapter 08-4) on Fashion-MNIST. "
        "Every default is the book's run.",
    )
    add = parser.add_argument
    add("--xla", action="store_true", help="compile the steps with XLA (jit_compile)")
    add(
        "--epochs",
        type=_positive(int),
        default=DEFAULTS.epochs,
        help=f"passes over the training set (default: {DEFAULTS.epochs})",
    )
    add(
        "--batch-size",
        type=_positive(int),
        default=DEFAULTS.batch_size,
        help=f"images per SGD step (default: {DEFAULTS.batch_size})",
    )
    add(
        "--learning-rate",
        type=_positive(float),
        default=DEFAULTS.learning_rate,
        help=f"SGD learning rate (default: {DEFAULTS.learning_rate})",
    )
    add(
        "--kernels",
        type=_positive(int),
        default=DEFAULTS.n_kernels,
        help=f"3x3 convolution kernels (default: {DEFAULTS.n_kernels})",
    )
    add(
        "--units",
        type=_positive(int),
        default=DEFAULTS.units,
        help=f"hidden units of the dense layer (default: {DEFAULTS.units})",
    )
    add(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help=f"seed of the weights, the split and the batch order (default: {DEFAULTS.seed})",
    )
    add(
        "--data-dir",
        default=None,
        help=f"folder with the four Fashion-MNIST IDX files (default: ${data.ENV_VAR}, "
        f"then {data.KERAS_CACHE}, then {data.DEBIAN_DIR}, then a Keras download)",
    )
    add(
        "--standardize",
        choices=STANDARDIZATIONS,
        default=DEFAULTS.standardize,
        help="'scale': x / 255, as the book; 'zscore': training-set mean and std "
        f"(default: {DEFAULTS.standardize})",
    )
    add(
        "--steps-per-call",
        type=_positive(int),
        default=None,
        help="training steps per compiled call (default: a whole epoch)",
    )
    add(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULTS.precision,
        help="float32 (the book's numerics), mixed_bfloat16 or mixed_float16 (Keras policies: "
        "float32 variables, logits and loss; loss scaling for float16), or auto: float16 on "
        f"GPUs with tensor cores, bfloat16 on CPUs with bf16 units (default: {DEFAULTS.precision})",
    )
    add(
        "--shards",
        type=_positive(int),
        default=None,
        help="split each batch into this many shards that run side by side and average their "
        "gradients, the same mean gradient (default: 2 on a CPU, 1 on a GPU)",
    )
    add(
        "--eval-batch-size",
        type=_positive(int),
        default=DEFAULTS.eval_batch_size,
        help=f"images per evaluation step (default: {DEFAULTS.eval_batch_size})",
    )
    add(
        "--device",
        type=_device,
        default=DEFAULTS.device,
        help="auto (the first GPU, else the CPU), cpu, gpu or gpu:N; a GPU that is not there "
        f"is an error (default: {DEFAULTS.device})",
    )
    add(
        "--strategy",
        choices=STRATEGIES,
        default=DEFAULTS.strategy,
        help="data-parallel training with tf.distribute: mirrored (this machine's GPUs) or "
        "multi-worker (the machines of TF_CONFIG); the global batch is split across them "
        f"(default: {DEFAULTS.strategy})",
    )
    add(
        "--logdir",
        default=None,
        help="run folder for the configuration, checkpoints, metrics and TensorBoard logs "
        "(default: runs/<date-time>)",
    )
    add(
        "--resume",
        action="store_true",
        help="continue the run in --logdir from its latest checkpoint, up to --epochs; "
        "flags left out keep the run's values",
    )
    add(
        "--deterministic",
        action="store_true",
        help="TensorFlow's op determinism on top of the seeds: reruns give bit-identical weights",
    )
    add("--export", default=None, metavar="DIR", help="save the trained model as a SavedModel")
    add(
        "--log-every",
        type=_positive(int),
        default=DEFAULTS.log_every,
        help=f"write the step loss to TensorBoard every N steps (default: {DEFAULTS.log_every})",
    )
    add(
        "--profile-steps",
        type=_step_range,
        default=None,
        metavar="START,STOP",
        help="trace steps START to STOP (from 1) with the TensorBoard profiler (default: none)",
    )
    add(
        "--quiet",
        action="store_true",
        help="print only the final results and errors (default: a line per epoch, and a live "
        "bar on a terminal)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        n_kernels=args.kernels,
        units=args.units,
        seed=args.seed,
        xla=args.xla,
        standardize=args.standardize,
        data_dir=args.data_dir,
        steps_per_call=args.steps_per_call,
        shards=args.shards,
        precision=args.precision,
        eval_batch_size=args.eval_batch_size,
        logdir=args.logdir,
        deterministic=args.deterministic,
        export_dir=args.export,
        log_every=args.log_every,
        profile_steps=args.profile_steps,
        device=args.device,
        strategy=args.strategy,
    )


def main(argv: list[str] | None = None, started_at: float | None = None) -> int:
    """Runs the CLI; returns the process exit code. `started_at` is the process's start."""
    started_at = started_at if started_at is not None else time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = configure(parser, args)
        # The data are read before TensorFlow starts: a bad file fails in a blink.
        dataset = data.load(config.data_dir)
    except (data.DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    train_size = len(data.stratified_split(dataset.train_labels, config.validation_fraction).train)
    if config.batch_size > train_size:
        parser.error(
            f"argument --batch-size: {config.batch_size} is larger than the {train_size} "
            "training images"
        )

    # TensorFlow's C++ start-up chatter (oneDNN notices, CUDA probing on machines without a
    # GPU) buries the run's own lines; failures still reach us as Python exceptions.
    # A user who wants the chatter sets TF_CPP_MIN_LOG_LEVEL=0.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from fastconv import runtime  # imports TensorFlow, so only now
    from fastconv.interruption import Interrupted
    from fastconv.run import TrainingDiverged, train_and_evaluate

    def log(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    versions = runtime.versions()
    log(" | ".join(f"{name} {version}" for name, version in versions.items()))
    log("config: " + " ".join(f"{key}={value}" for key, value in config.to_dict().items()))
    try:
        result = train_and_evaluate(
            config,
            dataset,
            log=log,
            resume=args.resume,
            live_progress=sys.stdout.isatty() and not args.quiet,
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


def configure(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """The run's configuration: from the flags, or for --resume the saved run's with the
    flags' changes; flag values the trainer cannot run with are argparse errors."""
    try:
        config = config_from_args(args)
    except ConfigError as error:
        parser.error(str(error))
    if not args.resume:
        return dataclasses.replace(config, logdir=config.logdir or str(rundir.default_logdir()))
    if not args.logdir:
        parser.error("argument --resume: needs the --logdir of the run to continue")
    saved = Path(args.logdir) / rundir.CONFIG
    if not saved.is_file():
        raise ConfigError(f"{saved}: not found; is {args.logdir} a fastconv run folder?")
    try:
        saved_config = TrainConfig(**rundir.read_json(saved))
    except (ValueError, TypeError) as error:  # JSON syntax, unknown fields, bad values
        raise ConfigError(f"{saved}: not a fastconv configuration ({error})") from None
    return resumed(saved_config, config)


def main_entry() -> None:
    """The console script `fastconv-train`."""
    sys.exit(main())
