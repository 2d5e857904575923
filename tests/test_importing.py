"""fastconv.importing: TensorFlow imported once, synchronously, its C++ lines held back.

Each test runs a fresh interpreter whose `tensorflow` is a stand-in on PYTHONPATH: it writes
to C's stderr as the real one does as it imports and as it lists the GPUs. With GO set, the
import waits on that FIFO, which nobody opens: a command that imports TensorFlow before it
refuses its input would hang there, so those tests prove the order, not a timing.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fastconv import importing

ROOT = Path(__file__).resolve().parent.parent

# The stand-in: a C-level line as it imports, another as it lists the GPUs; with GO set it
# first waits until that FIFO is opened for writing, with FAIL set it fails as a broken
# installation would, and it records the TF_CPP_MIN_LOG_LEVEL it was imported with.
STAND_IN = """
import os
os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\\n")
if os.environ.get("GO"):
    with open(os.environ["GO"]) as go:
        go.read()
if os.environ.get("FAIL"):
    raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")
imported_with = os.environ.get("TF_CPP_MIN_LOG_LEVEL")


class config:
    @staticmethod
    def list_physical_devices(kind):
        os.write(2, b"E0000 cuda_executor.cc:1228] failed call to cuInit: UNKNOWN ERROR\\n")
        if os.environ.get("TF_XLA_FLAGS") == "--no_such_flag":  # as TensorFlow's parser ends it
            os.write(2, b"F0000 parse_flags_from_env.cc:234] Unknown flag in TF_XLA_FLAGS\\n")
            os._exit(1)
        return []
"""


@pytest.fixture
def stand_in(tmp_path):
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(STAND_IN)
    os.mkfifo(tmp_path / "never")

    def run(script: str, **env) -> subprocess.CompletedProcess:
        environment = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
        environment.pop("TF_CPP_MIN_LOG_LEVEL", None)
        environment.update(**env)
        return subprocess.run(
            [sys.executable, "-c", script],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,  # a command that imported a waiting stand-in would hang here
        )

    return run


# The command's own lines around the import, and the level TensorFlow was imported with.
AROUND_THE_IMPORT = """
import sys
from fastconv.importing import import_tensorflow
print("before the import", file=sys.stderr)
import_tensorflow()
import tensorflow
print("after the import", tensorflow.imported_with, file=sys.stderr)
"""


# The command's line, then the stand-in's two, as they reach the terminal when let through.
THROUGH = [
    "before the import",
    "I0000 cudart_stub.cc:31] Could not find cuda drivers",
    "E0000 cuda_executor.cc:1228] failed call to cuInit: UNKNOWN ERROR",
]


@pytest.mark.parametrize("level", [None, "1", "2", "3"])
def test_tensorflows_cpp_lines_are_held_back_whatever_the_log_level(stand_in, level):
    """The import's lines and the GPU listing's (the cuInit error that level 2 lets through)
    stay off the terminal; TensorFlow is imported with level 3, so its later lines do too."""
    result = stand_in(AROUND_THE_IMPORT, **({"TF_CPP_MIN_LOG_LEVEL": level} if level else {}))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "before the import\nafter the import 3\n"


def test_tf_cpp_min_log_level_0_lets_tensorflows_lines_through(stand_in):
    result = stand_in(AROUND_THE_IMPORT, TF_CPP_MIN_LOG_LEVEL="0")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [*THROUGH, "after the import 0"]


def test_with_tf_xla_flags_set_tensorflows_own_end_of_the_process_reaches_the_terminal(stand_in):
    """TensorFlow ends the process on a flag of TF_XLA_FLAGS it does not know, before any
    Python code could show what was held back: where it is set, nothing is held back."""
    result = stand_in(AROUND_THE_IMPORT, TF_XLA_FLAGS="--no_such_flag")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        *THROUGH,
        "F0000 parse_flags_from_env.cc:234] Unknown flag in TF_XLA_FLAGS",
    ]
    # A flag it knows: the lines come through, and the later ones are still held back.
    result = stand_in(AROUND_THE_IMPORT, TF_XLA_FLAGS="--tf_xla_auto_jit=2")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [*THROUGH, "after the import 3"]


def test_a_failed_import_shows_tensorflows_lines_and_its_error(stand_in):
    result = stand_in(AROUND_THE_IMPORT, FAIL="1")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[:2] == [
        "before the import",
        "I0000 cudart_stub.cc:31] Could not find cuda drivers",
    ]
    assert lines[-1] == (
        "ImportError: libtensorflow_framework.so.2: cannot open shared object file"
    )
    assert "after the import" not in result.stderr


def test_a_corrupt_data_file_is_refused_before_tensorflow_is_imported(stand_in, tmp_path):
    """The training command itself: its error, exit code 2, nothing written, and TensorFlow
    never imported (the stand-in would wait for good)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (data_dir / f"{name}-ubyte.gz").write_bytes(b"\x1f\x8b\x08 not gzip")
    result = stand_in(
        f"import sys; sys.argv = ['train.py', '--data-dir', {str(data_dir)!r}, "
        f"'--logdir', {str(tmp_path / 'run')!r}]\n"
        "from fastconv.cli import main_entry; main_entry()\n",
        GO=str(tmp_path / "never"),
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {data_dir}{os.sep}")
    assert "corrupt or truncated gzip data" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_batch_larger_than_the_training_set_is_refused_before_tensorflow_is_imported(
    stand_in, tmp_path
):
    """Found out once the data are read and split: argparse's refusal, exit code 2."""
    result = stand_in(
        f"import sys; sys.argv = ['train.py', '--batch-size', '100000', "
        f"'--logdir', {str(tmp_path / 'run')!r}]\n"
        "from fastconv.cli import main_entry; main_entry()\n",
        GO=str(tmp_path / "never"),
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("train.py: error: argument --batch-size: ")
    assert not (tmp_path / "run").exists()


def test_ctrl_c_as_tensorflow_is_about_to_be_imported_ends_at_once(stand_in, tmp_path):
    """SIGINT, sent by the run to itself just before the import (FASTCONV_TEST_SIGNAL): one
    line, exit code 130, and the import never begun (the stand-in would wait for good)."""
    result = stand_in(
        f"import sys; sys.argv = ['train.py', '--logdir', {str(tmp_path / 'run')!r}]\n"
        "from fastconv.cli import main_entry; main_entry()\n",
        FASTCONV_TEST_SIGNAL="import:SIGINT",
        GO=str(tmp_path / "never"),
    )
    assert result.returncode == 130
    assert result.stderr == "error: interrupted by SIGINT during start-up; nothing was saved\n"
    assert not (tmp_path / "run").exists()


def test_without_a_writable_temporary_folder_nothing_is_held_back(monkeypatch, capfd):
    """On a read-only root (no /tmp, /var/tmp or current folder to write in) the temporary
    file raised FileNotFoundError, a traceback: the lines go to the terminal instead."""

    def no_folder(*args, **kwargs):
        raise FileNotFoundError(2, "No usable temporary directory found")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_folder)
    with importing._c_stderr_held_back():
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\n")
    assert capfd.readouterr().err == "I0000 cudart_stub.cc:31] Could not find cuda drivers\n"
