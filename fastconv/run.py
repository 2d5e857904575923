"""The Python side of a run: epochs of compiled blocks, evaluation and reporting between them."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from fastconv import data, export, figures, pipeline, progress, rundir, runtime, xla_probe
from fastconv.checkpoints import Checkpoints
from fastconv.config import ConfigError, TrainConfig
from fastconv.interruption import Interrupted, StopRequests
from fastconv.model import ConvNet
from fastconv.profiling import Profiler
from fastconv.summaries import Summaries
from fastconv.trainer import Trainer

# A training set up to this size is kept on the device (Fashion-MNIST's is 38 MB) and each
# batch gathered inside the compiled loop; a larger one streams from host memory, prefetched.
RESIDENT_BYTES = 2**30


class TrainingDiverged(RuntimeError):
    """The training loss, or a weight, stopped being a finite number."""


class NothingToResume(ConfigError):
    """--resume named a run folder without a checkpoint in it."""


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
    checkpoint: str | None = None  # the last checkpoint saved (with a logdir)


@dataclasses.dataclass
class LoopState:
    """What the run loop carries from block to block besides the trainer; saved with it.

    The sums are over the steps of the current epoch, so a run resumed mid-epoch reports
    the same epoch means as the run it continues.
    """

    loss_sum: float = 0.0
    correct: int = 0
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0
    history: list[EpochResult] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, state: dict) -> LoopState:
        history = [EpochResult(**epoch) for epoch in state.pop("history")]
        return cls(**state, history=history)


@dataclasses.dataclass(frozen=True)
class Datasets:
    """The tf.data pipelines of a run, built from the arrays of the book's split."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    train_size: int
    batch_size: int
    standardize: pipeline.Standardization
    # With the training set resident on the device, `train` yields index rows and this
    # gathers their batch inside the compiled loop (`Trainer.make_batch`); else None.
    make_batch: Callable | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Training steps in an epoch: the remainder of the images is dropped, as the book does."""
        return self.train_size // self.batch_size


def make_datasets(
    dataset: data.FashionMNIST,
    config: TrainConfig,
    start_step: int = 0,
    strategy: tf.distribute.Strategy | None = None,
    resident: bool = False,
) -> Datasets:
    """The run's pipelines; the training stream starts at `start_step` (a resumed run's).

    Under a strategy, each worker's stream yields its replicas' shares of every global batch.
    `resident` keeps the training images as constants on the device of the enclosing
    `tf.device` scope, and the stream yields only the batches' indices.
    """
    split = data.stratified_split(dataset.train_labels, config.validation_fraction, config.seed)
    if config.batch_size > len(split.train):
        raise ConfigError(
            f"batch_size={config.batch_size} is larger than the {len(split.train)} training images"
        )
    train_images = dataset.train_images[split.train]
    standardize = pipeline.Standardization.named(config.standardize, train_images)

    def evaluation(images, labels):
        return pipeline.evaluation_batches(images, labels, config.eval_batch_size, standardize)

    train_labels = dataset.train_labels[split.train]

    def training(replica_chunks=(0, 1, 1)):
        return pipeline.training_batches(
            train_images,
            train_labels,
            config.batch_size,
            config.seed,
            standardize,
            start_step,
            replica_chunks,
        )

    def worker_training(context: tf.distribute.InputContext):
        local = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * local
        return training((first, local, context.num_replicas_in_sync))

    make_batch = None
    if resident:
        order = pipeline.training_order(
            len(train_images), config.batch_size, config.seed, start_step
        )
        train = order.prefetch(2).with_options(pipeline.NO_AUTOTUNE)
        make_batch = pipeline.batch_maker(train_images, train_labels, standardize)
    elif strategy:
        train = strategy.distribute_datasets_from_function(worker_training)
    else:
        train = training()
    return Datasets(
        train=train,
        validation=evaluation(
            dataset.train_images[split.validation], dataset.train_labels[split.validation]
        ),
        test=evaluation(dataset.test_images, dataset.test_labels),
        train_size=len(split.train),
        batch_size=config.batch_size,
        standardize=standardize,
        make_batch=make_batch,
    )


def compile_trainer(trainer: Trainer, datasets: Datasets) -> float:
    """Traces and compiles the training and evaluation functions; returns the seconds spent.

    One real step compiles the training loop; its changes are undone, so the run that
    follows is exactly the run without this warm-up.
    """
    start = time.perf_counter()
    with trainer.state_restored():
        trainer.train(iter(datasets.train), tf.constant(1))
        trainer.evaluate(datasets.validation.take(1))
    return time.perf_counter() - start


def resolve_precision(precision: str, device_name: str, log: Callable[[str], None]) -> str:
    """The policy to train in on `device_name`: `auto` becomes the device's pick, said with
    its reason."""
    device = runtime.this_device(device_name)
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
    resume: bool = False,
    live_progress: bool = False,
) -> RunResult:
    """Trains the book's network as `config` says and scores it on validation and test sets.

    With `config.logdir`, the run keeps its configuration, checkpoints (every epoch, on
    SIGUSR1, and when stopped by SIGINT or SIGTERM), TensorBoard logs, figures and metrics
    there; `resume` continues the run from the folder's latest checkpoint, exactly where it
    stopped. `log` receives the run's lines; `live_progress` adds a live bar per epoch (for
    a terminal).
    """
    # Listing and configuring the GPUs runs no op, so the threads can still be set after.
    device = runtime.resolve_device(config.device, runtime.prepare_gpus())
    on_gpu = "GPU" in device
    log(f"device: {runtime.describe_device(device)}")
    # Under a strategy the replicas take the place of shards.
    shards = 1 if config.strategy != "none" else config.shards
    shards = shards or runtime.auto_shards(config.batch_size, on_gpu)
    threads = runtime.thread_counts(shards, on_gpu)
    if not runtime.set_threads(threads):  # only possible before TensorFlow's first op
        log(f"note: TensorFlow already started; keeping its threads instead of {threads}")
    strategy = runtime.make_strategy(config.strategy, device)
    if strategy:
        config = per_worker(config, strategy, log)
    if config.deterministic:
        runtime.enable_determinism()
    runtime.seed_everything(config.seed)
    dataset = dataset if dataset is not None else data.load(config.data_dir)
    # The training images stay on the device when they fit, and only indices cross to it: on
    # a GPU that spares the host-to-device copies; on a CPU it keeps tf.data's threads off the
    # cores the steps use (1.09x in float32, 1.2x in bfloat16 on the 2-core host).
    resident = not strategy and dataset.train_images.nbytes <= RESIDENT_BYTES
    # Variables, and the ops traced later, go where --device says; a strategy places its own.
    with contextlib.nullcontext() if strategy else tf.device(device):
        return _train_and_evaluate(
            config, dataset, log, resume, live_progress, device, shards, strategy, resident
        )


def per_worker(config: TrainConfig, strategy, log: Callable[[str], None]) -> TrainConfig:
    """The configuration of this worker of a distributed run: checks that the global batch
    splits across the replicas, and gives workers other than the chief a folder of their own
    (`<logdir>/worker-N`) and no export, so they never write over the chief's files."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(
            f"batch_size={config.batch_size} does not split evenly across {replicas} replicas"
        )
    log(f"strategy: {config.strategy}, {replicas} replicas of {config.batch_size // replicas}")
    index = runtime.worker_index() if config.strategy == "multi-worker" else 0
    if index == 0:
        return config
    logdir = str(Path(config.logdir) / f"worker-{index}") if config.logdir else None
    return dataclasses.replace(config, logdir=logdir, export_dir=None)


def _train_and_evaluate(
    config, dataset, log, resume, live_progress, device, shards, strategy, resident
):
    logdir = Path(config.logdir) if config.logdir else None
    # Checked before anything is written: a refused run leaves the folder as it found it.
    has_checkpoint = bool(logdir) and Checkpoints.exist(logdir / rundir.CHECKPOINTS)
    if resume and not has_checkpoint:
        raise NothingToResume(f"{logdir}: no checkpoint to resume from")
    if not resume and has_checkpoint:
        raise ConfigError(
            f"{logdir} already holds a run's checkpoints: continue it with --resume, "
            "or choose another --logdir"
        )

    precision = resolve_precision(config.precision, device, log)
    summaries = Summaries(logdir) if logdir else None
    # A strategy's scope makes the weights and the optimizer's variables mirrored.
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = ConvNet(config.n_kernels, config.units, seed=config.seed, dtype_policy=precision)
        trainer = Trainer(
            model,
            config.learning_rate,
            xla=config.xla,
            shards=shards,
            conv_form=runtime.conv_form(config.xla, "GPU" in device),
            step_summaries=summaries.train if summaries else None,
            log_every=config.log_every,
            strategy=strategy,
        )
    checkpoints = Checkpoints(logdir / rundir.CHECKPOINTS, trainer) if logdir else None
    state = LoopState()
    if resume:
        state = LoopState.from_json(checkpoints.restore_latest())
        log(f"resumed from {checkpoints.latest} (step {trainer.steps_done})")
    if logdir:
        rundir.write_json(logdir / rundir.CONFIG, config.to_dict())
        rundir.write_json(
            logdir / rundir.ENVIRONMENT,
            {
                **runtime.versions(),
                "device": runtime.describe_device(device),
                "precision": precision,
            },
        )

    datasets = make_datasets(dataset, config, trainer.steps_done, strategy, resident)
    trainer.make_batch = datasets.make_batch
    log(
        f"data: {dataset.source} | train {datasets.train_size}, validation "
        f"{len(dataset.train_images) - datasets.train_size}, test {len(dataset.test_images)} "
        f"| {datasets.steps_per_epoch} steps of {config.batch_size} per epoch"
        + (" | training images resident on the device" if resident else "")
    )
    log(
        f"compiling ({'XLA' if config.xla else 'graph'}, {precision}, {shards} shard(s) per "
        f"step, {runtime.describe_threads()})..."
    )
    compile_seconds = compile_trainer(trainer, datasets)
    log(f"compiled in {compile_seconds:.2f} s")
    xla_ratio = None
    if config.xla and device == "/CPU:0" and not strategy:
        xla_ratio = xla_probe.xla_speed_ratio(trainer, datasets.train)
        if xla_ratio < 0.95:
            log(
                f"note: on this CPU the XLA steps ran at {xla_ratio:.2f}x the speed of graph "
                "mode (measured just now, best of 3 x 50 steps); leave out --xla to train faster"
            )
    if summaries and not resume:
        summaries.hparams(config.to_dict(), logdir.name)
        summaries.graph(trainer, config.batch_size // trainer.replicas)  # the step as traced

    loop = RunLoop(config, trainer, datasets, state, checkpoints, summaries, log, live_progress)
    try:
        loop.train()
        result = RunResult(
            config,
            state.history,
            state.history[-1].val_loss,
            state.history[-1].val_accuracy,
            *(float(v) for v in trainer.evaluate(datasets.test)),
            compile_seconds,
            state.train_seconds,
            xla_ratio,
            trainer,
            loop.checkpoint,
        )
        if logdir:
            write_results(result, logdir, datasets, summaries)
    finally:
        if summaries:
            summaries.close()
    if config.export_dir:
        export.export(trainer, datasets.standardize, config.export_dir)
        log(f"exported the model to {config.export_dir}")
    return result


class RunLoop:
    """The outer loop: blocks of compiled steps, and between them everything that needs the
    host: epoch ends, checkpoints, summaries, progress, signals, the divergence check."""

    def __init__(self, config, trainer, datasets, state, checkpoints, summaries, log, live):
        self.config, self.trainer, self.datasets, self.state = config, trainer, datasets, state
        self.checkpoints, self.summaries, self.log = checkpoints, summaries, log
        self.steps_per_epoch = datasets.steps_per_epoch
        block_steps = config.steps_per_call or (
            progress.live_block_steps(self.steps_per_epoch) if live else self.steps_per_epoch
        )
        self.steps_per_call = min(block_steps, self.steps_per_epoch)
        self.bar = progress.EpochBar(self.steps_per_epoch) if live else None
        self.profiler = Profiler(config.logdir, config.profile_steps)
        self.checkpoint = checkpoints.latest if checkpoints else None
        self.saved = False  # whether the last block ended with a checkpoint

    def train(self) -> None:
        """Trains up to `config.epochs`; raises TrainingDiverged or Interrupted."""
        iterator = iter(self.datasets.train)
        total_steps = self.config.epochs * self.steps_per_epoch
        try:
            with StopRequests() as requests:
                # The trainer's step counter is the loop's position: read between blocks only.
                while (step := self.trainer.steps_done) < total_steps:
                    self.train_block(iterator, step)
                    self.answer(requests)
        finally:
            self.profiler.stop()

    def train_block(self, iterator, step: int) -> None:
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        num_steps = min(self.steps_per_call, self.steps_per_epoch - step_in_epoch)
        num_steps = self.profiler.block_length(step, num_steps)
        start = time.perf_counter()
        with self.profiler.block(step):
            block = self.trainer.train(iterator, tf.constant(num_steps))
            loss = float(block.loss)  # host read: waits for the block
        seconds = time.perf_counter() - start
        if not bool(block.finite):
            what = (
                f"the loss became {loss}"
                if not math.isfinite(loss)
                else "a weight became non-finite"
            )
            raise TrainingDiverged(
                f"training diverged in epoch {epoch + 1} at step "
                f"{step_in_epoch + int(block.steps)} of {self.steps_per_epoch}: {what}; "
                f"{_kept(self.checkpoint)}; lower --learning-rate "
                f"(now {self.config.learning_rate})"
            )
        state = self.state
        state.loss_sum += float(block.loss_sum)
        state.correct += int(block.correct)
        state.epoch_seconds += seconds
        state.train_seconds += seconds
        self.saved = False
        done = step_in_epoch + num_steps
        if done < self.steps_per_epoch:
            if self.bar:
                self.bar.update(done, loss, num_steps * self.config.batch_size / seconds)
            return
        self.finish_epoch(epoch + 1)
        self.save()

    def finish_epoch(self, epoch: int) -> None:
        """Evaluates on the validation set, appends the epoch to the history and reports it."""
        config, state = self.config, self.state
        val_loss, val_accuracy = (float(v) for v in self.trainer.evaluate(self.datasets.validation))
        result = EpochResult(
            epoch,
            state.loss_sum / self.steps_per_epoch,
            state.correct / (self.steps_per_epoch * config.batch_size),
            val_loss,
            val_accuracy,
            state.epoch_seconds,
            self.steps_per_epoch * config.batch_size / state.epoch_seconds,
        )
        state.history.append(result)
        state.loss_sum = state.epoch_seconds = 0.0
        state.correct = 0
        if self.bar:
            self.bar.clear()
        self.log(
            f"epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  "
            f"loss {result.train_loss:.4f}  acc {result.train_accuracy:.4f} | "
            f"val loss {val_loss:.4f}  acc {val_accuracy:.4f} | "
            f"{result.seconds:.2f} s  {result.images_per_second:,.0f} img/s"
        )
        if self.summaries:
            self.summaries.epoch(result, config.learning_rate)

    def save(self) -> None:
        if self.checkpoints:
            self.checkpoint = self.checkpoints.save(self.state.to_json())
            self.saved = True

    def answer(self, requests: StopRequests) -> None:
        """Saves on SIGUSR1; saves and stops on SIGINT or SIGTERM."""
        if requests.save_requested and not self.saved:
            self.save()
            self.log(f"saved {self.checkpoint} (SIGUSR1)")
        requests.save_requested = False
        if requests.stop_signal is None:
            return
        if not self.saved:
            self.save()
        message = _interrupted_message(
            requests.stop_signal, self.trainer.steps_done, self.steps_per_epoch
        )
        if self.checkpoint:
            message += (
                f"; saved {self.checkpoint}; resume with: python scripts/train.py "
                f"--logdir {self.config.logdir} --resume"
            )
        else:
            message += "; no --logdir, so nothing was saved"
        raise Interrupted(requests.stop_signal, message)


def write_results(
    result: RunResult,
    logdir: Path,
    datasets: Datasets,
    summaries: Summaries,
) -> None:
    """metrics.json, the book's figures as PNG, and the test results in TensorBoard."""
    rundir.write_json(logdir / rundir.METRICS, metrics(result, datasets.steps_per_epoch))
    (logdir / "loss.png").write_bytes(figures.png_bytes(figures.loss_curves(result.history)))
    (logdir / "accuracy.png").write_bytes(figures.png_bytes(figures.accuracy_curve(result.history)))
    matrix = confusion_matrix(result.trainer, datasets.test)
    confusion_png = figures.png_bytes(figures.confusion_matrix(matrix, data.CLASS_NAMES))
    (logdir / "confusion_matrix.png").write_bytes(confusion_png)
    summaries.test_results(
        len(result.history), result.test_loss, result.test_accuracy, confusion_png
    )


def confusion_matrix(trainer: Trainer, dataset: tf.data.Dataset) -> np.ndarray:
    """Counts of (true class, predicted class) over an evaluation dataset."""
    matrix = tf.zeros([data.NUM_CLASSES, data.NUM_CLASSES], tf.int32)
    for images, targets in dataset:
        matrix += tf.math.confusion_matrix(
            tf.argmax(targets, axis=1), trainer.predict_step(images), data.NUM_CLASSES
        )
    return matrix.numpy()


def metrics(result: RunResult, steps_per_epoch: int) -> dict:
    """The run's final numbers, as metrics.json keeps them."""
    last = result.history[-1]
    images = len(result.history) * steps_per_epoch * result.config.batch_size
    return {
        "epochs": len(result.history),
        "train_loss": last.train_loss,
        "train_accuracy": last.train_accuracy,
        "val_loss": result.val_loss,
        "val_accuracy": result.val_accuracy,
        "test_loss": result.test_loss,
        "test_accuracy": result.test_accuracy,
        "images_per_second": images / result.train_seconds,
        "compile_seconds": result.compile_seconds,
        "train_seconds": result.train_seconds,
        "xla_speed_ratio": result.xla_speed_ratio,
    }


def _kept(checkpoint: str | None) -> str:
    if checkpoint:
        return f"the last good checkpoint, {checkpoint}, is kept"
    return "no checkpoint had been saved"


def _interrupted_message(signal_number: int, step: int, steps_per_epoch: int) -> str:
    epoch, step_in_epoch = divmod(step, steps_per_epoch)
    where = (
        f"after epoch {epoch}"
        if step_in_epoch == 0
        else f"in epoch {epoch + 1} after step {step_in_epoch} of {steps_per_epoch}"
    )
    return f"interrupted by {signal.Signals(signal_number).name} {where}"
