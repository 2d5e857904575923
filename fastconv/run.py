"""A run, assembled: the placement, the data, the trainer, the loop, the results.

`train_and_evaluate` reads top to bottom, as Flax's does; each piece it calls lives in a
module of its own (`runtime`, `pipeline`, `trainer`, `loop`, `report`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from fastconv import data, export, rundir, runtime, xla_probe
from fastconv.checkpoints import Checkpoints
from fastconv.config import ConfigError, TrainConfig
from fastconv.loop import LoopState, RunLoop
from fastconv.pipeline import RESIDENT_BYTES, Datasets, make_datasets
from fastconv.report import RunResult, write_results
from fastconv.runtime import Placement
from fastconv.summaries import Summaries
from fastconv.trainer import Trainer, make_trainer


class NothingToResume(ConfigError):
    """--resume named a run folder without a checkpoint in it."""


def train_and_evaluate(
    config: TrainConfig,
    dataset: data.FashionMNIST | data.BookSplit | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
    live_progress: bool = False,
) -> RunResult:
    """Trains the book's network as `config` says and scores it on validation and test sets.

    `dataset` is the data set (read from `config.data_dir` when None) or its split. With
    `config.logdir`, the run keeps its configuration, checkpoints (every epoch, on SIGUSR1,
    and when stopped by SIGINT or SIGTERM), TensorBoard logs, figures and metrics there;
    `resume` continues the run from the folder's latest checkpoint, exactly where it
    stopped. `log` receives the run's lines; `live_progress` adds a live bar per epoch.
    """
    placement = runtime.start(config)
    log(f"device: {placement.description}")
    for note in placement.notes:
        log(note)
    if placement.strategy:
        log(
            f"strategy: {config.strategy}, {placement.replicas} replicas of "
            f"{config.batch_size // placement.replicas}"
        )
        config = per_worker(config)
    if dataset is None:
        dataset = data.load(config.data_dir)
    split = dataset if isinstance(dataset, data.BookSplit) else data.book_split(dataset, config)
    with placement.device_scope():
        return _run(config, placement, split, log, resume, live_progress)


def per_worker(config: TrainConfig) -> TrainConfig:
    """This worker's configuration: workers other than the chief of a multi-worker run get
    a folder of their own (`<logdir>/worker-N`) and no export, so they never write over the
    chief's files."""
    index = runtime.worker_index() if config.strategy == "multi-worker" else 0
    if index == 0:
        return config
    logdir = str(Path(config.logdir) / f"worker-{index}") if config.logdir else None
    return dataclasses.replace(config, logdir=logdir, export_dir=None)


def _run(config, placement: Placement, split: data.BookSplit, log, resume, live_progress):
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

    summaries = Summaries(logdir) if logdir else None
    # The training images stay on the device when they fit, and only indices cross to it: on
    # a GPU that spares the host-to-device copies; on a CPU it keeps tf.data's threads off the
    # cores the steps use.
    resident = not placement.strategy and split.train_images.nbytes <= RESIDENT_BYTES
    datasets = make_datasets(split, config, placement.strategy, resident)
    trainer = make_trainer(
        config,
        placement,
        datasets.make_batch,
        summaries.train if summaries else None,
        steps_per_epoch=datasets.steps_per_epoch,
    )
    checkpoints = Checkpoints(logdir / rundir.CHECKPOINTS, trainer) if logdir else None
    state = LoopState()
    if resume:
        state = LoopState.from_json(checkpoints.restore_latest())
        log(f"resumed from {checkpoints.latest} (step {trainer.steps_done})")
    if logdir:
        rundir.write_json(logdir / rundir.CONFIG, config.to_dict())
        environment = {"device": placement.description, "precision": placement.precision}
        rundir.write_json(logdir / rundir.ENVIRONMENT, {**runtime.versions(), **environment})

    log(
        f"data: {split.source} | train {datasets.train_size}, validation "
        f"{len(split.validation_images)}, test {len(split.test_images)} "
        f"| {datasets.steps_per_epoch} steps of {config.batch_size} per epoch"
        + (" | training images resident on the device" if resident else "")
    )
    log(
        f"compiling ({'XLA' if config.xla else 'graph'}, {placement.precision}, "
        f"{placement.shards} shard(s) per step, {runtime.describe_threads()})..."
    )
    compile_seconds = compile_trainer(trainer, datasets, config.profile_steps is not None)
    log(f"compiled in {compile_seconds:.2f} s")
    xla_ratio = None
    if config.xla and not placement.on_gpu and not placement.strategy:
        xla_ratio = xla_probe.xla_speed_ratio(trainer, datasets.train(), config, placement)
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
        test = trainer.evaluate(datasets.test)
        result = RunResult(
            config,
            state.history,
            state.history[-1].val_loss,
            state.history[-1].val_accuracy,
            float(test.loss),
            float(test.accuracy),
            compile_seconds,
            state.train_seconds,
            xla_ratio,
            trainer,
            loop.checkpoint,
            test_confusion=test.confusion.numpy().astype(int),
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


def compile_trainer(trainer: Trainer, datasets: Datasets, profiled: bool = False) -> float:
    """Traces and compiles the training and evaluation functions; returns the seconds spent.

    One real step compiles the training loop (and, for a `profiled` run, the one-step
    function the profiled steps run, so no trace lands in the window); its changes are
    undone, so the run that follows is exactly the run without this warm-up.
    """
    start = time.perf_counter()
    with trainer.state_restored():
        iterator = iter(datasets.train())
        trainer.train(iterator, tf.constant(1))
        if profiled:
            trainer.train_one_step(iterator)
        validation = datasets.validation
        trainer.evaluate(type(validation)(validation.images[:1], validation.targets[:1]))
    return time.perf_counter() - start
