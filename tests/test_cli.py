"""The command line, end to end: real runs in a subprocess, flag errors in-process."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_dataset

from fastconv import cli

SCRIPT = Path(__file__).parents[1] / "scripts" / "train.py"


def train(*flags: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, timeout=timeout
    )


def test_one_epoch_on_real_data_with_xla():
    run = train("--xla", "--epochs", "1")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "xla=True" in out and "batch_size=128" in out and "learning_rate=0.01" in out
    assert re.search(r"device: CPU", out)
    assert re.search(r"compiled in \d+\.\d+ s", out)
    epoch = re.search(
        r"epoch 1/1  loss (\S+)  acc \S+ \| val loss (\S+)  acc (\S+) \| "
        r"\S+ s  ([\d,]+) img/s",
        out,
    )
    assert epoch, out
    assert float(epoch.group(1)) < 1.5 and float(epoch.group(3)) > 0.7
    assert int(epoch.group(4).replace(",", "")) > 0
    final = re.search(r"validation accuracy (\S+) .* test accuracy (\S+)", out)
    assert final and float(final.group(1)) == float(epoch.group(3))
    assert float(final.group(2)) > 0.7
    assert "total wall time" in out


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
        (["--learning-rate", "fast"], "argument --learning-rate: 'fast' is not a float"),
        (["--standardize", "minmax"], "argument --standardize: invalid choice: 'minmax'"),
        (["--seed", "-1"], "seed=-1 must lie in"),
        (["--shards", "3"], "shards=3 must divide batch_size=128"),
        (["--precision", "float8"], "argument --precision: invalid choice: 'float8'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_flags_are_argparse_errors(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_corrupt_data_file_is_one_line_naming_it(tmp_path):
    folder = write_dataset(tmp_path / "data")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00truncated")
    run = train("--data-dir", str(folder), "--epochs", "1")
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(
        f"error: {folder / 'train-labels-idx1-ubyte.gz'}: corrupt or truncated gzip data"
    )
    assert "Traceback" not in run.stderr


def test_batch_larger_than_training_set_is_refused(tmp_path):
    folder = write_dataset(tmp_path / "data", train=100, test=20)
    run = train("--data-dir", str(folder), "--batch-size", "81")
    assert run.returncode == 2
    assert "error: batch_size=81 is larger than the 80 training images" in run.stderr
    assert "Traceback" not in run.stderr


def test_diverging_run_exits_non_zero_naming_the_epoch(tmp_path):
    folder = write_dataset(tmp_path / "data")
    run = train("--data-dir", str(folder), "--learning-rate", "1e10", "--batch-size", "32")
    assert run.returncode == 1
    assert re.search(r"error: .* in epoch 1, steps 1-15; lower --learning-rate", run.stderr)
    assert "Traceback" not in run.stderr
