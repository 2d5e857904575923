"""A trained network as a SavedModel that classifies raw uint8 images, outside the trainer.

The serving signature takes what a user has, images (N, 28, 28) uint8 as in the IDX files,
and returns class probabilities (N, 10); the standardization the network was trained with
and the class names travel inside the model.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from fastconv.data import CLASS_NAMES, IMAGE_SIZE
from fastconv.model import IMAGE_SHAPE
from fastconv.pipeline import Standardization
from fastconv.trainer import Trainer

SIGNATURE = "serving_default"


class Classifier(tf.Module):
    """uint8 images -> probabilities, computed by the trainer's own forpass.

    The forpass is the trainer's (the same formulation, precision, XLA setting, evaluated
    weights and test-time augmentation), so the loaded model predicts exactly what the
    trainer predicted.
    """

    def __init__(self, trainer: Trainer, standardize: Standardization):
        super().__init__(name="fastconv_classifier")
        self.model = trainer.model
        # The variables the forpass reads (the moving averages under --ema), so the
        # SavedModel holds them.
        self.evaluated_weights = list(trainer.evaluated_weights)
        self.class_names = tf.Variable(list(CLASS_NAMES), trainable=False, name="class_names")
        self._forpass = trainer.forpass
        self._standardize = standardize
        self.classify = tf.function(
            self._classify,
            jit_compile=trainer.xla,
            input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.uint8, "images")],
        )

    def _classify(self, images):
        images = self._standardize(tf.reshape(images, [-1, *IMAGE_SHAPE]))
        return {"probabilities": tf.nn.softmax(self._forpass(images))}


def export(trainer: Trainer, standardize: Standardization, directory: str | Path) -> Path:
    """Writes the SavedModel to `directory` (replacing what a previous export left there)."""
    classifier = Classifier(trainer, standardize)
    tf.saved_model.save(classifier, str(directory), signatures={SIGNATURE: classifier.classify})
    return Path(directory)
