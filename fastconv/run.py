"""The Python side of a run: epochs of compiled blocks, evaluation and reporting between them."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable

import tensorflow as tf

from fastconv import data, pipeline, runtime
from fastconv.config import ConfigError, TrainConfig
from fastconv.model import ConvNet
from fastconv.trainer import Trainer


class TrainingDiverged(RuntimeError):
    """The training loss, or a weight, stopped being a finite number."""


@dataclasses.dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    images_per_second: float


@dataclasses.dataclass
class RunResult:
    config: TrainConfig
    history: list[EpochResult]
    val_loss: float
    val_accuracy: float
    test_loss: float
    test_accuracy: float
    compile_seconds: float
    train_seconds: float
    xla_speed_ratio: float | None  # XLA over graph-mode speed, probed on CPU runs with --xla
    trainer: Trainer = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class Datasets:
    """The tf.data pipelines of a run, built from the arrays of the book's split."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    train_size: int


def make_datasets(dataset: data.FashionMNIST, config: TrainConfig) -> Datasets:
    split = data.stratified_split(dataset.train_labels, config.validation_fraction, config.seed)
    if config.batch_size > len(split.train):
        raise ConfigError(
            f"batch_size={config.batch_size} is larger than the {len(split.train)} training images"
        )
    train_images = dataset.train_images[split.train]
    standardize = pipeline.Standardization.named(config.standardize, train_images)

    def evaluation(images, labels):
        return pipeline.evaluation_batches(images, labels, config.eval_batch_size, standardize)

    return Datasets(
        train=pipeline.training_batches(
            train_images,
            dataset.train_labels[split.train],
            config.batch_size,
            config.seed,
            standardize,
        ),
        validation=evaluation(
            dataset.train_images[split.validation], dataset.train_labels[split.validation]
        ),
        test=evaluation(dataset.test_images, dataset.test_labels),
        train_size=len(split.train),
    )


@contextlib.contextmanager
def state_restored(trainer: Trainer):
    """Runs the block, then puts every variable of the trainer back as it was."""
    snapshot = [v.numpy() for v in trainer.variables]
    try:
        yield
    finally:
        for variable, value in zip(trainer.variables, snapshot):
            variable.assign(value)


def compile_trainer(trainer: Trainer, datasets: Datasets) -> float:
    """Traces and compiles the training and evaluation functions; returns the seconds spent.

    One real step compiles the training loop; its changes are undone, so the run that
    follows is exactly the run without this warm-up.
    """
    start = time.perf_counter()
    with state_restored(trainer):
        trainer.train(iter(datasets.train), tf.constant(1))
        trainer.evaluate(datasets.validation.take(1))
    return time.perf_counter() - start


def xla_speed_ratio(trainer: Trainer, datasets: Datasets, steps: int = 50, rounds: int = 3):
    """Speed of the XLA steps over graph-mode steps on the same weights: best of `rounds`.

    Costs about a second: a graph-mode twin of the trainer is compiled, both run `rounds`
    blocks of `steps` steps, and the XLA trainer's state is put back afterwards.
    """
    model = trainer.model
    twin_model = ConvNet(model.n_kernels, model.units, dtype_policy=model.dtype_policy.name)
    for twin, weight in zip(twin_model.weights, model.weights):
        twin.assign(weight)
    twin = Trainer(twin_model, trainer.learning_rate, xla=False, shards=trainer.shards)
    seconds = {trainer: [], twin: []}
    with state_restored(trainer):
        iterators = {t: iter(datasets.train) for t in seconds}
        for t in seconds:
            t.train(iterators[t], tf.constant(1))  # compiles the twin
        for _ in range(rounds):
            for t, times in seconds.items():
                start = time.perf_counter()
                t.train(iterators[t], tf.constant(steps))[0].numpy()  # host read: waits
                times.append(time.perf_counter() - start)
    return min(seconds[twin]) / min(seconds[trainer])


def resolve_precision(precision: str, log: Callable[[str], None]) -> str:
    """The policy to train in: `auto` becomes the device's pick, said with its reason."""
    device = runtime.this_device()
    if precision == "auto":
        precision, reason = runtime.choose_precision(device)
        log(f"precision: auto picked {precision}: {reason}")
    if precision == "mixed_float16" and device.kind == "CPU":
        log(
            "warning: mixed_float16 on a CPU has no float16 units to use and ran ~3x slower "
            "than float32 here; mixed_bfloat16 or float32 train faster"
        )
    return precision


def train_and_evaluate(
    config: TrainConfig,
    dataset: data.FashionMNIST | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Trains the book's network as `config` says and scores it on validation and test sets."""
    shards = config.shards or runtime.auto_shards(config.batch_size)
    threads = runtime.thread_counts(shards, config.xla)
    if not runtime.set_threads(threads):  # only possible before TensorFlow's first op
        log(f"note: TensorFlow already started; keeping its threads instead of {threads}")
    runtime.seed_everything(config.seed)
    dataset = dataset if dataset is not None else data.load(config.data_dir)
    datasets = make_datasets(dataset, config)
    steps_per_epoch = datasets.train_size // config.batch_size
    steps_per_call = min(config.steps_per_call or steps_per_epoch, steps_per_epoch)
    log(
        f"data: {dataset.source} | train {datasets.train_size}, validation "
        f"{len(dataset.train_images) - datasets.train_size}, test {len(dataset.test_images)} "
        f"| {steps_per_epoch} steps of {config.batch_size} per epoch"
    )

    precision = resolve_precision(config.precision, log)
    model = ConvNet(config.n_kernels, config.units, seed=config.seed, dtype_policy=precision)
    trainer = Trainer(model, config.learning_rate, xla=config.xla, shards=shards)
    log(
        f"compiling ({'XLA' if config.xla else 'graph'}, {precision}, {shards} shard(s) per "
        f"step, {runtime.describe_threads()})..."
    )
    compile_seconds = compile_trainer(trainer, datasets)
    log(f"compiled in {compile_seconds:.2f} s")
    xla_ratio = None
    if config.xla and not runtime.has_gpu():
        xla_ratio = xla_speed_ratio(trainer, datasets)
        if xla_ratio < 0.95:
            log(
                f"note: on this CPU the XLA steps ran at {xla_ratio:.2f}x the speed of graph "
                "mode (measured just now, best of 3 x 50 steps); leave out --xla to train faster"
            )

    iterator = iter(datasets.train)
    history = []
    train_start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        loss_sum = accuracy_sum = 0.0
        for first_step in range(0, steps_per_epoch, steps_per_call):
            num_steps = min(steps_per_call, steps_per_epoch - first_step)
            loss, accuracy, finite = trainer.train(iterator, tf.constant(num_steps))
            loss = float(loss)  # host read: waits for the block, and the NaN check needs it
            if not (math.isfinite(loss) and bool(finite)):
                what = (
                    f"training loss became {loss}" if bool(finite) else "weights became non-finite"
                )
                raise TrainingDiverged(
                    f"{what} in epoch {epoch}, steps {first_step + 1}-{first_step + num_steps}; "
                    f"lower --learning-rate (now {config.learning_rate})"
                )
            loss_sum += loss * num_steps
            accuracy_sum += float(accuracy) * num_steps
        seconds = time.perf_counter() - epoch_start
        val_loss, val_accuracy = (float(v) for v in trainer.evaluate(datasets.validation))
        result = EpochResult(
            epoch,
            loss_sum / steps_per_epoch,
            accuracy_sum / steps_per_epoch,
            val_loss,
            val_accuracy,
            seconds,
            steps_per_epoch * config.batch_size / seconds,
        )
        history.append(result)
        log(
            f"epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  "
            f"loss {result.train_loss:.4f}  acc {result.train_accuracy:.4f} | "
            f"val loss {val_loss:.4f}  acc {val_accuracy:.4f} | "
            f"{seconds:.2f} s  {result.images_per_second:,.0f} img/s"
        )
    train_seconds = time.perf_counter() - train_start
    test_loss, test_accuracy = (float(v) for v in trainer.evaluate(datasets.test))
    return RunResult(
        config,
        history,
        history[-1].val_loss,
        history[-1].val_accuracy,
        test_loss,
        test_accuracy,
        compile_seconds,
        train_seconds,
        xla_ratio,
        trainer,
    )
