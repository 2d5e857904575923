"""The fused kernel as XLA custom calls (`xla_conv_relu_pool`), for the step that XLA
compiles (`--xla`), where the TensorFlow op cannot go. The targets are `xla_targets.cc`'s,
in the library `fastconv.native` builds and loads; `unavailable()` says when they cannot
be used.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from fastconv import native
from fastconv.machine import cpu_cores

# TensorFlow's persistent cache of compiled XLA programs, turned on in TF_XLA_FLAGS.
# TensorFlow 2.21's XLA loses a custom call's tuple result when it loads a cached program
# (CustomCallThunkFromProto in xla/backends/cpu/runtime/thunk_proto_serdes.cc leaves
# OpBuffers.is_tuple_result false): the targets, which return two arrays each, get their
# first array where they expect the list of both, and the process dies of a segmentation
# fault. Where the cache is on, --xla computes the layer with XLA's own ops instead.
CACHE_FOLDER_FLAG = "tf_xla_persistent_cache_directory"
CACHE_DEVICES_FLAG = "tf_xla_persistent_cache_device_types"  # empty: every device


def unavailable() -> str | None:
    """Why the custom calls cannot be used here (one line), or None when they can: the
    library's reason (`fastconv.native.unavailable`), or TensorFlow's persistent XLA cache."""
    if why_not := native.unavailable():
        return why_not
    if folder := persistent_cache():
        return (
            f"TF_XLA_FLAGS turns on TensorFlow's persistent XLA cache ({folder}), under which "
            "TensorFlow 2.21 crashed running a cached step that holds custom calls; unset "
            f"--{CACHE_FOLDER_FLAG} to train with them"
        )
    return None


def persistent_cache() -> str | None:
    """The folder TF_XLA_FLAGS gives TensorFlow's persistent XLA cache for this CPU, or None.

    Read as XLA reads it (xla/parse_flags_from_env.cc): a value that does not start with "-"
    names a file of flags; a value may be quoted; a flag given twice takes its last value;
    an empty folder turns the cache off.
    """
    text = os.environ.get("TF_XLA_FLAGS", "")
    if text.strip() and not text.lstrip().startswith("-"):
        try:
            text = Path(text).read_text()
        except OSError:
            return None  # TensorFlow stops on an unreadable file before any step
    try:
        words = shlex.split(text)
    except ValueError:  # an unclosed quote
        words = text.split()
    flags = {}
    for word in words:  # --name=value
        name, _, value = word.lstrip("-").partition("=")
        flags[name] = value
    devices = flags.get(CACHE_DEVICES_FLAG, "").split(",")
    on_this_cpu = devices == [""] or not {"CPU", "XLA_CPU_JIT"}.isdisjoint(devices)
    return (flags.get(CACHE_FOLDER_FLAG) or None) if on_this_cpu else None


# The XLA custom-call targets of xla_targets.cc, registered when the library loads.
XLA_FORWARD = "fastconv_conv_relu_pool"
XLA_BACKWARD = "fastconv_conv_relu_pool_grad"


def xla_conv_relu_pool(images: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """`conv_relu_pool` for code that XLA compiles (`tf.function(jit_compile=True)`), where
    the op cannot go: the same kernel, called as XLA custom calls. Takes float32 images
    (B, H, W, 1), a kernel (3, 3, 1, K) and a bias (K), and returns the float32 features
    (H/2 * W/2 * K, B), one image per column, as `conv_relu_pool` does; differentiable in
    `kernel` and `bias` by the backward target, and in the images by TensorFlow's ops.

    The shapes, the batch size included, must be known when the function is traced (a custom
    call's result shapes are fixed in the graph): a tf.function traces again for each new
    batch size, but not with a free batch dimension in its input_signature. NativeUnavailable
    where the custom calls cannot be used (`unavailable`).
    """
    if why_not := unavailable():
        raise native.NativeUnavailable(why_not)
    native.ops()  # loading the library registers the targets
    images, kernel, bias = (tf.convert_to_tensor(t, tf.float32) for t in (images, kernel, bias))
    config = _xla_config(images.shape, kernel.shape, bias.shape)
    features_spec = tf.TensorSpec(
        [images.shape[1] // 2 * (images.shape[2] // 2) * kernel.shape[3], images.shape[0]]
    )

    @tf.custom_gradient
    def conv_relu_pool(images, kernel, bias):
        features, winner = xla.custom_call_v2(
            XLA_FORWARD,
            [images, kernel, bias],
            [features_spec, tf.TensorSpec(features_spec.shape, tf.uint8)],
            backend_config=config,
        )

        def gradient(grad_features):
            kernel_grad, bias_grad = xla.custom_call_v2(
                XLA_BACKWARD,
                [images, winner, grad_features],
                [tf.TensorSpec(kernel.shape), tf.TensorSpec(bias.shape)],
                backend_config=config,
            )
            # The images' gradient costs nothing where nobody reads it: XLA drops it.
            images_grad = native.images_gradient(images, kernel, winner, grad_features)
            return images_grad, kernel_grad, bias_grad

        return features, gradient

    return conv_relu_pool(images, kernel, bias)


def _xla_config(images: tf.TensorShape, kernel: tf.TensorShape, bias: tf.TensorShape) -> str:
    """The targets' backend_config: the geometry (from the operands' static shapes, checked
    here as the op checks them) and the threads to spread the blocks over."""
    if images.rank != 4 or images[3] != 1 or not images[1:3].is_fully_defined():
        raise ValueError(f"images must be (batch, height, width, 1), got {images}")
    batch, height, width, _ = images
    if height % 2 or width % 2:
        raise ValueError(f"images must have an even height and width, got {images}")
    if batch is None:
        raise ValueError(
            f"images {images}: the batch size must be known when traced (a custom call's "
            "result shapes are fixed in the graph); give the tf.function no free batch "
            "dimension in its input_signature"
        )
    if kernel.rank != 4 or kernel[:3] != (3, 3, 1) or kernel[3] is None:
        raise ValueError(f"kernel must be (3, 3, 1, kernels), got {kernel}")
    if bias != (kernel[3],):
        raise ValueError(f"bias must be (kernels,) = ({kernel[3]},), got {bias}")
    # TensorFlow's intra-op setting, else the CPUs this process may run on, as TensorFlow does.
    threads = tf.config.threading.get_intra_op_parallelism_threads() or cpu_cores()
    return f"batch={batch} height={height} width={width} kernels={kernel[3]} threads={threads}"
