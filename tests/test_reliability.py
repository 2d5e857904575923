"""Checkpoints, exact resume, interruption, kill -9, the NaN guard, determinism and export.

The runs go through scripts/train.py in subprocesses (signals, exit codes, fresh processes)
on a small synthetic data set, so each costs TensorFlow's start-up and little else. Stops
and kills land at exact points through the test hooks of `fastconv.faults`, not after
sleeps that hope to hit a window.
"""

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from folders import DATA, STEPS_PER_EPOCH, read_whole, wait_for_line, with_env
from helpers import (
    checkpoint_values,
    run_script,
    start_script,
    synthetic_dataset,
)

from fastconv.config import TrainConfig
from fastconv.loop import TrainingDiverged
from fastconv.run import train_and_evaluate
from fastconv.trainer import Trainer


def common_flags(data_dir: Path, logdir: Path) -> list[str]:
    return ["--data-dir", str(data_dir), "--logdir", str(logdir), "--batch-size", "32"]


def train(data_dir, logdir, *flags):
    run = run_script("train.py", *common_flags(data_dir, logdir), "--deterministic", *flags)
    assert run.returncode == 0, run.stderr
    return run


def assert_bit_identical(a: dict, b: dict) -> None:
    """Same weights, optimizer state and step, bit for bit; the same history but for timings."""
    assert a.keys() == b.keys()
    for name in a:
        if name.startswith("run_state"):
            histories = [json.loads(state)["history"] for state in (a[name], b[name])]
            for history in histories:
                for epoch in history:
                    del epoch["seconds"], epoch["images_per_second"]
            assert histories[0] == histories[1]
        else:
            assert np.array_equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> Path:
    """A deterministic 6-epoch run, a whole epoch per call: the reference for the others."""
    logdir = tmp_path_factory.mktemp("uninterrupted")
    train(data_dir, logdir, "--epochs", "6")
    return logdir


def test_checkpoint_holds_the_whole_state(uninterrupted):
    values = checkpoint_values(uninterrupted)
    assert values["step/.ATTRIBUTES/VARIABLE_VALUE"] == 6 * STEPS_PER_EPOCH
    for weight in ("conv_w", "conv_b", "w1", "b1", "w2", "b2"):
        assert f"model/{weight}/.ATTRIBUTES/VARIABLE_VALUE" in values
    assert values["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 6 * STEPS_PER_EPOCH
    run_state = json.loads(values["run_state/.ATTRIBUTES/VARIABLE_VALUE"])
    assert [epoch["epoch"] for epoch in run_state["history"]] == [1, 2, 3, 4, 5, 6]
    # One checkpoint per epoch; the newest three are kept.
    names = sorted(path.name for path in (uninterrupted / "checkpoints").glob("*.index"))
    assert names == ["ckpt-200.index", "ckpt-250.index", "ckpt-300.index"]


def test_deterministic_reruns_are_bit_identical(data_dir, uninterrupted, tmp_path):
    train(data_dir, tmp_path, "--epochs", "6")
    assert_bit_identical(checkpoint_values(tmp_path), checkpoint_values(uninterrupted))


def test_resume_after_epoch_k_is_bit_identical(data_dir, uninterrupted, tmp_path):
    train(data_dir, tmp_path, "--epochs", "2")
    resumed = train(data_dir, tmp_path, "--epochs", "6", "--resume")
    assert "resumed from" in resumed.stdout and "(step 100)" in resumed.stdout
    assert "epoch 3/6" in resumed.stdout and "epoch 2/6" not in resumed.stdout
    assert_bit_identical(checkpoint_values(tmp_path), checkpoint_values(uninterrupted))
    metrics, reference = (
        json.loads((d / "metrics.json").read_text()) for d in (tmp_path, uninterrupted)
    )
    for key in ("train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy"):
        assert metrics[key] == reference[key], key


def test_sigterm_mid_epoch_saves_inside_the_epoch_and_resumes_exactly(
    data_dir, uninterrupted, tmp_path
):
    # Blocks of 7 steps, restarting at each epoch: epoch 2 runs steps 51-57, 58-64, ...
    # The hook sends SIGTERM after the block that reaches step 60, so the run stops after
    # step 64, 14 steps into epoch 2, and saves its checkpoint there.
    flags = [*common_flags(data_dir, tmp_path), "--deterministic", "--steps-per-call", "7"]
    stopped = run_script(
        "train.py", *flags, "--epochs", "6", env=with_env(FASTCONV_TEST_SIGNAL="step-60:SIGTERM")
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    checkpoint = tmp_path / "checkpoints" / "ckpt-64"
    assert stopped.stderr.strip().splitlines() == [
        f"error: interrupted by SIGTERM in epoch 2 after step 14 of 50; saved {checkpoint}; "
        f"resume with: python scripts/train.py --logdir {tmp_path} --resume"
    ]
    values = checkpoint_values(tmp_path)
    assert values["step/.ATTRIBUTES/VARIABLE_VALUE"] == 64  # inside epoch 2, not at its end
    run_state = json.loads(values["run_state/.ATTRIBUTES/VARIABLE_VALUE"])
    assert [epoch["epoch"] for epoch in run_state["history"]] == [1]
    # Resumed in the same blocks of 7, the run ends as the uninterrupted one, bit for bit.
    resumed = run_script("train.py", *flags, "--epochs", "6", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {checkpoint} (step 64)" in resumed.stdout
    assert_bit_identical(checkpoint_values(tmp_path), checkpoint_values(uninterrupted))


def test_kill_9_inside_a_checkpoint_write_resumes_from_the_previous_one(
    data_dir, uninterrupted, tmp_path
):
    """SIGKILL while checkpoint ckpt-100 is being written: its files are on disk, the index
    does not point at them yet. The resumed run starts from ckpt-50, nothing is corrupt, and
    it ends bit for bit as a run never killed."""
    flags = [*common_flags(data_dir, tmp_path), "--deterministic", "--epochs", "6"]
    killed = start_script(
        "train.py",
        *flags,
        stdin=subprocess.PIPE,
        env=with_env(FASTCONV_TEST_PAUSE_CHECKPOINT="100"),
    )
    checkpoints = tmp_path / "checkpoints"
    line = wait_for_line(killed, r"^test hook: paused in the write of")
    assert line.split()[-1] == str(checkpoints / "ckpt-100")
    assert (checkpoints / "ckpt-100.index").exists()  # written, not yet committed
    assert tf.train.latest_checkpoint(str(checkpoints)) == str(checkpoints / "ckpt-50")
    killed.kill()
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    # The killed run's lock died with it: the resume is not refused.
    resumed = run_script("train.py", *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {checkpoints / 'ckpt-50'} (step 50)" in resumed.stdout
    assert_bit_identical(checkpoint_values(tmp_path), checkpoint_values(uninterrupted))
    kept = [f"ckpt-{step}" for step in (200, 250, 300)]  # no debris beside them
    assert sorted(path.name for path in checkpoints.iterdir()) == sorted(
        ["checkpoint"] + [f"{name}.{part}" for name in kept for part in ("index", DATA)]
    )
    for step in (200, 250, 300):
        read_whole(checkpoints / f"ckpt-{step}")


def diverged_run(trainer_class, tmp_path, monkeypatch) -> str:
    """The divergence message of a run in `tmp_path` (epochs of 15 steps, blocks of 4) whose
    trainer is a `trainer_class`."""
    monkeypatch.setattr("fastconv.trainer.Trainer", trainer_class)
    config = TrainConfig(epochs=5, batch_size=32, logdir=str(tmp_path), steps_per_call=4)
    with pytest.raises(TrainingDiverged) as diverged:
        train_and_evaluate(config, synthetic_dataset(), log=lambda line: None)
    return str(diverged.value)


def test_nan_guard_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    class DivergesAtStep41(Trainer):
        """Steps as usual, then the loss of step 41 turns NaN (in epoch 3 of 15 steps)."""

        def train_step(self, images, targets):
            loss, correct = super().train_step(images, targets)
            return tf.where(self.step >= 40, tf.constant(np.nan), loss), correct

    message = diverged_run(DivergesAtStep41, tmp_path, monkeypatch)
    checkpoint = tmp_path / "checkpoints" / "ckpt-30"
    assert message == (
        "training diverged in epoch 3 at step 11 of 15: the loss became nan; the last good "
        f"checkpoint, {checkpoint}, is kept; lower --learning-rate (now 0.01)"
    )
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == str(checkpoint)


def test_a_nan_weight_with_a_finite_loss_at_an_epochs_end_is_not_saved(tmp_path, monkeypatch):
    class NanBiasAtStep30(Trainer):
        """Steps as usual, then step 30, the last of epoch 2 (of 15 steps), leaves b2 NaN
        after computing a finite loss: only the check of the weights can see it."""

        def train_step(self, images, targets):
            loss, correct = super().train_step(images, targets)
            nan = tf.fill(self.model.b2.shape, np.nan)
            self.model.b2.assign(tf.where(self.step >= 29, nan, self.model.b2))
            return loss, correct

    message = diverged_run(NanBiasAtStep30, tmp_path, monkeypatch)
    checkpoint = tmp_path / "checkpoints" / "ckpt-15"
    assert message == (
        "training diverged in epoch 2 at step 15 of 15: a weight became non-finite; the last "
        f"good checkpoint, {checkpoint}, is kept; lower --learning-rate (now 0.01)"
    )
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == str(checkpoint)
    assert np.isfinite(checkpoint_values(tmp_path)["model/b2/.ATTRIBUTES/VARIABLE_VALUE"]).all()


def test_exported_model_predicts_what_the_trainer_predicted(fashion_mnist, tmp_path):
    config = TrainConfig(epochs=1, export_dir=str(tmp_path / "model"))
    result = train_and_evaluate(config, fashion_mnist, log=lambda line: None)
    images = fashion_mnist.test_images
    expected = result.trainer.predict_step(tf.constant(images[..., None] / np.float32(255)))
    loaded = tf.saved_model.load(config.export_dir)
    probabilities = loaded.signatures["serving_default"](images=tf.constant(images))
    probabilities = probabilities["probabilities"].numpy()
    assert probabilities.shape == (10_000, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), expected.numpy())
    assert (expected.numpy() == fashion_mnist.test_labels).mean() == pytest.approx(
        result.test_accuracy, abs=1e-6
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "64"], "batch_size=64 differs from the resumed run's batch_size=32"),
        (["--learning-rate", "0.1"], "learning_rate=0.1 differs from the resumed run's"),
    ],
)
def test_resume_refuses_flags_that_change_the_arithmetic(uninterrupted, flags, message):
    run = run_script("train.py", "--logdir", str(uninterrupted), "--resume", *flags)
    assert run.returncode == 2
    assert f"error: {message}" in run.stderr and "Traceback" not in run.stderr


def test_resume_without_a_run_folder_and_a_fresh_run_over_one_are_refused(
    data_dir, uninterrupted, tmp_path
):
    run = run_script("train.py", "--logdir", str(tmp_path), "--resume")
    assert run.returncode == 2
    assert f"error: {tmp_path / 'config.json'}: not found" in run.stderr
    run = run_script("train.py", *common_flags(data_dir, uninterrupted))
    assert run.returncode == 2
    assert "already holds a run's checkpoints: continue it with --resume" in run.stderr
