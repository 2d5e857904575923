"""Recipes: named sets of settings a run starts from (`--recipe`); flags given beside a
recipe override it."""

from __future__ import annotations

from typing import Any

# Named sets of settings a run starts from; flags given beside `--recipe` override them.
# "book" is the defaults, the book's run; "fast" is tuned for the book's network, unchanged
# (10 kernels, 100 units), to reach its best accuracy in seconds (README, "Time to accuracy").
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


def describe_recipe(name: str) -> str:
    """What a recipe sets, as flags: '--optimizer adam --epochs 30 ...'."""
    settings = RECIPES[name]
    if not settings:
        return "the defaults"
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        flags.append(flag if value is True else f"{flag} {value}")
    return " ".join(flags)
