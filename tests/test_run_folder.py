"""The run folder under faults and misuse: one run per folder, a resume that does what it is
told, damaged checkpoints, unwritable and full folders, export folders.

What is refused is refused before any training, so most cases run in this process through
`cli.main` (TensorFlow is imported already); the runs that must train go through
scripts/train.py, paused at exact points by the hooks of `fastconv.faults`.
"""

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from folders import (
    DATA,
    copy_of,
    debris,
    fill,
    flags,
    go_on,
    read_only_folder,
    read_whole,
    run_paused_in_checkpoint,
    snapshot,
    tmpfs,
)
from helpers import run_script, synthetic_dataset

from fastconv import checkpoints, cli, export, native, rundir, runtime
from fastconv.checkpoints import NothingToResume
from fastconv.config import TrainConfig
from fastconv.model import ConvNet
from fastconv.pipeline import Standardization
from fastconv.run import train_and_evaluate
from fastconv.rundir import RunFolderError
from fastconv.runtime import recorded_settings
from fastconv.trainer import Trainer


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory) -> Path:
    """A finished 2-epoch run: checkpoints ckpt-50 and ckpt-100, its results written."""
    logdir = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(flags(data_dir, logdir, "--epochs", "2", "--quiet")) == 0
    return logdir


def main(capsys, *argv: str) -> tuple[int, str, str]:
    """cli.main in this process: its exit code, stdout and stderr."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return err.strip().splitlines()


# One run per folder


def test_a_second_run_on_a_folder_in_use_is_refused_and_changes_nothing(data_dir, tmp_path, capsys):
    logdir = tmp_path / "run"
    with run_paused_in_checkpoint(data_dir, logdir, "--epochs", "2") as first:
        before = snapshot(logdir)
        for more in ([], ["--resume"]):  # a new run, and a resume of the one running
            code, _, err = main(capsys, *flags(data_dir, logdir, *more))
            assert code == 2
            assert error_lines(err) == [
                f"error: {logdir}: another run is using this run folder; wait for it to end, "
                "or choose another --logdir"
            ]
            assert snapshot(logdir) == before
        go_on(first)  # the first run goes on, undisturbed
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert json.loads((logdir / "metrics.json").read_text())["epochs"] == 2
    for writer in ("train", "validation", "test"):
        assert len(list((logdir / writer).iterdir())) == 1  # one run's event file


@pytest.mark.parametrize("held", ["files of the user's", "another run"])
def test_a_new_run_refuses_a_folder_that_holds_files_and_changes_nothing(
    data_dir, finished, tmp_path, capsys, held
):
    logdir = tmp_path / "mine"
    logdir.mkdir()
    if held == "another run":  # one stopped before its first checkpoint
        shutil.copy(finished / rundir.CONFIG, logdir)
        why = "holds another run (its config.json); a new run needs an empty or new folder"
    else:  # names a run folder uses too, which the run would overwrite
        (logdir / rundir.CONFIG).write_text('{"my": "settings"}\n')
        (logdir / "loss.png").write_bytes(b"my figure")
        why = "the folder is not empty and is not a fastconv run folder (it holds config.json, "
        why += "loss.png); choose an empty or new folder"
    before = snapshot(logdir)
    code, out, err = main(capsys, *flags(data_dir, logdir, "--epochs", "1"))
    assert code == 2
    assert error_lines(err)[0].startswith(f"error: --logdir {logdir}: {why}")
    assert len(error_lines(err)) == 1 and "compiling" not in out
    assert snapshot(logdir) == before and len(list(logdir.iterdir())) == len(before)  # no lock


def test_a_new_run_takes_a_folder_that_holds_only_a_lock_and_its_workers_folders(tmp_path):
    (tmp_path / rundir.LOCK).touch()
    (tmp_path / "worker-1").mkdir()  # a multi-worker run's worker, started before the chief
    rundir.require_fresh(tmp_path)


@pytest.mark.parametrize(
    "refused",
    [
        ["--kernels", "100000", "--device", "cpu"],  # too large for the memory
        ["--device", "gpu:99"],  # not there
        ["--export", "{logdir}"],  # its own run folder
    ],
)
def test_a_refused_run_leaves_no_folder_behind(data_dir, tmp_path, capsys, refused):
    logdir = tmp_path / "new" / "run"
    argv = [arg.format(logdir=logdir) for arg in refused]
    code, _, err = main(capsys, *flags(data_dir, logdir, "--epochs", "1", *argv))
    assert code == 2 and len(error_lines(err)) == 1
    assert list(tmp_path.iterdir()) == []


# --resume: every flag given applied or refused, the epochs done respected


@pytest.mark.parametrize(
    "flag, value, field, saved",
    [
        ("--batch-size", "128", "batch_size", 32),  # 128 is the default
        ("--learning-rate", "0.01", "learning_rate", 0.05),  # so is 0.01
        ("--kernels", "10", "n_kernels", 12),
        ("--precision", "float32", "precision", "auto"),
        ("--seed", "42", "seed", 7),
    ],
)
def test_resume_refuses_a_flag_that_changes_the_arithmetic_even_at_its_default(
    tmp_path, capsys, flag, value, field, saved
):
    config = TrainConfig(batch_size=32, learning_rate=0.05, n_kernels=12, precision="auto", seed=7)
    rundir.write_json(tmp_path / rundir.CONFIG, config.to_dict())
    code, _, err = main(capsys, "--logdir", str(tmp_path), "--resume", flag, value)
    assert code == 2
    given = json.loads(value) if field != "precision" else value
    assert error_lines(err) == [
        f"error: {field}={given!r} differs from the resumed run's {field}={saved!r}; a resumed "
        "run keeps its configuration (start a new --logdir to change it)"
    ]


def test_resume_refuses_other_epochs_under_a_schedule_saying_why(tmp_path, capsys):
    config = TrainConfig(epochs=6, schedule="onecycle", warmup_epochs=1.0)
    rundir.write_json(tmp_path / rundir.CONFIG, config.to_dict())
    code, _, err = main(capsys, "--logdir", str(tmp_path), "--resume", "--epochs", "8")
    assert code == 2
    assert error_lines(err) == [
        "error: --epochs 8: the run's --schedule onecycle ends at its last epoch, 6, so a "
        "resumed run keeps its epochs (start a new --logdir to train longer)"
    ]


def test_resume_at_or_below_the_epochs_done_says_so_and_changes_nothing(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    before = snapshot(run)
    code, _, err = main(capsys, "--logdir", str(run), "--resume", "--epochs", "1")
    assert code == 2
    assert error_lines(err) == [
        f"error: --epochs 1: the run in {run} has trained 2 epoch(s) already (up to "
        f"{run / 'checkpoints' / 'ckpt-100'}); a resumed run cannot train fewer, so nothing "
        "was changed"
    ]
    for more in ([], ["--epochs", "2"]):  # its own epochs, or the same given
        code, out, err = main(capsys, "--logdir", str(run), "--resume", *more)
        assert code == 0 and not err
        assert out.splitlines()[-1] == (
            f"{run}: the run has trained and reported its 2 epoch(s) already; nothing to do "
            "(give a larger --epochs to train it further)"
        )
    assert snapshot(run) == before


def saved_config(run: Path, **changes) -> TrainConfig:
    """The configuration of the run in `run` (a copy: its own folder), with `changes`."""
    saved = json.loads((run / rundir.CONFIG).read_text())
    return TrainConfig(**{**saved, "logdir": str(run), **changes})


def machine_choice() -> runtime.Placement:
    return runtime.place(TrainConfig(batch_size=32, precision="auto"))


def test_a_resumed_run_computes_with_the_settings_the_run_recorded(finished, tmp_path):
    """The settings `auto` resolved from the machine are recorded when a run starts and
    reused when it resumes, even where this machine would choose otherwise."""
    environment = json.loads((finished / rundir.ENVIRONMENT).read_text())
    assert environment["placement"] == runtime.place(TrainConfig(batch_size=32)).record()
    run = copy_of(finished, tmp_path)
    here = machine_choice()
    other = {  # each unlike what this machine picks
        "shards": 1 if here.shards != 1 else 2,
        "threads": None,
        "precision": "float32" if here.precision != "float32" else "mixed_bfloat16",
        "conv_form": "nn" if here.conv_form != "nn" else "window_patches",
        "replicas": 1,
    }
    rundir.write_json(run / rundir.ENVIRONMENT, {**environment, "placement": other})
    config = saved_config(run, precision="auto")
    rundir.write_json(run / rundir.CONFIG, config.to_dict())
    lines = []
    result = train_and_evaluate(
        dataclasses.replace(config, epochs=3), log=lines.append, resume=True
    )
    trainer = result.trainer
    assert (trainer.shards, trainer.conv_form) == (other["shards"], other["conv_form"])
    assert trainer.model.dtype_policy.name == other["precision"]
    note = next(line for line in lines if line.startswith("resumed as the run started: "))
    for name in ("shards", "precision", "conv_form"):
        assert f"{name} {other[name]}" in note and f"{name} {getattr(here, name)}" in note
    recorded = json.loads((run / rundir.ENVIRONMENT).read_text())["placement"]
    assert recorded == other  # still the run's own, for its next resume


def test_a_resume_leaves_the_record_of_how_the_run_started(finished, tmp_path):
    """A resume that cannot honour a recorded setting (the fused op turned off) computes
    with this machine's choice, and leaves environment.json as it was: a later resume does
    not take that choice for the run's own."""
    run = copy_of(finished, tmp_path)
    recorded = (run / rundir.ENVIRONMENT).read_text()
    if json.loads(recorded)["placement"]["conv_form"] != "fused":
        pytest.skip("the run did not start on the fused op: it is not built here")
    env = {**os.environ, native.SWITCH: "0"}
    resumed = run_script("train.py", "--logdir", str(run), "--resume", "--epochs", "3", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "warning: cannot resume with the run's " in resumed.stderr
    assert "conv_form 'fused' (in " in resumed.stderr
    assert (run / rundir.ENVIRONMENT).read_text() == recorded


def test_settings_the_machine_cannot_honour_are_said_before_any_work(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    environment = json.loads((run / rundir.ENVIRONMENT).read_text())
    placement = {**environment["placement"], "replicas": 2, "conv_form": "winograd"}
    rundir.write_json(run / rundir.ENVIRONMENT, {**environment, "placement": placement})
    config = saved_config(run, epochs=3)
    lines = []
    train_and_evaluate(config, log=lines.append, resume=True)
    warnings = [i for i, line in enumerate(lines) if line.startswith("warning:")]
    assert [lines[i] for i in warnings] == [
        f"warning: cannot resume with the run's threads {placement['threads']!r}, conv_form "
        f"'winograd' (in {run / rundir.ENVIRONMENT}); this machine's choice may compute "
        "differently",
        "warning: the run started on 2 replica(s), this machine gives 1: the batches split "
        "differently, so the sums may round differently",
    ]
    first_work = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert max(warnings) < first_work


@pytest.mark.needs_fused_op
def test_a_run_on_the_fused_op_resumed_with_xla_is_told_and_uses_xlas_form(tmp_path):
    """XLA cannot compile fastconv's TensorFlow op: the recorded form is one this run cannot
    honour; it takes the same kernel as custom calls."""
    placement = {
        "shards": 2,
        "threads": [1, 2],
        "precision": "float32",
        "conv_form": "fused",
        "replicas": 1,
    }
    rundir.write_json(tmp_path / rundir.ENVIRONMENT, {"placement": placement})
    recorded, notes = recorded_settings(tmp_path, TrainConfig(xla=True))
    # The threads were chosen for the form's engine: they go with it.
    assert "conv_form" not in recorded and "threads" not in recorded
    assert recorded["shards"] == 2
    assert notes == [
        f"warning: cannot resume with the run's threads [1, 2], conv_form 'fused' (in "
        f"{tmp_path / rundir.ENVIRONMENT}); this machine's choice may compute differently"
    ]
    placement = runtime.place(TrainConfig(xla=True), recorded)
    assert placement.conv_form == "fused_xla"
    assert placement.threads == runtime.thread_counts(2, on_gpu=False, conv_form="fused_xla")
    graph_mode, _ = recorded_settings(tmp_path, TrainConfig())
    assert graph_mode["conv_form"] == "fused"  # where the op is built, as here
    assert graph_mode["threads"] == (1, 2)


@pytest.mark.needs_fused_op
def test_a_run_resumed_under_xla_and_back_goes_on_with_the_kernel_of_each_engine(
    data_dir, tmp_path, capsys
):
    """Graph mode, then --xla, then graph mode again (--no-xla: a resumed run keeps the flags
    left out), one epoch each, in one run folder. The run's record stays how it started (the
    fused op); the --xla resume cannot honour it and says so, takes the kernel's custom
    calls, and the run ends with its three epochs."""
    logdir = tmp_path / "run"
    assert cli.main(flags(data_dir, logdir, "--epochs", "1", "--quiet")) == 0
    for epochs, engine in (("2", "--xla"), ("3", "--no-xla")):
        capsys.readouterr()
        code, out, err = main(
            capsys, *flags(data_dir, logdir, "--epochs", epochs, "--resume", engine)
        )
        assert code == 0, err
        record = logdir / rundir.ENVIRONMENT
        told = f"cannot resume with the run's threads [1, 2], conv_form 'fused' (in {record})"
        assert (told in err) == (engine == "--xla")
        assert ("compiling (XLA" in out) == (engine == "--xla")
        assert f"epoch {epochs}/{epochs}" in out and f"epoch {int(epochs) - 1}/" not in out
        config = rundir.read_json(logdir / rundir.CONFIG)
        assert config["xla"] == (engine == "--xla")
    assert rundir.read_json(logdir / rundir.ENVIRONMENT)["placement"]["conv_form"] == "fused"
    assert rundir.read_json(logdir / rundir.METRICS)["epochs"] == 3


def test_an_xla_run_recorded_with_the_old_patches_form_resumes_on_this_versions_form(tmp_path):
    """A run started before `window_patches` recorded "patches" and one thread per op: both
    are this version's to choose again, and the run is told."""
    placement = {"shards": 2, "threads": [1, 2], "precision": "float32", "conv_form": "patches"}
    rundir.write_json(tmp_path / rundir.ENVIRONMENT, {"placement": {**placement, "replicas": 1}})
    recorded, notes = recorded_settings(tmp_path, TrainConfig(xla=True))
    assert recorded == {"shards": 2, "precision": "float32", "replicas": 1}
    assert notes == [
        f"warning: cannot resume with the run's threads [1, 2], conv_form 'patches' (in "
        f"{tmp_path / rundir.ENVIRONMENT}); this machine's choice may compute differently"
    ]


# Damaged checkpoints


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGE = {
    "data truncated": lambda path: os.truncate(f"{path}.{DATA}", 100),
    "data zeroed": lambda path: Path(f"{path}.{DATA}").write_bytes(
        bytes(Path(f"{path}.{DATA}").stat().st_size)
    ),
    "data bit-flipped": lambda path: _flip_a_bit(Path(f"{path}.{DATA}")),
    "data missing": lambda path: Path(f"{path}.{DATA}").unlink(),
    "index garbled": lambda path: Path(f"{path}.index").write_bytes(b"not an index" * 40),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_latest_checkpoint_is_named_and_the_one_before_taken(finished, tmp_path, damage):
    directory = copy_of(finished, tmp_path) / rundir.CHECKPOINTS
    DAMAGE[damage](directory / "ckpt-100")
    start = checkpoints.find_start(directory)
    assert (start.path, start.step) == (str(directory / "ckpt-50"), 50)
    assert len(start.run_state["history"]) == 1
    (note,) = start.notes
    assert note.startswith(f"warning: checkpoint {directory / 'ckpt-100'} is damaged (")
    checkpoints.discard_uncommitted(directory, start)
    assert tf.train.latest_checkpoint(str(directory)) == str(directory / "ckpt-50")


@pytest.mark.parametrize("index", ["missing", "garbled"])
def test_a_lost_index_file_is_rebuilt_from_the_checkpoints_present(finished, tmp_path, index):
    directory = copy_of(finished, tmp_path) / rundir.CHECKPOINTS
    if index == "missing":
        (directory / "checkpoint").unlink()
    else:
        (directory / "checkpoint").write_text("model_checkpoint_path: {{{ not a proto\n")
    start = checkpoints.find_start(directory)
    assert start.path == str(directory / "ckpt-100")
    assert start.notes == (
        f"note: {directory / 'checkpoint'} is missing or unreadable; it will be rebuilt from the "
        "checkpoints present (ckpt-50, ckpt-100)",
    )
    checkpoints.discard_uncommitted(directory, start)
    state = tf.train.get_checkpoint_state(str(directory))
    assert state.model_checkpoint_path == str(directory / "ckpt-100")
    assert list(state.all_model_checkpoint_paths) == [
        str(directory / f"ckpt-{n}") for n in (50, 100)
    ]


def test_a_garbled_index_is_one_note_and_nothing_on_stderr(finished, tmp_path):
    """The resumed run says it once; TensorFlow's own warnings (and, with the import that
    held a copy of stderr, 188 lines of "--- Logging error ---") are not shown."""
    run = copy_of(finished, tmp_path)
    (run / rundir.CHECKPOINTS / "checkpoint").write_text('model_checkpoint_path: "ckpt-100\n')
    resumed = run_script("train.py", "--logdir", str(run), "--resume", "--epochs", "3")
    assert (resumed.returncode, resumed.stderr) == (0, "")
    assert resumed.stdout.count("is missing or unreadable; it will be rebuilt") == 1


def test_no_intact_checkpoint_is_one_line_exit_2(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    for number in (50, 100):
        DAMAGE["data truncated"](run / rundir.CHECKPOINTS / f"ckpt-{number}")
    before = snapshot(run)
    code, _, err = main(capsys, "--logdir", str(run), "--resume", "--epochs", "3")
    assert code == 2
    (line,) = error_lines(err)
    directory = run / rundir.CHECKPOINTS
    assert line.startswith(f"error: {directory}: no intact checkpoint to resume from; ")
    assert f"{directory / 'ckpt-100'} is damaged (" in line
    assert f"{directory / 'ckpt-50'} is damaged (" in line
    assert snapshot(run) == before
    # A run stopped before its first checkpoint (Ctrl-C while compiling): what to do instead.
    said = f"no checkpoint to resume from (the run stopped before its first); remove {tmp_path}"
    with pytest.raises(NothingToResume, match=re.escape(said)):
        checkpoints.find_start(tmp_path / "empty")


def test_a_run_resumes_past_a_damaged_checkpoint_to_its_end(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    directory = run / rundir.CHECKPOINTS
    DAMAGE["data bit-flipped"](directory / "ckpt-100")
    code, out, err = main(capsys, "--logdir", str(run), "--resume", "--epochs", "3", "--quiet")
    assert code == 0, err
    (warning,) = error_lines(err)  # said also under --quiet
    assert warning.startswith(f"warning: checkpoint {directory / 'ckpt-100'} is damaged (")
    # A resumed run's timings say which are its own.
    here, whole = (float(x) for x in re_search(r"training (\S+) s here, (\S+) s in the whole", out))
    assert here <= whole
    history = json.loads(read_values(directory)["run_state/.ATTRIBUTES/VARIABLE_VALUE"])
    assert [epoch["epoch"] for epoch in history["history"]] == [1, 2, 3]
    for number in (50, 100, 150):  # ckpt-100 written again, intact
        read_whole(directory / f"ckpt-{number}")
    assert tf.train.latest_checkpoint(str(directory)) == str(directory / "ckpt-150")
    assert not debris(run)


def read_values(directory: Path) -> dict:
    reader = tf.train.load_checkpoint(str(directory))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def re_search(pattern: str, text: str) -> tuple[str, ...]:
    match = re.search(pattern, text)
    assert match, text
    return match.groups()


# Unwritable, missing and full folders


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


@pytest.mark.parametrize(
    "where, why",
    [
        ("/proc/fastconv-run", "cannot write there (No such file or directory)"),
        ("{file}/run", "cannot write there (Not a directory)"),
        ("{file}", "is a file, not a folder"),
    ],
)
def test_an_unusable_logdir_is_one_line_exit_2_before_any_work(
    data_dir, a_file, capsys, where, why
):
    logdir = where.format(file=a_file)
    code, out, err = main(capsys, *flags(data_dir, logdir, "--epochs", "1"))
    assert code == 2
    assert error_lines(err) == [f"error: --logdir {logdir}: {why}"]
    assert "compiling" not in out


@pytest.mark.parametrize("flag", ["--logdir", "--export"])
def test_a_folder_whose_name_is_not_utf8_is_one_line_exit_2(data_dir, tmp_path, capsys, flag):
    """Bytes a file system allows (here as Python's surrogate), which TensorFlow cannot take."""
    named = tmp_path / "run-\udcff"
    logdir, export_dir = (named, tmp_path / "model") if flag == "--logdir" else (tmp_path, named)
    code, _, err = main(
        capsys, *flags(data_dir, logdir, "--epochs", "1", "--export", str(export_dir))
    )
    assert code == 2
    shown = str(named).encode("utf-8", "backslashreplace").decode()  # as stderr escapes it
    assert error_lines(err) == [
        f"error: {flag} {shown}: the name is not UTF-8, which TensorFlow needs; choose another"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_logdir_is_one_line_exit_2(data_dir, tmp_path, capsys):
    with read_only_folder(tmp_path / "read-only") as folder:
        code, _, err = main(capsys, *flags(data_dir, folder / "run", "--epochs", "1"))
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith(f"error: --logdir {folder / 'run'}: cannot write there (")
    assert line.endswith(("(Read-only file system)", "(Permission denied)"))


def test_a_logdir_without_room_for_the_checkpoints_is_refused_before_training(
    data_dir, tmp_path, capsys
):
    with tmpfs(tmp_path / "small", "1m") as disk:
        code, out, err = main(capsys, *flags(data_dir, disk / "run", "--epochs", "1"))
        assert code == 2
        (line,) = error_lines(err)
        assert line.startswith(f"error: --logdir {disk / 'run'}: ")
        assert " MiB free, and the run's checkpoints need about " in line
        assert "compiling" not in out
        assert list(disk.iterdir()) == []  # no lock, no event files: the run left nothing


def test_a_disk_that_fills_during_the_run_keeps_the_last_checkpoint_and_no_debris(
    data_dir, tmp_path
):
    with tmpfs(tmp_path / "disk", "8m") as disk:
        logdir = disk / "run"
        with run_paused_in_checkpoint(data_dir, logdir, "--epochs", "3") as run:
            fill(disk, leave=100_000)  # room for the event files, not for a checkpoint
            go_on(run)
            _, stderr = run.communicate(timeout=300)
        assert run.returncode == 2, stderr
        directory = logdir / rundir.CHECKPOINTS
        assert stderr.strip().splitlines() == [
            f"error: cannot save checkpoint {directory / 'ckpt-100'} (No space left on device); "
            f"the last good checkpoint, {directory / 'ckpt-50'}, is kept"
        ]
        assert tf.train.latest_checkpoint(str(directory)) == str(directory / "ckpt-50")
        read_whole(directory / "ckpt-50")
        assert not debris(logdir)
        assert sorted(p.name for p in directory.iterdir()) == sorted(
            ["checkpoint", "ckpt-50.index", f"ckpt-50.{DATA}"]
        )


# Export folders


@pytest.mark.parametrize(
    "where, why",
    [
        ("{file}", "is a file, not a folder"),
        ("{file}/model", "cannot write there (Not a directory)"),
        (
            "{foreign}",
            "the folder is not empty and holds no earlier export of this run; "
            "choose an empty or new folder",
        ),
    ],
)
def test_an_export_folder_that_cannot_take_the_model_is_refused_before_training(
    data_dir, tmp_path, a_file, capsys, where, why
):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    target = where.format(file=a_file, foreign=foreign)
    logdir = tmp_path / "run"
    code, out, err = main(capsys, *flags(data_dir, logdir, "--epochs", "1", "--export", target))
    assert code == 2
    assert error_lines(err) == [f"error: --export {target}: {why}"]
    assert "compiling" not in out and not (logdir / rundir.CHECKPOINTS).exists()
    assert (foreign / "notes.txt").read_text() == "mine\n"


def test_a_read_only_export_folder_is_refused_before_training(data_dir, tmp_path, capsys):
    with read_only_folder(tmp_path / "read-only") as folder:
        target = folder / "model"
        code, _, err = main(capsys, *flags(data_dir, tmp_path / "run", "--export", str(target)))
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith(f"error: --export {target}: cannot write there (")


def test_an_export_that_fills_the_disk_leaves_no_partial_model(tmp_path):
    with tmpfs(tmp_path / "small", "256k") as disk:
        config = TrainConfig(epochs=1, batch_size=32, export_dir=str(disk / "model"))
        with pytest.raises(RunFolderError) as failed:
            train_and_evaluate(config, synthetic_dataset(), log=lambda line: None)
        assert str(failed.value) == (
            f"--export {disk / 'model'}: cannot write there (No space left on device)"
        )
        assert list(disk.iterdir()) == []


def test_an_export_replaces_only_an_earlier_export_of_the_same_run(tmp_path):
    model = tmp_path / "model"
    config = TrainConfig(
        epochs=1, batch_size=32, logdir=str(tmp_path / "run"), export_dir=str(model)
    )
    train_and_evaluate(config, synthetic_dataset(), log=lambda line: None)
    first = model.joinpath("saved_model.pb").stat().st_mtime_ns
    assert json.loads((model / export.RECORD).read_text()) == {
        "run": str((tmp_path / "run").resolve())
    }
    # The same run, resumed for a second epoch: its export is replaced.
    again = TrainConfig(**{**config.to_dict(), "epochs": 2})
    result = train_and_evaluate(again, synthetic_dataset(), log=lambda line: None, resume=True)
    assert model.joinpath("saved_model.pb").stat().st_mtime_ns != first
    loaded = tf.saved_model.load(str(model)).signatures["serving_default"]
    images = synthetic_dataset().test_images[:5]
    probabilities = loaded(images=tf.constant(images))["probabilities"].numpy()
    expected = result.trainer.predict_step(tf.constant(images[..., None] / np.float32(255)))
    np.testing.assert_array_equal(probabilities.argmax(axis=1), expected.numpy())
    assert not debris(tmp_path)
    # Another run may not overwrite it.
    with pytest.raises(RunFolderError, match="holds no earlier export of this run"):
        export.check_target(model, str(tmp_path / "another-run"))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_an_export_folder_follows_the_umask_as_a_run_folder_does(tmp_path, umask):
    previous = os.umask(umask)
    try:
        model = export.export(Trainer(ConvNet(seed=0), 0.01), Standardization(), tmp_path / "m")
    finally:
        os.umask(previous)
    assert model.stat().st_mode & 0o777 == 0o777 & ~umask
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m"]  # nothing else left


# The smaller items


def test_a_network_too_large_for_the_memory_is_one_line_exit_2(data_dir, tmp_path, capsys):
    argv = flags(data_dir, tmp_path / "run", "--kernels", "100000", "--device", "cpu")
    code, out, err = main(capsys, *argv)
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith("error: --kernels 100000 --units 100 --batch-size 32: a training step ")
    assert " GiB available" in line and "compiling" not in out


def test_an_evaluation_batch_larger_than_the_sets_evaluates_them_whole(data_dir, tmp_path, capsys):
    argv = flags(data_dir, tmp_path / "run", "--epochs", "1", "--eval-batch-size", "100000000")
    code, _, err = main(capsys, *argv)
    assert (code, err) == (0, "")


def test_memory_that_runs_out_is_one_line_exit_2(data_dir, tmp_path, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 298. GiB for an array")

    monkeypatch.setattr("fastconv.run.make_datasets", out_of_memory)
    code, _, err = main(capsys, *flags(data_dir, tmp_path / "run", "--epochs", "1"))
    assert code == 2
    assert error_lines(err) == [
        "error: out of memory (Unable to allocate 298. GiB for an array); lower --batch-size, "
        "--eval-batch-size, --kernels or --units; no checkpoint had been saved"
    ]
    assert not (tmp_path / "run").exists()


def test_a_profile_window_past_the_runs_last_step_is_a_flag_error(data_dir, tmp_path, capsys):
    argv = flags(data_dir, tmp_path / "run", "--epochs", "2", "--profile-steps", "1,100000")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith(
            "error: argument --profile-steps: '1,100000' reaches past the run's last step, 100 "
            "(2 epochs of 50 steps)"
        )
    )
