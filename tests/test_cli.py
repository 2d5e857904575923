"""The command line, end to end: real runs in a subprocess, flag errors in-process."""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import numpy as np
import pytest
import tensorflow as tf
from folders import go_on, run_paused_in_checkpoint
from helpers import SCRIPTS, idx_bytes, run_script, write_dataset

from fastconv import cli
from fastconv.config import ConfigError


def train(*flags: str, cwd: Path) -> subprocess.CompletedProcess:
    """scripts/train.py run in `cwd`, where its default run folder (runs/...) lands."""
    return run_script("train.py", *flags, cwd=cwd)


def test_one_epoch_on_real_data_with_xla(tmp_path):
    run = train("--xla", "--epochs", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "xla=True" in out and "batch_size=128" in out and "learning_rate=0.01" in out
    # --device auto: the first GPU where this machine has one, else its CPU.
    kind = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    assert re.search(rf"^device: {kind}: ", out, re.MULTILINE), out
    compiled = re.search(r"compiled in (\d+\.\d+) s", out)
    assert compiled, out
    epoch = re.search(
        r"epoch 1/1  loss (\S+)  acc \S+ \| val loss (\S+)  acc (\S+) \| "
        r"(\S+) s  ([\d,]+) img/s",
        out,
    )
    assert epoch, out
    assert float(epoch.group(1)) < 1.5 and float(epoch.group(3)) > 0.7
    final = re.search(r"validation accuracy (\S+) .* test accuracy (\S+)", out)
    assert final and float(final.group(1)) == float(epoch.group(3))
    assert float(final.group(2)) > 0.7
    assert "total wall time" in out
    (logdir,) = (tmp_path / "runs").iterdir()  # the default run folder: runs/<date-time>
    assert re.fullmatch(r"\d{8}-\d{6}", logdir.name)
    assert json.loads((logdir / "config.json").read_text())["xla"] is True
    metrics = json.loads((logdir / "metrics.json").read_text())
    assert metrics["val_accuracy"] == pytest.approx(float(final.group(1)), abs=1e-4)
    assert metrics["test_accuracy"] == pytest.approx(float(final.group(2)), abs=1e-4)
    # The timings the run printed, to their printed digits: one epoch is all the training.
    assert metrics["compile_seconds"] == pytest.approx(float(compiled.group(1)), abs=0.006)
    assert metrics["train_seconds"] == pytest.approx(float(epoch.group(4)), abs=0.006)
    images_per_second = int(epoch.group(5).replace(",", ""))
    assert metrics["images_per_second"] == pytest.approx(images_per_second, abs=1)
    assert images_per_second == pytest.approx(375 * 128 / metrics["train_seconds"], abs=1)


@pytest.mark.needs_fused_op
def test_xla_runs_again_from_tensorflows_persistent_xla_cache(data_dir, tmp_path):
    # A cached step that holds fastconv's custom calls crashes TensorFlow 2.21 (a segfault,
    # exit 139) when the second run loads it; --xla computes the layer with XLA's ops there.
    cache = tmp_path / "xla-cache"
    env = {**os.environ, "TF_XLA_FLAGS": f"--tf_xla_persistent_cache_directory={cache}"}
    flags = ("--xla", "--data-dir", str(data_dir), "--epochs", "1")
    first = run_script("train.py", *flags, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert list(cache.iterdir())  # the step went into the cache...
    second = run_script("train.py", *flags, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr  # ... and ran from it
    assert "Traceback" not in second.stderr
    for run in (first, second):
        said = re.findall(
            r"^note: fastconv's fused conv custom calls are not available \((.*)\);",
            run.stdout,
            re.M,
        )
        assert said == [
            f"TF_XLA_FLAGS turns on TensorFlow's persistent XLA cache ({cache}), under which "
            "TensorFlow 2.21 crashed running a cached step that holds custom calls; unset "
            "--tf_xla_persistent_cache_directory to train with them"
        ], run.stdout


def test_a_flag_tensorflow_does_not_know_in_tf_xla_flags_ends_the_run_with_its_line(
    data_dir, tmp_path
):
    # TensorFlow reads TF_XLA_FLAGS as fastconv imports it, and on an unknown flag ends the
    # process at once: its line must reach the terminal (it was held back with the
    # import's other lines, and the run ended with exit code 1 and nothing said).
    env = {**os.environ, "TF_XLA_FLAGS": "--fastconv_no_such_flag"}
    run = run_script("train.py", "--data-dir", str(data_dir), cwd=tmp_path, env=env)
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1].endswith(
        "Unknown flag in TF_XLA_FLAGS: --fastconv_no_such_flag"
    )
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "runs").exists()


def test_a_flag_xla_does_not_know_in_xla_flags_ends_an_xla_run_with_its_line(data_dir, tmp_path):
    # Read as XLA first compiles, after the run's folder is written (docs/usage.md, exit 1).
    env = {**os.environ, "XLA_FLAGS": "--fastconv_no_such_flag"}
    flags = ("--xla", "--data-dir", str(data_dir), "--logdir", str(tmp_path / "run"))
    run = run_script("train.py", *flags, cwd=tmp_path, env=env)
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1].endswith(
        "Unknown flag in XLA_FLAGS: --fastconv_no_such_flag"
    )
    assert "Traceback" not in run.stderr


def test_keras_settings_for_another_backend_and_float64_train_the_same_float32_run(
    data_dir, tmp_path
):
    # A Keras 3 user's KERAS_BACKEND and keras.json: Keras's import failed on the JAX
    # backend, and a float64 `floatx` made the weights float64 (a TypeError at the fused op).
    keras_home = tmp_path / "keras-home"
    keras_home.mkdir()
    (keras_home / "keras.json").write_text('{"backend": "jax", "floatx": "float64"}')
    env = {**os.environ, "KERAS_BACKEND": "jax", "KERAS_HOME": str(keras_home)}
    logdir = tmp_path / "run"
    flags = ("--data-dir", str(data_dir), "--epochs", "1", "--logdir", str(logdir))
    run = run_script("train.py", *flags, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    dtypes = tf.train.load_checkpoint(str(logdir / "checkpoints")).get_variable_to_dtype_map()
    weights = {name: dtype for name, dtype in dtypes.items() if name.startswith("model/")}
    assert weights and set(weights.values()) == {tf.float32}, dtypes


@pytest.mark.parametrize("tf_config", [None, "garbage{"])
def test_resume_of_a_folder_without_a_run_says_so(tmp_path, monkeypatch, tf_config):
    """With a TF_CONFIG that names no cluster exported, it blamed --strategy multi-worker,
    which the user never gave."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    args = cli.build_parser().parse_args(["--resume", "--logdir", str(tmp_path / "r")])
    said = f"{tmp_path / 'r' / 'config.json'}: not found; is {tmp_path / 'r'} a fastconv run"
    with pytest.raises(ConfigError, match=re.escape(said)):
        cli.configure(args, resume=True)


def test_defaults_are_the_books_run():
    args = cli.build_parser().parse_args([])
    config = cli.config_from_args(args)
    assert (config.epochs, config.batch_size, config.learning_rate) == (20, 128, 0.01)
    assert (config.n_kernels, config.units, config.xla, config.standardize) == (
        10,
        100,
        False,
        "scale",
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "argument --epochs: '0' must be a positive number"),
        (["--batch-size", "-5"], "argument --batch-size: '-5' must be a positive number"),
        (["--learning-rate", "nan"], "argument --learning-rate: 'nan' must be a positive number"),
        (["--learning-rate", "fast"], "argument --learning-rate: 'fast' is not a number"),
        (["--epochs", "abc"], "argument --epochs: 'abc' is not a whole number"),
        (["--standardize", "minmax"], "argument --standardize: invalid choice: 'minmax'"),
        (["--seed", "-1"], "argument --seed: '-1' must lie in [0, 2**31)"),
        (["--shards", "3"], "argument --shards: 3 must divide batch_size=128"),
        (["--precision", "float8"], "argument --precision: invalid choice: 'float8'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--profile-steps", "5"], "argument --profile-steps: '5' is not two steps START,STOP"),
        (["--profile-steps", "5,2"], "argument --profile-steps: '5,2' needs 1 <= START <= STOP"),
        (["--log-every", "0"], "argument --log-every: '0' must be a positive number"),
        (["--resume"], "argument --resume: needs the --logdir of the run to continue"),
        (  # the flag given is blamed, not the recipe's --warmup-epochs
            ["--recipe", "fast", "--schedule", "constant"],
            "argument --schedule: 'constant' has no warm-up, and --recipe fast sets "
            "--warmup-epochs 2.0: give --warmup-epochs 0 with it",
        ),
    ],
)
def test_bad_flags_are_argparse_errors(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_batch_larger_than_training_set_is_an_argparse_error(tmp_path, capsys):
    folder = write_dataset(tmp_path / "data", train=100, test=20)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--data-dir", str(folder), "--batch-size", "81"])
    assert exit_info.value.code == 2
    assert "argument --batch-size: 81 is larger than the 80 training images" in (
        capsys.readouterr().err
    )
    # A split that leaves less than the default batch is the split's flag's fault.
    with pytest.raises(SystemExit):
        cli.main(["--data-dir", str(folder), "--validation-fraction", "0.5"])
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.endswith(
        "error: argument --validation-fraction: 0.5 leaves 50 of the 100 training images, "
        "fewer than a batch (--batch-size 128)"
    )


def _replace(name: str, payload: bytes):
    def damage(folder: Path) -> Path:
        (folder / name).write_bytes(payload)
        return folder / name

    return damage


def _delete(name: str):
    def damage(folder: Path) -> Path:
        (folder / name).unlink()
        return folder  # the error names the folder it looked in, and the file it missed

    return damage


def _missing_folder(folder: Path) -> Path:
    return folder / "nowhere"


TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
BAD_INPUTS = {
    # name: (damage(folder) -> the path the error must name, the problem it must state)
    "missing directory": (_missing_folder, "no such directory (--data-dir)"),
    "missing file": (_delete(TRAIN_LABELS), "missing train-labels-idx1-ubyte (.gz or raw)"),
    "truncated gzip": (
        _replace(TRAIN_LABELS, gzip.compress(idx_bytes(np.zeros(600, np.uint8)))[:-9]),
        "corrupt or truncated gzip data",
    ),
    "wrong magic number": (
        _replace(TRAIN_IMAGES, gzip.compress(b"\x08\x03" + idx_bytes(np.zeros((2, 28, 28)))[2:])),
        "not an IDX file (bad magic number",
    ),
    "counts differ": (
        _replace(TRAIN_LABELS, gzip.compress(idx_bytes(np.zeros(599, np.uint8)))),
        "599 labels for the 600 images",
    ),
    "label outside 0-9": (
        _replace(TRAIN_LABELS, gzip.compress(idx_bytes(np.full(600, 10, np.uint8)))),
        "label 10 at index 0 is outside 0-9",
    ),
    "wrong image size": (
        _replace(TRAIN_IMAGES, gzip.compress(idx_bytes(np.zeros((600, 32, 32), np.uint8)))),
        "images of shape (32, 32), expected (N, 28, 28)",
    ),
    "empty file": (_replace(TRAIN_IMAGES, b""), "file is empty"),
    "labels in the images' place": (
        _replace(TRAIN_IMAGES, gzip.compress(idx_bytes(np.zeros(600, np.uint8)))),
        "holds an array of shape (600,), expected images (N, 28, 28) (is it a labels file?)",
    ),
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_file_exit_2(tmp_path, kind):
    damage, problem = BAD_INPUTS[kind]
    folder = write_dataset(tmp_path / "data")
    named = damage(folder)
    data_dir = named if kind.startswith("missing") else folder
    run = train("--data-dir", str(data_dir), "--epochs", "1", cwd=tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {named}"), run.stderr
    assert problem in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_diverging_run_exits_1_naming_epoch_and_step(tmp_path):
    """The docs' example: its loss blows up long before it turns non-finite."""
    run = train("--learning-rate", "1e4", "--logdir", "run", cwd=tmp_path)
    assert run.returncode == 1
    lines = run.stderr.splitlines()  # the error alone: none of TensorFlow's C++ lines
    assert len(lines) == 1, run.stderr
    assert re.fullmatch(
        r"error: training diverged in epoch 1 at step \d+ of 375: .*; no checkpoint had been "
        r"saved; lower --learning-rate \(now 10000.0\)",
        lines[0],
    )


def test_quiet_prints_only_the_results(tmp_path):
    folder = write_dataset(tmp_path / "data")
    run = train(
        "--data-dir", str(folder), "--epochs", "2", "--batch-size", "32", "--quiet", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2, run.stdout
    assert lines[0].startswith("validation accuracy") and "run folder runs/" in lines[1]
    assert run.stderr == ""  # nor the C++ lines TensorFlow prints as it loads


# The environment without PYTHONUNBUFFERED (which the tests' own may set): the command's
# output then waits in its buffer until the command flushes it.
BUFFERED = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}


def test_the_output_is_flushed_before_the_process_ends(monkeypatch):
    """What the command printed into a pipe's buffer arrives, all of it."""
    monkeypatch.setenv("COLUMNS", "80")  # argparse's line width, here and there
    run = run_script("train.py", "--help", env={**BUFFERED, "COLUMNS": "80"})
    parser = cli.build_parser()
    parser.prog = "train.py"
    assert (run.returncode, run.stdout, run.stderr) == (0, parser.format_help(), "")


@pytest.mark.parametrize(
    ("flags", "closed", "code"),
    [(["--help"], 1, 0), (["--epochs", "0"], 2, 2), (["--epochs", "1"], 1, 120)],
)
def test_a_command_started_with_its_output_closed_ends_with_its_own_code(
    flags, closed, code, tmp_path
):
    """Started with stdout or stderr closed (Python then has None for it), the command ends
    with the code of what it did, not a traceback at its exit; a run that could print
    nothing is not started (--help goes to stderr, as argparse has it)."""
    run = run_script(
        "train.py",
        *flags,
        env=BUFFERED,
        timeout=120,
        cwd=tmp_path,
        preexec_fn=lambda: os.close(closed),
    )
    assert run.returncode == code
    assert "Traceback" not in run.stderr
    if code == 120:
        assert (
            run.stderr == "error: cannot write the output: stdout is closed; nothing was started\n"
        )
        assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full to write to")
@pytest.mark.parametrize("quiet", [False, True])
def test_output_that_cannot_be_written_is_one_line_exit_120(data_dir, tmp_path, quiet):
    """A full output: the first line fails before the run starts; under --quiet the run's
    only lines, the results, come after they are written in its folder."""
    logdir = tmp_path / "run"
    flags = ["--data-dir", str(data_dir), "--logdir", str(logdir), "--batch-size", "32"]
    flags += ["--epochs", "1"] + (["--quiet"] if quiet else [])
    with open("/dev/full", "w") as full:
        script = [sys.executable, str(SCRIPTS / "train.py"), *flags]
        run = subprocess.run(script, stdout=full, stderr=PIPE, text=True, timeout=600)
    assert run.returncode == 120
    if quiet:
        assert run.stderr == (
            "error: cannot write the output (No space left on device); the run is done; its "
            f"results are in {logdir}\n"
        )
        assert (logdir / "metrics.json").exists()
    else:
        assert run.stderr == (
            "error: cannot write the output (No space left on device): stopped during "
            "start-up; nothing was saved\n"
        )
        assert not logdir.exists()


def test_a_reader_that_goes_away_stops_the_run_having_saved_it(data_dir, tmp_path):
    """`train.py | head`: as a Unix tool whose reader went away, the run stops (the shell
    would wait for it), at its next answering point, saving a checkpoint first; exit 141."""
    logdir = tmp_path / "run"
    with run_paused_in_checkpoint(data_dir, logdir, "--epochs", "3") as run:  # in epoch 1's
        run.stdout.close()  # the reader goes
        go_on(run)
        run.wait(timeout=300)
        stderr = run.stderr.read()
    checkpoint = logdir / "checkpoints" / "ckpt-100"
    assert (run.returncode, stderr) == (
        141,
        f"error: the output's reader went away: stopped after epoch 2; saved {checkpoint}; "
        f"resume with: python scripts/train.py --logdir {logdir} --resume\n",
    )
    assert tf.train.latest_checkpoint(str(logdir / "checkpoints")) == str(checkpoint)


def escaped(text) -> str:
    """`text` as a stream that cannot encode it prints it: \\uXXXX escapes."""
    return str(text).encode("ascii", "backslashreplace").decode()


def test_a_run_started_in_a_removed_folder_is_refused_in_one_line(data_dir, tmp_path):
    """The default --logdir is relative: a FileNotFoundError traceback from os.getcwd."""
    gone = tmp_path / "gone"
    gone.mkdir()
    script = 'cd "$1" && rmdir "$1" && exec "$2" "$3" --data-dir "$4" --epochs 1'
    command = ["sh", "-c", script, "sh", str(gone), sys.executable, str(SCRIPTS / "train.py")]
    run = subprocess.run([*command, str(data_dir)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert re.fullmatch(
        r"error: --logdir runs/\S+: the current folder is gone \(No such file or directory\); "
        r"start the run from another, or give a full path\n",
        run.stderr,
    ), run.stderr


def test_a_data_dir_whose_name_python_cannot_decode_trains(data_dir, tmp_path):
    """Under the C locale (no coercion, no UTF-8 mode) Python holds a non-ASCII path as
    surrogates: the data reads as well, but TensorBoard's hparams, which take UTF-8 text,
    ended the run in a traceback after its folder was written."""
    c_locale = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    korean_data = tmp_path / "데이터"
    korean_data.symlink_to(data_dir)
    run = run_script(
        "train.py",
        *["--data-dir", str(korean_data), "--logdir", str(tmp_path / "run"), "--epochs", "1"],
        env=c_locale,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "metrics.json").exists()


def test_a_terminal_that_is_not_utf8_gets_escapes_not_a_traceback(data_dir, tmp_path):
    """The book's Korean title in --help, and non-ASCII paths in the run's lines and errors."""
    ascii_terminal = {**os.environ, "LC_ALL": "C", "PYTHONIOENCODING": "ascii"}
    usage = run_script("train.py", "--help", env=ascii_terminal)
    assert usage.returncode == 0, usage.stderr
    assert "'Do it! \\ub525\\ub7ec\\ub2dd \\uc785\\ubb38'" in usage.stdout
    korean_data, logdir = tmp_path / "데이터", tmp_path / "실행"
    korean_data.symlink_to(data_dir)
    run = run_script(
        "train.py",
        *["--data-dir", str(korean_data), "--logdir", str(logdir), "--batch-size", "32"],
        *["--epochs", "1"],
        env=ascii_terminal,
    )
    assert run.returncode == 0, run.stderr
    assert f"data_dir={escaped(korean_data)} " in run.stdout
    assert run.stdout.endswith(f"run folder {escaped(logdir)}\n")
    missing = run_script("train.py", "--data-dir", str(tmp_path / "없음"), env=ascii_terminal)
    assert (missing.returncode, missing.stderr) == (
        2,
        f"error: {escaped(tmp_path / '없음')}: no such directory (--data-dir)\n",
    )
