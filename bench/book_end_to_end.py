"""The book's run with its eager `ConvolutionNetwork` (bench/book_convnet.py), epoch by epoch;
bench/end_to_end.py runs a few epochs of it and extrapolates to the whole run.

What the book's `cn.fit(x_train, y_train_encoded, x_val=x_val, y_val=y_val_encoded,
epochs=20)` does, its epoch loop written out so each part is stamped: the weights and SGD
once, then per epoch `train_epoch` (a permutation of the 48,000 images, 375 eager steps, each
followed by a second forward pass to record the loss) and the validation loss (`get_loss` on
the 12,000 validation images); then `score` on the validation and the test images.

    python bench/book_end_to_end.py [--epochs 3]

Prints one JSON line with the seconds of each part and the accuracies.
"""

import time

STARTED_AT = time.perf_counter()  # before any import: the parts below add up from here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - STARTED_AT

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's fastconv, the book's class
from book_convnet import ConvolutionNetwork  # noqa: E402
from book_setup import book_arrays  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs to run (default: 3)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: must be at least 1")
    seconds = {"import": IMPORT_SECONDS}

    start = time.perf_counter()
    sets = book_arrays()  # as the book prepares them: x / 255, one-hot targets, float64
    (x, y), (x_val, y_val), (x_test, y_test) = sets["train"], sets["validation"], sets["test"]
    seconds["data"] = time.perf_counter() - start

    start = time.perf_counter()
    network = ConvolutionNetwork(n_kernels=10, units=100, batch_size=128, learning_rate=0.01)
    network.init_weights(x.shape, y.shape[1])  # what fit does before its epochs
    network.optimizer = tf.optimizers.SGD(learning_rate=network.lr)
    seconds["build"] = time.perf_counter() - start

    train, validation = [], []
    for _ in range(args.epochs):  # the body of the book's fit
        start = time.perf_counter()
        network.train_epoch(x, y)
        middle = time.perf_counter()
        network.val_losses.append(network.get_loss(x_val, y_val))
        train.append(middle - start)
        validation.append(time.perf_counter() - middle)

    start = time.perf_counter()
    val_accuracy = network.score(x_val, y_val)
    test_accuracy = network.score(x_test, y_test)
    seconds["test"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - STARTED_AT
    print(
        json.dumps(
            {
                "epochs": args.epochs,
                "seconds": seconds,
                "epoch_train_seconds": train,
                "epoch_validation_seconds": validation,
                "val_accuracy": float(val_accuracy),
                "val_loss": float(network.val_losses[-1]),
                "test_accuracy": float(test_accuracy),
                "versions": {"tensorflow": tf.__version__},
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
