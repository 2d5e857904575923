"""The process around the graph, resolved once: `place(config)` turns the configuration and
the machine into a frozen `Placement` (device, strategy, shards, threads, precision, conv
form) that the modules below read and never re-derive. The helpers it uses (devices and
strategies, precision, threads, seeds, versions) live here too; what the machine is (its
CPU, memory and GPUs' details) lives in `fastconv.machine`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform

import keras
import tensorflow as tf

from fastconv import native
from fastconv.config import ConfigError, TrainConfig
from fastconv.machine import (
    DeviceDescription,
    cpu_cores,
    describe_device,
    device_description,
    require_memory,
)
from fastconv.model import fastest_conv_form


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow, so a run is repeatable from its seed."""
    keras.utils.set_random_seed(seed)


def enable_determinism() -> None:
    """Makes TensorFlow's ops deterministic (an error for an op that cannot be)."""
    tf.config.experimental.enable_op_determinism()


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

    One batch's step is a chain of small ops that one core cannot keep another busy with;
    two independent shards, one thread each, keep both cores working. Larger batches keep
    two shards: more, smaller shards were no faster at 256 and 512 (bench/RESULTS.md). A GPU
    runs one batch as one.
    """
    if on_gpu or cpu_cores() < 2 or batch_size % 2:
        return 1
    return 2


def thread_counts(shards: int, on_gpu: bool, *, xla: bool) -> tuple[int, int] | None:
    """(intra-op, inter-op) threads for a CPU run, or None to keep TensorFlow's defaults.

    With shards, each op gets cores // shards threads and up to `shards` ops run at once
    (never more than the cores), so the shards proceed side by side. Under XLA each shard's
    compiled cluster is one such op, but XLA's CPU runtime runs a cluster whose parts do not
    form one chain on the intra-op pool, which the shards' clusters share: with one thread
    there the two shards took turns on it (with `window_patches`, whose cluster is such, a
    step took 1.5-2x as long; bench/RESULTS.md), so XLA gets every core.
    """
    if shards == 1 or on_gpu:
        return None
    cores = cpu_cores()
    intra = cores if xla else max(1, cores // shards)
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


def choose_precision(device: DeviceDescription) -> tuple[str, str]:
    """The precision `auto` picks for `device`, and why.

    float16 on GPUs with tensor cores (compute capability 7.0 and up), bfloat16 on CPUs with
    bfloat16 units (AVX512_BF16 or AMX), where it trained faster than float32 to the same
    accuracy (bench/RESULTS.md); float32, the book's numerics, otherwise.
    """
    if device.kind == "GPU":
        if device.compute_capability and device.compute_capability >= (7, 0):
            major, minor = device.compute_capability
            return "mixed_float16", f"GPU of compute capability {major}.{minor} has tensor cores"
        return "float32", "GPU without float16 tensor cores (compute capability < 7.0)"
    bf16_units = sorted({"avx512_bf16", "amx_bf16"} & device.cpu_flags)
    if bf16_units:
        return "mixed_bfloat16", f"CPU has bfloat16 units ({', '.join(bf16_units)})"
    return "float32", "CPU without bfloat16 units (no avx512_bf16 or amx_bf16)"


class DeviceError(ConfigError):
    """The machine lacks the device or the set-up a flag asks for."""


def resolve_device(requested: str, gpu_count: int) -> str:
    """The TensorFlow device that `--device` names on a machine with `gpu_count` GPUs.

    "auto" is the first GPU, or the CPU without one; "gpu" is "gpu:0". A GPU that is not
    there is an error, never a silent fall-back to the CPU.
    """
    if requested == "auto":
        return "/GPU:0" if gpu_count else "/CPU:0"
    if requested == "cpu":
        return "/CPU:0"
    index = 0 if requested == "gpu" else int(requested.removeprefix("gpu:"))
    if gpu_count == 0:
        raise DeviceError(f"--device {requested}: this machine has no GPU that TensorFlow can use")
    if index >= gpu_count:
        raise DeviceError(
            f"--device {requested}: this machine has {gpu_count} GPU(s), gpu:0 to "
            f"gpu:{gpu_count - 1}"
        )
    return f"/GPU:{index}"


def prepare_gpus() -> list:
    """Turns on memory growth on every GPU (TensorFlow would otherwise take all their memory
    at start); returns them. Must run before TensorFlow uses a GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Once TensorFlow has initialized the GPU, growth stays as it was set then.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return gpus


def make_strategy(name: str, on_gpu: bool) -> tf.distribute.Strategy | None:
    """The tf.distribute strategy of `--strategy`; None for "none" (one device, no wrapper).

    "mirrored" replicates over the machine's GPUs when the run is on a GPU, else over its
    (logical) CPUs; "multi-worker" over the workers that TF_CONFIG lists, as TensorFlow
    documents: {"cluster": {"worker": ["host1:port", ...]}, "task": {"type": "worker",
    "index": i}}.
    """
    if name == "none":
        return None
    if name == "mirrored":
        kind = "GPU" if on_gpu else "CPU"
        return tf.distribute.MirroredStrategy(
            [d.name for d in tf.config.list_logical_devices(kind)]
        )
    cluster = os.environ.get("TF_CONFIG")
    if not cluster:
        raise DeviceError("--strategy multi-worker: TF_CONFIG is not set (see the README)")
    try:
        json.loads(cluster)["cluster"]["worker"]
    except (ValueError, KeyError, TypeError):
        raise DeviceError(f"--strategy multi-worker: TF_CONFIG is not valid: {cluster}") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def worker_index() -> int:
    """This process's index among the workers of a multi-worker run (0 is the chief)."""
    try:
        return int(json.loads(os.environ.get("TF_CONFIG", "{}"))["task"]["index"])
    except (ValueError, KeyError, TypeError):
        return 0


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


def place(config: TrainConfig, recorded: dict | None = None) -> Placement:
    """Resolves what `config` leaves to the machine: the device, the strategy, shards,
    threads, precision and conv form. For a resumed run, `recorded` (valid settings of
    `RECORDED` and the replicas, as the run resolved them when it started) replaces the
    machine's choice, and a note says what differs. Listing and configuring the GPUs runs
    no op, so the threads can still be set after (`start`)."""
    gpus = prepare_gpus()
    device = resolve_device(config.device, len(gpus))
    on_gpu = device.startswith("/GPU")
    description = device_description(device, gpus)
    if not on_gpu:
        require_memory(config)
    strategy = make_strategy(config.strategy, on_gpu)
    if strategy and config.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError.invalid(
            "batch_size",
            config.batch_size,
            f"does not split evenly across {strategy.num_replicas_in_sync} replicas",
        )
    shards = 1 if strategy else config.shards or auto_shards(config.batch_size, on_gpu)
    machine = {
        "shards": shards,
        "threads": thread_counts(shards, on_gpu, xla=config.xla),
        "precision": config.precision,
        "conv_form": fastest_conv_form(config.xla, on_gpu),
    }
    recorded = dict(recorded or {})
    notes = []
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
    why_not_fused = native.unavailable() if machine["conv_form"] == "batch_channels" else None
    if why_not_fused:
        notes.append(
            f"note: fastconv's fused conv op is not available ({why_not_fused}); the first "
            "layer runs as TensorFlow's ops"
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


def start(config: TrainConfig, recorded: dict | None = None) -> Placement:
    """`place`, then the process set up as it says: threads, determinism, seeds."""
    placement = place(config, recorded)
    if not set_threads(placement.threads):  # only possible before TensorFlow's first op
        note = f"note: TensorFlow already started; keeping its threads, not {placement.threads}"
        placement = dataclasses.replace(placement, notes=(*placement.notes, note))
    if config.deterministic:
        enable_determinism()
    seed_everything(config.seed)
    return placement
