import os

# Quiet TensorFlow's C++ logging in test output; set before any test imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

from fastconv import data


def pytest_collection_modifyitems(config, items):
    """On a CPU without AVX2 and FMA, where fastconv's fused op cannot run (and the run uses
    TensorFlow's own ops), the tests of the op are skipped: those marked needs_fused_op, and
    those parametrized with a conv form that calls it (a form with a stock twin). Everywhere
    else they run, and a missing op there is a failure."""
    from fastconv.model import CONV_FORMS
    from fastconv.native import missing_vector_units

    if missing_vector_units() is None:
        return
    skip = pytest.mark.skip(reason="fastconv's fused op needs AVX2 and FMA; this CPU lacks them")
    for item in items:
        form = getattr(item, "callspec", None) and item.callspec.params.get("conv_form")
        if item.get_closest_marker("needs_fused_op") or (form and CONV_FORMS[form].stock):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fashion_mnist() -> data.FashionMNIST:
    """The real data set. The README's set-up installs it; its absence is a failure, not a skip."""
    try:
        return data.load(download=False)
    except data.DataError as error:
        pytest.fail(f"the real Fashion-MNIST is needed for this test: {error}")


@pytest.fixture(scope="session")
def book_split(fashion_mnist):
    """The book's arrays: x (N, 28, 28, 1) / 255 and one-hot targets, train and validation."""
    import numpy as np

    split = data.stratified_split(fashion_mnist.train_labels)

    def arrays(indices):
        x = fashion_mnist.train_images[indices].reshape(-1, 28, 28, 1) / 255
        return x, np.eye(10)[fashion_mnist.train_labels[indices]]

    return arrays(split.train), arrays(split.validation)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A small synthetic data set on disk (2,000 training images, 200 test), for the runs
    of the CLI and run-folder tests; read only."""
    from helpers import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data"), train=2000, test=200)
