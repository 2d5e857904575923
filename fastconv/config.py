"""The run's configuration: one frozen dataclass whose defaults are the book's run."""

from __future__ import annotations

import dataclasses
import math
import re

STANDARDIZATIONS = ("scale", "zscore")
# What a resumed run may change: where it ends, where it reads and writes, how it reports.
# Everything else takes part in the arithmetic, so it must stay as the run began.
RESUMABLE_CHANGES = (
    "epochs",
    "data_dir",
    "steps_per_call",
    "eval_batch_size",
    "export_dir",
    "device",
    "log_every",
    "profile_steps",
)
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("none", "mirrored", "multi-worker")
DEVICE_PATTERN = re.compile(r"auto|cpu|gpu(:\d+)?")


class ConfigError(ValueError):
    """A configuration field holds a value the trainer cannot run with."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; the defaults reproduce the book's run (chapter 08-4).

    Attributes:
      epochs: passes over the 48,000 training images.
      batch_size: images per SGD step; the remainder of each epoch is dropped, as in the book.
      learning_rate: plain SGD step size.
      n_kernels: 3x3 convolution kernels.
      units: hidden units of the dense layer.
      seed: seeds the weights, the split of the data and the order of the batches.
      xla: compile the training and evaluation steps with XLA (`jit_compile=True`).
      standardize: "scale" divides pixels by 255 (the book); "zscore" subtracts the training
        set's mean and divides by its standard deviation.
      data_dir: folder holding the four Fashion-MNIST IDX files; None searches the usual places.
      validation_fraction: share of the 60,000 training images held out, stratified by class.
      steps_per_call: training steps per compiled call; None runs a whole epoch per call.
      shards: split each batch into this many shards that run side by side and average
        their gradients (the same mean gradient); None picks 2 on a CPU, 1 on a GPU.
      precision: "float32" (the book's numerics), a Keras mixed-precision policy
        ("mixed_bfloat16", "mixed_float16": float32 variables, lower-precision compute), or
        "auto", which picks by device (`fastconv.runtime.choose_precision`).
      eval_batch_size: images per evaluation step (on the 2-core host 256 evaluated ~1.4x
        faster than 1000: a smaller batch's conv output stays in cache).
      logdir: the run folder (`fastconv.rundir`): configuration, checkpoints, metrics,
        TensorBoard logs. None keeps nothing on disk.
      deterministic: TensorFlow's op determinism on top of the seeds: a rerun gives
        bit-identical weights.
      export_dir: where to write the trained model as a SavedModel (`fastconv.export`).
      device: "auto" (the first GPU, else the CPU), "cpu", "gpu" or "gpu:N".
      strategy: "none" (one device), "mirrored" (the machine's GPUs, or its logical CPUs)
        or "multi-worker" (the workers of TF_CONFIG); the global batch is split across the
        replicas and their gradients summed.
      log_every: the step loss goes to TensorBoard every this many steps.
      profile_steps: (first, last) steps, counted from 1, to trace with the TensorBoard
        profiler; None traces nothing.
    """

    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 0.01
    n_kernels: int = 10
    units: int = 100
    seed: int = 42
    xla: bool = False
    standardize: str = "scale"
    data_dir: str | None = None
    validation_fraction: float = 0.2
    steps_per_call: int | None = None
    shards: int | None = None
    precision: str = "float32"
    eval_batch_size: int = 256
    logdir: str | None = None
    deterministic: bool = False
    export_dir: str | None = None
    log_every: int = 50
    profile_steps: tuple[int, int] | None = None
    device: str = "auto"
    strategy: str = "none"

    def __post_init__(self):
        if self.profile_steps is not None:  # JSON gives a list back
            object.__setattr__(self, "profile_steps", tuple(self.profile_steps))
            first, last = (*self.profile_steps, 0, 0)[:2]
            _require(
                "profile_steps",
                self.profile_steps,
                len(self.profile_steps) == 2 and 1 <= first <= last,
                "must be two steps START,STOP with 1 <= START <= STOP",
            )
        for name in ("epochs", "batch_size", "n_kernels", "units", "eval_batch_size", "log_every"):
            _require(name, getattr(self, name), getattr(self, name) >= 1, "must be at least 1")
        for name in ("steps_per_call", "shards"):
            value = getattr(self, name)
            if value is not None:
                _require(name, value, value >= 1, "must be at least 1")
        if self.shards is not None:
            _require(
                "shards",
                self.shards,
                self.batch_size % self.shards == 0,
                f"must divide batch_size={self.batch_size}",
            )
        _require(
            "learning_rate",
            self.learning_rate,
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            "must be a positive number",
        )
        _require(
            "validation_fraction",
            self.validation_fraction,
            0 < self.validation_fraction < 1,
            "must lie strictly between 0 and 1",
        )
        _require(
            "standardize",
            self.standardize,
            self.standardize in STANDARDIZATIONS,
            f"must be one of {', '.join(STANDARDIZATIONS)}",
        )
        _require(
            "precision",
            self.precision,
            self.precision in PRECISIONS,
            f"must be one of {', '.join(PRECISIONS)}",
        )
        _require("seed", self.seed, 0 <= self.seed < 2**31, "must lie in [0, 2**31)")
        _require(
            "device",
            self.device,
            DEVICE_PATTERN.fullmatch(self.device) is not None,
            "must be auto, cpu, gpu or gpu:N",
        )
        _require(
            "strategy",
            self.strategy,
            self.strategy in STRATEGIES,
            f"must be one of {', '.join(STRATEGIES)}",
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _require(field: str, value, ok: bool, what: str) -> None:
    if not ok:
        raise ConfigError(f"{field}={value!r} {what}")


def resumed(saved: TrainConfig, requested: TrainConfig) -> TrainConfig:
    """The configuration a resumed run continues with: the saved run's, except where the
    request changes what `RESUMABLE_CHANGES` lists. A field left at its default keeps the
    saved value; a field of the arithmetic set to something else is a ConfigError.
    """
    defaults = TrainConfig()
    changes = {}
    for field in dataclasses.fields(TrainConfig):
        name = field.name
        wanted, was = getattr(requested, name), getattr(saved, name)
        if wanted == getattr(defaults, name) or wanted == was or name == "logdir":
            continue
        if name not in RESUMABLE_CHANGES:
            raise ConfigError(
                f"{name}={wanted!r} differs from the resumed run's {name}={was!r}; "
                "a resumed run keeps its configuration (start a new --logdir to change it)"
            )
        changes[name] = wanted
    return dataclasses.replace(saved, **changes)
