"""Mixed precision: dtypes per policy, loss scaling, and what `auto` picks."""

import platform

import numpy as np
import pytest
import tensorflow as tf
from test_trainer import batch

from fastconv import machine
from fastconv.machine import DeviceDescription, choose_precision
from fastconv.model import CONV_FORMS, ConvNet, cross_entropy
from fastconv.runtime import fastest_conv_form
from fastconv.trainer import Trainer

COMPUTE_DTYPES = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}
WEIGHT_NAMES = ("conv_w", "conv_b", "w1", "b1", "w2", "b2")
CONV_OP_TYPES = {
    "nn": "Conv2D",
    "batch_channels": "DepthwiseConv2dNative",
    "window_patches": "MatMul",
    "fused": "FastconvConvReluPool",
    "fused_xla": "XlaCustomCallV2",
    "fused_stock": "DepthwiseConv2dNative",
}


@pytest.mark.parametrize("policy", COMPUTE_DTYPES)
@pytest.mark.parametrize("conv_form", CONV_FORMS)
def test_policy_dtypes(policy, conv_form):
    model = ConvNet(seed=0, dtype_policy=policy)
    images, targets = batch(count=8)
    assert all(w.dtype == tf.float32 for w in model.weights)
    # In the engine the form runs in (XLA for custom calls).
    forpass = tf.function(
        lambda x: model.forpass(x, conv_form), jit_compile=CONV_FORMS[conv_form].xla
    )
    graph = forpass.get_concrete_function(images).graph
    ops = graph.get_operations()
    convs_and_matmuls = [op for op in ops if op.type in {"MatMul", *CONV_OP_TYPES.values()}]
    assert {op.type for op in convs_and_matmuls} == {"MatMul", CONV_OP_TYPES[conv_form]}
    for op in convs_and_matmuls:
        # The fused op's forms compute the conv layer in float32 under every policy.
        in_float32 = CONV_FORMS[conv_form].in_float32 and op.type != "MatMul"
        assert op.inputs[0].dtype == (tf.float32 if in_float32 else COMPUTE_DTYPES[policy])
    logits = forpass(images)
    assert logits.dtype == tf.float32
    assert cross_entropy(targets, logits).dtype == tf.float32


def update_error(actual, expected) -> float:
    """The size of `actual - expected` relative to `expected`'s (Frobenius norms)."""
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_step_follows_the_float32_step(policy):
    """The mixed step's update (weights after minus before) is float32's, to its precision.

    Measured here: the updates differ from float32's by up to ~4% in bfloat16 (8 bits of
    mantissa) and ~0.9% in float16 (11 bits), per variable. A step that did not update (as
    a float16 step skipped by loss scaling), or one off by a factor, is off by 50-100%.
    """
    images, targets = batch(count=64)
    conv_form = fastest_conv_form(xla=False, on_gpu=False)  # a CPU run's
    exact, mixed = (
        Trainer(ConvNet(seed=1, dtype_policy=p), 0.1, conv_form=conv_form)
        for p in ("float32", policy)
    )
    before = [w.numpy() for w in exact.model.weights]
    for a, b in zip(exact.model.weights, mixed.model.weights):
        np.testing.assert_array_equal(b.numpy(), a.numpy())  # the same starting point
    exact_loss, _ = exact.train_step(images, targets)
    mixed_loss, _ = mixed.train_step(images, targets)
    loss_tolerance = {"mixed_bfloat16": 2e-2, "mixed_float16": 2e-3}[policy]
    assert float(mixed_loss) == pytest.approx(float(exact_loss), rel=loss_tolerance)
    tolerance = {"mixed_bfloat16": 8e-2, "mixed_float16": 2e-2}[policy]
    for name, old, a, b in zip(WEIGHT_NAMES, before, exact.model.weights, mixed.model.weights):
        assert b.dtype == tf.float32
        exact_update, mixed_update = a.numpy() - old, b.numpy() - old
        # Far above float32's rounding of the weights (~1e-8): an update there is to measure.
        assert np.abs(exact_update).max() > 1e-3, name
        assert update_error(mixed_update, exact_update) < tolerance, name


def test_loss_scaling_skips_a_step_with_infinite_gradients_and_lowers_the_scale():
    images, targets = batch(count=64)
    trainer = Trainer(ConvNet(seed=2, dtype_policy="mixed_float16"), 0.1, loss_scaling=True)
    assert isinstance(trainer.optimizer, tf.keras.optimizers.LossScaleOptimizer)
    trainer.train_step(images, targets)  # a normal step builds the scale variables
    scale = float(trainer.optimizer.dynamic_scale)
    before = [w.numpy() for w in trainer.model.weights]
    trainer.optimizer.dynamic_scale.assign(1e38)  # float16 gradients overflow to inf
    trainer.train_step(images, targets)
    for weight, old in zip(trainer.model.weights, before):
        np.testing.assert_array_equal(weight.numpy(), old)
    assert float(trainer.optimizer.dynamic_scale) == pytest.approx(0.5e38)
    trainer.optimizer.dynamic_scale.assign(scale)  # and with a sane scale, it learns again
    trainer.train_step(images, targets)
    assert not np.array_equal(trainer.model.w1.numpy(), before[2])


def test_a_loss_scaled_step_moves_the_weights_as_far_with_two_shards_as_with_one():
    """Under loss scaling each shard's gradient is of its scaled loss divided by the shards,
    so the shards sum to the batch's gradient: the float16 step with 2 shards follows the
    one with 1 within 0.5% (measured: 0.03%), where undivided shards move it 2x as far."""
    images, targets = batch(count=64)
    one, two = (
        Trainer(
            ConvNet(seed=4, dtype_policy="mixed_float16"), 0.1, shards=shards, loss_scaling=True
        )
        for shards in (1, 2)
    )
    before = [w.numpy() for w in one.model.weights]
    one.train_step(images, targets)
    two.train_step(images, targets)
    assert float(one.optimizer.dynamic_scale) == float(two.optimizer.dynamic_scale) > 1
    for name, old, a, b in zip(WEIGHT_NAMES, before, one.model.weights, two.model.weights):
        one_update, two_update = a.numpy() - old, b.numpy() - old
        assert np.abs(one_update).max() > 1e-3, name  # an update to measure
        assert update_error(two_update, one_update) < 5e-3, name


@pytest.mark.parametrize(
    "device, expected, because",
    [
        (DeviceDescription("GPU", "H100", (9, 0)), "mixed_float16", "capability 9.0 has tensor"),
        (DeviceDescription("GPU", "V100", (7, 0)), "mixed_float16", "capability 7.0 has tensor"),
        (DeviceDescription("GPU", "P100", (6, 0)), "float32", "without float16 tensor cores"),
        (
            DeviceDescription("CPU", cpu_flags=frozenset({"avx512f", "avx512_bf16"})),
            "mixed_bfloat16",
            "bfloat16 units (avx512_bf16)",
        ),
        (
            DeviceDescription("CPU", cpu_flags=frozenset({"amx_bf16", "amx_tile"})),
            "mixed_bfloat16",
            "bfloat16 units (amx_bf16)",
        ),
        (
            DeviceDescription("CPU", cpu_flags=frozenset({"avx2", "avx512f"})),
            "float32",
            "CPU without bfloat16 units",
        ),
    ],
)
def test_auto_precision_by_device(device, expected, because):
    precision, reason = choose_precision(device)
    assert precision == expected
    assert because in reason  # the reason names what decided


def test_this_machine_is_described():
    """Follows this machine: its first GPU where it has one, else its CPU."""
    gpus = machine.prepare_gpus()
    device = machine.device_description(machine.resolve_device("auto", len(gpus)), gpus)
    if gpus:
        assert device.kind == "GPU"
        assert device.compute_capability >= (3, 5)  # the oldest TensorFlow runs on
    else:
        assert device.kind == "CPU"
    if platform.machine() == "x86_64":  # every x86-64 CPU lists these in /proc/cpuinfo
        assert {"fpu", "sse2"} <= machine.device_description("/CPU:0", gpus).cpu_flags
    # The CPU named by --device cpu is described as a CPU, whatever GPUs the machine has.
    assert machine.device_description("/CPU:0", gpus).kind == "CPU"
