"""The book's network and loss in float64 NumPy: the reference fastconv is checked against."""

import numpy as np


def forpass(images, conv_w, conv_b, w1, b1, w2, b2):
    """Logits of the book's forpass for images (N, 28, 28, 1), written out by hand."""
    images = images.astype(np.float64)
    padded = np.pad(images[..., 0], ((0, 0), (1, 1), (1, 1)))  # SAME for a 3x3 kernel
    conv = np.zeros((*images.shape[:3], conv_w.shape[3]))
    for dy in range(3):
        for dx in range(3):
            conv += padded[:, dy : dy + 28, dx : dx + 28, None] * conv_w[dy, dx, 0]
    relu = np.maximum(conv + conv_b, 0)
    n, kernels = len(images), conv_w.shape[3]
    pooled = relu.reshape(n, 14, 2, 14, 2, kernels).max(axis=(2, 4))
    hidden = np.maximum(pooled.reshape(n, -1) @ w1 + b1, 0)
    return hidden @ w2 + b2


def cross_entropy(targets, logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-(targets * log_softmax).sum(axis=1).mean())
