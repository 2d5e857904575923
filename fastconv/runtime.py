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
