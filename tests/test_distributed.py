"""Device placement and tf.distribute: the device a flag names, the error for a missing GPU,
mirrored replicas equal to one device, and two workers on loopback."""

import json
import os
import re
import signal
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

from fastconv import data, machine, pipeline, workers
from fastconv.config import ConfigError, TrainConfig
from fastconv.interruption import StopRequests
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
    return error_lines(run.stderr)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


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


def test_a_tf_config_that_is_not_json_is_one_line_exit_2_under_mirrored_too(tmp_path):
    """MirroredStrategy reads TF_CONFIG as well: its JSONDecodeError was a traceback."""
    folder = write_dataset(tmp_path / "data")
    run = run_script(
        "train.py",
        *("--strategy", "mirrored", "--data-dir", str(folder), "--logdir", str(tmp_path / "r")),
        env={**os.environ, "TF_CONFIG": "garbage{"},
    )
    assert run.returncode == 2
    assert errors(run) == ["error: --strategy mirrored: TF_CONFIG is not a JSON object: garbage{"]
    assert not (tmp_path / "r").exists()


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


def loopback_cluster(count: int = 2) -> list[str]:
    return [f"127.0.0.1:{free_port()}" for _ in range(count)]


def start_worker(workers, index, folder, logdir, *flags, **env):
    """Starts worker `index` of the cluster `workers` with the flags, and `env` added to its
    environment."""
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    return start_script(
        "train.py",
        *("--strategy", "multi-worker", "--data-dir", str(folder)),
        *("--logdir", str(logdir), *flags),
        env={**os.environ, "TF_CONFIG": json.dumps(tf_config), **env},
    )


def finished(processes, timeout=300) -> list[tuple[int, str, str]]:
    """Each process's exit code, stdout and stderr, once all have ended; past `timeout`
    seconds, all are killed and the test fails."""
    try:
        outputs = [process.communicate(timeout=timeout) for process in processes]
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"the workers did not end within {timeout} s")
    return [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs)]


def refusals(processes) -> list[str]:
    """Each worker's one error line, once every worker has refused with exit 2 and no
    traceback."""
    results = finished(processes)
    assert [code for code, _, _ in results] == [2] * len(processes), results
    lines = [error_lines(err) for _, _, err in results]
    assert all(len(each) == 1 for each in lines), lines
    return [each[0] for each in lines]


def one_device_weights(folder, steps: int) -> tuple[list, list]:
    """The weights of a one-device run over the global batches the workers read, and the
    initial weights. A one-device run would keep its images resident and gather them inside
    the step's graph, where x / 255 may round differently in the last bit, which can flip a
    ReLU and move the weights by ~1e-4 in 30 steps (measured on this data): so the batches
    come from the same stream the workers read."""
    config = TrainConfig(batch_size=32)  # the flags' defaults otherwise: seed, learning rate
    initial = ConvNet(config.n_kernels, config.units, seed=config.seed)
    model = ConvNet(config.n_kernels, config.units, seed=config.seed)
    one_device = Trainer(model, config.learning_rate, shards=1)
    batches = iter(make_datasets(data.book_split(data.load(folder), config), config).train())
    one_device.train(batches, tf.constant(steps))
    return [w.numpy() for w in model.weights], [w.numpy() for w in initial.weights]


STEP = "step/.ATTRIBUTES/VARIABLE_VALUE"


def test_a_stop_asked_of_one_worker_stops_all_at_one_step_and_resume_trains_as_one_device(
    tmp_path,
):
    """SIGTERM to worker 1 inside epoch 2: both workers stop at the same step with a
    checkpoint each and exit 143, each with one line; the hint worker 1 prints, followed on
    both, finishes the run with the weights of a one-device run over the same global
    batches. Each worker's replicas are its local GPUs, or its CPU where it has none."""
    folder = write_dataset(tmp_path / "data")  # 480 training images: 15 steps of 32
    logdir = tmp_path / "run"
    flags = ("--epochs", "2", "--batch-size", "32")
    workers = loopback_cluster()
    processes = [
        start_worker(workers, 0, folder, logdir, *flags),
        start_worker(workers, 1, folder, logdir, *flags, FASTCONV_TEST_SIGNAL="step-20:SIGTERM"),
    ]
    (chief_code, _, chief_err), (code, _, err) = finished(processes)
    assert (chief_code, code) == (143, 143), chief_err + err
    # Blocks of one step (a twentieth of an epoch): both stop right after step 20.
    where = "in epoch 2 after step 5 of 15"
    hint = f"resume with: python scripts/train.py --logdir {logdir} --resume"
    assert error_lines(chief_err) == [
        f"error: worker 1 was interrupted by SIGTERM; stopped with it {where}; saved "
        f"{logdir / 'checkpoints' / 'ckpt-20'}; {hint}"
    ]
    assert error_lines(err) == [
        f"error: interrupted by SIGTERM {where}; saved "
        f"{logdir / 'worker-1' / 'checkpoints' / 'ckpt-20'}; {hint}"
    ]
    assert "Traceback" not in chief_err + err
    assert checkpoint_values(logdir)[STEP] == checkpoint_values(logdir / "worker-1")[STEP] == 20

    # Worker 1 without its last checkpoint (as if killed while writing it) would resume from
    # another step: both refuse, naming the steps.
    newest = sorted((logdir / "worker-1" / "checkpoints").glob("ckpt-20.*"))
    for path in newest:
        path.rename(tmp_path / path.name)
    workers = loopback_cluster()  # new ports: TF_CONFIG may change between runs
    processes = [start_worker(workers, index, folder, logdir, "--resume") for index in (0, 1)]
    steps = (20, 15)
    assert refusals(processes) == [
        f"error: --strategy multi-worker: --resume: this worker starts at step {steps[k]}, "
        f"worker {1 - k} at {workers[1 - k]} at step {steps[1 - k]}; resume every worker from "
        "the same run, or none"
        for k in (0, 1)
    ]
    for path in newest:
        (tmp_path / path.name).rename(path)

    workers = loopback_cluster()
    processes = [start_worker(workers, index, folder, logdir, "--resume") for index in (0, 1)]
    for code, out, err in finished(processes):
        assert code == 0, err
        replicas = 2 * (len(tf.config.list_physical_devices("GPU")) or 1)
        assert f"strategy: multi-worker, {replicas} replicas of {32 // replicas}" in out
        assert "resumed from" in out
    one_device, initial = one_device_weights(folder, 2 * 15)
    chief, worker = checkpoint_values(logdir), checkpoint_values(logdir / "worker-1")
    assert chief[STEP] == worker[STEP] == 2 * 15
    for name, one, start in zip(WEIGHT_NAMES, one_device, initial):
        key = f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE"
        for values in (chief, worker):
            assert_trained_as_one_device(values[key], one, start, key)


@pytest.mark.parametrize(
    "flag, chief, other", [("--batch-size", "32", "64"), ("--epochs", "2", "3")]
)
def test_workers_started_with_different_flags_all_refuse_naming_the_flag(
    tmp_path, flag, chief, other
):
    """Refused before TensorFlow's server starts, by every worker, with exit 2; the run
    folder is left as it was (none)."""
    folder = write_dataset(tmp_path / "data")
    logdir = tmp_path / "run"
    workers = loopback_cluster()
    processes = [
        start_worker(workers, 0, folder, logdir, flag, chief),
        start_worker(workers, 1, folder, logdir, flag, other),
    ]
    values = (chief, other)
    assert refusals(processes) == [
        f"error: --strategy multi-worker: {flag} {values[k]} here, {values[1 - k]} on worker "
        f"{1 - k} at {workers[1 - k]}; start every worker with the same flags"
        for k in (0, 1)
    ]
    assert not logdir.exists()


def test_a_worker_whose_peer_never_starts_ends_in_bounded_time_naming_it(tmp_path):
    folder = write_dataset(tmp_path / "data")
    workers = loopback_cluster()
    chief = start_worker(workers, 0, folder, tmp_path / "run", FASTCONV_WORKER_TIMEOUT="2")
    ((code, out, err),) = finished([chief], timeout=120)
    assert code == 3, err
    assert f"worker 0 of 2: waiting for worker 1 at {workers[1]} (up to 2 s)" in out
    assert error_lines(err) == [
        f"error: --strategy multi-worker: worker 1 at {workers[1]} did not answer within 2 s "
        "(FASTCONV_WORKER_TIMEOUT); no checkpoint had been saved"
    ]
    assert not (tmp_path / "run").exists()


def test_ctrl_c_while_waiting_for_a_peer_stops_the_wait(tmp_path):
    """Sent once the wait has begun (its line printed), answered within its bounded poll."""
    folder = write_dataset(tmp_path / "data")
    workers = loopback_cluster()
    chief = start_worker(workers, 0, folder, tmp_path / "run")  # waits up to 300 s
    while not chief.stdout.readline().startswith("worker 0 of 2: waiting for worker 1"):
        pass
    chief.send_signal(signal.SIGINT)
    ((code, _, err),) = finished([chief], timeout=60)
    assert code == 130
    assert error_lines(err) == [
        f"error: interrupted by SIGINT while waiting for worker 1 at {workers[1]}; "
        "no checkpoint had been saved"
    ]


def test_a_worker_lost_mid_run_ends_the_other_with_one_line_keeping_its_checkpoint(tmp_path):
    folder = write_dataset(tmp_path / "data")
    logdir = tmp_path / "run"
    workers = loopback_cluster()
    flags = ("--epochs", "2", "--batch-size", "32")
    processes = [
        start_worker(workers, 0, folder, logdir, *flags),
        start_worker(workers, 1, folder, logdir, *flags, FASTCONV_TEST_SIGNAL="step-20:SIGKILL"),
    ]
    (code, _, err), (killed, _, _) = finished(processes)
    assert (code, killed) == (3, -signal.SIGKILL), err
    assert error_lines(err) == [
        f"error: --strategy multi-worker: lost contact with worker 1 at {workers[1]}; the last "
        f"good checkpoint, {logdir / 'checkpoints' / 'ckpt-15'}, is kept; resume with: python "
        f"scripts/train.py --logdir {logdir} --resume"
    ]
    assert "Traceback" not in err
    assert checkpoint_values(logdir)[STEP] == 15


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan"])
def test_a_worker_timeout_that_is_not_a_positive_number_is_refused(monkeypatch, value):
    monkeypatch.setenv(workers.TIMEOUT_VARIABLE, value)
    with pytest.raises(ConfigError, match=f"FASTCONV_WORKER_TIMEOUT={value!r} must be a positive"):
        workers.timeout()


@pytest.mark.parametrize("address", ["b.example", "b.example:0", "b.example:99999"])
def test_a_worker_address_without_a_valid_port_is_refused(monkeypatch, address):
    """A port past 65535 was an OverflowError traceback where this worker listens on it."""
    tf_config = {
        "cluster": {"worker": ["127.0.0.1:1", address]},
        "task": {"type": "worker", "index": 0},
    }
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    said = f"TF_CONFIG's worker {address!r} is not host:port (a port from 1 to 65535)"
    with pytest.raises(ConfigError, match=re.escape(said)):
        workers.cluster()


def test_workers_whose_tf_config_lists_differ_do_not_start_tensorflow(tmp_path):
    """Worker 0 hears worker 1 and refuses its other list (exit 2) rather than start a server
    that would wait for a worker that is not coming; worker 1 waits for its worker 2 in vain
    (exit 3)."""
    folder = write_dataset(tmp_path / "data")
    workers = loopback_cluster(3)
    processes = [
        start_worker(workers[:2], 0, folder, tmp_path / "run"),
        start_worker(workers, 1, folder, tmp_path / "run", FASTCONV_WORKER_TIMEOUT="3"),
    ]
    (code_0, _, err_0), (code_1, _, err_1) = finished(processes, timeout=120)
    assert (code_0, code_1) == (2, 3), err_0 + err_1
    assert error_lines(err_0) == [
        f"error: --strategy multi-worker: TF_CONFIG lists the workers {workers[:2]} here, "
        f"{workers} on worker 1 at {workers[1]}; give every worker the same list"
    ]
    assert f"worker 2 at {workers[2]} did not answer within 3 s" in error_lines(err_1)[0]


class LateStop(StopRequests):
    """Stop requests whose stop arrives while the collective runs: after the first look."""

    looks = 0

    @property
    def stop(self):
        self.looks += 1
        return None if self.looks == 1 else (143, "interrupted by SIGTERM")

    @stop.setter
    def stop(self, value):
        pass


def test_a_stop_that_arrives_during_the_agreement_waits_for_the_next(monkeypatch):
    """The decision is made from what every worker sent alone, so all decide alike; the late
    stop stays asked for, and the next agreement stops every worker."""
    tf_config = {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    agree = workers.agreement(tf.distribute.OneDeviceStrategy("/cpu:0"))
    requests = LateStop()
    assert agree(requests) == (None, False)
    assert agree(requests) == ((143, "interrupted by SIGTERM"), False)
