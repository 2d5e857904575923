"""The process around the graph, resolved once: `place(config)` turns the configuration and
the machine into a frozen `Placement` (device, strategy, shards, threads, precision, conv
engine) that the modules below read and never re-derive. What the machine is (its CPU,
memory, GPUs, workers) lives in `fastconv.machine`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

from fastconv import native, rundir
from fastconv.config import PRECISIONS, ConfigError, TrainConfig
from fastconv.data import IMAGE_SIZE, NUM_CLASSES
from fastconv.machine import (
    choose_precision,
    cpu_cores,
    describe_device,
    device_description,
    make_strategy,
    meminfo_bytes,
    prepare_gpus,
    resolve_device,
)
from fastconv.model import CONV_FORMS, KERNEL_SIZE, POOLED_SIZE


def versions() -> dict[str, str]:
    from fastconv import __version__

    return {
        "fastconv": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
    }


def auto_shards(batch_size: int, on_gpu: bool) -> int:
    """Shards per step when the user names none: 2 on a multi-core CPU when the batch splits.

    One batch's step is a chain of small ops that leaves a second core idle; two independent
    shards, one thread each, keep both working (more were no faster, bench/RESULTS.md). A
    GPU runs one batch as one.
    """
    if on_gpu or cpu_cores() < 2 or batch_size % 2:
        return 1
    return 2


def thread_counts(shards: int, on_gpu: bool, conv_form: str) -> tuple[int, int] | None:
    """(intra-op, inter-op) threads for a CPU run, or None to keep TensorFlow's defaults.

    With shards, each op gets cores // shards threads and up to `shards` ops run at once
    (never more than the cores), so the shards proceed side by side; under XLA each shard's
    compiled cluster is one such op. XLA's CPU runtime runs the window patches form's
    parallel parts on the intra-op pool, which the shards' clusters share: with one thread
    there the shards took turns on it (bench/RESULTS.md), so that form gets every core.
    """
    if shards == 1 or on_gpu:
        return None
    cores = cpu_cores()
    intra = cores if conv_form == "window_patches" else max(1, cores // shards)
    return intra, min(shards, cores)


def set_threads(counts: tuple[int, int] | None) -> bool:
    """Applies (intra-op, inter-op) thread counts; False if TensorFlow had already started.

    TensorFlow fixes its thread pools when it runs its first op, so this must come first.
    """
    if counts is None:
        return True
    intra, inter = counts
    threading = tf.config.threading
    if (
        threading.get_intra_op_parallelism_threads(),
        threading.get_inter_op_parallelism_threads(),
    ) == (intra, inter):
        return True
    try:
        threading.set_intra_op_parallelism_threads(intra)
        threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # "cannot be modified after initialization"
        return False
    return True


def describe_threads() -> str:
    threading = tf.config.threading
    intra = threading.get_intra_op_parallelism_threads() or "auto"
    inter = threading.get_inter_op_parallelism_threads() or "auto"
    return f"threads: {intra} per op, {inter} ops at once"


def fastest_conv_form(xla: bool, on_gpu: bool) -> str:
    """The entry of `CONV_FORMS` that the engine runs fastest.

    On a CPU, fastconv's own kernel (`fastconv.native`): the op in graph mode, the custom
    calls under XLA; where it cannot be used (`native.unavailable`), the batch as the
    channels of a depthwise conv in graph mode, and under XLA the window patches matmul (XLA
    compiles its own convolution badly). A GPU runs the book's `tf.nn` ops as cuDNN kernels,
    and under XLA the window patches (the kernel is CPU code). bench/RESULTS.md has the
    measurements.
    """
    fused = not on_gpu and not native.unavailable(xla)
    if xla:
        return "fused_xla" if fused else "window_patches"
    if on_gpu:
        return "nn"
    return "fused" if fused else "batch_channels"


def usable_conv_form(conv_form: str, xla: bool = False) -> bool:
    """Whether `conv_form` names a form that can run here, in the engine `xla` says (a form
    of fastconv's kernel needs it built, and runs in one engine)."""
    form = CONV_FORMS.get(conv_form)
    if form is None or form.xla not in (None, xla):
        return False
    return form.stock is None or not native.unavailable(xla)


def stock_conv_form(conv_form: str) -> str:
    """`conv_form`, or where it uses an op of fastconv's own, the form of TensorFlow's ops
    that computes the same function in the same layout."""
    return CONV_FORMS[conv_form].stock or conv_form


def require_memory(config: TrainConfig) -> None:
    """Refuses, before any work, a step that cannot fit this machine's free memory."""
    needed = training_bytes(config.n_kernels, config.units, config.batch_size)
    available = meminfo_bytes("MemAvailable")
    if available is not None and needed > available:
        raise ConfigError(
            f"--kernels {config.n_kernels} --units {config.units} --batch-size "
            f"{config.batch_size}: a training step needs at least {needed / 2**30:.1f} GiB of "
            f"memory; this machine has {available / 2**30:.1f} GiB available"
        )


def training_bytes(n_kernels: int, units: int, batch_size: int) -> int:
    """A lower bound of the memory one float32 training step takes, in bytes.

    The variables four times over (weights, gradients, the shards' sum, the optimizer's
    read), and per image the conv layer's activations, which dominate: its output and its
    gradient (28*28*K each), the pooled features and theirs, the hidden layer and its.
    """
    variables = (
        KERNEL_SIZE * KERNEL_SIZE * n_kernels
        + n_kernels
        + (POOLED_SIZE * POOLED_SIZE * n_kernels + 1) * units
        + (units + 1) * NUM_CLASSES
    )
    per_image = 2 * (IMAGE_SIZE * IMAGE_SIZE * n_kernels + POOLED_SIZE * POOLED_SIZE * n_kernels)
    return 4 * (4 * variables + batch_size * (per_image + 2 * units))


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where and how a run computes: decided once by `place`, then only read.

    Attributes:
      device: the TensorFlow device of the variables and the steps, "/CPU:0" or "/GPU:N".
      on_gpu: whether that device is a GPU.
      description: one line naming it, e.g. "CPU: AMD EPYC 9R14 (2 cores)".
      strategy: the tf.distribute strategy, or None on one device.
      shards: shards per batch (1 under a strategy: the replicas take their place).
      threads: (intra-op, inter-op) thread counts, or None for TensorFlow's defaults.
      precision: the Keras policy the run computes in ("auto" resolved).
      conv_form: the `fastconv.model.CONV_FORMS` entry the forpass uses.
      notes: what resolving decided that the user should hear.
    """

    device: str
    on_gpu: bool
    description: str
    strategy: tf.distribute.Strategy | None
    shards: int
    threads: tuple[int, int] | None
    precision: str
    conv_form: str
    notes: tuple[str, ...] = ()

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.strategy else 1

    @property
    def loss_scaling(self) -> bool:
        """float16's range is too narrow for small gradients unscaled."""
        return self.precision == "mixed_float16"

    def device_scope(self):
        """Where the run's ops go: the device, or under a strategy wherever it places them."""
        return contextlib.nullcontext() if self.strategy else tf.device(self.device)

    def variables_scope(self):
        """Where variables are made: a strategy's scope mirrors them across the replicas."""
        return self.strategy.scope() if self.strategy else contextlib.nullcontext()

    def record(self) -> dict:
        """The settings of `RECORDED`, and the replicas, as JSON for the run folder."""
        record = {name: getattr(self, name) for name in RECORDED}
        threads = list(self.threads) if self.threads else None
        return {**record, "threads": threads, "replicas": self.replicas}


# The settings resolved from the machine, kept in the run folder so a resumed run computes
# as the run did, wherever it resumes (`Placement.record`, `place(config, recorded)`).
RECORDED = ("shards", "threads", "precision", "conv_form")


def place(
    config: TrainConfig, recorded: dict | None = None, meet: Callable[[], None] | None = None
) -> Placement:
    """Resolves what `config` leaves to the machine: the device, the strategy, shards,
    threads, precision and conv form. For a resumed run, `recorded` (valid settings of
    `RECORDED` and the replicas, as the run resolved them when it started) replaces the
    machine's choice, and a note says what differs. Listing and configuring the GPUs runs
    no op, so the threads can still be set after (`set_up`). `meet`: see `make_strategy`."""
    gpus = prepare_gpus()
    device = resolve_device(config.device, len(gpus))
    description = device_description(device, gpus)
    on_gpu = description.kind == "GPU"
    if not on_gpu:
        require_memory(config)
    strategy = make_strategy(config.strategy, on_gpu, meet)
    if strategy and config.batch_size % strategy.num_replicas_in_sync:
        uneven = f"does not split evenly across {strategy.num_replicas_in_sync} replicas"
        raise ConfigError.invalid("batch_size", config.batch_size, uneven)
    shards = 1 if strategy else config.shards or auto_shards(config.batch_size, on_gpu)
    conv_form = fastest_conv_form(config.xla, on_gpu)
    machine = {
        "shards": shards,
        "threads": thread_counts(shards, on_gpu, conv_form),
        "precision": config.precision,
        "conv_form": conv_form,
    }
    recorded, notes = dict(recorded or {}), []
    if config.precision == "auto":
        machine["precision"], reason = choose_precision(description)
        if "precision" not in recorded:
            notes.append(f"precision: auto picked {machine['precision']}: {reason}")
    replicas = strategy.num_replicas_in_sync if strategy else 1
    started_with = recorded.pop("replicas", replicas)
    if started_with != replicas:
        notes.append(
            f"warning: the run started on {started_with} replica(s), this machine gives "
            f"{replicas}: the batches split differently, so the sums may round differently"
        )
    settings = {**machine, **recorded}
    differ = [name for name in RECORDED if settings[name] != machine[name]]
    if differ:
        notes.append(
            "resumed as the run started: "
            + ", ".join(f"{name} {settings[name]}" for name in differ)
            + " (this machine alone would pick "
            + ", ".join(f"{name} {machine[name]}" for name in differ)
            + ")"
        )
    why_not_fused = None if on_gpu else native.unavailable(config.xla)
    if why_not_fused:
        kind = "custom calls are" if config.xla else "op is"
        notes.append(
            f"note: fastconv's fused conv {kind} not available ({why_not_fused}); the first "
            "layer runs as TensorFlow's ops"
        )
    if config.xla and settings["precision"] == "mixed_bfloat16" and description.bfloat16_units:
        notes.append(
            "note: XLA on a CPU computes bfloat16 matmuls without the CPU's bfloat16 units: "
            "graph mode (leave out --xla) trains faster in mixed_bfloat16"
        )
    if settings["precision"] == "mixed_float16" and not on_gpu:
        notes.append(
            "warning: mixed_float16 on a CPU has no float16 units to use and ran several "
            "times slower than float32; mixed_bfloat16 or float32 train faster"
        )
    return Placement(
        device=device,
        on_gpu=on_gpu,
        description=describe_device(description, len(gpus)),
        strategy=strategy,
        notes=tuple(notes),
        **settings,
    )


def set_up(config: TrainConfig, recorded: dict | None, meet: Callable | None) -> Placement:
    """`place`, then the process set up as it says: threads, TensorFlow's op determinism
    (an error for an op that cannot be), and Python's, NumPy's and TensorFlow's seeds."""
    placement = place(config, recorded, meet)
    if not set_threads(placement.threads):  # only possible before TensorFlow's first op
        note = f"note: TensorFlow already started; keeping its threads, not {placement.threads}"
        placement = dataclasses.replace(placement, notes=(*placement.notes, note))
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    return placement


def _counts(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_count(n) for n in value)


def _count(value) -> bool:
    return type(value) is int and value >= 1


# What each recorded setting may be (`fastconv.runtime.Placement.record`), given the
# resumed run's configuration: a form with fastconv's own op cannot run under --xla.
_VALID = {
    "shards": lambda value, config: _count(value),
    "threads": lambda value, config: value is None or _counts(value),
    "precision": lambda value, config: value in PRECISIONS and value != "auto",
    "conv_form": lambda value, config: usable_conv_form(value, config.xla),
    "replicas": lambda value, config: _count(value),
}


def recorded_settings(folder: Path, config: TrainConfig) -> tuple[dict | None, list[str]]:
    """The settings the run resolved from its machine when it started, as
    `fastconv.runtime.place` takes them, and a note for any that this version, this machine
    or `config` cannot honour."""
    record = rundir.recorded_placement(folder)
    if record is None:
        note = f"note: {folder} records no settings resolved from its machine; resolving them here"
        return None, [note]
    valid = {
        name: record[name]
        for name, ok in _VALID.items()
        if name in record and ok(record[name], config)
    }
    if "conv_form" not in valid:  # the threads were chosen for the form's engine
        valid.pop("threads", None)
    if valid.get("threads"):
        valid["threads"] = tuple(valid["threads"])
    lost = [f"{name} {record.get(name)!r}" for name in _VALID if name not in valid]
    notes = []
    if lost:
        notes.append(
            f"warning: cannot resume with the run's {', '.join(lost)} (in "
            f"{folder / rundir.ENVIRONMENT}); this machine's choice may compute differently"
        )
    return valid, notes
