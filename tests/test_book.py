"""The book's notebook cells, unchanged, on the real data."""

import numpy as np
import pytest
import reference

from fastconv import ConvolutionNetwork


def test_constructor_defaults_are_the_books():
    cn = ConvolutionNetwork()
    assert (cn.n_kernels, cn.units, cn.batch_size, cn.lr) == (10, 10, 32, 0.1)
    assert cn.losses == [] and cn.val_losses == []


def test_book_cells_train_and_score(book_split):
    (x_train, y_train_encoded), (x_val, y_val_encoded) = book_split
    np.random.seed(0)
    cn = ConvolutionNetwork(n_kernels=10, units=100, batch_size=128, learning_rate=0.01)
    cn.fit(x_train, y_train_encoded, x_val=x_val, y_val=y_val_encoded, epochs=3)
    assert len(cn.losses) == len(cn.val_losses) == 3
    assert cn.losses == sorted(cn.losses, reverse=True)
    assert cn.val_losses[-1] < cn.val_losses[0] < 1.0
    accuracy = cn.score(x_val, y_val_encoded)
    assert 0.75 < accuracy < 1.0
    # get_loss, predict and score say the same as a float64 NumPy evaluation of the weights.
    weights = [w.numpy().astype(np.float64) for w in cn.model.weights]
    logits = reference.forpass(x_val[:500], *weights)
    assert cn.get_loss(x_val[:500], y_val_encoded[:500]) == pytest.approx(
        reference.cross_entropy(y_val_encoded[:500], logits), rel=1e-5
    )
    agreement = np.mean(cn.predict(x_val[:500]) == logits.argmax(axis=1))
    assert agreement > 0.998  # ties within float32 rounding may flip a rare argmax
    assert cn.predict(x_val).shape == (12000,)


def test_fit_is_repeatable_under_numpy_seed(book_split):
    (x_train, y_train), _ = book_split
    losses = []
    for _ in range(2):
        np.random.seed(7)
        cn = ConvolutionNetwork(units=100, batch_size=256, learning_rate=0.01)
        cn.fit(x_train[:5120], y_train[:5120], epochs=2)
        losses.append(cn.losses)
    assert losses[0] == losses[1]


def test_soft_targets_are_refused(book_split):
    (x_train, y_train), _ = book_split
    with pytest.raises(ValueError, match="one-hot"):
        ConvolutionNetwork().fit(x_train[:64], y_train[:64] * 0.5, epochs=1)
