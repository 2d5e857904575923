"""The book's network: its six variables and `forpass`, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import keras
import tensorflow as tf

from fastconv import native
from fastconv.data import IMAGE_SIZE, NUM_CLASSES
from fastconv.native import custom_calls

KERNEL_SIZE = 3
WINDOW = 2  # the max pool's window and stride
POOLED_SIZE = IMAGE_SIZE // WINDOW  # the 2x2 max pool halves 28 to 14
NEIGHBOURHOOD = WINDOW + KERNEL_SIZE - 1  # 4: the padded rows (and columns) a window's conv reads
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)


class ConvNet(tf.Module):
    """conv 3x3 SAME (+ bias) -> ReLU -> max pool 2x2 -> flatten -> dense + ReLU -> dense logits.

    The variables are those of the book's `ConvolutionNetwork.init_weights`: glorot_uniform
    weights, zero biases, float32, in the book's order `[conv_w, conv_b, w1, b1, w2, b2]`.
    `dtype_policy` is a Keras mixed-precision policy name: the variables stay float32 and the
    forpass computes in the policy's compute dtype, except the logits, which are float32.
    """

    def __init__(
        self,
        n_kernels: int = 10,
        units: int = 100,
        seed: int | None = None,
        dtype_policy: str = "float32",
        name: str = "conv_net",
    ):
        super().__init__(name=name)
        self.n_kernels, self.units = n_kernels, units
        self.dtype_policy = keras.DTypePolicy(dtype_policy)
        # One generator for the three draws: distinct weights, reproducible from `seed`; in
        # float32 whatever Keras's default float type (`floatx`, which keras.json may set).
        glorot = keras.initializers.GlorotUniform(seed=keras.random.SeedGenerator(seed))
        n_features = POOLED_SIZE * POOLED_SIZE * n_kernels
        with self.name_scope:
            self.conv_w = tf.Variable(
                glorot((KERNEL_SIZE, KERNEL_SIZE, 1, n_kernels), "float32"), name="conv_w"
            )
            self.conv_b = tf.Variable(tf.zeros([n_kernels]), name="conv_b")
            self.w1 = tf.Variable(glorot((n_features, units), "float32"), name="w1")
            self.b1 = tf.Variable(tf.zeros([units]), name="b1")
            self.w2 = tf.Variable(glorot((units, NUM_CLASSES), "float32"), name="w2")
            self.b2 = tf.Variable(tf.zeros([NUM_CLASSES]), name="b2")

    @property
    def weights(self) -> list[tf.Variable]:
        """The trainable variables in the book's order."""
        return [self.conv_w, self.conv_b, self.w1, self.b1, self.w2, self.b2]

    @property
    def biases(self) -> list[tf.Variable]:
        return [self.conv_b, self.b1, self.b2]

    def forpass(self, images: tf.Tensor, conv_form: str = "nn", weights=None) -> tf.Tensor:
        """Logits (B, 10) for images (B, 28, 28, 1): the book's `forpass`.

        `conv_form` names one of `CONV_FORMS`, each the same function written for a
        different engine: "nn" is the book's `tf.nn` ops (cuDNN's on a GPU); on a CPU,
        fastconv's own kernel runs fastest, as a TensorFlow op in graph mode ("fused") and as
        XLA custom calls under XLA ("fused_xla"); without it, "batch_channels" in graph mode
        and "window_patches" under XLA. `weights` computes with other values of the six
        variables, in the order of `weights` (moving averages).

        In every form, and in the exported model, a pooling window that holds a NaN gives a
        NaN feature, so a diverging run shows as NaN wherever it is computed.
        """
        weights = weights or self.weights
        conv_w, conv_b, w1, b1, w2, b2 = (self._compute(w) for w in weights)
        form = CONV_FORMS[conv_form]
        if form.in_float32:  # from the float32 images and variables, not rounded copies
            features = self._compute(form.conv_relu_pool(images, weights[0], weights[1]))
        else:
            features = form.conv_relu_pool(self._compute(images), conv_w, conv_b)
        if form.images_in_columns:
            # features (14*14*K, B): the dense layers computed transposed, hidden (units, B)
            # and logits (10, B); matmul reads its operands transposed at no cost. (Biases
            # get their axis from expand_dims, whose gradient is a free reshape; a [:, None]
            # slice's gradient is a StridedSliceGrad op of its own.)
            hidden = tf.nn.relu(tf.matmul(w1, features, transpose_a=True) + tf.expand_dims(b1, 1))
            logits = tf.transpose(tf.matmul(w2, hidden, transpose_a=True) + tf.expand_dims(b2, 1))
        else:
            hidden = tf.nn.relu(tf.nn.bias_add(tf.matmul(features, w1), b1))
            logits = tf.nn.bias_add(tf.matmul(hidden, w2), b2)
        # Logits in float32: the softmax and the loss need its range and precision.
        return tf.cast(logits, tf.float32)

    def _compute(self, tensor: tf.Tensor) -> tf.Tensor:
        """`tensor` in the compute dtype (a no-op in float32)."""
        return tf.cast(tensor, self.dtype_policy.compute_dtype)

    __call__ = forpass


def cross_entropy(targets: tf.Tensor, logits: tf.Tensor, smoothing: float = 0.0) -> tf.Tensor:
    """The book's loss: mean softmax cross-entropy of one-hot targets and logits. With
    `smoothing`, the targets first give that share of their weight evenly to every class."""
    if smoothing:
        targets = targets * (1 - smoothing) + smoothing / NUM_CLASSES
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits))


def conv_relu_pool_nn(images, conv_w, conv_b):
    """conv 3x3 SAME + bias, ReLU, 2x2 max pool, flattened (B, 14*14*K): the book's ops.

    Pooled first: a per-channel bias is the same over a window and ReLU is monotonic, so
    relu(max(conv) + b) equals max(relu(conv + b)) exactly (float rounding keeps order), in
    values and in the gradient the pool routes to each window's maximum. The bias, the ReLU
    and their gradients then touch a quarter of the data.
    """
    conv = tf.nn.conv2d(images, conv_w, strides=1, padding="SAME")
    pooled = max_pool(conv)
    return tf.reshape(tf.nn.relu(tf.nn.bias_add(pooled, conv_b)), [tf.shape(images)[0], -1])


def max_pool(conv):
    """The 2x2 max pool of `conv` (B, H, W, C), where a window holding a NaN pools to NaN."""
    pooled = tf.nn.max_pool2d(conv, ksize=WINDOW, strides=WINDOW, padding="VALID")
    return nan_where_nan(pooled, tf.nn.avg_pool2d(conv, WINDOW, WINDOW, padding="VALID"))


def nan_where_nan(maxima, window_sums):
    """The windows' `maxima`, NaN where `window_sums` (their sums or means) are NaN.

    TensorFlow's max_pool2d and XLA's max on a CPU pass over a NaN ([nan, 1, 2, 3] -> 3,
    and a window of NaNs only to the lowest float, which the ReLU makes 0), where the fused
    op keeps it: a diverging run would look finite in one form and not in another. A sum is
    NaN where its window holds a NaN (or, in a run already past float32's range, infinities
    of both signs); it feeds the condition only, so the gradient holds no term of it.
    """
    return tf.where(tf.math.is_nan(window_sums), tf.constant(float("nan"), maxima.dtype), maxima)


def conv_relu_pool_batch_channels(images, conv_w, conv_b):
    """The same function as `conv_relu_pool_nn`, written for oneDNN on a CPU; the features
    come back with the images in columns, (14*14*K, B).

    With one input channel and ten kernels, a plain conv keeps a minor dimension of 10 that
    fills 8- or 16-lane vectors badly. Here the batch becomes the channels: K copies of the B
    images side by side make one image (1, 28, 28, K*B), and a depthwise conv gives channel
    k*B + b the kernel k, so the long dimension is minor; the pool follows, then bias and ReLU
    as above. Kernel-major channels put the pooled features in the book's (h, w, k) order down
    the columns, so the dense layer reads them as they are: no transpose of the features,
    forward or backward, where image-major channels (the kernels tiled instead of the images)
    needed one each way. The gradient of the repeated kernels sums over the batch, as the
    conv's gradient does.

    Under mixed_bfloat16 it computes in bfloat16 like the rest: with one kernel per channel,
    oneDNN's bfloat16 depthwise kernel is fast (with the kernels tiled over the images
    instead, it was not), and this layer is bound by memory, which bfloat16 halves.
    bench/RESULTS.md has the measurements behind each of these choices.
    """
    n_kernels = conv_w.shape[-1]
    batch = tf.shape(images)[0]
    pixels_by_image = tf.transpose(tf.reshape(images, [batch, IMAGE_SIZE * IMAGE_SIZE]))
    one_image = tf.reshape(  # (1, 28, 28, K*B): channel k*B + b is image b, for kernel k
        tf.tile(pixels_by_image, [1, n_kernels]), [1, IMAGE_SIZE, IMAGE_SIZE, -1]
    )
    kernels = tf.reshape(  # (3, 3, K*B, 1): kernel k for each of its B channels
        tf.broadcast_to(tf.expand_dims(conv_w, 4), [KERNEL_SIZE, KERNEL_SIZE, 1, n_kernels, batch]),
        [KERNEL_SIZE, KERNEL_SIZE, -1, 1],
    )
    conv = tf.nn.depthwise_conv2d(one_image, kernels, strides=[1, 1, 1, 1], padding="SAME")
    pooled = max_pool(conv)  # (1, 14, 14, K*B)
    biases = tf.reshape(tf.broadcast_to(tf.expand_dims(conv_b, 1), [n_kernels, batch]), [-1])
    activated = tf.nn.relu(tf.nn.bias_add(pooled, biases))
    return tf.reshape(activated, [POOLED_SIZE * POOLED_SIZE * n_kernels, batch])


def conv_relu_pool_window_patches(images, conv_w, conv_b):
    """The same function as `conv_relu_pool_nn`, written for XLA's CPU compiler.

    XLA's CPU convolution and max-pool gradient are several times slower than oneDNN's for
    this layer, and it vectorizes a minor dimension of 10 channels poorly. So the layer is a
    matmul whose output is laid out for the pool: each 2x2 pooling window reads a 4x4
    neighbourhood of the padded image, and the conv at the window's four pixels is four
    kernels applied to that neighbourhood. The matmul of those kernels (4*K, 16) with the
    neighbourhoods (16, B*14*14) puts the four pixels of every window on its major axis, so
    the pool and its gradient are element-wise over four contiguous blocks (over 2x2 windows
    of a full-resolution conv they strided through memory, and the pool's gradient was where
    XLA lost most to oneDNN). Bias and ReLU follow the pool, as above. Values and the weight
    and bias gradients agree with the tf.nn ops to float32 rounding: ties in the pool split
    the gradient among equal maxima, where MaxPoolGrad gives it to the first, which for equal
    patches gives the same weight gradients (not the same image gradient).
    """
    n_kernels = conv_w.shape[-1]
    batch = tf.shape(images)[0]
    conv = tf.matmul(_window_kernels(conv_w), _neighbourhoods(images))  # (4*K, B*14*14)
    windows = tf.reshape(conv, [WINDOW * WINDOW, n_kernels, -1])
    pooled = nan_where_nan(tf.reduce_max(windows, axis=0), tf.reduce_sum(windows, axis=0))
    activated = tf.nn.relu(pooled + tf.expand_dims(conv_b, 1))  # (K, B*14*14)
    # Back to the book's (B, 14, 14, K) order before flattening, so w1 keeps its meaning.
    by_image = tf.reshape(activated, [n_kernels, batch, POOLED_SIZE * POOLED_SIZE])
    return tf.reshape(tf.transpose(by_image, [1, 2, 0]), [batch, -1])


def _neighbourhoods(images):
    """(16, B*14*14): row 4*r + c holds pixel (2i + r, 2j + c) of the padded image, for every
    image and pooling window (i, j); r and c run over the window's 4x4 neighbourhood.

    The image is split into its four phases by the pool's stride (pixel (2p + u, 2q + v) of
    phase (u, v) at (p, q)), so each row is a contiguous 14x14 slice of one phase: 2i + r is
    2(i + r // 2) + r % 2.
    """
    batch = tf.shape(images)[0]
    padded = tf.pad(images[..., 0], [[0, 0], [1, 1], [1, 1]])  # SAME for a 3x3 kernel: 30x30
    phase_size = POOLED_SIZE + 1  # 15: a 30x30 image's four phases are 15x15
    by_phase = tf.reshape(padded, [batch, phase_size, WINDOW, phase_size, WINDOW])
    phases = tf.transpose(by_phase, [2, 4, 0, 1, 3])
    rows = []
    for r in range(NEIGHBOURHOOD):
        for c in range(NEIGHBOURHOOD):
            (top, u), (left, v) = divmod(r, WINDOW), divmod(c, WINDOW)
            rows.append(phases[u, v, :, top : top + POOLED_SIZE, left : left + POOLED_SIZE])
    return tf.reshape(tf.stack(rows), [NEIGHBOURHOOD * NEIGHBOURHOOD, -1])


def _window_kernels(conv_w):
    """(4*K, 16): row K*(2a + b) + k is kernel k placed at the window's pixel (a, b) of the
    4x4 neighbourhood (rows a..a+2, columns b..b+2; zeros elsewhere), flattened like the
    rows of `_neighbourhoods`."""
    n_kernels = conv_w.shape[-1]
    kernels = tf.reshape(conv_w, [KERNEL_SIZE, KERNEL_SIZE, n_kernels])
    rest = NEIGHBOURHOOD - KERNEL_SIZE
    placed = [  # each (4, 4, K)
        tf.pad(kernels, [[a, rest - a], [b, rest - b], [0, 0]])
        for a in range(WINDOW)
        for b in range(WINDOW)
    ]
    by_pixel = tf.transpose(tf.stack(placed), [0, 3, 1, 2])  # (4, K, 4, 4)
    return tf.reshape(by_pixel, [WINDOW * WINDOW * n_kernels, NEIGHBOURHOOD * NEIGHBOURHOOD])


def conv_relu_pool_fused(images, conv_w, conv_b):
    """The same function as `conv_relu_pool_nn`, as one op of fastconv's own for a CPU
    (`fastconv.native`): 16 or 8 images in the lanes of a vector, the conv, bias, ReLU and
    pool in one pass and their gradient in another. The features come back with the images
    in columns, (14*14*K, B), like `conv_relu_pool_batch_channels`.

    The op computes in float32 whatever the policy (`ConvForm.in_float32`): the layer is
    a small share of the arithmetic, and `ConvNet.forpass` casts its output to the compute
    dtype for the dense layers.
    """
    return native.conv_relu_pool(images, conv_w, conv_b)


def conv_relu_pool_fused_xla(images, conv_w, conv_b):
    """`conv_relu_pool_fused` for XLA's compiled step (`--xla` on a CPU): the same kernel,
    called as XLA custom calls (`fastconv.native.custom_calls`), where a TensorFlow op
    cannot go."""
    return custom_calls.xla_conv_relu_pool(images, conv_w, conv_b)


class ConvForm(NamedTuple):
    """One way to compute conv + ReLU + pool, and the layout of the features it returns."""

    conv_relu_pool: Callable  # (images, conv_w, conv_b) -> the pooled features, flattened
    images_in_columns: bool  # features (14*14*K, B) rather than the book's (B, 14*14*K)
    # For a form with an op of fastconv's own: the form of TensorFlow's ops with the same
    # layout, for a SavedModel that must load where fastconv is not installed.
    stock: str | None = None
    # Computes from the float32 images and variables under every policy (else in the compute
    # dtype); its features are cast to the compute dtype after.
    in_float32: bool = False
    # The engine it runs in: True for XLA alone (custom calls), False for graph mode alone
    # (an op XLA cannot compile), None for both.
    xla: bool | None = None
    # For a form of custom calls, whose result shapes are fixed when traced: the form of the
    # same kernel for batches of any size (evaluation and prediction), in graph mode.
    any_batch: str | None = None


# The forms of conv + ReLU + pool, by the name `ConvNet.forpass` takes.
CONV_FORMS = {
    "nn": ConvForm(conv_relu_pool_nn, images_in_columns=False),
    "batch_channels": ConvForm(conv_relu_pool_batch_channels, images_in_columns=True),
    "window_patches": ConvForm(conv_relu_pool_window_patches, images_in_columns=False),
    "fused": ConvForm(conv_relu_pool_fused, True, stock="fused_stock", in_float32=True, xla=False),
    "fused_xla": ConvForm(
        conv_relu_pool_fused_xla,
        True,
        stock="fused_stock",
        in_float32=True,
        xla=True,
        any_batch="fused",
    ),
    # The fused op's function in TensorFlow's ops, in float32 like the op: what the SavedModel
    # of a run on the fused op holds, so that it loads without fastconv.
    "fused_stock": ConvForm(conv_relu_pool_batch_channels, images_in_columns=True, in_float32=True),
}
