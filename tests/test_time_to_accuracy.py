"""bench/time_to_accuracy.py: a smoke run on a small synthetic folder, and its arithmetic."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_dataset

SCRIPT = Path(__file__).parents[1] / "bench" / "time_to_accuracy.py"


def load_script():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_to_a_threshold_counts_training_seconds_to_the_first_epoch_there():
    script = load_script()
    history = [
        {"epoch": 1, "val_accuracy": 0.85, "seconds": 1.5},
        {"epoch": 2, "val_accuracy": 0.905, "seconds": 1.25},
        {"epoch": 3, "val_accuracy": 0.899, "seconds": 1.0},
        {"epoch": 4, "val_accuracy": 0.921, "seconds": 1.0},
    ]
    assert script.first_reached(history, 0.90) == (2, 2.75)
    assert script.first_reached(history, 0.92) == (4, 4.75)
    assert script.first_reached(history, 0.95) is None
    assert script.mean_std([1.0, 2.0, 3.0], 1) == "2.0 ± 1.0"
    assert script.mean_std([4, None], 1) == "4.0 (1 of 2)"
    assert script.mean_std([None, None], 1) == "never"


def test_smoke_run_prints_each_seed_and_the_mean(tmp_path):
    folder = write_dataset(tmp_path / "data", train=1000, test=100)
    results = tmp_path / "runs.json"
    command = [sys.executable, str(SCRIPT), "--recipe", "fast", "--seeds", "2", "--first-seed", "3"]
    command += ["--json", str(results), "--", "--data-dir", str(folder), "--epochs", "2"]
    command += ["--warmup-epochs", "0.5", "--batch-size", "32"]
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert re.search(r"^seed 3: validation 0\.\d{4}, test 0\.\d{4}, training", out, re.M)
    assert re.search(r"^seed 4: validation", out, re.M)
    assert "recipe fast, 2 seeds from 3 | CPU" in out and "load average before" in out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| seed | validation | test | training s | wall s | epoch to 0.90")
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| 3", "| 4", "| mean ± std"]
    saved = json.loads(results.read_text())
    assert [run["seed"] for run in saved] == [3, 4]
    assert all(len(run["history"]) == 2 and run["wall_seconds"] > 0 for run in saved)
    assert saved[0]["train_seconds"] == pytest.approx(
        sum(e["seconds"] for e in saved[0]["history"])
    )


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--seeds", "0"], "--seeds 0: must be at least 1"),
        (["--json", "no/such/folder/runs.json"], "argument --json: can't open"),
    ],
)
def test_bad_flags_are_refused_before_any_seed_runs(flags, said, capsys):
    """--seeds 0 was an IndexError traceback; a --json that cannot be written failed after
    every seed had run, and lost them."""
    with pytest.raises(SystemExit) as exit:
        load_script().main(flags)
    assert exit.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert f": error: {said}" in line  # after the program's name, pytest's here
