"""The book's full run written with Keras, as its users write it; bench/end_to_end.py runs it.

The same work as `python scripts/train.py`: the same stratified 48,000 / 12,000 split read with
fastconv.data, the same network as a `keras.Sequential`, SGD 0.01 at batch 128, a validation
pass after each epoch (`fit(..., validation_data=...)`), then the test set (`evaluate`).
Keras's fastest settings by default (steps_per_execution 50, mixed_bfloat16, no
jit_compile, TensorFlow's thread pools); evaluation batches of 256, as fastconv's.

    python bench/keras_end_to_end.py [--epochs 20] [--precision float32] [--threads 2x1]

Prints one JSON line: the seconds of each part (a callback stamps every epoch's start, its
validation's start and end, and its end) and the accuracies.
"""

import time

STARTED_AT = time.perf_counter()  # before any import: the parts below add up from here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - STARTED_AT

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's fastconv, bench/book_setup.py
from book_setup import book_arrays, keras_network  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--epochs", type=int, default=20, help="passes over the training set (default: 20)")
    add(
        "--precision",
        choices=("float32", "mixed_bfloat16"),
        default="mixed_bfloat16",
        help="Keras dtype policy (default: mixed_bfloat16)",
    )
    add(
        "--steps-per-execution",
        type=int,
        default=50,
        help="training steps per compiled call (default: 50)",
    )
    add("--jit-compile", action="store_true", help="compile the steps with XLA (default: off)")
    add(
        "--threads",
        default="default",
        help="INTRAxINTER thread pools, for example 2x1, or default: TensorFlow's (default)",
    )
    add("--eval-batch-size", type=int, default=256, help="images per evaluation step (256)")
    args = parser.parse_args(argv)
    for flag in ("epochs", "steps_per_execution", "eval_batch_size"):
        if (value := getattr(args, flag)) < 1:
            parser.error(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    if args.threads != "default" and not re.fullmatch(r"[1-9]\d*x[1-9]\d*", args.threads):
        parser.error(f"--threads {args.threads}: not INTRAxINTER, two counts of at least 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    seconds = {"import": IMPORT_SECONDS}
    if args.threads != "default":  # before TensorFlow's first op
        intra, inter = (int(count) for count in args.threads.split("x"))
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)

    start = time.perf_counter()
    sets = book_arrays(np.float32)  # Keras's users hand fit float32 arrays
    (x, y), (x_val, y_val), (x_test, y_test) = sets["train"], sets["validation"], sets["test"]
    seconds["data"] = time.perf_counter() - start

    start = time.perf_counter()
    keras.mixed_precision.set_global_policy(args.precision)
    keras.utils.set_random_seed(42)
    model = keras_network()
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=args.steps_per_execution,
        jit_compile=args.jit_compile,
    )
    seconds["build"] = time.perf_counter() - start

    stamps = Stamps()
    fit_start = time.perf_counter()
    history = model.fit(
        x,
        y,
        batch_size=128,
        epochs=args.epochs,
        shuffle=True,
        validation_data=(x_val, y_val),
        validation_batch_size=args.eval_batch_size,
        callbacks=[stamps],
        verbose=0,
    )
    seconds["fit"] = time.perf_counter() - fit_start
    start = time.perf_counter()
    test_loss, test_accuracy = model.evaluate(
        x_test, y_test, batch_size=args.eval_batch_size, verbose=0
    )
    seconds["test"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - STARTED_AT
    print(
        json.dumps(
            {
                "config": vars(args),
                "seconds": seconds,
                **stamps.parts(fit_start, seconds["fit"]),
                "val_accuracy": history.history["val_accuracy"][-1],
                "val_loss": history.history["val_loss"][-1],
                "test_accuracy": test_accuracy,
                "test_loss": test_loss,
                "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
            }
        ),
        flush=True,
    )


class Stamps(keras.callbacks.Callback):
    """Stamps each epoch's start, its validation's start and end, and its end."""

    def __init__(self):
        super().__init__()
        self.epochs: list[dict[str, float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append({"begin": time.perf_counter()})

    def on_test_begin(self, logs=None):
        self.epochs[-1]["val_begin"] = time.perf_counter()

    def on_test_end(self, logs=None):
        self.epochs[-1]["val_end"] = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):  # Keras has read the logs back by now
        self.epochs[-1]["end"] = time.perf_counter()

    def parts(self, fit_start: float, fit_seconds: float) -> dict:
        """Per epoch: training steps (epoch start to validation start) and validation
        seconds; fit's set-up before the first epoch (its data adapter: the arrays converted,
        the iterator started); the rest of fit (between epochs and after the last); the
        first epoch's excess over the median of the others (tracing and compiling), when
        there are others."""
        train = [e["val_begin"] - e["begin"] for e in self.epochs]
        validation = [e["val_end"] - e["val_begin"] for e in self.epochs]
        setup = self.epochs[0]["begin"] - fit_start
        parts = {
            "epoch_train_seconds": train,
            "epoch_validation_seconds": validation,
            "fit_setup_seconds": setup,
            "fit_between_epochs_seconds": fit_seconds - setup - sum(train) - sum(validation),
        }
        if len(self.epochs) > 1:
            parts["first_epoch_excess_seconds"] = {
                "train": train[0] - statistics.median(train[1:]),
                "validation": validation[0] - statistics.median(validation[1:]),
            }
        return parts


if __name__ == "__main__":
    main()
