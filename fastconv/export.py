"""A trained network as a SavedModel that classifies raw uint8 images, outside the trainer.

The serving signature takes what a user has, images (N, 28, 28) uint8 as in the IDX files,
and returns class probabilities (N, 10); the standardization the network was trained with
and the class names travel inside the model.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from fastconv.data import CLASS_NAMES, IMAGE_SIZE
from fastconv.model import IMAGE_SHAPE
from fastconv.pipeline import Standardization
from fastconv.rundir import RunFolderError, reason, require_utf8
from fastconv.runtime import stock_conv_form
from fastconv.trainer import Trainer

SIGNATURE = "serving_default"
# Beside the SavedModel: which run exported it, so a later export of the same run may
# replace it and nothing else is overwritten.
RECORD = "fastconv-export.json"


class Classifier(tf.Module):
    """uint8 images -> probabilities, computed by the trainer's own forpass.

    The forpass is the trainer's (the same precision, XLA setting, evaluated weights and
    test-time augmentation), so the loaded model predicts what the trainer predicted. Its
    conv form is the trainer's too, except that fastconv's own op (`fastconv.native`) is
    replaced by TensorFlow's ops for the same function, so the model loads anywhere (the
    logits then agree to float32 rounding, and under mixed_bfloat16 to one bfloat16 unit
    where a feature rounds the other way).
    """

    def __init__(self, trainer: Trainer, standardize: Standardization):
        super().__init__(name="fastconv_classifier")
        self.model = trainer.model
        # The variables the forpass reads (the moving averages under --ema), so the
        # SavedModel holds them.
        self.evaluated_weights = list(trainer.evaluated_weights)
        self.class_names = tf.Variable(list(CLASS_NAMES), trainable=False, name="class_names")
        self._forpass = functools.partial(
            trainer.forpass, conv_form=stock_conv_form(trainer.conv_form)
        )
        self._standardize = standardize
        self.classify = tf.function(
            self._classify,
            jit_compile=trainer.xla,
            input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.uint8, "images")],
        )

    def _classify(self, images):
        images = self._standardize(tf.reshape(images, [-1, *IMAGE_SHAPE]))
        return {"probabilities": tf.nn.softmax(self._forpass(images))}


def export(
    trainer: Trainer,
    standardize: Standardization,
    directory: str | Path,
    run: str | None = None,
    before_commit: Callable[[], None] | None = None,
) -> Path:
    """Writes the SavedModel to `directory`, whole or not at all.

    The model is written beside it first, then moved into place, replacing a previous
    export of the same `run` (the resolved run folder, see `check_target`); a failed or
    stopped export (`before_commit` may raise) leaves no partial folder.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # A private folder of a unique name beside it holds the model as it is written; the
    # model's own folder is made in it, so its mode follows the umask, as run folders do
    # (mkdtemp's are 0700 whatever the umask).
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    partial = staging / directory.name
    try:
        partial.mkdir()
        classifier = Classifier(trainer, standardize)
        tf.saved_model.save(classifier, str(partial), signatures={SIGNATURE: classifier.classify})
        (partial / RECORD).write_text(json.dumps({"run": run}) + "\n")
        if before_commit:
            before_commit()
        if directory.exists():  # empty, or this run's previous export (check_target)
            os.replace(directory, staging / "old")
        os.replace(partial, directory)
    except (OSError, tf.errors.OpError) as error:
        raise RunFolderError(
            f"--export {directory}: cannot write there ({reason(error)})"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def check_target(directory: str | Path, run: str | None) -> None:
    """Refuses, before any training, an export folder the run could not write or must not
    overwrite: a file, a folder holding anything but a previous export of the same `run`,
    or a place that cannot be written."""
    directory = Path(directory)
    require_utf8("--export", directory)
    if directory.exists() and not directory.is_dir():
        raise RunFolderError(f"--export {directory}: is a file, not a folder")
    if run and directory.resolve() == Path(run):
        raise RunFolderError(f"--export {directory}: is the run folder (--logdir); choose another")
    if directory.is_dir() and any(directory.iterdir()):
        try:
            exported_by = json.loads((directory / RECORD).read_text())["run"]
        except (OSError, ValueError, KeyError, TypeError):
            exported_by = None
        if run is None or exported_by != run:
            raise RunFolderError(
                f"--export {directory}: the folder is not empty and holds no earlier export "
                "of this run; choose an empty or new folder"
            )
    # The export is written beside its folder: in its parent, or the nearest folder above.
    existing = next(folder for folder in directory.absolute().parents if folder.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise RunFolderError(
            f"--export {directory}: cannot write there ({reason(error)})"
        ) from None
