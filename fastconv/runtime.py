"""The process around the graph: precision, threads, seeds, and what the device is."""

from __future__ import annotations

import dataclasses
import os
import platform

import keras
import tensorflow as tf


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


def describe_device() -> str:
    """One line naming the device the run computes on, e.g. 'CPU: AMD EPYC 9R14 (2 cores)'."""
    device = this_device()
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


def auto_shards(batch_size: int) -> int:
    """Shards per step when the user names none: 2 on a CPU when the batch splits evenly.

    On the 2-core machine this was measured on, two shards with one thread each trained
    ~20% faster than one batch on two threads (the step is a chain of small ops that one
    core cannot keep the other busy with). A GPU runs one batch as one.
    """
    if has_gpu() or cpu_cores() < 2 or batch_size % 2:
        return 1
    return 2


def thread_counts(shards: int, xla: bool) -> tuple[int, int] | None:
    """(intra-op, inter-op) threads for a CPU run, or None to keep TensorFlow's defaults.

    With shards in graph mode, each op gets cores // shards threads and `shards` ops run
    at once, so the shards proceed side by side. XLA's compiled steps parallelize inside
    their own kernels and want the intra-op threads, so they keep the defaults.
    """
    if shards == 1 or xla or has_gpu():
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


def this_device() -> DeviceDescription:
    """The description of the device this process trains on: its first GPU, else the CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return DeviceDescription(
            "GPU", details.get("device_name", gpus[0].name), details.get("compute_capability")
        )
    return DeviceDescription(
        "CPU", cpu_name(), cpu_flags=frozenset(_cpuinfo_field("flags").split())
    )
