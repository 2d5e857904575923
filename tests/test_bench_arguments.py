"""The bench scripts as their users run them, given values they cannot run with: one line
from argparse, exit code 2, before any measurement."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "script, flags, said",
    [
        # NaN seconds: a round that never ended, so the script hung.
        ("xla_custom_call.py", ["--seconds", "nan"], "--seconds nan: must be a positive number"),
        ("xla_custom_call.py", ["--rounds", "0"], "--rounds 0: must be at least 1"),
        # Tracebacks before: fastconv's ConfigError, and the book's IndexError on no epoch.
        ("step_trace.py", ["--batch-size", "100000"], "is larger than the 48000 training"),
        ("step_trace.py", ["--warmup", "-1"], "--warmup -1: must be at least 0"),
        ("book_end_to_end.py", ["--epochs", "0"], "--epochs 0: must be at least 1"),
        # A ValueError traceback, and with -1 threads TensorFlow's abort (exit code 134).
        ("keras_end_to_end.py", ["--threads=-1x1"], "not INTRAxINTER, two counts"),
        ("keras_end_to_end.py", ["--steps-per-execution", "0"], "--steps-per-execution 0: must"),
    ],
)
def test_a_value_a_bench_script_cannot_run_with_is_one_line(fashion_mnist, script, flags, said):
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert line.startswith(f"{script}: error: ") and said in line, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_pytest_bench_refuses_a_benchmark_json_it_could_not_write_before_any_run(tmp_path):
    """pytest-benchmark writes --benchmark-json after the whole run: a path in no folder
    failed there, in a traceback that lost the figures and fastconv's table."""
    path = tmp_path / "no-such-folder" / "bench.json"
    command = [sys.executable, "-m", "pytest", "bench/", "--benchmark-only", "-k", "no_peer"]
    done = subprocess.run(
        [*command, f"--benchmark-json={path}", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 4  # pytest's usage error
    assert f"ERROR: --benchmark-json={path}: cannot be written" in done.stderr
