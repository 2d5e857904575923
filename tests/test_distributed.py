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

from fastconv import data, machine, pipeline
from fastconv.config import TrainConfig
from fastconv.model import ConvNet
from fastconv.pipeline import make_datasets
from fastconv.trainer import Trainer

WEIGHT_NAMES = ("conv_w", "conv_b", "w1", "b1", "w2", "b2")


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
    assert machine.resolve_device(requested, gpu_count) == device


@pytest.mark.parametrize(
    "requested, gpu_count, message",
    [
        ("gpu", 0, "--device gpu: this machine has no GPU that TensorFlow can use"),
        ("gpu:0", 0, "--device gpu:0: this machine has no GPU that TensorFlow can use"),
        ("gpu:2", 2, "--device gpu:2: this machine has 2 GPU(s), gpu:0 to gpu:1"),
    ],
)
def test_a_missing_gpu_is_an_error_not_a_fall_back(requested, gpu_count, message):
    with pytest.raises(machine.DeviceError) as error:
        machine.resolve_device(requested, gpu_count)
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
    assert errors(run) == [
        "error: --strategy multi-worker: TF_CONFIG is not set (see docs/usage.md, Multi-worker)"
    ]


@pytest.mark.parametrize(
    "task", [{"type": "worker", "index": 5}, {"type": "ps", "index": 0}, {"type": "worker"}]
)
def test_a_task_that_is_not_one_of_the_workers_is_one_line_exit_2(tmp_path, task):
    """Refused before the run folder is touched: no worker-5/ left behind, no traceback."""
    folder = write_dataset(tmp_path / "data")
    tf_config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": task}
    run = run_script(
        "train.py",
        *("--strategy", "multi-worker", "--data-dir", str(folder)),
        *("--logdir", str(tmp_path / "r")),
        env={**os.environ, "TF_CONFIG": json.dumps(tf_config)},
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    (line,) = errors(run)
    assert line.startswith("error: --strategy multi-worker: TF_CONFIG")
    assert ("not one of its 2 workers" in line) == ("index" in task)
    assert not (tmp_path / "r").exists()


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
    from fastconv.model import ConvNet
    from fastconv.run import train_and_evaluate

    runs = {"initial": [w.numpy().tolist() for w in ConvNet(seed=SEED).weights]}
    for strategy, shards in (("none", 1), ("mirrored", None)):
        # --device cpu: mirrored then replicates over the logical CPUs even where the
        # machine has GPUs (it would take the GPUs instead).
        config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, strategy=strategy,
                             shards=shards, seed=SEED, device="cpu")
        result = train_and_evaluate(config, synthetic_dataset(), log=lambda line: None)
        runs[strategy] = {
            "replicas": result.trainer.replicas,
            "weights": [w.numpy().tolist() for w in result.trainer.model.weights],
            "history": [[e.train_loss, e.val_loss] for e in result.history],
        }
    print(json.dumps(runs))
    """
).replace("TESTS_DIR", repr(os.path.dirname(__file__)))


def assert_trained_as_one_device(weights, one_device, initial, name=""):
    """`weights` equal the one-device run's within float32 rounding, and training moved those
    far beyond that tolerance (so two runs that did not train could not pass)."""
    one_device, initial = np.asarray(one_device), np.asarray(initial)
    np.testing.assert_allclose(weights, one_device, rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.abs(one_device - initial).max() > 1e-3, name


def test_mirrored_on_two_logical_cpus_equals_one_device():
    run = subprocess.run(
        [sys.executable, "-c", MIRRORED_RUN.replace("SEED", "42")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    runs = json.loads(run.stdout.strip().splitlines()[-1])
    assert (runs["none"]["replicas"], runs["mirrored"]["replicas"]) == (1, 2)
    for mirrored, one, initial in zip(
        runs["mirrored"]["weights"], runs["none"]["weights"], runs["initial"]
    ):
        assert_trained_as_one_device(mirrored, one, initial)
    np.testing.assert_allclose(runs["mirrored"]["history"], runs["none"]["history"], rtol=1e-5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_workers_on_loopback_train_as_one_device(tmp_path):
    """Two workers on loopback end with the weights of a one-device run over the same global
    batches. Each worker's replicas are its local GPUs, or its CPU where it has none, so the
    replica count follows this machine."""
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
    replicas = 2 * (len(tf.config.list_physical_devices("GPU")) or 1)
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
        assert f"strategy: multi-worker, {replicas} replicas of {32 // replicas}" in stdout
    # The chief writes the run folder; the other worker a folder of its own inside it.
    chief, worker = checkpoint_values(logdir), checkpoint_values(logdir / "worker-1")
    assert chief["step/.ATTRIBUTES/VARIABLE_VALUE"] == 2 * (480 // 32)
    # The same global batches on one device, from the same stream the workers read: a
    # one-device run would keep its images resident and gather them inside the step's graph,
    # where x / 255 may round differently in the last bit, which can flip a ReLU and move the
    # weights by ~1e-4 in 30 steps (measured on this data).
    config = TrainConfig(batch_size=32)  # the flags' defaults otherwise: seed, learning rate
    initial = ConvNet(config.n_kernels, config.units, seed=config.seed)
    model = ConvNet(config.n_kernels, config.units, seed=config.seed)
    one_device = Trainer(model, config.learning_rate, shards=1)
    batches = iter(make_datasets(data.book_split(data.load(folder), config), config).train())
    one_device.train(batches, tf.constant(2 * (480 // 32)))
    for name, one, start in zip(WEIGHT_NAMES, model.weights, initial.weights):
        key = f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE"
        for values in (chief, worker):
            assert_trained_as_one_device(values[key], one.numpy(), start.numpy(), key)
