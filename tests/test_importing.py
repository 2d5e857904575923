"""fastconv.importing: TensorFlow imported in the background, its C++ lines held back.

Each test runs a fresh interpreter whose `tensorflow` is a stand-in on PYTHONPATH: it writes
to C's stderr as the real one does, and waits on a FIFO for the test's word, so what the
command does while the import is still running is reached by a hook, not by timing.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_dataset

ROOT = Path(__file__).resolve().parent.parent

# The stand-in: a C-level line, then it waits until the FIFO is opened for writing (and,
# with FAIL set, fails as a broken installation would).
STAND_IN = """
import os
os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\\n")
with open(os.environ["GO"]) as go:
    go.read()
if os.environ.get("FAIL"):
    raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")
"""


@pytest.fixture
def stand_in(tmp_path):
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(STAND_IN)
    go = tmp_path / "go"
    os.mkfifo(go)

    def run(script: str, **env) -> subprocess.CompletedProcess:
        environment = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
        environment.pop("TF_CPP_MIN_LOG_LEVEL", None)
        environment.update(GO=str(go), **env)
        return subprocess.run(
            [sys.executable, "-c", script],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,  # a command that waited for the stand-in would hang here
        )

    return run


# While the import waits, the command prints (Python's stderr) and then lets it go.
WHILE_IMPORTING = """
import os, sys
from fastconv.importing import TensorFlowImport
importing = TensorFlowImport()
print("error: printed while TensorFlow imports", file=sys.stderr)
open(os.environ["GO"], "w").close()
importing.wait()
print("after the import", file=sys.stderr)
"""


def test_the_command_is_heard_while_tensorflows_cpp_lines_are_held_back(stand_in):
    result = stand_in(WHILE_IMPORTING)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "error: printed while TensorFlow imports\nafter the import\n"


def test_tf_cpp_min_log_level_0_lets_tensorflows_lines_through(stand_in):
    result = stand_in(WHILE_IMPORTING, TF_CPP_MIN_LOG_LEVEL="0")
    assert result.returncode == 0, result.stderr
    assert "cudart_stub.cc:31] Could not find cuda drivers" in result.stderr


def test_a_failed_import_shows_tensorflows_lines_and_its_error(stand_in):
    result = stand_in(WHILE_IMPORTING, FAIL="1")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "error: printed while TensorFlow imports"
    assert lines[1] == "I0000 cudart_stub.cc:31] Could not find cuda drivers"
    assert lines[-1] == (
        "ImportError: libtensorflow_framework.so.2: cannot open shared object file"
    )
    assert "after the import" not in result.stderr


def test_a_command_refused_while_tensorflow_imports_exits_without_waiting(stand_in):
    """The stand-in is never let go: only an exit that does not wait for it returns."""
    result = stand_in(
        "import sys\n"
        "from fastconv.cli import exit_promptly\n"
        "from fastconv.importing import TensorFlowImport\n"
        "TensorFlowImport()\n"
        "print('error: bad file', file=sys.stderr)\n"
        "exit_promptly(2)\n"
    )
    assert result.returncode == 2
    assert result.stderr == "error: bad file\n"


def test_a_corrupt_data_file_is_refused_while_tensorflow_imports(stand_in, tmp_path):
    """The training command itself: its error, exit code 2, nothing written, the stand-in
    still waiting."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (data_dir / f"{name}-ubyte.gz").write_bytes(b"\x1f\x8b\x08 not gzip")
    result = stand_in(
        f"import sys; sys.argv = ['train.py', '--data-dir', {str(data_dir)!r}, "
        f"'--logdir', {str(tmp_path / 'run')!r}]\n"
        "from fastconv.cli import main_entry; main_entry()\n"
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {data_dir}{os.sep}")
    assert "corrupt or truncated gzip data" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_flag_refused_while_tensorflow_imports_exits_without_waiting(stand_in, tmp_path):
    """A batch larger than the training set is found out once the data are read, while the
    stand-in still waits: argparse's refusal, exit code 2."""
    result = stand_in(
        f"import sys; sys.argv = ['train.py', '--batch-size', '100000', "
        f"'--logdir', {str(tmp_path / 'run')!r}]\n"
        "from fastconv.cli import main_entry; main_entry()\n"
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("train.py: error: argument --batch-size: ")
    assert not (tmp_path / "run").exists()


def test_ctrl_c_while_tensorflow_imports_ends_at_once(stand_in, tmp_path):
    """SIGINT, sent by the run to itself as the import has begun (FASTCONV_TEST_SIGNAL), with
    the stand-in never let go: one line, exit code 130."""
    result = stand_in(
        f"import sys; sys.argv = ['train.py', '--logdir', {str(tmp_path / 'run')!r}]\n"
        "from fastconv.cli import main_entry; main_entry()\n",
        FASTCONV_TEST_SIGNAL="import:SIGINT",
    )
    assert result.returncode == 130
    assert result.stderr == "error: interrupted by SIGINT during start-up; nothing was saved\n"
    assert not (tmp_path / "run").exists()


def test_the_evaluation_sets_are_prepared_while_tensorflow_imports(stand_in, tmp_path):
    """The command's preparation of the split, reached with the stand-in still waiting: it
    reports what it made, then stops the command (a data error: exit code 2)."""
    data_dir = write_dataset(tmp_path / "data", train=600, test=100)
    result = stand_in(
        f"import sys; sys.argv = ['train.py', '--data-dir', {str(data_dir)!r}, "
        f"'--eval-batch-size', '64', '--logdir', {str(tmp_path / 'run')!r}]\n"
        "from fastconv import data, importing, prepared\n"
        "prepare = prepared.prepare\n"
        "def prepare_and_stop(split, config):\n"
        "    ready = prepare(split, config)\n"
        "    print('still importing:', importing.still_importing())\n"
        "    print('validation:', ready.validation.images.shape, ready.validation.targets.shape)\n"
        "    print('test:', ready.test.images.shape)\n"
        "    raise data.DataError('stopped after preparing')\n"
        "prepared.prepare = prepare_and_stop\n"
        "from fastconv.cli import main_entry; main_entry()\n"
    )
    assert result.returncode == 2
    assert result.stderr == "error: stopped after preparing\n"
    # 600 training images split 480 / 120: the 120 in 2 batches of 64, the 100 tests in 2.
    assert result.stdout.splitlines() == [
        "still importing: True",
        "validation: (2, 64, 28, 28, 1) (2, 64, 10)",
        "test: (2, 64, 28, 28, 1)",
    ]
