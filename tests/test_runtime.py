"""The environment resolved once: shards, threads, conv form and precision, and `place`."""

import dataclasses

import pytest
import tensorflow as tf

from fastconv import native, runtime
from fastconv.config import ConfigError, TrainConfig
from fastconv.machine import DeviceDescription, DeviceError
from fastconv.native import custom_calls
from fastconv.runtime import fastest_conv_form, usable_conv_form


@pytest.fixture
def cores(monkeypatch):
    def set_cores(count: int):
        monkeypatch.setattr(runtime, "cpu_cores", lambda: count)

    return set_cores


def test_two_shards_on_a_multicore_cpu_when_the_batch_splits(cores):
    cores(2)
    assert runtime.auto_shards(128, on_gpu=False) == 2
    assert runtime.auto_shards(127, on_gpu=False) == 1
    assert runtime.auto_shards(128, on_gpu=True) == 1
    assert [runtime.auto_shards(b, on_gpu=False) for b in (32, 256, 512)] == [2, 2, 2]
    cores(1)
    assert runtime.auto_shards(128, on_gpu=False) == 1


@pytest.mark.needs_fused_op
def test_the_conv_form_suits_the_engine():
    assert native.unavailable() is None  # the suite's machine builds the fused op
    assert fastest_conv_form(xla=False, on_gpu=False) == "fused"
    assert fastest_conv_form(xla=True, on_gpu=False) == "fused_xla"  # custom calls
    assert fastest_conv_form(xla=False, on_gpu=True) == "nn"  # cuDNN runs the book's ops
    assert fastest_conv_form(xla=True, on_gpu=True) == "window_patches"  # stock XLA ops
    # Each form of the kernel runs in its own engine: a resumed run changes it with --xla.
    assert usable_conv_form("fused_xla", xla=True) and not usable_conv_form("fused_xla")
    assert usable_conv_form("fused") and not usable_conv_form("fused", xla=True)


def test_without_the_fused_op_a_cpu_run_uses_tensorflows_ops_and_says_why(monkeypatch):
    why_not = "no C++ compiler found (looked for c++)"
    monkeypatch.setattr(native, "unavailable", lambda xla=False: why_not)
    assert fastest_conv_form(xla=False, on_gpu=False) == "batch_channels"
    assert fastest_conv_form(xla=True, on_gpu=False) == "window_patches"
    assert not usable_conv_form("fused")  # a run recorded with it resumes without it
    assert not usable_conv_form("fused_xla", xla=True)
    placement = runtime.place(TrainConfig())
    assert placement.conv_form == "batch_channels"
    assert placement.notes == (
        "note: fastconv's fused conv op is not available (no C++ compiler found (looked for "
        "c++)); the first layer runs as TensorFlow's ops",
    )
    under_xla = placement.notes[0].replace("op is", "custom calls are")  # said under XLA too
    assert runtime.place(TrainConfig(xla=True)).notes == (under_xla,)


@pytest.fixture
def xla_flags(monkeypatch):
    """Sets TF_XLA_FLAGS for fastconv to read, after TensorFlow has read it: TensorFlow
    reads it once a process, when it first lists its devices, and must not take these."""
    tf.config.list_physical_devices()
    return lambda flags: monkeypatch.setenv("TF_XLA_FLAGS", flags)


@pytest.mark.parametrize(
    "flags, folder",
    [
        ("--tf_xla_persistent_cache_directory=/c", "/c"),
        (" --tf_xla_auto_jit=0  --tf_xla_persistent_cache_directory=/c", "/c"),
        ("--tf_xla_persistent_cache_directory='/a b'", "/a b"),  # quoted
        ('--tf_xla_persistent_cache_directory=""', None),  # empty: off
        ("--tf_xla_persistent_cache_directory=/c --tf_xla_persistent_cache_directory=", None),
        ("--tf_xla_persistent_cache_directory= --tf_xla_persistent_cache_directory=/d", "/d"),
        ("--tf_xla_persistent_cache_directory=/c --tf_xla_persistent_cache_device_types=GPU", None),
        (
            "--tf_xla_persistent_cache_directory=/c --tf_xla_persistent_cache_device_types=GPU,CPU",
            "/c",
        ),
        ("--tf_xla_auto_jit=0", None),
        ("", None),
    ],
)
def test_tensorflows_persistent_xla_cache_is_read_from_tf_xla_flags_as_xla_reads_it(
    xla_flags, flags, folder
):
    xla_flags(flags)
    assert custom_calls.persistent_cache() == folder


def test_tf_xla_flags_naming_a_file_is_read_from_the_file(xla_flags, tmp_path):
    flags = tmp_path / "flags"
    flags.write_text("--tf_xla_persistent_cache_directory=/from/file\n")
    xla_flags(str(flags))
    assert custom_calls.persistent_cache() == "/from/file"


@pytest.mark.needs_fused_op
def test_under_tensorflows_persistent_xla_cache_xla_runs_xlas_own_ops_and_says_why(xla_flags):
    # TensorFlow 2.21 crashed running a cached step that holds custom calls (custom_calls.py).
    xla_flags("--tf_xla_persistent_cache_directory=/c")
    assert fastest_conv_form(xla=True, on_gpu=False) == "window_patches"
    assert not usable_conv_form("fused_xla", xla=True)  # nor does a resumed run use them
    assert fastest_conv_form(xla=False, on_gpu=False) == "fused"  # graph mode: no XLA cache
    note = (
        "note: fastconv's fused conv custom calls are not available (TF_XLA_FLAGS turns on "
        "TensorFlow's persistent XLA cache (/c), under which TensorFlow 2.21 crashed running a "
        "cached step that holds custom calls; unset --tf_xla_persistent_cache_directory to "
        "train with them); the first layer runs as TensorFlow's ops"
    )
    assert runtime.place(TrainConfig(xla=True)).notes == (note,)
    assert runtime.place(TrainConfig()).notes == ()
    with pytest.raises(native.NativeUnavailable, match=r"persistent XLA cache \(/c\)"):
        custom_calls.xla_conv_relu_pool(
            tf.zeros([4, 28, 28, 1]), tf.zeros([3, 3, 1, 10]), tf.zeros([10])
        )


def test_shards_get_the_cores_between_them(cores):
    cores(2)
    assert runtime.thread_counts(shards=2, on_gpu=False, conv_form="fused") == (1, 2)
    # no more ops than cores
    assert runtime.thread_counts(shards=8, on_gpu=False, conv_form="fused") == (1, 2)
    cores(16)
    assert runtime.thread_counts(shards=2, on_gpu=False, conv_form="fused") == (8, 2)
    assert runtime.thread_counts(shards=1, on_gpu=False, conv_form="fused") is None
    assert runtime.thread_counts(shards=2, on_gpu=True, conv_form="fused") is None


def test_xla_in_bfloat16_on_a_cpu_with_its_units_is_told_graph_mode_trains_faster(
    machine, monkeypatch
):
    machine(core_count=2, gpus=0)
    note = (
        "note: XLA on a CPU computes bfloat16 matmuls without the CPU's bfloat16 units: "
        "graph mode (leave out --xla) trains faster in mixed_bfloat16"
    )
    assert note in runtime.place(TrainConfig(xla=True, precision="mixed_bfloat16")).notes
    assert note not in runtime.place(TrainConfig(xla=True)).notes
    assert note not in runtime.place(TrainConfig(precision="mixed_bfloat16")).notes
    # Where the CPU has no bfloat16 units, both engines emulate them (they measured the same).
    cpu = DeviceDescription("CPU", "Fake CPU", cpu_flags=frozenset({"avx2", "fma"}))
    monkeypatch.setattr(runtime, "device_description", lambda device, listed: cpu)
    assert note not in runtime.place(TrainConfig(xla=True, precision="mixed_bfloat16")).notes


@pytest.mark.needs_fused_op
def test_xla_shards_share_every_core_for_the_window_patches_compiled_parts(machine):
    # XLA's runtime hands that form's parallel parts to the intra-op pool the shards share;
    # the custom calls of fastconv's kernel take one core per shard, as the op does.
    machine(core_count=2, gpus=0)
    assert runtime.thread_counts(shards=2, on_gpu=False, conv_form="window_patches") == (2, 2)
    machine(core_count=16, gpus=0)
    assert runtime.thread_counts(shards=2, on_gpu=False, conv_form="window_patches") == (16, 2)
    assert runtime.thread_counts(shards=1, on_gpu=False, conv_form="window_patches") is None
    assert runtime.place(TrainConfig(xla=True, shards=2)).threads == (8, 2)  # fused_xla
    assert runtime.place(TrainConfig(shards=2)).threads == (8, 2)


@pytest.fixture
def machine(monkeypatch, cores):
    """A machine with the given cores and GPUs, as `place` sees it."""

    def set_machine(core_count: int, gpus: int, compute_capability=(8, 0)):
        cores(core_count)
        monkeypatch.setattr(runtime, "prepare_gpus", lambda: [f"gpu{i}" for i in range(gpus)])
        monkeypatch.setattr(
            runtime,
            "device_description",
            lambda device, listed: (
                DeviceDescription("GPU", "Fake", compute_capability)
                if device.startswith("/GPU")
                else DeviceDescription("CPU", "Fake CPU", cpu_flags=frozenset({"avx512_bf16"}))
            ),
        )

    return set_machine


@pytest.mark.needs_fused_op
def test_place_resolves_a_cpu_run_once(machine):
    machine(core_count=2, gpus=0)
    placement = runtime.place(TrainConfig(precision="auto"))
    assert (placement.device, placement.on_gpu, placement.strategy) == ("/CPU:0", False, None)
    assert (placement.shards, placement.threads, placement.replicas) == (2, (1, 2), 1)
    assert (placement.precision, placement.loss_scaling) == ("mixed_bfloat16", False)
    assert placement.conv_form == "fused"
    assert placement.notes == (
        "precision: auto picked mixed_bfloat16: CPU has bfloat16 units (avx512_bf16)",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        placement.shards = 1


@pytest.mark.needs_fused_op
def test_place_follows_the_gpu_and_device_cpu_overrides_it(machine):
    machine(core_count=16, gpus=2)
    on_gpu = runtime.place(TrainConfig(precision="auto", device="gpu:1"))
    assert (on_gpu.device, on_gpu.on_gpu, on_gpu.shards, on_gpu.threads) == (
        "/GPU:1",
        True,
        1,
        None,
    )
    assert (on_gpu.precision, on_gpu.loss_scaling, on_gpu.conv_form) == (
        "mixed_float16",
        True,
        "nn",
    )
    on_cpu = runtime.place(TrainConfig(device="cpu"))  # --device cpu on a machine with GPUs
    assert (on_cpu.on_gpu, on_cpu.shards, on_cpu.threads) == (False, 2, (8, 2))
    assert on_cpu.conv_form == "fused"


@pytest.mark.needs_fused_op
def test_place_warns_of_float16_on_a_cpu_and_refuses_a_missing_gpu(machine):
    machine(core_count=2, gpus=0)
    placement = runtime.place(TrainConfig(precision="mixed_float16"))
    assert placement.loss_scaling and placement.notes[0].startswith("warning: mixed_float16")
    with pytest.raises(DeviceError, match="--device gpu: this machine has no GPU"):
        runtime.place(TrainConfig(device="gpu"))
    with pytest.raises(ConfigError, match="shards=3 must divide batch_size=128"):
        TrainConfig(shards=3)
