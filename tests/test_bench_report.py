"""bench/report.py: the throughput table pools each peer's passes before it takes ratios."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from report import combined, format_table


def row(peer, kind, seconds, work=1000, **details):
    return {
        "peer": peer,
        "label": peer,
        "kind": kind,
        "work_per_round": work,
        "round_seconds": seconds,
        **details,
    }


def test_passes_pool_into_one_row_per_peer():
    rows = combined(
        [
            row("fastconv", "fastconv", [1.0, 3.0], pass_number=1),
            row("keras_fit", "keras", [2.0]),
            row("fastconv", "fastconv", [2.0, 9.0], pass_number=2),  # a slow phase's round
            row("matmul_float32", "matmul", [0.5, 0.25], work=10**9, dtype="float32"),
        ]
    )
    by_peer = {r["peer"]: r for r in rows}
    assert len(rows) == 3
    fastconv = by_peer["fastconv"]
    assert fastconv["passes"] == 2
    assert fastconv["round_seconds"] == [1.0, 3.0, 2.0, 9.0]
    assert fastconv["images_per_second"] == pytest.approx(1000 / 2.5)  # median of 4 rounds
    assert fastconv["best_images_per_second"] == pytest.approx(1000.0)
    assert by_peer["matmul_float32"]["gflops"] == pytest.approx(4.0)  # the best round


def test_table_gives_ratios_to_keras_best_and_the_book():
    rows = [
        row("book_eager", "book", [10.0]),
        row("keras_fit", "keras", [4.0, 4.0]),
        row("keras_fit_spe50", "keras", [2.0, 2.0]),
        row("fastconv", "fastconv", [1.0, 1.0], batch_size=128),
        row("fastconv", "fastconv", [1.0], batch_size=128),
    ]
    table = format_table(rows, {"cpu": "test CPU", "cores": 2})
    assert "2 passes through the peers" in table.splitlines()[0]
    assert "fastest fastconv at batch 128 (fastconv): 2.00x Keras fit's best, 10.00x" in table


def test_rows_show_their_configuration_and_what_a_round_holds():
    rows = [
        row("book_eager", "book", [10.0], round="book epoch", round_includes="2 passes"),
        row(
            "keras_fit_spe50_bf16",
            "keras",
            [2.0],
            precision="mixed_bfloat16",
            steps_per_execution=50,
            jit_compile=False,
            threads="intra 2, inter 1",
            round="fit epoch",
            round_includes="one epoch of one fit",
        ),
        row("fastconv", "fastconv", [1.0], shards=2, xla=False, round="compiled epoch"),
        row("keras_fit_val", "keras", [4.0], validation=True, round="fit epoch + val"),
        row("fastconv_val", "fastconv", [1.6], validation=True, round="compiled epoch + val"),
    ]
    lines = format_table(rows, {"cpu": "test CPU", "cores": 2}).splitlines()
    keras_line = next(line for line in lines if line.startswith("keras_fit_spe50_bf16 "))
    assert "fit epoch" in keras_line
    assert "mixed_bfloat16, batch 128, spe 50, no jit, threads intra 2, inter 1" in keras_line
    assert "  fit epoch: one epoch of one fit" in lines
    assert any("second forward pass per batch" in line for line in lines)
    # Validation peers are compared with each other, not with the training-only ones.
    assert "-- with the validation pass after each epoch" in lines
    assert any(
        line.startswith("with validation each epoch, fastest fastconv (fastconv_val): 2.50x")
        for line in lines
    )
    assert any("fastest fastconv at batch 128 (fastconv): 2.00x Keras" in line for line in lines)


def test_headline_says_how_larger_batches_train_against_batch_128():
    rows = [
        row("keras_fit", "keras", [4.0]),
        row("fastconv", "fastconv", [2.0], batch_size=128),
        row("fastconv_b256", "fastconv", [1.6], batch_size=256),
        row("fastconv_b512", "fastconv", [2.5], batch_size=512),  # slower: a cliff, shown
        row("fastconv_bf16", "fastconv", [1.0], batch_size=128, precision="mixed_bfloat16"),
    ]
    table = format_table(rows, {"cpu": "test CPU", "cores": 2})
    assert "larger batches, float32: batch 256 1.25x, batch 512 0.80x batch 128's" in table
    # bfloat16's larger batches were not run: no line claims anything about them.
    assert "larger batches, mixed_bfloat16" not in table
