"""What a run shows: TensorBoard event files, profiler traces, figures, metrics, progress."""

import json

import numpy as np
import pytest
import tensorflow as tf
from helpers import synthetic_dataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from test_precision import CONV_OP_TYPES

from fastconv import runtime
from fastconv.config import TrainConfig
from fastconv.run import train_and_evaluate
from fastconv.summaries import Profiler

EPOCHS, STEPS_PER_EPOCH, LOG_EVERY = 3, 15, 10  # 480 synthetic training images, batches of 32
PROFILED = (20, 24)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("runs") / "book"  # as in runs/<name>
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
    session = events(logdir, ".")  # the HParams session is the run folder itself
    (session_start,) = session.Tensors("_hparams_/session_start_info")
    metadata = session.SummaryMetadata("_hparams_/session_start_info")
    plugin_data = plugin_data_pb2.HParamsPluginData.FromString(metadata.plugin_data.content)
    hparams = plugin_data.session_start_info.hparams
    assert hparams["batch_size"].number_value == 32
    assert hparams["learning_rate"].number_value == 0.01
    assert hparams["precision"].string_value == "float32"
    assert hparams["profile_steps"].string_value == "20,24"
    assert session_start.step == 0
    train = events(logdir, "train")
    graph = train.Graph()
    # The step's own ops, and those of the functions it calls (each shard's pass is one).
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    ops = {node.op for node in nodes}
    assert {"MatMul", "SoftmaxCrossEntropyWithLogits"} <= ops
    # The conv in the form this machine's device runs fastest (a CPU's fused op here).
    placement = runtime.place(TrainConfig())
    assert CONV_OP_TYPES[placement.conv_form] in ops


def profile_tool(logdir, tool: str):
    """What the Profile tab shows: the profile plugin's own converter applied to the trace."""
    from xprof.convert import raw_to_tool_data

    (trace,) = (logdir / "plugins" / "profile").glob("*/*.xplane.pb")
    data, _ = raw_to_tool_data.xspace_to_tool_data([str(trace)], tool, {})
    return json.loads(data)


def test_profile_tab_overview_has_a_step_time_row_for_each_profiled_step(run):
    logdir, _ = run
    tables = profile_tool(logdir, "overview_page")
    (step_table,) = (t for t in tables if "steptime_ms_average" in t.get("p", {}))
    rows = {row["c"][0]["v"]: row["c"][-1]["v"] for row in step_table["rows"]}
    profiled = [f"train {step}" for step in range(PROFILED[0], PROFILED[1] + 1)]
    assert set(profiled) <= set(rows), rows  # and nothing says "No step marker observed"
    assert all(rows[step] > 0 for step in profiled)  # each step's time, in ms
    assert float(step_table["p"]["steptime_ms_average"]) > 0
    assert "No step marker" not in json.dumps(tables)


def test_profile_tab_trace_viewer_groups_each_steps_ops_under_it(run):
    logdir, _ = run
    trace = profile_tool(logdir, "trace_viewer")["traceEvents"]
    step_groups = {
        int(event["args"]["step_num"]): event["args"]["group_id"]
        for event in trace
        if event.get("name", "").startswith("train ") and "step_num" in event.get("args", {})
    }
    ops_by_group = {}
    for event in trace:
        group = event.get("args", {}).get("group_id")
        ops_by_group.setdefault(group, set()).add(event.get("name"))
    for step in range(PROFILED[0], PROFILED[1] + 1):
        ops = ops_by_group[step_groups[step]]
        # The dense layers' matmul is "_MklMatMul" where TensorFlow turns oneDNN on (CPUs
        # with AVX512_VNNI, AVX512_BF16 or AMX), "MatMul" elsewhere.
        assert "SoftmaxCrossEntropyWithLogits" in ops, (step, ops)
        assert ops & {"MatMul", "_MklMatMul"}, (step, ops)


def test_profiler_cuts_blocks_at_the_window():
    profiler = Profiler("logdir", (20, 24))
    # The trace runs from a step before the window to one after: xprof leaves out the steps
    # at a trace's edges. Before it, a block stops just short of it; inside, one step at a time.
    assert profiler.block_length(0, 15) == 15
    assert profiler.block_length(15, 15) == 3
    assert [profiler.block_length(step, 15) for step in range(18, 25)] == [1] * 7
    assert [profiler.traces(step) for step in (17, 18, 24, 25)] == [False, True, True, False]
    assert profiler.block_length(25, 15) == 15
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


@pytest.fixture
def tensorboard(run):
    """`tensorboard --logdir runs`, as a user starts it, on a free local port."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    logdir, _ = run
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir.parent),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--reload_interval",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:  # until it answers (it starts in a few seconds), or fails the test
            try:
                urllib.request.urlopen(f"{url}/data/logdir", timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no tensorboard"
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def post_json(url: str, body: dict):
    import urllib.request

    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_hparams_dashboard_lists_validation_and_test_results_as_metrics(run, tensorboard):
    _, result = run
    experiment = post_json(f"{tensorboard}/data/plugin/hparams/experiment", {"experimentName": ""})
    columns = {(m["name"]["group"], m["name"]["tag"]) for m in experiment["metricInfos"]}
    wanted = {
        ("validation", "epoch_accuracy"): result.val_accuracy,
        ("validation", "epoch_loss"): result.val_loss,
        ("test", "accuracy"): result.test_accuracy,
        ("test", "loss"): result.test_loss,
    }
    assert set(wanted) <= columns
    groups = post_json(
        f"{tensorboard}/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 10,
        },
    )["sessionGroups"]
    (group,) = groups
    assert group["name"] == "book" and group["hparams"]["batch_size"] == 32
    values = {(m["name"]["group"], m["name"]["tag"]): m["value"] for m in group["metricValues"]}
    for column, value in wanted.items():
        assert values[column] == pytest.approx(value, rel=1e-6), column


def test_images_dashboard_shows_the_confusion_matrix_png(run, tensorboard):
    """The Images tab, through TensorBoard's own HTTP API: the test run's confusion matrix
    at the last epoch, the very PNG of confusion_matrix.png."""
    import time
    import urllib.parse
    import urllib.request

    logdir, _ = run

    def get(path: str) -> bytes:
        with urllib.request.urlopen(f"{tensorboard}{path}", timeout=60) as response:
            return response.read()

    deadline = time.monotonic() + 60
    while not (tags := json.loads(get("/data/plugin/images/tags"))):  # until it has loaded
        assert time.monotonic() < deadline, "no images in TensorBoard"
        time.sleep(0.5)
    (test_run,) = (name for name in tags if name.endswith("test"))
    assert set(tags[test_run]) == {"confusion_matrix"}
    query = urllib.parse.urlencode({"run": test_run, "tag": "confusion_matrix", "sample": 0})
    (image,) = json.loads(get(f"/data/plugin/images/images?{query}"))
    assert image["step"] == EPOCHS
    png = get(f"/data/plugin/images/individualImage?{image['query']}")
    assert png == (logdir / "confusion_matrix.png").read_bytes()
