"""Device placement and tf.distribute: the device a flag names, the error for a missing GPU,
mirrored replicas equal to one device, and two workers on loopback."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    checkpoint_values,
    indexed_images,
    indices_of,
    run_script,
    start_script,
    write_dataset,
)

from fastconv import pipeline, runtime


@pytest.mark.parametrize(
    "requested, gpu_count, device",
    [
        ("auto", 0, "/CPU:0"),
        ("auto", 2, "/GPU:0"),
        ("cpu", 2, "/CPU:0"),
        ("gpu", 1, "/GPU:0"),
        ("gpu:1", 2, "/GPU:1"),
    ],
)
def test_device_flag_names_a_device(requested, gpu_count, device):
    assert runtime.resolve_device(requested, gpu_count) == device


@pytest.mark.parametrize(
    "requested, gpu_count, message",
    [
        ("gpu", 0, "--device gpu: this machine has no GPU that TensorFlow can use"),
        ("gpu:0", 0, "--device gpu:0: this machine has no GPU that TensorFlow can use"),
        ("gpu:2", 2, "--device gpu:2: this machine has 2 GPU(s), gpu:0 to gpu:1"),
    ],
)
def test_a_missing_gpu_is_an_error_not_a_fall_back(requested, gpu_count, message):
    with pytest.raises(runtime.DeviceError) as error:
        runtime.resolve_device(requested, gpu_count)
    assert str(error.value) == message


def errors(run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="this machine has one")
def test_asking_for_a_gpu_on_a_machine_without_one_exits_2(tmp_path):
    folder = write_dataset(tmp_path / "data")
    run = run_script(
        "train.py", "--device", "gpu", "--data-dir", str(folder), "--logdir", str(tmp_path / "r")
    )
    assert run.returncode == 2
    assert errors(run) == ["error: --device gpu: this machine has no GPU that TensorFlow can use"]
    assert "Traceback" not in run.stderr


def test_multi_worker_without_tf_config_exits_2(tmp_path):
    folder = write_dataset(tmp_path / "data")
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    run = run_script(
        "train.py",
        *("--strategy", "multi-worker", "--data-dir", str(folder)),
        *("--logdir", str(tmp_path / "r")),
        env=env,
    )
    assert run.returncode == 2
    assert errors(run) == ["error: --strategy multi-worker: TF_CONFIG is not set (see the README)"]


def test_replica_streams_together_are_the_one_device_stream():
    def stream(chunks):
        labels = np.zeros(640, np.uint8)
        batches = pipeline.training_batches(
            indexed_images(640), labels, 32, 5, pipeline.Standardization(), 3, chunks
        )
        return [indices_of(images) for images, _ in batches.take(8)]

    whole = stream((0, 1, 1))
    # Four replicas on two workers: each worker's stream alternates its two replicas' chunks.
    worker_0, worker_1 = stream((0, 2, 4)), stream((2, 2, 4))
    for step in range(4):
        chunks = worker_0[2 * step : 2 * step + 2] + worker_1[2 * step : 2 * step + 2]
        np.testing.assert_array_equal(np.concatenate(chunks), whole[step])


MIRRORED_RUN = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, TESTS_DIR)
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]  # two logical CPUs: two replicas
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from helpers import synthetic_dataset
    from fastconv.config import TrainConfig
    from fastconv.run import train_and_evaluate

    runs = {}
    for strategy, shards in (("none", 1), ("mirrored", None)):
        config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, strategy=strategy,
                             shards=shards)
        result = train_and_evaluate(config, synthetic_dataset(), log=lambda line: None)
        runs[strategy] = {
            "replicas": result.trainer.replicas,
            "weights": [w.numpy().tolist() for w in result.trainer.model.weights],
            "history": [[e.train_loss, e.val_loss] for e in result.history],
        }
    print(json.dumps(runs))
    """
).replace("TESTS_DIR", repr(os.path.dirname(__file__)))


def test_mirrored_on_two_logical_cpus_equals_one_device():
    run = subprocess.run(
        [sys.executable, "-c", MIRRORED_RUN], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    runs = json.loads(run.stdout.strip().splitlines()[-1])
    assert (runs["none"]["replicas"], runs["mirrored"]["replicas"]) == (1, 2)
    for one, mirrored in zip(runs["none"]["weights"], runs["mirrored"]["weights"]):
        np.testing.assert_allclose(mirrored, one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs["mirrored"]["history"], runs["none"]["history"], rtol=1e-5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_workers_on_loopback_train_to_the_same_weights(tmp_path):
    folder = write_dataset(tmp_path / "data")
    logdir = tmp_path / "run"
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        os.environ["TF_CONFIG"] = json.dumps(tf_config)
        try:
            processes.append(
                start_script(
                    "train.py",
                    *("--strategy", "multi-worker", "--data-dir", str(folder)),
                    *("--logdir", str(logdir), "--epochs", "2", "--batch-size", "32"),
                )
            )
        finally:
            del os.environ["TF_CONFIG"]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
        assert "strategy: multi-worker, 2 replicas of 16" in stdout
    # The chief writes the run folder; the other worker a folder of its own inside it.
    chief, worker = checkpoint_values(logdir), checkpoint_values(logdir / "worker-1")
    assert chief["step/.ATTRIBUTES/VARIABLE_VALUE"] == 2 * (480 // 32)
    for name in chief:
        if name.startswith("model/"):
            np.testing.assert_array_equal(chief[name], worker[name], err_msg=name)
