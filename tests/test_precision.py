"""Mixed precision: dtypes per policy, loss scaling, and what `auto` picks."""

import numpy as np
import pytest
import tensorflow as tf
from test_trainer import batch

from fastconv import runtime
from fastconv.model import CONV_FORMS, ConvNet, cross_entropy
from fastconv.runtime import DeviceDescription, choose_precision
from fastconv.trainer import Trainer

COMPUTE_DTYPES = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}
CONV_OP_TYPES = {"nn": "Conv2D", "batch_channels": "DepthwiseConv2dNative", "patches": "MatMul"}


@pytest.mark.parametrize("policy", COMPUTE_DTYPES)
@pytest.mark.parametrize("conv_form", CONV_FORMS)
def test_policy_dtypes(policy, conv_form):
    model = ConvNet(seed=0, dtype_policy=policy)
    images, targets = batch(count=8)
    assert all(w.dtype == tf.float32 for w in model.weights)
    graph = tf.function(lambda x: model.forpass(x, conv_form)).get_concrete_function(images).graph
    ops = graph.get_operations()
    convs_and_matmuls = [
        op for op in ops if op.type in ("MatMul", "Conv2D", "DepthwiseConv2dNative")
    ]
    assert {op.type for op in convs_and_matmuls} == {"MatMul", CONV_OP_TYPES[conv_form]}
    assert all(op.get_attr("T") == COMPUTE_DTYPES[policy] for op in convs_and_matmuls)
    logits = model.forpass(images, conv_form)
    assert logits.dtype == tf.float32
    assert cross_entropy(targets, logits).dtype == tf.float32


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_step_follows_the_float32_step(policy):
    images, targets = batch(count=64)
    exact, mixed = (Trainer(ConvNet(seed=1, dtype_policy=p), 0.1) for p in ("float32", policy))
    exact_loss, _ = exact.train_step(images, targets)
    mixed_loss, _ = mixed.train_step(images, targets)
    tolerance = {"mixed_bfloat16": 2e-2, "mixed_float16": 2e-3}[policy]
    assert float(mixed_loss) == pytest.approx(float(exact_loss), rel=tolerance)
    for a, b in zip(exact.model.weights, mixed.model.weights):
        assert b.dtype == tf.float32
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=tolerance)


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


@pytest.mark.parametrize(
    "device, expected",
    [
        (DeviceDescription("GPU", "H100", (9, 0)), "mixed_float16"),
        (DeviceDescription("GPU", "V100", (7, 0)), "mixed_float16"),
        (DeviceDescription("GPU", "P100", (6, 0)), "float32"),
        (
            DeviceDescription("CPU", cpu_flags=frozenset({"avx512f", "avx512_bf16"})),
            "mixed_bfloat16",
        ),
        (DeviceDescription("CPU", cpu_flags=frozenset({"amx_bf16", "amx_tile"})), "mixed_bfloat16"),
        (DeviceDescription("CPU", cpu_flags=frozenset({"avx2", "avx512f"})), "float32"),
    ],
)
def test_auto_precision_by_device(device, expected):
    precision, reason = choose_precision(device)
    assert precision == expected
    assert reason


def test_this_machine_is_described():
    gpus = runtime.prepare_gpus()
    device = runtime.device_description(runtime.resolve_device("auto", len(gpus)), gpus)
    assert device.kind == ("GPU" if gpus else "CPU")
    # The CPU named by --device cpu is described as a CPU, whatever GPUs the machine has.
    cpu = runtime.device_description("/CPU:0", gpus)
    assert cpu.kind == "CPU" and cpu.cpu_flags  # read from /proc/cpuinfo
