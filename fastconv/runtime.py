"""The process around the graph: devices and strategies, precision, threads, seeds, and
what the device is."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform

import keras
import tensorflow as tf

from fastconv.config import ConfigError


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow, so a run is repeatable from its seed."""
    keras.utils.set_random_seed(seed)


def enable_determinism() -> None:
    """Makes TensorFlow's ops deterministic (an error for an op that cannot be)."""
    tf.config.experimental.enable_op_determinism()


def cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def _cpuinfo_field(name: str) -> str:
    """The first value of `name` in /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def describe_device(device_name: str | None = None) -> str:
    """One line naming the device the run computes on, e.g. 'CPU: AMD EPYC 9R14 (2 cores)'."""
    device = this_device(device_name)
    if device.kind == "GPU":
        count = len(tf.config.list_physical_devices("GPU"))
        return f"GPU: {device.name} (x{count}, compute capability {device.compute_capability})"
    return f"CPU: {device.name} ({cpu_cores()} cores)"


def versions() -> dict[str, str]:
    from fastconv import __version__

    return {
        "fastconv": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
    }


def cpu_cores() -> int:
    """Cores this process may run on (its affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def has_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def _on_gpu(on_gpu: bool | None) -> bool:
    """Whether a run computes on a GPU: `on_gpu` when given, else whether the machine has one."""
    return has_gpu() if on_gpu is None else on_gpu


def auto_shards(batch_size: int, on_gpu: bool | None = None) -> int:
    """Shards per step when the user names none: 2 on a CPU when the batch splits evenly.

    On the 2-core machine this was measured on, two shards with one thread each trained
    ~20% faster than one batch on two threads (the step is a chain of small ops that one
    core cannot keep the other busy with). A GPU runs one batch as one. `on_gpu`: whether the
    run computes on a GPU (default: whether the machine has one).
    """
    if _on_gpu(on_gpu) or cpu_cores() < 2 or batch_size % 2:
        return 1
    return 2


def conv_form(xla: bool, on_gpu: bool | None = None) -> str:
    """Which of `fastconv.model.CONV_FORMS` computes the conv layer: the fastest for the engine.

    XLA compiles the patches matmul well and its own convolution badly; a GPU runs the
    book's `tf.nn` ops as cuDNN kernels; graph mode on a CPU is fastest with the batch as
    the channels of a depthwise conv (conv + pool 0.41 against 0.69 ms a shard on the 2-core
    host; the whole float32 step ~1.3x the tf.nn ops'). `on_gpu` as for `auto_shards`.
    """
    if xla:
        return "patches"
    return "nn" if _on_gpu(on_gpu) else "batch_channels"


def thread_counts(shards: int, on_gpu: bool | None = None) -> tuple[int, int] | None:
    """(intra-op, inter-op) threads for a CPU run, or None to keep TensorFlow's defaults.

    With shards, each op gets cores // shards threads and `shards` ops run at once, so the
    shards proceed side by side; under XLA each shard's compiled cluster is one such op (on
    the 2-core host 1.1x XLA's own threading of one cluster). `on_gpu` as for `auto_shards`.
    """
    if shards == 1 or _on_gpu(on_gpu):
        return None
    return max(1, cpu_cores() // shards), shards


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


@dataclasses.dataclass(frozen=True)
class DeviceDescription:
    """What the precision choice needs to know of a device."""

    kind: str  # "CPU" or "GPU"
    name: str = ""
    compute_capability: tuple[int, int] | None = None  # GPUs
    cpu_flags: frozenset[str] = frozenset()  # CPUs: /proc/cpuinfo flags


def choose_precision(device: DeviceDescription) -> tuple[str, str]:
    """The precision `auto` picks for `device`, and why.

    float16 on GPUs with tensor cores (compute capability 7.0 and up), bfloat16 on CPUs with
    bfloat16 units (AVX512_BF16 or AMX), where it was measured faster than float32 here
    (1.3x with 2 shards on the 2-core Zen 4); float32, the book's numerics, otherwise.
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


def this_device(device_name: str | None = None) -> DeviceDescription:
    """The description of `device_name` ("/CPU:0", "/GPU:1", as `resolve_device` gives), or
    when None of the device a run would pick: the first GPU, else the CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if device_name is None:
        device_name = "/GPU:0" if gpus else "/CPU:0"
    if "GPU" in device_name:
        gpu = gpus[int(device_name.rsplit(":", 1)[1])]
        details = tf.config.experimental.get_device_details(gpu)
        return DeviceDescription(
            "GPU", details.get("device_name", gpu.name), details.get("compute_capability")
        )
    return DeviceDescription(
        "CPU", cpu_name(), cpu_flags=frozenset(_cpuinfo_field("flags").split())
    )


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


def prepare_gpus() -> int:
    """Turns on memory growth on every GPU (TensorFlow would otherwise take all their memory
    at start); returns how many there are. Must run before TensorFlow uses a GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Once TensorFlow has initialized the GPU, growth stays as it was set then.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return len(gpus)


def make_strategy(name: str, device: str) -> tf.distribute.Strategy | None:
    """The tf.distribute strategy of `--strategy`; None for "none" (one device, no wrapper).

    "mirrored" replicates over the machine's GPUs when `device` is a GPU, else over its
    (logical) CPUs; "multi-worker" over the workers that TF_CONFIG lists, as TensorFlow
    documents: {"cluster": {"worker": ["host1:port", ...]}, "task": {"type": "worker",
    "index": i}}.
    """
    if name == "none":
        return None
    if name == "mirrored":
        kind = "GPU" if "GPU" in device else "CPU"
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
