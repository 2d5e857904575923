"""A run, assembled: the run folder, the placement, the data, the trainer, the loop, the
results.

`train_and_evaluate` reads top to bottom, as Flax's does; each piece it calls lives in a
module of its own (`rundir`, `resume`, `runtime`, `pipeline`, `trainer`, `loop`, `report`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tensorflow as tf

from fastconv import checkpoints, data, export, faults, rundir, runtime, xla_probe
from fastconv.checkpoints import Checkpoints, Start, kept
from fastconv.config import ConfigError, TrainConfig
from fastconv.interruption import StopRequests
from fastconv.loop import LoopState, RunLoop
from fastconv.pipeline import RESIDENT_BYTES, Datasets, make_datasets
from fastconv.prepared import PreparedSplit, prepare
from fastconv.report import RunResult, curve_pngs, write_results
from fastconv.resume import recorded_settings, starting_point
from fastconv.runtime import Placement
from fastconv.summaries import Summaries
from fastconv.trainer import Trainer, make_trainer


def train_and_evaluate(
    config: TrainConfig,
    dataset: data.FashionMNIST | data.BookSplit | PreparedSplit | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
    live_progress: bool = False,
) -> RunResult:
    """Trains the book's network as `config` says and scores it on validation and test sets.

    `dataset` is the data set (read from `config.data_dir` when None), its split, or the
    split prepared (`fastconv.prepared.prepare`, which the training command runs while
    TensorFlow imports). With `config.logdir`, the run keeps its configuration, checkpoints
    (every epoch, on SIGUSR1, and when stopped by SIGINT or SIGTERM), TensorBoard logs,
    figures and metrics there; `resume` continues the run from the folder's newest intact
    checkpoint, exactly where it stopped. `log` receives the run's lines; `live_progress`
    adds a live bar per epoch.

    The run holds its folder locked for its whole life. What it cannot do (a folder in use
    or unwritable, nothing intact to resume, fewer epochs than done, an export folder it
    must not overwrite) it refuses before writing anything, with a ConfigError. SIGINT and
    SIGTERM are answered in every phase with `fastconv.interruption.Interrupted`.
    """
    config = per_worker(config)
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(rundir.claimed(config.logdir)) if config.logdir else None
        nothing = kept(None) if folder else "no --logdir, so nothing was saved"
        requests = stack.enter_context(StopRequests(nothing))
        faults.reached("start-up")
        if dataset is None:
            dataset = data.load(config.data_dir)
        if isinstance(dataset, data.FashionMNIST):
            dataset = data.book_split(dataset, config)
        ready = prepare(dataset, config)
        split = ready.split
        steps_per_epoch = len(split.train_images) // config.batch_size
        start = starting_point(config, folder, steps_per_epoch, resume)
        if config.export_dir:
            export.check_target(config.export_dir, _run_id(folder))
        recorded, notes = recorded_settings(folder, config) if start else (None, [])
        placement = runtime.start(config, recorded)
        for line in (*(start.notes if start else ()), f"device: {placement.description}"):
            log(line)
        for note in (*notes, *placement.notes):
            log(note)
        if placement.strategy:
            log(
                f"strategy: {config.strategy}, {placement.replicas} replicas of "
                f"{config.batch_size // placement.replicas}"
            )
        with placement.device_scope():
            try:
                return _run(config, placement, ready, folder, start, requests, log, live_progress)
            except (OSError, tf.errors.OpError) as error:
                raise _one_line(error, folder, requests) from None


def per_worker(config: TrainConfig) -> TrainConfig:
    """This worker's configuration: workers other than the chief of a multi-worker run get
    a folder of their own (`<logdir>/worker-N`) and no export, so they never write over the
    chief's files."""
    index = runtime.worker_index() if config.strategy == "multi-worker" else 0
    if index == 0:
        return config
    logdir = str(Path(config.logdir) / f"worker-{index}") if config.logdir else None
    return dataclasses.replace(config, logdir=logdir, export_dir=None)


def _run(config, placement, ready, folder, start, requests, log, live_progress):
    split = ready.split
    # The training images stay on the device when they fit, and only indices cross to it: on
    # a GPU that spares the host-to-device copies; on a CPU it keeps tf.data's threads off the
    # cores the steps use.
    resident = not placement.strategy and split.train_images.nbytes <= RESIDENT_BYTES
    datasets = make_datasets(ready, config, placement.strategy, resident)
    log(
        f"data: {split.source} | train {datasets.train_size}, validation "
        f"{len(split.validation_images)}, test {len(split.test_images)} "
        f"| {datasets.steps_per_epoch} steps of {config.batch_size} per epoch"
        + (" | training images resident on the device" if resident else "")
    )
    if start:  # every refusal is behind us: the first change to the folder
        checkpoints.prepare(folder / rundir.CHECKPOINTS, start)
    summaries = Summaries(folder) if folder else None
    try:
        result = _train(
            config, placement, datasets, folder, start, summaries, requests, log, live_progress
        )
    except BaseException:
        with contextlib.suppress(Exception):  # a full disk fails the close too
            if summaries:
                summaries.close()
        raise
    if summaries:
        summaries.close()
    if config.export_dir:
        faults.reached("export")

        def answer_stop() -> None:  # before the export takes its folder's place
            requests.check("during the export; the model was not exported")

        export.export(
            result.trainer, datasets.standardize, config.export_dir, _run_id(folder), answer_stop
        )
        log(f"exported the model to {config.export_dir}")
    return result


def _train(
    config: TrainConfig,
    placement: Placement,
    datasets: Datasets,
    folder: Path | None,
    start: Start | None,
    summaries: Summaries | None,
    requests: StopRequests,
    log: Callable[[str], None],
    live_progress: bool,
) -> RunResult:
    trainer = make_trainer(
        config,
        placement,
        datasets.make_batch,
        summaries.train if summaries else None,
        steps_per_epoch=datasets.steps_per_epoch,
    )
    saved = Checkpoints(folder / rundir.CHECKPOINTS, trainer) if folder else None
    state = LoopState()
    if start:
        state = LoopState.from_json(saved.restore(start))
        log(f"resumed from {start.path} (step {trainer.steps_done})")
        requests.kept = kept(start.path, config.logdir)
    if folder:
        rundir.require_space(folder, saved.bytes_needed())
        rundir.write_json(folder / rundir.CONFIG, config.to_dict())
        environment = {"device": placement.description, "precision": placement.precision}
        environment["placement"] = placement.record()
        rundir.write_json(folder / rundir.ENVIRONMENT, {**runtime.versions(), **environment})

    log(
        f"compiling ({'XLA' if config.xla else 'graph'}, {placement.precision}, "
        f"{placement.shards} shard(s) per step, {runtime.describe_threads()})..."
    )
    requests.check("during start-up")
    faults.reached("compile")
    profiled = config.profile_steps is not None
    compile_seconds = compile_trainer(trainer, datasets, profiled, placement.device_scope)
    log(f"compiled in {compile_seconds:.2f} s")
    xla_ratio = None
    if config.xla and not placement.on_gpu and not placement.strategy:
        xla_ratio = xla_probe.xla_speed_ratio(trainer, datasets.train(), config, placement)
        if xla_ratio < 0.95:
            graph_threads = runtime.thread_counts(placement.shards, placement.on_gpu, xla=False)
            on_xlas = " on --xla's threads" if placement.threads != graph_threads else ""
            log(
                f"note: on this CPU the XLA steps ran at {xla_ratio:.2f}x the speed of graph "
                f"mode{on_xlas} (measured just now, best of 3 x 50 steps); leave out --xla "
                "to train faster"
            )
    requests.check("while compiling")
    if summaries and not start:
        summaries.hparams(config.to_dict(), folder.name)
        summaries.graph(trainer, config.batch_size // trainer.replicas)  # the step as traced

    loop = RunLoop(config, trainer, datasets, state, saved, summaries, requests, log, live_progress)
    loop.train()
    faults.reached("final-evaluation")
    # The test set is evaluated in a thread while the curves are drawn here: TensorFlow's
    # C++ and matplotlib's Python side by side (24 ms less of 157).
    with ThreadPoolExecutor(1) as thread:
        testing = thread.submit(_in_scope, placement.device_scope, trainer.evaluate, datasets.test)
        curves = curve_pngs(state.history) if folder else None
        test = testing.result()
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
        train_seconds_here=loop.seconds_here,
        test_confusion=test.confusion.numpy().astype(int),
    )
    if folder:
        write_results(result, folder, datasets, summaries, curves)
    results = f"; its results are in {folder}" if folder else ""
    requests.check(f"during the final evaluation{results}")
    return result


def _run_id(folder: Path | None) -> str | None:
    """What names the run in its exports: its folder, resolved."""
    return str(folder.resolve()) if folder else None


def _one_line(error: Exception, folder: Path | None, requests: StopRequests) -> Exception:
    """A failure to write (a full, read-only or vanished folder) or to allocate memory as one
    line that says what is kept; anything else as it is."""
    why = rundir.write_failure(error)
    if why and folder:
        where = getattr(error, "filename", None) or folder
        return rundir.RunFolderError(f"cannot write {where} ({why}); {requests.kept}")
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return ConfigError(
            f"out of memory ({str(error).splitlines()[0][:200]}); lower --batch-size, "
            f"--kernels or --units; {requests.kept}"
        )
    return error


def _in_scope(device_scope: Callable[[], contextlib.AbstractContextManager], function, *args):
    """`function(*args)` in `device_scope`, the run's: for a thread, as a device scope
    belongs to the thread that entered it."""
    with device_scope():
        return function(*args)


def compile_trainer(
    trainer: Trainer,
    datasets: Datasets,
    profiled: bool,
    device_scope: Callable[[], contextlib.AbstractContextManager],
) -> float:
    """Traces and compiles the training and evaluation functions; returns the seconds spent.

    One real step compiles the training loop (and, for a `profiled` run, the one-step
    function the profiled steps run, so no trace lands in the window); its changes are
    undone, so the run that follows is exactly the run without this warm-up. Tracing is
    Python's work, optimizing the traced graph and running it TensorFlow's C++: the loop is
    traced here, then optimized and stepped in a thread while the evaluation is traced and
    compiled here, so that Python and C++ work side by side (0.42 s against 0.46, medians of
    ten). Both threads work in `device_scope`, the run's (a device scope belongs to the
    thread that entered it).
    """
    start = time.perf_counter()
    validation = datasets.validation
    one_image = type(validation)(validation.images[:1], validation.targets[:1])

    with trainer.state_restored(), device_scope(), ThreadPoolExecutor(1) as thread:
        iterator = iter(datasets.train())
        one_step = tf.constant(1)
        trainer.train.get_concrete_function(iterator, one_step)
        stepped = thread.submit(_in_scope, device_scope, trainer.train, iterator, one_step)
        trainer.evaluate(one_image)
        stepped.result()
        if profiled:
            trainer.train_one_step(iterator)
    return time.perf_counter() - start
