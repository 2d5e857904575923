"""The machine as a run finds it: its CPU (name, flags, cores), its free memory, its GPUs
(their details, the device `--device` names, the precision `auto` picks), the machines of a
strategy. `fastconv.runtime` decides from these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
from collections.abc import Callable

import tensorflow as tf

from fastconv import workers
from fastconv.config import ConfigError


def cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo's "flags"); empty where there are none."""
    return frozenset(_cpuinfo_field("flags").split())


def cpu_family_model() -> tuple[int, int] | None:
    """/proc/cpuinfo's "cpu family" and "model"; None where there are none (not Linux, not
    x86). Family 25 is AMD's Zen 3 and Zen 4, 26 Zen 5; Intel's cores are family 6."""
    try:
        return int(_cpuinfo_field("cpu family")), int(_cpuinfo_field("model"))
    except ValueError:
        return None


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


def cpu_cores() -> int:
    """Cores this process may run on (its affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def describe_device(device: DeviceDescription, gpu_count: int) -> str:
    """One line naming the device the run computes on, e.g. 'CPU: AMD EPYC 9R14 (2 cores)'."""
    if device.kind == "GPU":
        return f"GPU: {device.name} (x{gpu_count}, compute capability {device.compute_capability})"
    return f"CPU: {device.name} ({cpu_cores()} cores)"


# The /proc/cpuinfo flags of a CPU's bfloat16 units.
BFLOAT16_UNITS = ("amx_bf16", "avx512_bf16")


@dataclasses.dataclass(frozen=True)
class DeviceDescription:
    """What the precision choice needs to know of a device."""

    kind: str  # "CPU" or "GPU"
    name: str = ""
    compute_capability: tuple[int, int] | None = None  # GPUs
    cpu_flags: frozenset[str] = frozenset()  # CPUs: /proc/cpuinfo flags

    @property
    def bfloat16_units(self) -> list[str]:
        """The flags of the CPU's bfloat16 units (AVX512_BF16, AMX); none on a GPU."""
        return [flag for flag in BFLOAT16_UNITS if flag in self.cpu_flags]


def device_description(device: str, gpus: list) -> DeviceDescription:
    """What `device` ("/CPU:0", "/GPU:1", as `resolve_device` gives) is, given the GPUs that
    `prepare_gpus` listed."""
    if device.startswith("/GPU"):
        gpu = gpus[int(device.rsplit(":", 1)[1])]
        details = tf.config.experimental.get_device_details(gpu)
        return DeviceDescription(
            "GPU", details.get("device_name", gpu.name), details.get("compute_capability")
        )
    return DeviceDescription("CPU", cpu_name(), cpu_flags=cpu_flags())


def meminfo_bytes(name: str) -> int | None:
    """A /proc/meminfo figure in bytes; None where there is none (not Linux)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


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
    if device.bfloat16_units:
        return "mixed_bfloat16", f"CPU has bfloat16 units ({', '.join(device.bfloat16_units)})"
    return "float32", f"CPU without bfloat16 units (no {' or '.join(BFLOAT16_UNITS)})"


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


def make_strategy(
    name: str, on_gpu: bool, meet: Callable[[], None] | None = None
) -> tf.distribute.Strategy | None:
    """The tf.distribute strategy of `--strategy`; None for "none" (one device, no wrapper).

    "mirrored" replicates over the machine's GPUs when the run is on a GPU, else over its
    (logical) CPUs; "multi-worker" over the workers that TF_CONFIG lists, as TensorFlow
    documents: {"cluster": {"worker": ["host1:port", ...]}, "task": {"type": "worker",
    "index": i}}. `meet` runs right before TensorFlow's server starts (`fastconv.workers`):
    once it starts, it waits for the others where nothing can interrupt it.
    """
    if name == "none":
        return None
    if name == "mirrored":
        workers.tf_config("mirrored")  # MirroredStrategy reads it too: refused here, in one line
        kind = "GPU" if on_gpu else "CPU"
        return tf.distribute.MirroredStrategy(
            [d.name for d in tf.config.list_logical_devices(kind)]
        )
    workers.cluster()  # TF_CONFIG checked, so that TensorFlow's own errors never reach the user
    if meet:
        meet()
    return tf.distribute.MultiWorkerMirroredStrategy()
