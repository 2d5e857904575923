"""SIGINT and SIGTERM in every phase of a run: start-up, compiling, the final evaluation, the
export, and a second signal while the run is busy; SIGUSR1's checkpoint between blocks.
(Stops between blocks of steps, mid-epoch, are in test_reliability.py.)

Each signal is sent by the run to itself at a known point (`fastconv.faults`), or while the
run is paused at one, so nothing depends on timing. The run answers it through its own
handlers, so the phases run in this process, through `cli.main`; the second signal, which
ends the process, in a subprocess.
"""

import json
import signal
import time
from pathlib import Path

import pytest
import tensorflow as tf
from folders import flags, run_paused_in_checkpoint, signal_delivered

from fastconv import cli, faults, rundir


@pytest.fixture
def stop_at(monkeypatch):
    def arrange(point: str, name: str) -> None:
        """The run sends itself signal `name` at `point`."""
        monkeypatch.setenv(faults.SIGNAL, f"{point}:{name}")

    return arrange


def main(capsys, *argv: str) -> tuple[int, str, str]:
    """cli.main in this process: its exit code, stdout and stderr."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_stop_during_start_up_ends_at_once(data_dir, tmp_path, stop_at, capsys):
    stop_at("import", "SIGINT")
    code, _, err = main(capsys, *flags(data_dir, tmp_path / "run"))
    assert code == 130
    assert err == "error: interrupted by SIGINT during start-up; nothing was saved\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "point, name, where",
    [("start-up", "SIGTERM", "during start-up"), ("compile", "SIGINT", "while compiling")],
)
def test_a_stop_before_the_first_checkpoint_says_none_was_saved(
    data_dir, tmp_path, stop_at, capsys, point, name, where
):
    stop_at(point, name)
    code, _, err = main(capsys, *flags(data_dir, tmp_path, "--epochs", "1"))
    assert code == 128 + signal.Signals[name]
    assert err == f"error: interrupted by {name} {where}; no checkpoint had been saved\n"
    assert not list((tmp_path / rundir.CHECKPOINTS).glob("*"))


def test_a_stop_while_compiling_a_resumed_run_keeps_its_checkpoint(
    data_dir, tmp_path, stop_at, capsys
):
    assert main(capsys, *flags(data_dir, tmp_path, "--epochs", "1"))[0] == 0
    stop_at("compile", "SIGTERM")
    code, _, err = main(capsys, *flags(data_dir, tmp_path, "--epochs", "2"), "--resume")
    assert code == 143
    checkpoint = tmp_path / rundir.CHECKPOINTS / "ckpt-50"
    assert err == (
        f"error: interrupted by SIGTERM while compiling; the last good checkpoint, {checkpoint}, "
        f"is kept; resume with: python scripts/train.py --logdir {tmp_path} --resume\n"
    )


def test_sigusr1_saves_a_checkpoint_between_blocks_and_the_run_goes_on(
    data_dir, tmp_path, stop_at, capsys
):
    # Blocks of 7 steps: the hook sends SIGUSR1 after the block that reaches step 20, so the
    # run saves after step 21, mid-epoch, then trains on to its end.
    stop_at("step-20", "SIGUSR1")
    code, out, err = main(
        capsys, *flags(data_dir, tmp_path, "--epochs", "2", "--steps-per-call", "7")
    )
    assert code == 0, err
    checkpoints = tmp_path / rundir.CHECKPOINTS
    assert f"saved {checkpoints / 'ckpt-21'} (SIGUSR1)" in out.splitlines()
    state = tf.train.get_checkpoint_state(str(checkpoints))
    assert [Path(path).name for path in state.all_model_checkpoint_paths] == [
        "ckpt-21",
        "ckpt-50",
        "ckpt-100",
    ]
    saved = tf.train.load_checkpoint(str(checkpoints / "ckpt-21"))
    assert saved.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 21
    run_state = json.loads(saved.get_tensor("run_state/.ATTRIBUTES/VARIABLE_VALUE"))
    assert run_state["history"] == [] and run_state["loss_sum"] > 0  # inside epoch 1
    assert json.loads((tmp_path / rundir.METRICS).read_text())["epochs"] == 2


def test_a_resume_stopped_while_compiling_leaves_no_uncommitted_checkpoint(
    data_dir, tmp_path, stop_at, capsys
):
    """Killed (-9) inside the write of ckpt-100, the run leaves its files beside an index
    whose latest is ckpt-50. A resumed run discards them before it compiles, so a stop
    while compiling leaves the folder as the index has it."""
    checkpoints = tmp_path / rundir.CHECKPOINTS
    with run_paused_in_checkpoint(data_dir, tmp_path, "--epochs", "2", step=100) as killed:
        killed.kill()
        killed.wait()
    assert (checkpoints / "ckpt-100.index").exists()  # written, never committed
    stop_at("compile", "SIGTERM")
    code, _, err = main(capsys, *flags(data_dir, tmp_path, "--epochs", "2"), "--resume")
    assert code == 143, err
    assert "while compiling; the last good checkpoint" in err
    assert tf.train.latest_checkpoint(str(checkpoints)) == str(checkpoints / "ckpt-50")
    assert sorted(path.name for path in checkpoints.iterdir()) == [
        "checkpoint",
        "ckpt-50.data-00000-of-00001",
        "ckpt-50.index",
    ]


def test_a_stop_during_the_final_evaluation_writes_the_results(data_dir, tmp_path, stop_at, capsys):
    stop_at("final-evaluation", "SIGINT")
    code, _, err = main(capsys, *flags(data_dir, tmp_path, "--epochs", "2"))
    assert code == 130
    checkpoint = tmp_path / rundir.CHECKPOINTS / "ckpt-100"
    assert err == (
        f"error: interrupted by SIGINT during the final evaluation; its results are in "
        f"{tmp_path}; the last good checkpoint, {checkpoint}, is kept; resume with: python "
        f"scripts/train.py --logdir {tmp_path} --resume\n"
    )
    metrics = json.loads((tmp_path / rundir.METRICS).read_text())
    assert metrics["epochs"] == 2 and 0 <= metrics["test_accuracy"] <= 1
    for figure in ("loss.png", "accuracy.png", "confusion_matrix.png"):
        assert (tmp_path / figure).stat().st_size > 0
    # Nothing is left to do: the run is complete.
    code, out, _ = main(capsys, "--logdir", str(tmp_path), "--resume")
    assert code == 0 and "nothing to do" in out


def test_a_stop_during_the_export_exports_nothing_and_resume_finishes_it(
    data_dir, tmp_path, stop_at, capsys
):
    logdir, model = tmp_path / "run", tmp_path / "model"
    stop_at("export", "SIGTERM")
    code, _, err = main(capsys, *flags(data_dir, logdir, "--epochs", "1", "--export", str(model)))
    assert code == 143
    assert err.startswith(
        "error: interrupted by SIGTERM during the export; the model was not exported; the last "
        f"good checkpoint, {logdir / rundir.CHECKPOINTS / 'ckpt-50'}, is kept"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]  # no partial model
    # The resumed run has no epoch left: it exports what it has.
    code, out, _ = main(capsys, "--logdir", str(logdir), "--resume", "--export", str(model))
    assert code == 0 and f"exported the model to {model}" in out
    assert (model / "saved_model.pb").exists()


def test_a_second_stop_ends_the_run_at_once_whatever_it_is_doing(data_dir, tmp_path):
    """Paused inside its first checkpoint write, as it could be inside a long block of steps,
    the run cannot answer the first Ctrl-C; the second ends it at once."""
    with run_paused_in_checkpoint(data_dir, tmp_path, "--epochs", "2") as run:
        run.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        while not signal_delivered(run.pid, signal.SIGINT):  # lest the two merge into one
            assert time.monotonic() < deadline, "the first SIGINT was never delivered"
        run.send_signal(signal.SIGINT)
        # Never told to go on (communicate would close its stdin: an empty line, "go on"),
        # the run ends by itself.
        run.wait(timeout=60)
        stderr = run.stderr.read()
    assert run.returncode == 130
    assert stderr == (
        "error: interrupted again by SIGINT: stopped at once; no checkpoint had been saved\n"
    )
    # Cut inside the write: the index never pointed at the checkpoint being written.
    assert not (tmp_path / rundir.CHECKPOINTS / "checkpoint").exists()
