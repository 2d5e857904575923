"""A run, top to bottom: `train_and_evaluate(config, split)`.

It reads as the run happens: the run folder is claimed, the starting point found, the
machine placed, the data and the trainer made, the steps compiled, the epochs trained by
`fastconv.loop.RunLoop`, the test set scored, the results written and the model exported.
Each piece it calls lives in a module of its own (`rundir`, `runtime`, `pipeline`,
`trainer`, `loop`, `results`).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from fastconv import checkpoints, data, export, faults, rundir, runtime, workers
from fastconv.checkpoints import Checkpoints, kept, starting_point
from fastconv.config import ConfigError, TrainConfig
from fastconv.interruption import StopRequests
from fastconv.loop import LoopState, RunLoop
from fastconv.pipeline import RESIDENT_BYTES, Datasets, EvaluationSet, make_datasets
from fastconv.results import RunResult, write_results
from fastconv.summaries import Summaries
from fastconv.trainer import Trainer, make_trainer


def train_and_evaluate(
    config: TrainConfig,
    dataset: data.FashionMNIST | data.BookSplit | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
    live_progress: bool = False,
) -> RunResult:
    """Trains the book's network as `config` says and scores it on validation and test sets.

    `dataset` is the data set (read from `config.data_dir` when None) or its split as
    `config` makes it (`fastconv.data.book_split`, which the command makes before it imports
    TensorFlow). With `config.logdir`, the run keeps its configuration,
    checkpoints (every epoch, on SIGUSR1, and when stopped by SIGINT or SIGTERM),
    TensorBoard logs, figures and metrics there; `resume` continues the run from the
    folder's newest intact checkpoint, exactly where it stopped. `log` receives the run's
    lines; `live_progress` adds a live bar per epoch.

    The run holds its folder locked for its whole life. What it cannot do (a folder in use
    or unwritable, nothing intact to resume, fewer epochs than done, an export folder it
    must not overwrite) it refuses before writing anything, with a ConfigError. SIGINT and
    SIGTERM, and a line `log` cannot write, are answered in every phase with
    `fastconv.interruption.Interrupted`.
    """
    multi_worker = config.strategy == "multi-worker"
    own_folder = workers.own_folder(config.logdir, config.strategy) if config.logdir else None
    # Only the chief exports; the others keep --export all the same, so that every worker
    # decides alike whether a finished run has something left to do.
    exports = bool(config.export_dir) and not (multi_worker and workers.cluster()[1] != 0)
    if not isinstance(dataset, data.BookSplit):
        dataset = data.book_split(dataset or data.load(config.data_dir), config)
    split = dataset
    steps_per_epoch = split.steps_per_epoch
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(rundir.claimed(own_folder)) if own_folder else None
        nothing = kept(None) if folder else "no --logdir, so nothing was saved"
        requests = stack.enter_context(StopRequests(nothing))
        log = requests.guarded(log)  # output that cannot be written stops the run, saved
        faults.reached("start-up")
        start = starting_point(config, folder, steps_per_epoch, resume)
        if exports:
            export.check_target(config.export_dir, _run_id(folder))
        if start:
            requests.kept = kept(start.path, config.logdir)
        recorded, notes = runtime.recorded_settings(folder, config) if start else (None, [])
        meet = None
        if multi_worker:  # the workers meet after every check of this machine's
            step = start.step if start else 0
            meet = functools.partial(workers.meet, config, step, requests, log)
        placement = runtime.set_up(config, recorded, meet)
        requests.reclaim()  # from TensorFlow's distributed runtime, which takes SIGTERM
        for line in (*(start.notes if start else ()), f"device: {placement.description}"):
            log(line)
        for note in (*notes, *placement.notes):
            log(note)
        if placement.strategy:
            log(
                f"strategy: {config.strategy}, {placement.replicas} replicas of "
                f"{config.batch_size // placement.replicas}"
            )
        stack.enter_context(placement.device_scope())
        stack.enter_context(_failures_in_one_line(folder, requests, multi_worker))

        # The training images stay on the device when they fit, and only indices cross to
        # it: on a GPU that spares the host-to-device copies; on a CPU it keeps tf.data's
        # threads off the cores the steps use.
        resident = not placement.strategy and split.train_images.nbytes <= RESIDENT_BYTES
        datasets = make_datasets(split, config, placement.strategy, resident)
        log(
            f"data: {split.source} | train {len(split.train_images)}, validation "
            f"{len(split.validation_images)}, test {len(split.test_images)} "
            f"| {steps_per_epoch} steps of {config.batch_size} per epoch"
            + (" | training images resident on the device" if resident else "")
        )
        if start:  # every refusal is behind us: the first change to the folder
            checkpoints.discard_uncommitted(folder / rundir.CHECKPOINTS, start)
        trainer = make_trainer(
            config, placement, datasets.make_batch, steps_per_epoch=steps_per_epoch
        )
        saved = Checkpoints(folder / rundir.CHECKPOINTS, trainer) if folder else None
        state, summaries = LoopState(), None
        if start:
            state = LoopState.from_json(saved.restore(start))
            log(f"resumed from {start.path} (step {trainer.steps_done})")
        if folder:
            rundir.require_space(folder, saved.bytes_needed())
            # The event files come after the last refusal; the compiled loop writes the step
            # loss to its writer, which the first trace (compiling, below) builds in.
            summaries = stack.enter_context(Summaries(folder))
            trainer.step_summaries = summaries.train
            rundir.write_json(folder / rundir.CONFIG, config.to_dict())
            if recorded is None:  # a resume keeps the record of how its run started
                environment = {"device": placement.description, "precision": placement.precision}
                environment["placement"] = placement.record()
                rundir.write_json(
                    folder / rundir.ENVIRONMENT, {**runtime.versions(), **environment}
                )

        log(
            f"compiling ({'XLA' if config.xla else 'graph'}, {placement.precision}, "
            f"{placement.shards} shard(s) per step, {runtime.describe_threads()})..."
        )
        requests.check("during start-up")
        faults.reached("compile")
        compile_seconds = compile_trainer(trainer, datasets, config.profile_steps is not None)
        log(f"compiled in {compile_seconds:.2f} s")
        requests.check("while compiling")
        if summaries and not start:
            summaries.hparams(config.to_dict(), folder.name)
            summaries.graph(trainer, config.batch_size // trainer.replicas)  # the step as traced

        loop = RunLoop(
            config=config,
            trainer=trainer,
            datasets=datasets,
            state=state,
            checkpoints=saved,
            summaries=summaries,
            requests=requests,
            log=log,
            live=live_progress,
            folder=folder,
            agree=workers.agreement(placement.strategy) if multi_worker else None,
        )
        loop.train()

        faults.reached("final-evaluation")
        test = trainer.evaluate(datasets.test)
        result = RunResult(
            config=config,
            history=state.history,
            val_loss=state.history[-1].val_loss,
            val_accuracy=state.history[-1].val_accuracy,
            test_loss=float(test.loss),
            test_accuracy=float(test.accuracy),
            compile_seconds=compile_seconds,
            train_seconds=state.train_seconds,
            trainer=trainer,
            checkpoint=loop.checkpoint,
            train_seconds_here=loop.seconds_here,
            test_confusion=test.confusion.numpy().astype(int),
            folder=folder,
        )
        if folder:
            write_results(result, folder, datasets.images_per_epoch, summaries)
        results = f"; its results are in {folder}" if folder else ""
        requests.check(f"during the final evaluation{results}")

        if exports:
            faults.reached("export")

            def answer_stop() -> None:  # before the export takes its folder's place
                requests.check("during the export; the model was not exported")

            export.export(
                trainer, datasets.standardize, config.export_dir, _run_id(folder), answer_stop
            )
            log(f"exported the model to {config.export_dir}")
        return result


def compile_trainer(trainer: Trainer, datasets: Datasets, profiled: bool) -> float:
    """Traces and compiles the training and evaluation functions; returns the seconds spent.

    One real step compiles the training loop (and, for a `profiled` run, the one-step
    function the profiled steps run, so no trace lands in the profiler's window); its
    changes are undone, so the run that follows is exactly the run without this warm-up.
    """
    start = time.perf_counter()
    validation = datasets.validation
    one_batch = EvaluationSet(validation.images[:1], validation.targets[:1])
    with trainer.state_restored():
        iterator = iter(datasets.train())
        trainer.train(iterator, tf.constant(1))
        trainer.evaluate(one_batch)
        if profiled:
            trainer.train_one_step(iterator)
    return time.perf_counter() - start


def _run_id(folder: Path | None) -> str | None:
    """What names the run in its exports: its folder, resolved."""
    return str(folder.resolve()) if folder else None


# What a collective raises when another worker is gone (its process died or stopped).
PEER_LOST = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)


@contextlib.contextmanager
def _failures_in_one_line(folder: Path | None, requests: StopRequests, multi_worker: bool):
    """A failure to write (a full, read-only or vanished folder), to allocate memory, or to
    reach the other workers as one line that says what is kept; anything else as it is."""
    try:
        yield
    except (OSError, MemoryError, tf.errors.OpError) as error:
        if multi_worker and isinstance(error, PEER_LOST):
            raise workers.lost(error, requests.kept) from None
        why = rundir.write_failure(error)
        if why and folder:
            where = getattr(error, "filename", None) or folder
            raise rundir.RunFolderError(f"cannot write {where} ({why}); {requests.kept}") from None
        if isinstance(error, MemoryError | tf.errors.ResourceExhaustedError):
            raise ConfigError(
                f"out of memory ({str(error).splitlines()[0][:200]}); lower --batch-size, "
                f"--eval-batch-size, --kernels or --units; {requests.kept}"
            ) from None
        raise
