"""The run's configuration: one frozen dataclass whose defaults are the book's run.

Each setting is written once, as a field with its `Flag` (default, flag, help, parser, check):
`fastconv.cli` generates the command line from the fields, and `TrainConfig` runs the same
checks, so a value is judged alike from the command line and from Python.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

STANDARDIZATIONS = ("scale", "zscore")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("none", "mirrored", "multi-worker")
DEVICE_PATTERN = re.compile(r"auto|cpu|gpu(:\d+)?")

# Named sets of settings a run starts from; flags given beside `--recipe` override them.
# "book" is the defaults, the book's run; "fast" is tuned for the book's network, unchanged
# (10 kernels, 100 units), to reach its best accuracy in seconds (docs/recipes.md).
RECIPES: dict[str, dict[str, Any]] = {
    "book": {},
    "fast": {
        "epochs": 12,
        "batch_size": 256,
        "learning_rate": 0.005,
        "optimizer": "adam",
        "schedule": "onecycle",
        "warmup_epochs": 2.0,
        "label_smoothing": 0.1,
        "augment": True,
        "tta": True,
        "standardize": "zscore",
        "precision": "auto",
    },
}


class ConfigError(ValueError):
    """A configuration the trainer cannot run with. An error about one setting's value
    (`invalid`) keeps the field, the value and its requirement, for the flag's message."""

    field: str | None = None
    value: Any = None
    requirement: str = ""

    @classmethod
    def invalid(cls, field: str, value, requirement: str) -> ConfigError:
        error = cls(f"{field}={value!r} {requirement}")
        error.field, error.value, error.requirement = field, value, requirement
        return error


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line, and what a valid value is.

    Attributes:
      help: what the setting does; the parser adds its default.
      name: the flag, when it is not the field's name in kebab case (`--kernels`).
      parse: text -> value; by default the field's type. Raises ValueError on bad text.
      check: whether a parsed value is valid; `requirement` says what it must be.
      choices: the values allowed, as the parser lists them.
      default_help: the default as the help states it, when the value itself says little.
      metavar: the value's name in the help.
      resumable: a resumed run may change it (it takes no part in the arithmetic).
    """

    help: str | Callable[[], str]  # a callable makes it when asked (see `help_text`)
    name: str | None = None
    parse: Callable[[str], Any] | None = None
    check: Callable[[Any], bool] | None = None
    requirement: str = ""
    choices: tuple | None = None
    default_help: str | None = None
    metavar: str | None = None
    resumable: bool = False

    def help_text(self) -> str:
        return self.help() if callable(self.help) else self.help

    def validate(self, field: str, value) -> None:
        """Raises ConfigError naming `field` when `value` fails the check."""
        if value is not None and self.check is not None and not self.check(value):
            raise ConfigError.invalid(field, value, self.requirement)


def setting(default, help: str, **flag) -> Any:  # a TrainConfig field and its `Flag`
    return dataclasses.field(default=default, metadata={"flag": Flag(help, **flag)})


POSITIVE = {
    "check": lambda value: isinstance(value, int | float) and math.isfinite(value) and value > 0,
    "requirement": "must be a positive number",
}


def _one_of(choices: tuple) -> dict:
    requirement = "must be one of " + ", ".join(choices)
    return {"choices": choices, "check": choices.__contains__, "requirement": requirement}


FRACTION = {
    "check": lambda value: isinstance(value, int | float) and 0 <= value < 1,
    "requirement": "must lie in [0, 1)",
}


def parse_step_range(text: str) -> tuple[int, int]:
    try:
        first, last = (int(part) for part in text.split(","))
    except ValueError:
        raise ValueError("is not two steps START,STOP") from None
    return first, last


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; the defaults reproduce the book's run (chapter 08-4).

    Each field's `Flag` (in its metadata) documents it, as `--help` does. `recipe` records
    which of `RECIPES` the settings started from (`from_recipe`).
    """

    recipe: str = setting(
        "book",
        lambda: (  # made when asked: it names the flags of the fields, defined below
            "the settings a run starts from, each overridden by a flag given beside it: "
            + "; ".join(f"{name}: {describe_recipe(name)}" for name in RECIPES)
        ),
        **_one_of(tuple(RECIPES)),
    )
    xla: bool = setting(False, "compile the per-batch steps with XLA (jit_compile)", resumable=True)
    epochs: int = setting(20, "passes over the training set", resumable=True, **POSITIVE)
    batch_size: int = setting(
        128, "images per SGD step; each epoch drops its remainder, as the book", **POSITIVE
    )
    learning_rate: float = setting(0.01, "learning rate; with a schedule, its peak", **POSITIVE)
    optimizer: str = setting(
        "sgd",
        "sgd (the book's), momentum or nesterov (SGD with --momentum), adam, adamw (Keras's)",
        **_one_of(OPTIMIZERS),
    )
    momentum: float = setting(0.9, "momentum of --optimizer momentum or nesterov", **FRACTION)
    weight_decay: float | None = setting(
        None,
        "decoupled weight decay of the kernels (not the biases): each step takes "
        "learning rate x decay x weight off each weight",
        default_help="none; Keras's 0.004 with adamw",
        **FRACTION,
    )
    schedule: str = setting(
        "constant",
        "learning rate over the run: constant; cosine (from the peak to 0, after the "
        "warm-up); onecycle (the warm-up, then a straight line down to 0)",
        **_one_of(SCHEDULES),
    )
    warmup_epochs: float = setting(
        0.0,
        "epochs of linear warm-up from 0 to the peak learning rate (cosine and onecycle)",
        check=lambda epochs: epochs >= 0,
        requirement="must be 0 or more",
    )
    label_smoothing: float = setting(
        0.0,
        "share of each training target spread evenly over the 10 classes; the reported "
        "validation and test losses stay the book's cross-entropy",
        **FRACTION,
    )
    augment: bool = setting(
        False,
        "flip each training image left-right at random and shift it by up to --shift "
        "pixels, inside the compiled loop, as a function of (seed, step)",
    )
    shift: int = setting(
        0,
        "largest random shift of --augment, in pixels along each axis (0: flips alone)",
        check=lambda pixels: isinstance(pixels, int) and 0 <= pixels <= 8,
        requirement="must lie in [0, 8]",
    )
    ema: float | None = setting(
        None,
        "evaluate and export an exponential moving average of the weights with this decay "
        "per step (Keras's optimizer EMA)",
        default_help="off",
        metavar="DECAY",
        check=lambda decay: 0 < decay < 1,
        requirement="must lie strictly between 0 and 1",
    )
    tta: bool = setting(
        False,
        "test-time augmentation: evaluate (and export) the mean of the logits of each image "
        "and its left-right mirror (with --augment: Fashion-MNIST's shoes all face left, and "
        "a network that never saw one facing right misreads the mirrors)",
    )
    n_kernels: int = setting(10, "3x3 convolution kernels", name="--kernels", **POSITIVE)
    units: int = setting(100, "hidden units of the dense layer", **POSITIVE)
    seed: int = setting(
        42,
        "seed of the weights, the split and the batch order",
        check=lambda seed: 0 <= seed < 2**31,
        requirement="must lie in [0, 2**31)",
    )
    data_dir: str | None = setting(
        None,
        "folder with the four Fashion-MNIST IDX files",
        default_help="$FASHION_MNIST_DIR, then Keras's cache, then Debian's "
        "/usr/share/datasets/fashion-mnist, then a Keras download",
        metavar="DIR",
        resumable=True,
    )
    standardize: str = setting(
        "scale",
        "'scale': x / 255, as the book; 'zscore': the training set's mean and std",
        **_one_of(STANDARDIZATIONS),
    )
    validation_fraction: float = setting(
        0.2,
        "share of the 60,000 training images held out for validation, stratified by class",
        check=lambda fraction: 0 < fraction < 1,
        requirement="must lie strictly between 0 and 1",
    )
    steps_per_call: int | None = setting(
        None,
        "training steps per compiled call",
        default_help="a whole epoch",
        resumable=True,
        **POSITIVE,
    )
    shards: int | None = setting(
        None,
        "split each batch into this many shards that run side by side and sum their "
        "gradients of the divided loss: the same mean gradient",
        default_help="2 on a multi-core CPU, 1 on a GPU",
        **POSITIVE,
    )
    precision: str = setting(
        "float32",
        "float32 (the book's numerics), mixed_bfloat16 or mixed_float16 (Keras policies: "
        "float32 variables, logits and loss; loss scaling for float16), or auto: float16 on "
        "GPUs with tensor cores, bfloat16 on CPUs with bfloat16 units",
        **_one_of(PRECISIONS),
    )
    eval_batch_size: int = setting(
        256, "images per evaluation step (at most a set's images)", resumable=True, **POSITIVE
    )
    device: str = setting(
        "auto",
        "auto (the first GPU, else the CPU), cpu, gpu or gpu:N; a GPU that is not there is "
        "an error",
        parse=str.lower,
        check=lambda device: DEVICE_PATTERN.fullmatch(device) is not None,
        requirement="is not auto, cpu, gpu or gpu:N",
        resumable=True,
    )
    strategy: str = setting(
        "none",
        "data-parallel training with tf.distribute: mirrored (this machine's GPUs) or "
        "multi-worker (the machines of TF_CONFIG); the global batch is split across them",
        **_one_of(STRATEGIES),
    )
    logdir: str | None = setting(
        None,
        "run folder for the configuration, checkpoints, metrics and TensorBoard logs",
        default_help="runs/<date-time>",
        metavar="DIR",
        resumable=True,
    )
    deterministic: bool = setting(
        False, "TensorFlow's op determinism on top of the seeds: reruns give bit-identical weights"
    )
    export_dir: str | None = setting(
        None,
        "save the trained model as a SavedModel",
        name="--export",
        default_help="none",
        metavar="DIR",
        resumable=True,
    )
    log_every: int = setting(
        50, "write the step loss to TensorBoard every N steps", resumable=True, **POSITIVE
    )
    profile_steps: tuple[int, int] | None = setting(
        None,
        "trace steps START to STOP (from 1) with the TensorBoard profiler",
        parse=parse_step_range,
        check=lambda steps: len(steps) == 2 and 1 <= steps[0] <= steps[1],
        requirement="needs 1 <= START <= STOP",
        default_help="none",
        metavar="START,STOP",
        resumable=True,
    )

    def __post_init__(self):
        if self.profile_steps is not None:  # JSON gives a list back
            object.__setattr__(self, "profile_steps", tuple(self.profile_steps))
        for field in dataclasses.fields(self):
            field.metadata["flag"].validate(field.name, getattr(self, field.name))
        if self.shards is not None and self.batch_size % self.shards:
            raise ConfigError.invalid(
                "shards", self.shards, f"must divide batch_size={self.batch_size}"
            )
        recipes = self.warmup_epochs == RECIPES[self.recipe].get("warmup_epochs")  # not given
        if self.warmup_epochs and self.schedule == "constant":
            if recipes:  # the --schedule given beside the recipe is what clashes
                sets = f"--recipe {self.recipe} sets --warmup-epochs {self.warmup_epochs}"
                requirement = f"has no warm-up, and {sets}: give --warmup-epochs 0 with it"
                raise ConfigError.invalid("schedule", self.schedule, requirement)
            requirement = "needs --schedule cosine or onecycle"
            raise ConfigError.invalid("warmup_epochs", self.warmup_epochs, requirement)
        if self.warmup_epochs >= self.epochs and self.schedule != "constant":
            requirement = f"must be less than epochs={self.epochs}"
            if recipes:
                requirement += f" (--recipe {self.recipe} sets it: give a smaller --warmup-epochs)"
            raise ConfigError.invalid("warmup_epochs", self.warmup_epochs, requirement)

    @classmethod
    def from_recipe(cls, recipe: str = "book", **settings) -> TrainConfig:
        """The recipe's settings (`RECIPES`), with `settings` over them."""
        if recipe not in RECIPES:
            raise ConfigError.invalid("recipe", recipe, _one_of(tuple(RECIPES))["requirement"])
        return cls(**{**RECIPES[recipe], **settings, "recipe": recipe})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def flag_of(field: dataclasses.Field) -> Flag:
    return field.metadata["flag"]


def flag_name(field: str) -> str:
    """The command-line flag of a TrainConfig field."""
    flag = flag_of(TrainConfig.__dataclass_fields__[field])
    return flag.name or "--" + field.replace("_", "-")


def describe_recipe(name: str) -> str:
    """What a recipe sets, as flags: '--optimizer adam --epochs 30 ...'."""
    flags = [
        flag_name(key) if value is True else f"{flag_name(key)} {value}"
        for key, value in RECIPES[name].items()
    ]
    return " ".join(flags) or "the defaults"
