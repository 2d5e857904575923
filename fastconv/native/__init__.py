"""fastconv's fused first layer, built on the machine it runs on: a TensorFlow op, and two
XLA custom-call targets for code XLA compiles, where an op cannot go (`custom_calls`).

TensorFlow runs conv + bias + ReLU + max pool and their gradients as separate ops that each
walk the full-size activations with a minor dimension of 10 channels; `conv_relu_pool.h`
computes them with sixteen images (AVX-512) or eight (AVX2) in the lanes of each vector, in
one pass forward and one backward. The library is compiled from `ops.cc` and `xla_targets.cc`
($CXX, else c++ or g++) for this CPU (`-march=native`, AVX2 and FMA at least) once, and
cached under `$XDG_CACHE_HOME/fastconv/native` (else ~/.cache/fastconv/native), keyed by the
sources, the flags, the compiler, TensorFlow and the CPU. Where it cannot be built or loaded,
`unavailable()` says why in one line and fastconv uses TensorFlow's own ops.
`FASTCONV_NATIVE=0` turns it off; `python -m fastconv.native` builds it (scripts/setup.sh).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fastconv.importing import import_tensorflow

import_tensorflow()  # quietly, when this is the first to import it (`python -m fastconv.native`)

import tensorflow as tf  # noqa: E402

from fastconv.machine import cpu_flags  # noqa: E402

SOURCES = Path(__file__).parent
# The translation units, compiled together into one library, and all the files the build key
# covers.
COMPILED = ("ops.cc", "xla_targets.cc")
SOURCE_FILES = (*COMPILED, "conv_relu_pool.h")
LIBRARY = "fastconv_ops.so"
DIGEST = LIBRARY + ".sha256"  # "<size> <sha256>" of the library as built
FAILED = "FAILED"  # why the last compile failed, so that runs do not compile again
# Whether to use the op at all; "0" turns it off (a user's way out, and the tests' way to
# reach the fallback).
SWITCH = "FASTCONV_NATIVE"
# The CPU flags the op is built for at least: eight images a vector (sixteen with AVX-512).
VECTOR_UNITS = frozenset({"avx2", "fma"})


def missing_vector_units() -> str | None:
    """The vector units of VECTOR_UNITS this CPU lacks ("AVX2", "FMA", "AVX2 or FMA"), or
    None where it has them all."""
    return " or ".join(flag.upper() for flag in sorted(VECTOR_UNITS - cpu_flags())) or None


class NativeUnavailable(RuntimeError):
    """The op could not be built or loaded; the message says why, in one line."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastconv" / "native"


def compiler() -> str:
    """The C++ compiler to build with: $CXX when set, else c++ or g++; NativeUnavailable
    naming what was looked for."""
    if os.environ.get("CXX"):
        found = shutil.which(os.environ["CXX"])
        if not found:
            raise NativeUnavailable(f"CXX={os.environ['CXX']}: no such compiler")
        return found
    for name in ("c++", "g++"):
        found = shutil.which(name)
        if found:
            return found
    raise NativeUnavailable("no C++ compiler found (looked for $CXX, c++, g++)")


@functools.cache
def _accepts(cxx: str, flag: str) -> bool:
    """Whether the compiler knows `flag` (GCC 11 and older do not know -mno-avx512fp16)."""
    probe = [cxx, flag, "-E", "-x", "c++", os.devnull]
    return subprocess.run(probe, capture_output=True, timeout=60).returncode == 0


FLAGS = ("-shared", "-fPIC", "-O3", "-march=native", "-w")
# xla_targets.cc registers with xla::CustomCallTargetRegistry, which libtensorflow_cc exports
# (TensorFlow's link flags name libtensorflow_framework only). At load time the library
# binds to the copy TensorFlow has loaded already: one registry, the one XLA reads.
XLA_LINK_FLAGS = ("-l:libtensorflow_cc.so.2",)


def compile_command(cxx: str, sources: list[Path], output: Path) -> list[str]:
    flags = list(FLAGS)
    if "avx512_fp16" in cpu_flags() and _accepts(cxx, "-mno-avx512fp16"):
        # Eigen's AVX512-FP16 code in TensorFlow's headers does not compile with GCC 12
        # (older GCCs do not enable it); the op computes in float32 and needs none of it.
        flags.append("-mno-avx512fp16")
    return [
        cxx,
        *flags,
        *tf.sysconfig.get_compile_flags(),
        *map(str, sources),
        "-o",
        str(output),
        *tf.sysconfig.get_link_flags(),
        *XLA_LINK_FLAGS,
    ]


def _build_key(cxx: str) -> str:
    """What the library depends on: the sources, the flags, the compiler, TensorFlow and
    this CPU (-march=native code may not run on another). The flags `compile_command` adds
    follow from the compiler and the CPU, so finding a built library probes nothing."""
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(name.encode() + (SOURCES / name).read_bytes())
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    cpu = " ".join(sorted(cpu_flags()))
    flags = [
        *FLAGS,
        *tf.sysconfig.get_compile_flags(),
        *tf.sysconfig.get_link_flags(),
        *XLA_LINK_FLAGS,
    ]
    digest.update("\0".join([cxx, *flags, version, tf.__version__, cpu]).encode())
    return digest.hexdigest()[:16]


def build(verbose: bool = False, retry: bool = False) -> Path:
    """The compiled library, built now unless the cache has it whole; NativeUnavailable if
    this CPU lacks AVX2 and FMA or the compiler fails (its first error line in the message).

    A failed compile is remembered in the cache (`FAILED`), so later runs say why without
    compiling again, until `retry` (`python -m fastconv.native`); a compiler stopped by a
    signal is not a failed compile. A cached library is read whole and checked against the
    digest written beside it before it is used: one damaged (a build cut short, a full disk)
    or not written by this build is removed and built again (mapping a truncated library
    kills the process with a bus error).
    """
    # The op is written for 8 or 16 lanes a vector; on narrower ones it was never measured.
    if missing := missing_vector_units():
        raise NativeUnavailable(f"this CPU has no {missing}, which the op needs to be fast")
    cxx = compiler()
    folder = cache_dir() / _build_key(cxx)
    target, digest, failed = folder / LIBRARY, folder / DIGEST, folder / FAILED
    folder.mkdir(parents=True, exist_ok=True)
    # One build at a time per machine: processes started together wait for the first.
    with open(folder / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if retry:
            failed.unlink(missing_ok=True)
        if failed.exists():
            raise NativeUnavailable(
                f"{failed.read_text().strip()} (retry: python -m fastconv.native)"
            )
        damage = _damage(target, digest)
        if damage is None:
            return target
        if target.exists():
            print(f"fastconv.native: {target} is {damage}; building it again", file=sys.stderr)
            target.unlink()
        for scratch in folder.glob("tmp*"):  # a build killed midway
            shutil.rmtree(scratch, ignore_errors=True)
        if verbose:
            print(f"fastconv.native: compiling {', '.join(COMPILED)} in {SOURCES} ...", flush=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            partial = Path(scratch) / LIBRARY
            names = " + ".join(COMPILED)
            command = compile_command(cxx, [SOURCES / name for name in COMPILED], partial)
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=900)
            except subprocess.TimeoutExpired:
                raise NativeUnavailable(f"{Path(cxx).name} took over 900 s on {names}") from None
            if done.returncode < 0:  # stopped by a signal (Ctrl-C): not the source's fault
                why = f"{Path(cxx).name} was stopped by signal {-done.returncode} on {names}"
                raise NativeUnavailable(why)  # so not remembered: the next run builds again
            if done.returncode:
                errors = [line for line in done.stderr.splitlines() if "error:" in line]
                first = (errors or done.stderr.splitlines() or ["no output"])[0].strip()
                why = f"{Path(cxx).name} failed on {names}: {first}"
                failed.write_text(why + "\n")
                raise NativeUnavailable(why)
            # The digest first, then the library, each on disk before its rename: a library
            # in place always has its digest, and a crash leaves it whole or absent.
            _write_durably(digest, _digest_of(partial.read_bytes()) + "\n")
            with open(partial, "rb") as library:
                os.fsync(library.fileno())
            os.replace(partial, target)
    return target


def _digest_of(content: bytes) -> str:
    return f"{len(content)} {hashlib.sha256(content).hexdigest()}"


def _damage(target: Path, digest: Path) -> str | None:
    """What is wrong with the cached library, or None where it is whole (read, not mapped)."""
    if not target.exists():
        return "missing"
    try:
        expected = digest.read_text().strip()
    except FileNotFoundError:
        return "without its digest (not written by this build)"
    if _digest_of(target.read_bytes()) != expected:
        return "damaged (its size or checksum differs from the build's)"
    return None


def _write_durably(path: Path, text: str) -> None:  # on disk, then in place
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


@functools.cache
def _load():
    """(the library, None) or (None, why not): tried once per process, failure included."""
    if os.environ.get(SWITCH, "1") == "0":
        return None, f"turned off by {SWITCH}=0"
    try:
        path = build()
    except NativeUnavailable as error:
        return None, str(error)
    except (OSError, RuntimeError) as error:  # the cache folder (RuntimeError: no home)
        return None, f"could not build in the cache: {error}"
    try:
        library = tf.load_op_library(str(path))
    except (tf.errors.NotFoundError, OSError) as error:
        return None, f"{path} did not load: {str(error).splitlines()[0]}"
    tf.RegisterGradient("FastconvConvReluPool")(_conv_relu_pool_gradient)
    return library, None


def ops():
    """The loaded op library (built first if need be), with the op's gradient registered;
    NativeUnavailable if it is turned off or cannot be built or loaded here."""
    library, why_not = _load()
    if library is None:
        raise NativeUnavailable(why_not)
    return library


def unavailable(xla: bool = False) -> str | None:
    """Why the kernel cannot be used here (one line), or None when it can: as the op, or
    with `xla` as XLA custom calls (`fastconv.native.custom_calls.unavailable`)."""
    if xla:
        from fastconv.native import custom_calls  # here: it imports this module

        return custom_calls.unavailable()
    return _load()[1]


def conv_relu_pool(images: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """conv 3x3 SAME + bias, ReLU, 2x2 max pool of float32 images (B, H, W, 1) with a
    kernel (3, 3, 1, K): the features (H/2 * W/2 * K, B), the book's (h, w, k) order down
    the columns, one image per column. Differentiable in `kernel` and `bias` by the op, and
    in the images by TensorFlow's ops (only where asked: training never does)."""
    features, _winner = ops().fastconv_conv_relu_pool(images, kernel, bias)
    return features


def _conv_relu_pool_gradient(op, grad_features, _grad_winner):
    images, kernel, _bias = op.inputs
    winner = op.outputs[1]
    kernel_grad, bias_grad = ops().fastconv_conv_relu_pool_grad(
        images, winner, grad_features, kernel
    )
    # The images' gradient only where asked for (eager tapes say so; graphs prune it).
    skipped = getattr(op, "skip_input_indices", None) or ()
    images_grad = None if 0 in skipped else images_gradient(images, kernel, winner, grad_features)
    return [images_grad, kernel_grad, bias_grad]


def images_gradient(images, kernel, winner, grad_features):
    """The images' gradient, in TensorFlow's ops: training never asks for it, and in a
    tf.function an output nobody reads is pruned, so it costs only those who use it."""
    batch, height, width, _ = tf.unstack(tf.shape(images))
    kernels = kernel.shape[-1]
    # Each feature's gradient at its window's winning position (none where winner is 4,
    # the ReLU off): the gradient of the conv's output, (B, H, W, K).
    routed = tf.one_hot(winner, 5, dtype=grad_features.dtype)[..., :4] * grad_features[..., None]
    windows = tf.reshape(
        tf.transpose(routed, [1, 0, 2]), [batch, height // 2, width // 2, kernels, 2, 2]
    )
    conv_grad = tf.reshape(
        tf.transpose(windows, [0, 1, 4, 2, 5, 3]), [batch, height, width, kernels]
    )
    return tf.nn.conv2d_transpose(conv_grad, kernel, tf.shape(images), strides=1, padding="SAME")
