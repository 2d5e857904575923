"""The process-level choices: shards per step and thread counts."""

import pytest

from fastconv import runtime


@pytest.fixture
def cpu_with(monkeypatch):
    def set_cores(cores: int, gpu: bool = False):
        monkeypatch.setattr(runtime, "cpu_cores", lambda: cores)
        monkeypatch.setattr(runtime, "has_gpu", lambda: gpu)

    return set_cores


def test_two_shards_on_a_multicore_cpu_when_the_batch_splits(cpu_with):
    cpu_with(2)
    assert runtime.auto_shards(128) == 2
    assert runtime.auto_shards(127) == 1
    cpu_with(1)
    assert runtime.auto_shards(128) == 1
    cpu_with(8, gpu=True)
    assert runtime.auto_shards(128) == 1
    assert runtime.auto_shards(128, on_gpu=False) == 2  # --device cpu on a machine with a GPU


def test_the_conv_form_suits_the_engine(cpu_with):
    cpu_with(2)
    assert runtime.conv_form(xla=False) == "batch_channels"
    assert runtime.conv_form(xla=True) == "patches"
    cpu_with(2, gpu=True)
    assert runtime.conv_form(xla=False) == "nn"  # cuDNN runs the book's ops
    assert runtime.conv_form(xla=False, on_gpu=False) == "batch_channels"  # --device cpu
    assert runtime.conv_form(xla=True) == "patches"


def test_shards_get_the_cores_between_them(cpu_with):
    cpu_with(2)
    assert runtime.thread_counts(shards=2) == (1, 2)
    cpu_with(16)
    assert runtime.thread_counts(shards=2) == (8, 2)
    assert runtime.thread_counts(shards=1) is None
    cpu_with(16, gpu=True)
    assert runtime.thread_counts(shards=2) is None
    assert runtime.thread_counts(shards=2, on_gpu=False) == (8, 2)
