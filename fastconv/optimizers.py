"""The run's optimizer and learning-rate schedule: Keras's, built from the configuration.

The learning rate is a `keras.optimizers.schedules.LearningRateSchedule` of the optimizer's
own step counter (`iterations`), so it is computed inside the compiled step, never traced
again and never read by the host, and a checkpoint of the optimizer restores it exactly.
The exponential moving average of the weights is Keras's too (`use_ema`): its variables
live in the optimizer, so they are checkpointed with it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

if TYPE_CHECKING:
    from fastconv.config import TrainConfig


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """A straight line from 0 up to `peak` over `warmup_steps`, then one down to 0 at
    `total_steps` (and 0 after): the one-cycle policy in its triangular form."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rising = step / max(self.warmup_steps, 1)
        falling = (self.total_steps - step) / (self.total_steps - self.warmup_steps)
        fraction = tf.where(step < self.warmup_steps, rising, falling)
        return self.peak * tf.clip_by_value(fraction, 0.0, 1.0)

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def learning_rate(config: TrainConfig, steps_per_epoch: int | None):
    """`config.learning_rate` itself, or for a schedule, a schedule of the step that peaks
    at it. A schedule spans `config.epochs` of `steps_per_epoch` steps."""
    if config.schedule == "constant":
        return config.learning_rate
    if steps_per_epoch is None:
        raise ValueError(f"schedule={config.schedule!r} needs the steps per epoch")
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = math.ceil(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "onecycle":
        return OneCycle(config.learning_rate, warmup_steps, total_steps)
    if not warmup_steps:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        total_steps - warmup_steps,
        warmup_target=config.learning_rate,
        warmup_steps=warmup_steps,
    )


def make_optimizer(
    config: TrainConfig, steps_per_epoch: int | None = None, not_decayed: list = ()
) -> keras.optimizers.Optimizer:
    """The optimizer `config` names, not yet built. Weight decay, if any, leaves out the
    variables `not_decayed` (the biases: decaying them pulls the units' thresholds to 0
    and does nothing for the function's smoothness)."""
    rate = learning_rate(config, steps_per_epoch)
    options = {}
    if config.ema:
        options.update(use_ema=True, ema_momentum=config.ema)
    if config.weight_decay is not None:
        options["weight_decay"] = config.weight_decay
    name = config.optimizer
    if name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=rate, **options)
    elif name in ("momentum", "nesterov"):
        optimizer = keras.optimizers.SGD(
            learning_rate=rate, momentum=config.momentum, nesterov=name == "nesterov", **options
        )
    elif name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=rate, **options)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=rate, **options)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    if optimizer.weight_decay:
        optimizer.exclude_from_weight_decay(var_list=list(not_decayed))
    return optimizer


def weight_averages(optimizer: keras.optimizers.Optimizer) -> list | None:
    """The moving averages of the weights that `use_ema` keeps, in the order the optimizer
    was built with; None without EMA. (Keras keeps them in a private attribute and offers
    only to overwrite the weights with them, which would end the training.)"""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # under loss scaling
    if not inner.use_ema:
        return None
    return list(inner._model_variables_moving_average)
