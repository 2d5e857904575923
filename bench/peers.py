"""The trainers bench/ compares. Each is built and run inside its own worker process.

A peer is set up once (data, weights, compilation), then runs rounds, each timed inside its
worker with `time.perf_counter` and ending with a host read, so asynchronous work is counted:

- fastconv: one epoch in one compiled call (`Trainer.train` of 375 steps), as a run does.
- Keras: one epoch of ONE `model.fit(..., epochs=N)` call that lasts the whole benchmark, as
  Keras users train. A callback stamps each epoch's start and end; at each epoch's start it
  waits for the parent to ask for the next round, so the passes still interleave the peers,
  and the fit's set-up (data adapter, iterator) is paid once, as in a user's run, not once
  per round. N is exactly the rounds the schedule asks of the peer.
- the book's eager class: one whole epoch as its `fit` runs it (a permutation of all 48,000
  images, 375 steps, each step followed by its second forward pass, `get_loss`).
- the matmul ceiling: a chain of ten 2048x2048 matmuls.
- the FMA peak: register-only fused multiply-adds, AVX-512's or else AVX2's, on every CPU
  the process may use (bench/fma_peak.cc, compiled at run time); where there is no C++
  compiler or neither vector unit, its benchmark is skipped, saying why, and the table
  leaves its column out.

The run goes through every peer PASSES times (see test_throughput.py). In each pass a peer
joins, it runs an untimed round, then its timed rounds; slow peers warm up in their first
pass only (`rewarm=False`) and join fewer passes.

BENCH_SMOKE=1 shrinks the run to one pass of one timed round per peer, to check that every
peer works (its figures mean nothing). BENCH_KERAS_THREADS=INTRAxINTER (for example 2x1) sets
the thread pools of the Keras peers that do not name their own (default: TensorFlow's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable

BATCH_SIZE = 128  # the book's
SMOKE = os.environ.get("BENCH_SMOKE", "") not in ("", "0")
# This host has slow phases (memory-bound work ~0.6x for seconds to a minute). Going
# through the peers five times, a round or two each, spreads every peer's rounds over the
# whole run, so a slow phase costs each peer a round or two, not one peer all of its rounds.
PASSES = 1 if SMOKE else 5
ALL_PASSES = tuple(range(1, PASSES + 1))
KERAS_THREADS = os.environ.get("BENCH_KERAS_THREADS", "default")

# What one round of each kind holds, as the table's legend and the JSON state it.
_COMPILED_EPOCH = (
    "one epoch in one compiled call: the gather of shuffled batches, 375 steps of 128, the "
    "loss read back; fastconv's steps make one forward pass per batch"
)
_FIT_EPOCH = (
    "one epoch inside one fit(epochs=N) call, from a callback's on_epoch_begin to its "
    "on_epoch_end: Keras's shuffle, 375 steps of 128, the loss read back; not fit's set-up "
    "(data adapter, iterator), paid once per call"
)
ROUNDS = {
    "compiled epoch": _COMPILED_EPOCH,
    "compiled epoch + val": _COMPILED_EPOCH + "; then the evaluation of the 12,000 validation "
    "images (loss and accuracy read back), as a run does after each epoch",
    "fit epoch": _FIT_EPOCH,
    "fit epoch + val": _FIT_EPOCH + "; with the validation pass fit runs inside the epoch "
    "over the 12,000 validation images (validation_data, accuracy metric)",
    "book epoch": "one whole epoch as the book's fit runs it: a permutation copying all 48,000 "
    "images, 375 eager steps, and after each step a SECOND forward pass (get_loss) that "
    "fastconv's steps don't make; not the epoch's validation loss",
    "matmuls": "a chain of ten 2048x2048 matmuls, the last result read back",
    "FMA loop": "on every CPU the process may use, one pinned thread running 12 independent "
    "chains of float32 FMAs on registers (AVX-512's 16 lanes, else AVX2's 8; 2 FLOP each), no "
    "memory traffic",
}


def _spread(count: int) -> tuple[int, ...]:
    """`count` passes spread over the run, the first and the last among them."""
    if count == 1 or PASSES == 1:
        return (1,)
    return tuple(sorted({1 + round(i * (PASSES - 1) / (count - 1)) for i in range(count)}))


@dataclasses.dataclass(frozen=True)
class Peer:
    """How one contender trains; `kind` picks the builder below."""

    name: str
    kind: str  # "book", "keras", "fastconv", "matmul", "fma"
    label: str
    options: dict = dataclasses.field(default_factory=dict)
    rounds: int = 2  # timed rounds in each pass the peer joins
    passes: tuple[int, ...] = ALL_PASSES  # the passes it joins
    rewarm: bool = True  # an untimed round in every pass it joins (False: its first only)

    def warmup_rounds(self, pass_number: int) -> int:
        return 1 if self.rewarm or pass_number == self.passes[0] else 0

    def total_rounds(self) -> int:
        """Every round the schedule asks of this peer, warm-up rounds included."""
        return sum(self.warmup_rounds(n) + self.rounds for n in self.passes)

    @property
    def round(self) -> str:
        """What one round is: a key of ROUNDS."""
        validation = " + val" if self.options.get("validation") else ""
        return {
            "book": "book epoch",
            "keras": "fit epoch" + validation,
            "fastconv": "compiled epoch" + validation,
            "matmul": "matmuls",
            "fma": "FMA loop",
        }[self.kind]


def _keras_peer(name: str, label: str, **options) -> Peer:
    options = {"steps_per_execution": 1, "jit_compile": False, **options}
    if options["jit_compile"]:
        # ~6,000 images/s, 8 s an epoch: one warm-up epoch, then one in each of two passes.
        return Peer(name, "keras", label, options, rounds=1, passes=_spread(2), rewarm=False)
    return Peer(name, "keras", label, options)


PEERS = [
    # ~10 s an epoch: one warm-up epoch, then one in the first pass and one in the last.
    Peer(
        "book_eager",
        "book",
        "the book's eager ConvolutionNetwork (2 forward passes a batch)",
        rounds=1,
        passes=_spread(2),
        rewarm=False,
    ),
    # Keras fit swings between ~0.8 and ~1.3 s an epoch from round to round: the table gives
    # each peer's best round beside its median.
    _keras_peer("keras_fit", "Keras fit"),
    _keras_peer("keras_fit_xla", "Keras fit, jit_compile", jit_compile=True),
    _keras_peer("keras_fit_bf16", "Keras fit, mixed_bfloat16", precision="mixed_bfloat16"),
    _keras_peer(
        "keras_fit_bf16_xla",
        "Keras fit, mixed_bfloat16, jit_compile",
        precision="mixed_bfloat16",
        jit_compile=True,
    ),
    _keras_peer("keras_fit_spe50", "Keras fit, spe 50", steps_per_execution=50),
    _keras_peer(
        "keras_fit_spe50_xla",
        "Keras fit, spe 50, jit_compile",
        steps_per_execution=50,
        jit_compile=True,
    ),
    # Keras's fastest setting so far, in three thread settings; the best is Keras's best.
    *(
        _keras_peer(
            f"keras_fit_spe50_bf16{suffix}",
            f"Keras fit, spe 50, mixed_bfloat16{', threads ' + threads if suffix else ''}",
            steps_per_execution=50,
            precision="mixed_bfloat16",
            threads=threads,
        )
        for suffix, threads in (("", "default"), ("_t2x1", "2x1"), ("_t1x2", "1x2"))
    ),
    _keras_peer(
        "keras_fit_spe50_bf16_xla",
        "Keras fit, spe 50, mixed_bfloat16, jit_compile",
        steps_per_execution=50,
        precision="mixed_bfloat16",
        jit_compile=True,
    ),
    # With the validation pass each epoch, as the end-to-end run has it, on both sides.
    _keras_peer(
        "keras_fit_spe50_val",
        "Keras fit + validation_data, spe 50",
        steps_per_execution=50,
        validation=True,
    ),
    _keras_peer(
        "keras_fit_spe50_bf16_val",
        "Keras fit + validation_data, spe 50, mixed_bfloat16",
        steps_per_execution=50,
        precision="mixed_bfloat16",
        validation=True,
    ),
    Peer(
        "xla_naive",
        "fastconv",
        "XLA step of tf.nn.conv2d + max_pool2d (naive)",
        {"xla": True, "naive": True, "shards": 1},
    ),
    Peer("fastconv_1shard", "fastconv", "fastconv graph, 1 shard", {"xla": False, "shards": 1}),
    Peer("fastconv", "fastconv", "fastconv graph (default)", {"xla": False}),
    Peer(
        "fastconv_stock",
        "fastconv",
        "fastconv graph, TensorFlow's ops for the conv layer (no fused op)",
        {"xla": False, "conv_form": "batch_channels"},
    ),
    # --xla at the settings its graph twins below run (fastconv, fastconv_bf16,
    # fastconv_b512, fastconv_bf16_b512): the table gives each one's ratio to its twin.
    *(
        Peer(
            f"fastconv_xla{suffix}{'' if batch == BATCH_SIZE else f'_b{batch}'}",
            "fastconv",
            f"fastconv --xla{label}{'' if batch == BATCH_SIZE else f', batch {batch}'}",
            {"xla": True, "batch_size": batch, **precision},
        )
        for batch in (BATCH_SIZE, 512)
        for suffix, label, precision in (
            ("", "", {}),
            ("_bf16", ", mixed_bfloat16", {"precision": "mixed_bfloat16"}),
        )
    ),
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
    *(
        Peer(
            f"fastconv{suffix}_b{batch}",
            "fastconv",
            f"fastconv graph{label}, batch {batch}",
            {"xla": False, "batch_size": batch, **precision},
        )
        for batch in (256, 512)
        for suffix, label, precision in (
            ("", "", {}),
            ("_bf16", ", mixed_bfloat16", {"precision": "mixed_bfloat16"}),
        )
    ),
    Peer(
        "fastconv_val",
        "fastconv",
        "fastconv graph + validation",
        {"xla": False, "validation": True},
    ),
    Peer(
        "fastconv_bf16_val",
        "fastconv",
        "fastconv graph + validation, mixed_bfloat16",
        {"xla": False, "precision": "mixed_bfloat16", "validation": True},
    ),
    Peer("matmul_float32", "matmul", "2048x2048 matmul, float32", {"dtype": "float32"}),
    Peer("matmul_bfloat16", "matmul", "2048x2048 matmul, bfloat16", {"dtype": "bfloat16"}),
    # The CPU's own float32 peak: a matmul ceiling alone cannot tell a Zen 4 core (AVX-512 on
    # 256-bit units) from a Zen 5 one (512-bit units), which has twice its peak.
    Peer("fma_peak", "fma", "FMA loop, float32, widest vectors"),
]
if SMOKE:
    PEERS = [dataclasses.replace(peer, rounds=1, passes=(1,)) for peer in PEERS]
BY_NAME = {peer.name: peer for peer in PEERS}


class StopRounds(Exception):
    """The parent wants no more rounds: a Keras peer leaves its fit early."""


class Rounds:
    """The worker's side of the round protocol, handed to a peer's `serve_rounds`."""

    def __init__(self, wait: Callable[[], bool], done: Callable[[float], None]):
        self.wait = wait  # blocks until the parent asks for a round (True) or stops (False)
        self.done = done  # reports the round's seconds


ServeRounds = Callable[[Rounds], None]


def build(peer: Peer) -> tuple[ServeRounds, int, dict]:
    """Sets up `peer` in this process; returns (serve_rounds, work_per_round, details).

    `serve_rounds(rounds)` runs a round each time the parent asks and reports its seconds,
    until the parent stops or the peer's rounds are all run.
    """
    if peer.kind == "keras":
        serve_rounds, work, details = _keras(epochs=peer.total_rounds(), **peer.options)
    else:
        builders = {"book": _book, "fastconv": fastconv_epoch, "matmul": _matmul, "fma": _fma_peak}
        run_round, work, details = builders[peer.kind](**peer.options)
        serve_rounds = _each_round(run_round)
    details.setdefault("batch_size", BATCH_SIZE)
    details.setdefault("precision", "float32")
    details.setdefault("validation", bool(peer.options.get("validation")))
    # One wording for every peer that computes with TensorFlow's thread pools.
    details.setdefault("threads", _threads_in_use())
    details["round"] = peer.round
    details["round_includes"] = ROUNDS[peer.round]
    return serve_rounds, work, details


def _each_round(run_round: Callable[[], None]) -> ServeRounds:
    """Rounds timed around a call of `run_round`, which ends with a host read."""

    def serve_rounds(rounds: Rounds) -> None:
        while rounds.wait():
            start = time.perf_counter()
            run_round()
            rounds.done(time.perf_counter() - start)

    return serve_rounds


def _threads_in_use() -> str:
    import tensorflow as tf

    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    if intra == inter == 0:
        return "TF default"
    return f"intra {intra or 'auto'}, inter {inter or 'auto'}"


def _set_threads(threads: str) -> None:
    """`threads`: "default" (TensorFlow's own pools) or "INTRAxINTER"; before the first op."""
    if threads == "default":
        return
    import tensorflow as tf

    intra, inter = (int(count) for count in threads.split("x"))
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)


def _book():
    import numpy as np
    import tensorflow as tf
    from book_convnet import ConvolutionNetwork
    from book_setup import book_arrays

    x, y = book_arrays()["train"]
    network = ConvolutionNetwork(n_kernels=10, units=100, batch_size=BATCH_SIZE, learning_rate=0.01)
    # What the book's fit does before its epochs; its epoch loop then runs one epoch a round.
    network.init_weights(x.shape, 10)
    network.optimizer = tf.optimizers.SGD(learning_rate=network.lr)
    np.random.seed(0)

    def run_round():  # get_loss reads every batch's loss back
        network.train_epoch(x, y)

    return run_round, len(x) // BATCH_SIZE * BATCH_SIZE, {}


def _keras(
    epochs: int,
    steps_per_execution: int,
    jit_compile: bool,
    precision: str = "float32",
    threads: str | None = None,
    validation: bool = False,
):
    threads = threads or KERAS_THREADS
    _set_threads(threads)  # before TensorFlow's first op
    import keras
    import numpy as np

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(42)
    from book_setup import book_arrays, keras_network

    sets = book_arrays(np.float32)
    x, y = sets["train"]
    validation_data = sets["validation"] if validation else None
    model = keras_network()
    # Training reports the loss only (fastconv's steps also count correct predictions); the
    # validation pass computes accuracy, as a user's fit with validation_data does.
    metrics = ["accuracy"] if validation else []
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=metrics,
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )

    class EpochRounds(keras.callbacks.Callback):
        """Each epoch is a round: it starts when the parent asks and is stamped at both ends."""

        def __init__(self, rounds: Rounds):
            super().__init__()
            self.rounds = rounds
            self.started = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            if not self.rounds.wait():
                raise StopRounds
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            # Keras has read the epoch's loss (and validation results) back to the host by now.
            self.rounds.done(time.perf_counter() - self.started)

    def serve_rounds(rounds: Rounds) -> None:
        with contextlib.suppress(StopRounds):  # the parent stopped before the last epoch
            model.fit(
                x,
                y,
                batch_size=BATCH_SIZE,
                epochs=epochs,
                shuffle=True,
                validation_data=validation_data,
                callbacks=[EpochRounds(rounds)],
                verbose=0,
            )

    details = {
        "precision": precision,
        "steps_per_execution": steps_per_execution,
        "jit_compile": jit_compile,
        "metrics": ",".join(metrics) or "loss only",
        "fit_epochs": epochs,
    }
    return serve_rounds, len(x) // BATCH_SIZE * BATCH_SIZE, details


def fastconv_epoch(
    xla: bool,
    naive: bool = False,
    shards: int | None = None,
    batch_size: int = BATCH_SIZE,
    precision: str = "float32",
    log_every: int | None = None,
    validation: bool = False,
    conv_form: str | None = None,
):
    """One epoch of a fastconv trainer, as a run of the CLI builds and compiles it: a
    function that runs it, the images it trains on, and the trainer's settings."""
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
        conv_form = "nn"
    if conv_form:
        placement = dataclasses.replace(placement, conv_form=conv_form)
    runtime.set_threads(placement.threads)  # before TensorFlow's first op, as the CLI does

    import tensorflow as tf

    from fastconv.pipeline import make_datasets
    from fastconv.run import compile_trainer
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
    # As a run compiles them: the training and evaluation functions.
    compile_trainer(trainer, datasets, profiled=False)
    iterator = iter(datasets.train())
    steps = tf.constant(datasets.steps_per_epoch)

    def run_round():  # one epoch in one compiled call
        trainer.train(iterator, steps).fetch()  # host read: waits for the block
        if validation:  # as the run's loop does after each epoch
            float(trainer.evaluate(datasets.validation).accuracy)  # host read: waits

    details = {
        "shards": placement.shards,
        "xla": xla,
        "batch_size": batch_size,
        "precision": precision,
        "conv_form": placement.conv_form,
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

    return run_round, 2 * size**3 * chain, {"dtype": dtype, "precision": dtype}


def fma_unavailable() -> str | None:
    """Why the FMA peak cannot be measured on this machine; None when it can."""
    from fastconv.native import NativeUnavailable, compiler, missing_vector_units

    if missing := missing_vector_units():  # every AVX-512 CPU has AVX2 and FMA too
        return f"this CPU has no {missing}"
    try:
        compiler()
    except NativeUnavailable as error:
        return str(error)
    return None


def _fma_peak(iterations: int = 100_000_000):
    """bench/fma_peak.cc built for this CPU, its loop of `iterations` on every thread a round."""
    import ctypes
    import subprocess
    import tempfile
    from pathlib import Path

    from fastconv.machine import cpu_family_model
    from fastconv.native import compiler

    source = Path(__file__).resolve().parent / "fma_peak.cc"
    with tempfile.TemporaryDirectory(prefix="fastconv-fma-") as folder:
        library = Path(folder) / "fma_peak.so"
        command = [compiler(), "-O3", "-march=native", "-shared", "-fPIC", "-pthread"]
        built = subprocess.run(
            [*command, str(source), "-o", str(library)], capture_output=True, text=True
        )
        if built.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {built.stderr.strip()[:2000]}")
        fma = ctypes.CDLL(str(library))  # stays mapped after its file is removed
    fma.fma_run.argtypes = [ctypes.c_long]
    fma.fma_run.restype = ctypes.c_float
    fma.fma_flops_per_iteration.restype = ctypes.c_long
    threads = fma.fma_threads()

    def run_round():  # returns once every thread has run its loop
        fma.fma_run(iterations)

    family, model = cpu_family_model() or (None, None)
    details = {
        "precision": "float32",
        "fma_threads": threads,
        "threads": f"{threads}, one pinned to each CPU",
        "cpu_family": family,
        "cpu_model": model,
    }
    return run_round, threads * iterations * fma.fma_flops_per_iteration(), details
