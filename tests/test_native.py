"""fastconv.native: the fused conv op as built on this machine, its build, and the ways out."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import run_script, write_dataset

from fastconv import export, native, pipeline
from fastconv.model import ConvNet, conv_relu_pool_nn
from fastconv.trainer import Trainer


@pytest.mark.needs_fused_op
@pytest.mark.parametrize("batch", [1, 16, 37, 44, 128])
def test_fused_op_equals_tensorflows_ops_on_real_images(fashion_mnist, batch):
    """Values and kernel, bias and image gradients, for batches that fill whole blocks of
    lanes (16, 128: 8 or 16 images a block), part of one (1, 37) and rows that start off a
    vector boundary (37, 44, multiples of neither 8 nor 16 floats), against
    TensorFlow's ops in float64. A gradient routed to a wrong window position, or a lane
    lost, is off by the size of a term; float32 sums of up to 128 * 196 terms, by ~1e-6."""
    rng = np.random.default_rng(batch)
    values = {
        "images": fashion_mnist.train_images[:batch, ..., None] / 255,
        "conv_w": rng.normal(0, 0.5, (3, 3, 1, 10)),
        "conv_b": rng.normal(0, 0.1, 10),
    }
    upstream = rng.normal(size=(batch, 1960))

    def values_and_gradients(conv_relu_pool, dtype):
        images, conv_w, conv_b = (tf.constant(v, dtype) for v in values.values())
        with tf.GradientTape() as tape:
            tape.watch([images, conv_w, conv_b])
            features = conv_relu_pool(images, conv_w, conv_b)
            objective = tf.reduce_sum(features * tf.constant(upstream, dtype))
        return [features, *tape.gradient(objective, [conv_w, conv_b, images])]

    expected = values_and_gradients(conv_relu_pool_nn, tf.float64)
    actual = values_and_gradients(
        lambda *args: tf.transpose(native.conv_relu_pool(*args)), tf.float32
    )
    for name, a, e in zip(("features", "d kernel", "d bias", "d images"), actual, expected):
        scale = np.abs(e.numpy()).max()
        np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=0, atol=1e-5 * scale, err_msg=name)


THREADS_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))  # before any op
from fastconv import native
threads, folder = sys.argv[1], sys.argv[2]
inputs = np.load(f"{folder}/inputs.npz")
names = ("images", "kernel", "bias", "upstream")
images, kernel, bias, upstream = (tf.constant(inputs[name]) for name in names)
with tf.GradientTape() as tape:
    tape.watch([kernel, bias])
    features = native.conv_relu_pool(images, kernel, bias)
    objective = tf.reduce_sum(features * upstream)
d_kernel, d_bias = tape.gradient(objective, [kernel, bias])
np.savez(f"{folder}/{threads}.npz", features=features, d_kernel=d_kernel, d_bias=d_bias)
"""
THREADED_BATCH = 4096  # 256 or 512 blocks: every thread has many, and they overlap


def dyadic(values: np.ndarray, step: float) -> np.ndarray:
    """`values` rounded to multiples of `step` (a power of 2), as float32."""
    return (np.round(values / step) * step).astype(np.float32)


@pytest.mark.needs_fused_op
def test_the_fused_op_on_1_to_4_threads_equals_float64_tensorflow(tmp_path):
    """Forward and backward on a batch big enough that the op's threads run at once, each on
    its own blocks and into its own partial sums of the gradient, added up after.

    Every input is a multiple of a power of 2, small enough that every product and sum of
    the op, and of TensorFlow's ops in float64, is exact: the float32 op must equal the
    float64 reference bit for bit, on any number of threads, and any sum lost to a race or
    counted twice shows. (On arbitrary floats a window whose two largest values are within
    float32's rounding routes the gradient elsewhere than float64 does, off by ~1e-3.)"""
    rng = np.random.default_rng(9)
    inputs = {
        "images": dyadic(rng.random((THREADED_BATCH, 28, 28, 1)), 2**-8),
        "kernel": dyadic(rng.normal(0, 0.5, (3, 3, 1, 10)).clip(-1, 1), 2**-6),
        "bias": dyadic(rng.normal(0, 0.1, 10), 2**-6),
        "upstream": dyadic(rng.normal(size=(1960, THREADED_BATCH)).clip(-2, 2), 2**-3),
    }
    np.savez(tmp_path / "inputs.npz", **inputs)
    images, kernel, bias, upstream = (tf.constant(v, tf.float64) for v in inputs.values())
    with tf.GradientTape() as tape:
        tape.watch([kernel, bias])
        conv = tf.nn.conv2d(images, kernel, strides=1, padding="SAME") + bias
        pooled = tf.nn.max_pool2d(tf.nn.relu(conv), ksize=2, strides=2, padding="VALID")
        features = tf.transpose(tf.reshape(pooled, [THREADED_BATCH, -1]))  # the op's layout
        objective = tf.reduce_sum(features * upstream)
    d_kernel, d_bias = tape.gradient(objective, [kernel, bias])
    expected = {"features": features, "d_kernel": d_kernel, "d_bias": d_bias}
    # One process for each thread count (TensorFlow fixes its threads once a process), all
    # started at once: most of each is TensorFlow's import.
    runs = {
        threads: subprocess.Popen(
            [sys.executable, "-c", THREADS_SCRIPT, str(threads), str(tmp_path)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for threads in (1, 2, 3, 4)
    }
    try:
        for threads, run in runs.items():
            _, errors = run.communicate(timeout=600)
            assert run.returncode == 0, errors
            actual = np.load(tmp_path / f"{threads}.npz")
            for name, value in expected.items():
                np.testing.assert_array_equal(actual[name], value.numpy(), err_msg=(threads, name))
    finally:  # none left running after a failure
        for run in runs.values():
            run.kill()
            run.wait()


@pytest.mark.needs_fused_op
def test_bad_shapes_are_errors_naming_the_shape():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must be .*\[4,27,28,1\]"):
        native.conv_relu_pool(tf.zeros([4, 27, 28, 1]), tf.zeros([3, 3, 1, 10]), tf.zeros([10]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"kernel must be .*\[5,5,1,10\]"):
        native.conv_relu_pool(tf.zeros([4, 28, 28, 1]), tf.zeros([5, 5, 1, 10]), tf.zeros([10]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"bias must be .*\[9\]"):
        native.conv_relu_pool(tf.zeros([4, 28, 28, 1]), tf.zeros([3, 3, 1, 10]), tf.zeros([9]))


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "fastconv" / "native"


@pytest.fixture(scope="module")
def built_library(tmp_path_factory):
    """A library built into a cache of its own: these tests' one compile in this process;
    the tests below copy it in place of compiling again."""
    cache = tmp_path_factory.mktemp("built")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        return native.build()
    finally:
        if previous is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = previous


def copied_in(built_library):
    """A compile command that copies `built_library` into place: the build's bookkeeping
    runs as it is, without compiling again."""
    return lambda cxx, sources, output: ["cp", str(built_library), str(output)]


@pytest.mark.needs_fused_op
def test_build_compiles_once_into_the_cache_then_reuses_it(built_library, empty_cache, monkeypatch):
    """The cache's bookkeeping (the real compile is `built_library`'s): built once into
    the cache, then found there, the compiler asked for nothing but its version."""
    monkeypatch.setattr(native, "compile_command", copied_in(built_library))
    library = native.build()
    assert library.parent.parent == empty_cache and library.name == native.LIBRARY
    built = library.stat().st_mtime_ns

    run = subprocess.run

    def no_compiler(command, **kwargs):
        assert command[1] == "--version", f"compiled again: {command}"
        return run(command, **kwargs)

    monkeypatch.setattr(native.subprocess, "run", no_compiler)
    assert native.build() == library and library.stat().st_mtime_ns == built


@pytest.mark.needs_fused_op
def test_a_failed_compile_names_the_error_and_leaves_nothing(empty_cache, monkeypatch):
    compile_command = native.compile_command
    monkeypatch.setattr(
        native,
        "compile_command",
        lambda *args: [*compile_command(*args), "-include", "no_such.h"],
    )
    with pytest.raises(
        native.NativeUnavailable, match=r"failed on ops\.cc \+ xla_targets\.cc: .*no_such\.h"
    ):
        native.build()
    assert not list(empty_cache.glob(f"*/{native.LIBRARY}"))
    assert not list(empty_cache.glob("*/tmp*"))  # no partial library left behind


@pytest.mark.parametrize(
    ("flags", "missing"),
    [({"avx", "fma"}, "AVX2"), ({"avx", "avx2"}, "FMA"), ({"avx"}, "AVX2 or FMA")],
)
def test_a_cpu_without_avx2_or_fma_is_told_so_and_nothing_is_built(
    empty_cache, monkeypatch, flags, missing
):
    monkeypatch.setattr(native, "cpu_flags", lambda: {"sse4_2", *flags})
    with pytest.raises(native.NativeUnavailable, match=rf"^this CPU has no {missing}, which"):
        native.build()
    assert not empty_cache.exists()


def test_no_compiler_is_one_line_naming_what_was_looked_for(monkeypatch):
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(native.NativeUnavailable, match=r"^no C\+\+ compiler found \(looked for"):
        native.compiler()


def test_a_cxx_that_is_not_there_is_said_not_passed_over(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent")
    with pytest.raises(native.NativeUnavailable, match=r"^CXX=/nonexistent: no such compiler$"):
        native.compiler()


@pytest.mark.needs_fused_op
def test_a_failed_compile_is_remembered_until_a_retry(empty_cache, monkeypatch):
    compile_command, compiles = native.compile_command, []

    def failing(*args):
        compiles.append(args)
        return [*compile_command(*args), "-include", "no_such.h"]

    monkeypatch.setattr(native, "compile_command", failing)
    for _ in range(2):  # the second run says why without compiling
        with pytest.raises(native.NativeUnavailable, match=r"no_such\.h"):
            native.build()
    assert len(compiles) == 1
    with pytest.raises(native.NativeUnavailable, match=r"no_such\.h"):
        native.build(retry=True)  # python -m fastconv.native tries again
    assert len(compiles) == 2


@pytest.mark.needs_fused_op
def test_a_compile_stopped_by_ctrl_c_is_not_remembered(built_library, empty_cache, monkeypatch):
    """Ctrl-C reaches the compiler too: that compile failed, but the next run builds (here
    by copying the library built above) instead of falling back for good."""
    # SIGINT to itself, its default action restored: a job started in the background (no
    # job control) inherits SIGINT ignored.
    interrupt = "import os, signal; signal.signal(2, signal.SIG_DFL); os.kill(os.getpid(), 2)"
    interrupted = lambda *args: [sys.executable, "-c", interrupt]  # noqa: E731
    monkeypatch.setattr(native, "compile_command", interrupted)
    with pytest.raises(native.NativeUnavailable, match=r"was stopped by signal 2 on "):
        native.build()
    monkeypatch.setattr(native, "compile_command", copied_in(built_library))
    assert native.build().read_bytes() == built_library.read_bytes()


DAMAGE = {
    "truncated": lambda library, digest: library.write_bytes(library.read_bytes()[:30_000]),
    "empty": lambda library, digest: library.write_bytes(b""),
    "foreign": lambda library, digest: library.write_bytes(os.urandom(library.stat().st_size)),
    "digest lost": lambda library, digest: digest.unlink(),
}


@pytest.mark.needs_fused_op
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cached_library_is_built_again_once_with_one_line(
    built_library, empty_cache, monkeypatch, capsys, damage
):
    """Found before it is mapped (a truncated one killed every run with a bus error): the
    next build removes it, says so in one line and builds it again, here by copying the
    library built above in place of the compiler."""
    monkeypatch.setattr(native, "compile_command", copied_in(built_library))
    library = native.build()
    digest = library.with_name(native.DIGEST)
    DAMAGE[damage](library, digest)
    (library.parent / "tmp_killed_build").mkdir()  # what a build killed midway left
    capsys.readouterr()
    assert native.build() == library
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and said[0].startswith(f"fastconv.native: {library} is ")
    assert library.read_bytes() == built_library.read_bytes()
    assert native.build() == library and capsys.readouterr().err == ""  # whole now: kept
    assert not list(library.parent.glob("tmp*"))


@pytest.mark.needs_fused_op
def test_a_truncated_cached_library_no_longer_kills_the_build_step(built_library, tmp_path):
    """The issue's case end to end: the first 30,000 bytes of a built library at its cache
    key; `python -m fastconv.native` (and so a run) builds it again instead of dying. The
    compiler is $CXX, a stand-in that gives the real one's version and compiles by copying
    `built_library` (the real compile is `built_library`'s)."""
    cxx = tmp_path / "c++"
    cxx.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && exec {native.compiler()} --version\n'
        f'for word; do [ "$last" = -o ] && exec cp {built_library} "$word"; last=$word; done\n'
    )
    cxx.chmod(0o755)
    folder = tmp_path / "fastconv" / "native" / native._build_key(str(cxx))  # its cache key
    shutil.copytree(built_library.parent, folder)
    library = folder / native.LIBRARY
    library.write_bytes(library.read_bytes()[:30_000])
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "CXX": str(cxx)}
    command = [sys.executable, "-m", "fastconv.native"]
    run = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith(f"fastconv.native: {library} is damaged")
    assert run.stdout.splitlines()[-1].startswith("fastconv.native: ready in ")
    assert library.read_bytes() == built_library.read_bytes()  # built again, whole


@pytest.mark.parametrize(
    "switch, code, said",
    [pytest.param("1", 0, "ready in", marks=pytest.mark.needs_fused_op), ("0", 1, "turned off")],
)
def test_python_m_fastconv_native_says_whether_the_op_is_ready(switch, code, said):
    """What scripts/setup.sh runs: the cached library found (or built), or why not."""
    run = subprocess.run(
        [sys.executable, "-m", "fastconv.native"],
        capture_output=True,
        text=True,
        env={**os.environ, native.SWITCH: switch},
    )
    assert run.returncode == code, run.stderr
    (line,) = [line for line in run.stdout.splitlines() if "ready" in line or "not" in line]
    assert line.startswith("fastconv.native: ") and said in line


def test_turned_off_a_run_trains_with_tensorflows_ops_and_says_so(tmp_path):
    folder = write_dataset(tmp_path / "data")
    run = run_script(
        "train.py",
        *("--data-dir", str(folder), "--epochs", "1", "--batch-size", "32", "--logdir", "run"),
        cwd=tmp_path,
        env={**os.environ, native.SWITCH: "0"},
    )
    assert run.returncode == 0, run.stderr
    assert (
        "note: fastconv's fused conv op is not available (turned off by FASTCONV_NATIVE=0)"
        in run.stdout
    )
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["placement"]["conv_form"] == "batch_channels"


@pytest.mark.needs_fused_op
def test_an_exported_model_loads_and_predicts_without_the_op(fashion_mnist, tmp_path):
    """The SavedModel of a trainer on the fused op holds TensorFlow's ops only: a process
    that never loads fastconv's library reads it and predicts what the trainer does."""
    trainer = Trainer(ConvNet(seed=3), 0.05, conv_form="fused")
    batches = pipeline.training_batches(
        fashion_mnist.train_images[:2048],
        fashion_mnist.train_labels[:2048],
        64,
        0,
        pipeline.Standardization(),
    )
    trainer.train(iter(batches), tf.constant(32))
    model = export.export(trainer, pipeline.Standardization(), tmp_path / "model")
    images = fashion_mnist.test_images[:50]
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"classify = tf.saved_model.load({str(model)!r}).signatures['serving_default']\n"
        f"images = tf.constant(np.load({str(tmp_path / 'images.npy')!r}))\n"
        f"np.save({str(tmp_path / 'loaded.npy')!r}, classify(images=images)['probabilities'])\n"
        "assert 'fastconv' not in sys.modules\n"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    standardized = pipeline.Standardization()(tf.constant(images[..., None], tf.float32))
    expected = tf.nn.softmax(trainer.forpass(standardized)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "loaded.npy"), expected, atol=1e-5)


@pytest.mark.needs_fused_op
def test_an_exported_model_with_a_nan_weight_predicts_nan_as_the_trainer_does(tmp_path):
    """The export computes the fused op's function with TensorFlow's ops, whose pool passes
    over a NaN; it must pool to NaN as the op does (`fastconv.model.nan_where_nan`), or a
    diverged model would give finite probabilities."""
    trainer = Trainer(ConvNet(seed=4), 0.05, conv_form="fused")
    kernels = trainer.model.conv_w.numpy()
    kernels[1, 1, 0, 3] = np.nan
    trainer.model.conv_w.assign(kernels)
    images = np.random.default_rng(5).integers(0, 256, (4, 28, 28), np.uint8)
    standardized = pipeline.Standardization()(tf.constant(images[..., None], tf.float32))
    assert np.isnan(trainer.forpass(standardized).numpy()).all()
    model = export.export(trainer, pipeline.Standardization(), tmp_path / "model")
    classify = tf.saved_model.load(str(model)).signatures["serving_default"]
    assert np.isnan(classify(images=tf.constant(images))["probabilities"].numpy()).all()


@pytest.mark.needs_fused_op
@pytest.mark.parametrize("level", ["1", "2"])
def test_building_the_op_prints_its_own_lines_alone(level):
    """`python -m fastconv.native` (scripts/setup.sh's step) in an environment that lets
    TensorFlow's warnings or errors through: none of TensorFlow's C++ lines reach the user,
    neither the import's nor those of loading the built library."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": level}
    run = subprocess.run(
        [sys.executable, "-m", "fastconv.native"],
        capture_output=True,
        text=True,
        timeout=900,
        env=environment,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.splitlines()[-1].startswith("fastconv.native: ready in ")
    assert all(line.startswith("fastconv.native: ") for line in run.stdout.splitlines())
