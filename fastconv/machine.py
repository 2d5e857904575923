"""The machine as a run finds it: its CPU (name, flags, cores), its free memory, its GPUs'
details; and whether a network's training step fits it. `fastconv.runtime` decides from
these.
"""

from __future__ import annotations

import dataclasses
import os
import platform

import tensorflow as tf

from fastconv.config import ConfigError, TrainConfig
from fastconv.model import training_bytes


def cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo's "flags"); empty where there are none."""
    return frozenset(_cpuinfo_field("flags").split())


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


@dataclasses.dataclass(frozen=True)
class DeviceDescription:
    """What the precision choice needs to know of a device."""

    kind: str  # "CPU" or "GPU"
    name: str = ""
    compute_capability: tuple[int, int] | None = None  # GPUs
    cpu_flags: frozenset[str] = frozenset()  # CPUs: /proc/cpuinfo flags


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


def require_memory(config: TrainConfig) -> None:
    """Refuses, before any work, a network whose training step cannot fit this machine's
    free memory (rather than meet the out-of-memory killer minutes later)."""
    needed = training_bytes(config.n_kernels, config.units, config.batch_size)
    available = _meminfo_bytes("MemAvailable")
    if available is not None and needed > available:
        raise ConfigError(
            f"--kernels {config.n_kernels} --units {config.units} --batch-size "
            f"{config.batch_size}: a training step needs at least {needed / 2**30:.1f} GiB of "
            f"memory; this machine has {available / 2**30:.1f} GiB available"
        )


def _meminfo_bytes(name: str) -> int | None:
    """A /proc/meminfo figure in bytes; None where there is none (not Linux)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
