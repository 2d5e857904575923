"""Recipes: `book` is the default run bit for bit, `fast` sets what it says and yields to flags;
a scheduled Adam run with augmentation resumes exactly; the export predicts what the trainer
evaluated with EMA and TTA."""

import json
import signal

import numpy as np
import pytest
import tensorflow as tf
from helpers import checkpoint_values, run_script, start_script, synthetic_dataset
from test_reliability import assert_bit_identical, wait_for_line

from fastconv import cli, data, pipeline
from fastconv.config import RECIPES, ConfigError, TrainConfig, describe_recipe
from fastconv.model import CONV_FORMS
from fastconv.run import train_and_evaluate


def config_of(*flags: str) -> TrainConfig:
    return cli.config_from_args(cli.build_parser().parse_args(list(flags)))


def test_the_book_recipe_is_the_default_run_bit_for_bit():
    small = ("--epochs", "2", "--batch-size", "32")
    default, book = config_of(*small), config_of("--recipe", "book", *small)
    assert default == book and default.recipe == "book"
    runs = [train_and_evaluate(c, synthetic_dataset(), log=lambda _: None) for c in (default, book)]
    for a, b in zip(*(run.trainer.model.weights for run in runs)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert runs[0].val_loss == runs[1].val_loss and runs[0].test_loss == runs[1].test_loss
    # The book's arithmetic: plain SGD at a constant rate, the weights evaluated as they are.
    trainer = runs[0].trainer
    assert type(trainer.optimizer).__name__ == "SGD" and trainer.optimizer.momentum == 0
    assert not trainer.optimizer.use_ema and trainer.optimizer.weight_decay is None
    assert trainer.evaluated_weights == trainer.model.weights and not trainer.tta
    assert trainer.label_smoothing == 0 and trainer.learning_rate() == pytest.approx(0.01)


def test_the_fast_recipe_sets_its_settings_and_flags_override_them():
    config = config_of("--recipe", "fast", "--epochs", "3", "--seed", "7")
    assert config.recipe == "fast" and (config.epochs, config.seed) == (3, 7)
    for name, value in RECIPES["fast"].items():
        if name != "epochs":
            assert getattr(config, name) == value, name
    assert (config.n_kernels, config.units) == (10, 100)  # the book's network, unchanged
    assert TrainConfig.from_recipe("fast", epochs=3, seed=7) == config
    # A switch the recipe turns on can be turned off beside it.
    switched = config_of("--recipe", "fast", "--no-augment", "--no-tta")
    assert not switched.augment and not switched.tta and switched.optimizer == "adam"
    with pytest.raises(ConfigError, match="recipe='quick' must be one of book, fast"):
        TrainConfig.from_recipe("quick")


def test_a_run_too_short_for_the_recipes_warmup_says_which_flag_to_give(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--recipe", "fast", "--epochs", "2"])
    assert (
        "argument --warmup-epochs: 2.0 must be less than epochs=2 (--recipe fast sets it: "
        "give a smaller --warmup-epochs)"
    ) in capsys.readouterr().err


def test_help_lists_what_each_recipe_sets():
    text = " ".join(cli.build_parser().format_help().split())
    for name in RECIPES:
        assert f"{name}: {describe_recipe(name)}" in text
    assert "--optimizer adam" in describe_recipe("fast") and "--tta" in describe_recipe("fast")


def test_a_recipe_is_described_by_the_flags_that_exist(monkeypatch):
    """Fields whose flag is not their name in kebab case are named by their real flag."""
    monkeypatch.setitem(RECIPES, "wide", {"n_kernels": 32, "export_dir": "models/wide"})
    assert describe_recipe("wide") == "--kernels 32 --export models/wide"
    flags = {o for action in cli.build_parser()._actions for o in action.option_strings}
    assert {"--kernels", "--export"} <= flags


SCHEDULED = (
    *("--batch-size", "32", "--epochs", "6", "--optimizer", "adam", "--learning-rate", "0.003"),
    *("--schedule", "onecycle", "--warmup-epochs", "2", "--augment", "--shift", "1"),
    *("--ema", "0.9", "--tta", "--label-smoothing", "0.1", "--deterministic"),
)


def test_a_scheduled_adam_run_with_augmentation_resumes_bit_identically(data_dir, tmp_path):
    """Stopped by SIGTERM inside the schedule (in blocks of 7 steps), then resumed."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    flags = ["--data-dir", str(data_dir), *SCHEDULED, "--steps-per-call", "7"]
    run = run_script("train.py", *flags, "--logdir", str(whole))
    assert run.returncode == 0, run.stderr
    process = start_script("train.py", *flags, "--logdir", str(resumed))
    wait_for_line(process, r"^epoch +1/6")
    # Held still while the signal is queued, so it lands early in the run, whatever the load.
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    step = int(checkpoint_values(resumed)["step/.ATTRIBUTES/VARIABLE_VALUE"])
    assert 50 <= step < 300, "not stopped inside the schedule"  # 50 steps an epoch, 6 epochs
    run = run_script("train.py", "--logdir", str(resumed), "--resume")
    assert run.returncode == 0, run.stderr
    assert f"(step {step})" in run.stdout
    assert_bit_identical(checkpoint_values(resumed), checkpoint_values(whole))
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (whole, resumed)]
    for key in ("val_loss", "val_accuracy", "test_loss", "test_accuracy"):
        assert metrics[0][key] == metrics[1][key], key
    # The schedule runs to the last epoch: a resumed run may not move it.
    run = run_script("train.py", "--logdir", str(resumed), "--resume", "--epochs", "8")
    assert run.returncode == 2
    assert "error: --epochs 8: the run's --schedule onecycle ends at its last epoch, 6" in (
        run.stderr
    )


def test_config_json_records_the_recipe(data_dir, tmp_path):
    run = run_script(
        "train.py",
        *("--recipe", "fast", "--epochs", "1", "--warmup-epochs", "0.5", "--batch-size", "32"),
        *("--data-dir", str(data_dir), "--logdir", str(tmp_path), "--quiet"),
    )
    assert run.returncode == 0, run.stderr
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["recipe"] == "fast" and saved["optimizer"] == "adam" and saved["tta"] is True


def test_the_export_predicts_what_the_trainer_evaluated_with_ema_and_tta(fashion_mnist, tmp_path):
    config = TrainConfig.from_recipe(
        "fast", epochs=1, warmup_epochs=0.5, ema=0.99, export_dir=str(tmp_path / "model")
    )
    result = train_and_evaluate(config, fashion_mnist, log=lambda _: None)
    trainer = result.trainer
    split = data.book_split(fashion_mnist, config)
    standardize = pipeline.Standardization.named("zscore", split.train_images)
    images = standardize(fashion_mnist.test_images[..., None])
    logits = trainer.forpass(images).numpy()
    loaded = tf.saved_model.load(config.export_dir)
    classify = loaded.signatures["serving_default"]
    probabilities = classify(images=tf.constant(fashion_mnist.test_images))["probabilities"]
    expected = tf.nn.softmax(logits).numpy()
    tolerance = 1e-6
    if CONV_FORMS[trainer.conv_form].stock:
        # The export recomputes the fused op's conv layer with TensorFlow's ops: the same
        # float32 values summed in another order, so a feature may round the other way when
        # cast to the compute dtype: by one unit of bfloat16's 8 bits.
        tolerance = 3e-3 if trainer.model.dtype_policy.compute_dtype == "bfloat16" else 1e-5
    np.testing.assert_allclose(probabilities.numpy(), expected, atol=tolerance)
    predicted = probabilities.numpy().argmax(axis=1)
    evaluated = trainer.predict_step(images).numpy()
    # Predictions differ only where the two best classes are closer than that rounding.
    top_two = np.sort(expected, axis=1)[:, -2:]
    differ = predicted != evaluated
    assert (top_two[differ, 1] - top_two[differ, 0] < 2 * tolerance).all()
    accuracy = (predicted == fashion_mnist.test_labels).mean()
    assert accuracy == pytest.approx(result.test_accuracy, abs=differ.mean() + 1e-6)
    # The check has teeth: the last weights without the mirrors predict differently.
    raw = trainer.model.forpass(images, trainer.conv_form).numpy().argmax(axis=1)
    assert (raw != predicted).sum() > 10
