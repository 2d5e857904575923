"""The Python side of a run: epochs of compiled blocks, evaluation and reporting between them."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from fastconv import data, pipeline, runtime
from fastconv.config import ConfigError, TrainConfig
from fastconv.model import ConvNet
from fastconv.trainer import Trainer


class TrainingDiverged(RuntimeError):
    """The training loss stopped being a finite number."""


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


def compile_trainer(trainer: Trainer, datasets: Datasets) -> float:
    """Traces and compiles the training and evaluation functions; returns the seconds spent.

    One real step compiles the training loop; the state it changes is put back afterwards,
    so the run that follows is exactly the run without this warm-up.
    """
    start = time.perf_counter()
    snapshot = [v.numpy() for v in trainer.variables]
    trainer.train(iter(datasets.train), tf.constant(1))
    trainer.evaluate(datasets.validation.take(1))
    for variable, value in zip(trainer.variables, snapshot):
        variable.assign(value)
    return time.perf_counter() - start


def train_and_evaluate(
    config: TrainConfig,
    dataset: data.FashionMNIST | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Trains the book's network as `config` says and scores it on validation and test sets."""
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

    trainer = Trainer(
        ConvNet(config.n_kernels, config.units, seed=config.seed),
        config.learning_rate,
        xla=config.xla,
    )
    log(f"compiling ({'XLA' if config.xla else 'graph'})...")
    compile_seconds = compile_trainer(trainer, datasets)
    log(f"compiled in {compile_seconds:.2f} s")

    iterator = iter(datasets.train)
    history = []
    train_start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        losses, accuracies = [], []
        for first_step in range(0, steps_per_epoch, steps_per_call):
            num_steps = min(steps_per_call, steps_per_epoch - first_step)
            loss, accuracy, finite = trainer.train(iterator, tf.constant(num_steps))
            loss = float(loss)  # host read: waits for the block, and the NaN check needs it
            if not (math.isfinite(loss) and bool(finite)):
                what = (
                    f"training loss became {loss}"
                    if not math.isfinite(loss)
                    else ("weights became non-finite")
                )
                raise TrainingDiverged(
                    f"{what} in epoch {epoch}, steps {first_step + 1}-{first_step + num_steps}; "
                    f"lower --learning-rate (now {config.learning_rate})"
                )
            losses.append(loss * num_steps)
            accuracies.append(float(accuracy) * num_steps)
        seconds = time.perf_counter() - epoch_start
        val_loss, val_accuracy = (float(v) for v in trainer.evaluate(datasets.validation))
        result = EpochResult(
            epoch,
            sum(losses) / steps_per_epoch,
            sum(accuracies) / steps_per_epoch,
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
        trainer,
    )


def median_images_per_second(history: list[EpochResult]) -> float:
    return float(np.median([epoch.images_per_second for epoch in history]))
