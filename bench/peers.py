"""The trainers bench/ compares. Each is built and run inside its own worker process.

A peer is set up once (data, weights, compilation), then runs rounds: a fixed number of
steady-state training images, ending with a host read so asynchronous work is counted.
The run goes through every peer PASSES times, `rounds` rounds each time (see conftest.py).
"""

from __future__ import annotations

import dataclasses

BATCH_SIZE = 128  # the book's
# This host has slow phases (memory-bound work ~0.6x for seconds to a minute). Going
# through the peers five times, a round or two each, spreads every peer's rounds over the
# whole run, so a slow phase costs each peer a round or two, not one peer all of its rounds.
PASSES = 5


@dataclasses.dataclass(frozen=True)
class Peer:
    """How one contender trains; `kind` picks the builder below."""

    name: str
    kind: str  # "book", "keras", "fastconv", "matmul"
    label: str
    options: dict = dataclasses.field(default_factory=dict)
    rounds: int = 2  # timed rounds per pass, after one warm-up round


PEERS = [
    Peer("book_eager", "book", "the book's eager ConvolutionNetwork", {"batches": 100}, rounds=1),
    # Keras fit swings between ~0.8 and ~1.3 s an epoch from round to round: the table gives
    # each peer's best round beside its median.
    Peer(
        "keras_fit",
        "keras",
        "Keras fit",
        {"steps_per_execution": 1, "jit_compile": False},
    ),
    Peer(
        "keras_fit_spe50",
        "keras",
        "Keras fit, steps_per_execution=50",
        {"steps_per_execution": 50, "jit_compile": False},
    ),
    Peer(
        "keras_fit_spe50_xla",
        "keras",
        "Keras fit, steps_per_execution=50, jit_compile",
        {"steps_per_execution": 50, "jit_compile": True},
        rounds=1,
    ),
    Peer(
        "keras_fit_spe50_bf16",
        "keras",
        "Keras fit, steps_per_execution=50, mixed_bfloat16",
        {"steps_per_execution": 50, "jit_compile": False, "precision": "mixed_bfloat16"},
    ),
    Peer(
        "xla_naive",
        "fastconv",
        "XLA step of tf.nn.conv2d + max_pool2d (naive)",
        {"xla": True, "naive": True, "shards": 1},
    ),
    Peer("fastconv_1shard", "fastconv", "fastconv graph, 1 shard", {"xla": False, "shards": 1}),
    Peer("fastconv", "fastconv", "fastconv graph (default)", {"xla": False}),
    Peer("fastconv_xla", "fastconv", "fastconv --xla", {"xla": True}),
    Peer(
        "fastconv_logging",
        "fastconv",
        "fastconv graph, TensorBoard step loss every 50",
        {"xla": False, "log_every": 50},
    ),
    Peer(
        "fastconv_bf16",
        "fastconv",
        "fastconv graph, mixed_bfloat16 (fastest)",
        {"xla": False, "precision": "mixed_bfloat16"},
    ),
    Peer(
        "fastconv_b512",
        "fastconv",
        "fastconv graph, batch 512",
        {"xla": False, "batch_size": 512},
    ),
    Peer(
        "fastconv_bf16_b512",
        "fastconv",
        "fastconv graph, mixed_bfloat16, batch 512",
        {"xla": False, "precision": "mixed_bfloat16", "batch_size": 512},
    ),
    Peer("matmul_float32", "matmul", "2048x2048 matmul, float32", {"dtype": "float32"}),
    Peer("matmul_bfloat16", "matmul", "2048x2048 matmul, bfloat16", {"dtype": "bfloat16"}),
]
BY_NAME = {peer.name: peer for peer in PEERS}


def build(peer: Peer):
    """Sets up `peer` in this process; returns (run_round, work_per_round, details)."""
    return {"book": _book, "keras": _keras, "fastconv": _fastconv, "matmul": _matmul}[peer.kind](
        **peer.options
    )


def _book_arrays():
    """The book's split and arrays: x (N, 28, 28, 1) / 255 in float64, one-hot targets."""
    import numpy as np

    from fastconv import data

    dataset = data.load(download=False)
    split = data.stratified_split(dataset.train_labels)
    x = dataset.train_images[split.train].reshape(-1, 28, 28, 1) / 255
    y = np.eye(10)[dataset.train_labels[split.train]]
    return x, y


def _book(batches: int):
    import numpy as np
    import tensorflow as tf
    from book_convnet import ConvolutionNetwork

    x, y = _book_arrays()
    network = ConvolutionNetwork(n_kernels=10, units=100, batch_size=BATCH_SIZE, learning_rate=0.01)
    # What the book's fit does before its epochs; bench/ then times part of an epoch.
    network.init_weights(x.shape, 10)
    network.optimizer = tf.optimizers.SGD(learning_rate=network.lr)
    np.random.seed(0)

    def run_round():
        network.train_epoch(x, y, max_batches=batches)  # get_loss reads every batch back

    return run_round, batches * BATCH_SIZE, {}


def _keras(steps_per_execution: int, jit_compile: bool, precision: str = "float32"):
    import keras

    keras.mixed_precision.set_global_policy(precision)
    x, y = _book_arrays()
    x = x.astype("float32")
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(10, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )

    def run_round():  # one epoch: 375 batches of 128, reshuffled; fit returns when done
        model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, shuffle=True, verbose=0)

    return run_round, len(x) // BATCH_SIZE * BATCH_SIZE, {"precision": precision}


def _fastconv(
    xla: bool,
    naive: bool = False,
    shards: int | None = None,
    batch_size: int = BATCH_SIZE,
    precision: str = "float32",
    log_every: int | None = None,
):
    import dataclasses

    from fastconv import data, runtime
    from fastconv.config import TrainConfig

    config = TrainConfig(
        batch_size=batch_size,
        seed=42,
        xla=xla,
        shards=shards,
        precision=precision,
        log_every=log_every or 50,
    )
    placement = runtime.place(config)
    if naive:  # XLA on the book's tf.nn ops
        placement = dataclasses.replace(placement, conv_form="nn")
    runtime.set_threads(placement.threads)  # before TensorFlow's first op, as the CLI does

    import tensorflow as tf

    from fastconv.pipeline import make_datasets
    from fastconv.trainer import make_trainer

    # The pipeline a run of the CLI gets: the training images resident, batches gathered in
    # the compiled loop.
    split = data.book_split(data.load(download=False), config)
    datasets = make_datasets(split, config, resident=True)
    step_summaries = None
    if log_every:  # as a run with a --logdir writes them
        import tempfile

        step_summaries = tf.summary.create_file_writer(tempfile.mkdtemp(prefix="fastconv-bench-"))
    trainer = make_trainer(config, placement, datasets.make_batch, step_summaries)
    iterator = iter(datasets.train())
    steps = tf.constant(datasets.steps_per_epoch)
    trainer.train(iterator, tf.constant(1))  # compile

    def run_round():  # one epoch in one compiled call
        trainer.train(iterator, steps).fetch()  # host read: waits for the block

    details = {
        "shards": placement.shards,
        "threads": runtime.describe_threads(),
        "batch_size": batch_size,
        "precision": precision,
    }
    return run_round, datasets.images_per_epoch, details


def _matmul(dtype: str, size: int = 2048, chain: int = 10):
    import tensorflow as tf

    a = tf.cast(tf.random.normal([size, size]), dtype)
    b = tf.cast(tf.random.normal([size, size]) / size**0.5, dtype)

    @tf.function
    def chained():
        product = a
        for _ in range(chain):  # each depends on the last: nothing can be merged away
            product = tf.matmul(product, b)
        return product[0, 0]

    chained().numpy()

    def run_round():
        chained().numpy()

    return run_round, 2 * size**3 * chain, {"dtype": dtype}
