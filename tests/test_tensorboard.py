"""What a run shows: TensorBoard event files, profiler traces, figures, metrics, progress."""

import json

import numpy as np
import pytest
import tensorflow as tf
from helpers import synthetic_dataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorflow.tsl.profiler.protobuf import xplane_pb2
from test_precision import CONV_OP_TYPES

from fastconv import runtime
from fastconv.config import TrainConfig
from fastconv.profiling import Profiler
from fastconv.run import train_and_evaluate

EPOCHS, STEPS_PER_EPOCH, LOG_EVERY = 3, 15, 10  # 480 synthetic training images, batches of 32
PROFILED = (20, 24)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        epochs=EPOCHS,
        batch_size=32,
        logdir=str(logdir),
        log_every=LOG_EVERY,
        profile_steps=PROFILED,
    )
    result = train_and_evaluate(config, synthetic_dataset(), log=lambda line: None)
    return logdir, result


def events(logdir, writer) -> EventAccumulator:
    accumulator = EventAccumulator(str(logdir / writer), size_guidance={"tensors": 0})
    return accumulator.Reload()


def scalar_points(accumulator, tag) -> tuple[list[int], np.ndarray]:
    points = accumulator.Tensors(tag)
    return [p.step for p in points], np.array([tf.make_ndarray(p.tensor_proto) for p in points])


# The epoch curves, by writer and tag, and the field of `fastconv.run.EpochResult` each shows.
EPOCH_CURVES = {
    "train": {
        "epoch_loss": "train_loss",
        "epoch_accuracy": "train_accuracy",
        "images_per_second": "images_per_second",
    },
    "validation": {"epoch_loss": "val_loss", "epoch_accuracy": "val_accuracy"},
}


def test_scalars_have_a_point_per_epoch_and_per_logged_step(run):
    logdir, result = run
    train = events(logdir, "train")
    steps, losses = scalar_points(train, "batch_loss")
    assert steps == list(range(LOG_EVERY, EPOCHS * STEPS_PER_EPOCH + 1, LOG_EVERY))
    # Random images with labels 0-9: nothing to learn, so each step's loss stays near chance.
    np.testing.assert_allclose(losses, np.log(10), atol=0.1)
    for writer, curves in EPOCH_CURVES.items():
        accumulator = events(logdir, writer)
        for tag, field in curves.items():
            steps, values = scalar_points(accumulator, tag)
            assert steps == [1, 2, 3], (writer, tag)
            expected = [getattr(epoch, field) for epoch in result.history]
            np.testing.assert_allclose(values, expected, rtol=1e-6, err_msg=f"{writer} {tag}")
    steps, rates = scalar_points(train, "learning_rate")
    assert steps == [1, 2, 3] and (rates == np.float32(0.01)).all()
    test = events(logdir, "test")
    assert scalar_points(test, "accuracy")[1] == pytest.approx([result.test_accuracy])
    assert scalar_points(test, "loss")[1] == pytest.approx([result.test_loss])
    assert "confusion_matrix" in test.Tags()["tensors"]


def test_hparams_and_graph_are_logged(run):
    logdir, _ = run
    train = events(logdir, "train")
    (session_start,) = train.Tensors("_hparams_/session_start_info")
    metadata = train.SummaryMetadata("_hparams_/session_start_info")
    plugin_data = plugin_data_pb2.HParamsPluginData.FromString(metadata.plugin_data.content)
    hparams = plugin_data.session_start_info.hparams
    assert hparams["batch_size"].number_value == 32
    assert hparams["learning_rate"].number_value == 0.01
    assert hparams["precision"].string_value == "float32"
    assert hparams["profile_steps"].string_value == "20,24"
    assert session_start.step == 0
    graph = train.Graph()
    # The step's own ops, and those of the functions it calls (each shard's pass is one).
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    ops = {node.op for node in nodes}
    assert {"MaxPool", "MatMul", "SoftmaxCrossEntropyWithLogits"} <= ops
    # The conv in the form this machine's device runs fastest (a CPU's depthwise conv here).
    assert CONV_OP_TYPES[runtime.conv_form(xla=False)] in ops


def test_profiler_trace_marks_each_profiled_step(run):
    logdir, _ = run
    (trace,) = (logdir / "plugins" / "profile").glob("*/*.xplane.pb")
    space = xplane_pb2.XSpace.FromString(trace.read_bytes())
    marked = []
    for plane in space.planes:
        event_names = {key: meta.name for key, meta in plane.event_metadata.items()}
        stat_names = {key: meta.name for key, meta in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                if event_names.get(event.metadata_id) == "train":
                    stats = {stat_names[s.metadata_id]: s.int64_value for s in event.stats}
                    marked.append(stats["step_num"])
                    assert event.duration_ps > 0
    assert sorted(marked) == list(range(PROFILED[0], PROFILED[1] + 1))


def test_profiler_cuts_blocks_at_the_window():
    profiler = Profiler("logdir", (20, 24))
    # Before the window, a block stops just short of it; inside, one step at a time.
    assert profiler.block_length(0, 15) == 15
    assert profiler.block_length(15, 15) == 4
    assert [profiler.block_length(step, 15) for step in range(19, 24)] == [1] * 5
    assert profiler.block_length(24, 15) == 15
    assert Profiler(None, (20, 24)).block_length(15, 15) == 15  # no run folder: no trace


def test_figures_are_pngs_of_the_expected_size(run):
    logdir, _ = run
    sizes = {"loss.png": (480, 640), "accuracy.png": (480, 640), "confusion_matrix.png": (800, 800)}
    for name, size in sizes.items():
        image = tf.io.decode_png((logdir / name).read_bytes())
        assert tuple(image.shape[:2]) == size, name
        assert len(np.unique(image.numpy())) > 2, name  # something is drawn


def test_metrics_json_holds_the_final_numbers(run):
    logdir, result = run
    metrics = json.loads((logdir / "metrics.json").read_text())
    assert metrics["epochs"] == EPOCHS
    assert metrics["test_accuracy"] == result.test_accuracy
    assert metrics["val_loss"] == result.history[-1].val_loss
    assert metrics["compile_seconds"] == result.compile_seconds
    # Training time is the epochs' time, compilation and evaluation apart; speed follows from it.
    assert metrics["train_seconds"] == pytest.approx(sum(e.seconds for e in result.history))
    images = EPOCHS * STEPS_PER_EPOCH * 32
    assert metrics["images_per_second"] == pytest.approx(images / metrics["train_seconds"])
    config = json.loads((logdir / "config.json").read_text())
    assert config["batch_size"] == 32 and config["profile_steps"] == list(PROFILED)
    assert "tensorflow" in json.loads((logdir / "environment.json").read_text())


def test_live_progress_draws_a_bar_with_loss_and_speed(capsys):
    config = TrainConfig(epochs=1, batch_size=32)
    lines = []
    train_and_evaluate(config, synthetic_dataset(), log=lines.append, live_progress=True)
    bar = capsys.readouterr().out
    assert "loss:" in bar and "img/s:" in bar and "/15" in bar
    assert any(line.startswith("epoch 1/1") for line in lines)
