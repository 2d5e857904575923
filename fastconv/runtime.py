"""The process around the graph: seeds and a description of the device and versions."""

from __future__ import annotations

import os
import platform

import keras
import tensorflow as tf


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow, so a run is repeatable from its seed."""
    keras.utils.set_random_seed(seed)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device() -> str:
    """One line naming the device the run computes on, e.g. 'CPU: AMD EPYC 9R14 (2 threads)'."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)} (x{len(gpus)})"
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    return f"CPU: {cpu_name()} ({threads} threads)"


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
