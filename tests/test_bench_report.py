"""bench/report.py: the throughput table pools each peer's passes before it takes ratios."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import report
from report import combined, format_table, nominal_gflops, training_flops_per_image, xla_twins


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


def test_every_training_row_has_its_share_of_the_matmul_ceiling_and_the_fma_peak():
    flops = training_flops_per_image()
    rows = [
        # 10,000 images/s: the network's nominal GFLOP/s is 10,000 * flops / 1e9.
        row("fastconv", "fastconv", [1.0], work=10_000, round="compiled epoch"),
        row("fastconv_bf16", "fastconv", [0.5], work=10_000, precision="mixed_bfloat16"),
        row("matmul_float32", "matmul", [1.0], work=4 * 10_000 * flops, dtype="float32"),
        # The peak over its best round: 8x the float32 row's GFLOP/s.
        row("fma_peak", "fma", [2.0, 1.0], work=8 * 10_000 * flops, fma_threads=2),
    ]
    (fastconv,) = [r for r in combined(rows) if r["peer"] == "fastconv"]
    assert nominal_gflops(fastconv) == pytest.approx(10_000 * flops / 1e9)
    lines = format_table(rows, {"cpu": "test CPU", "cores": 2}).splitlines()
    header = next(line for line in lines if line.startswith("trainer"))
    assert header.split().index("FMA") == header.split().index("matmul") + 2  # beside it
    fields = next(line for line in lines if line.startswith("fastconv ")).split()
    assert fields[4:7] == [f"{10_000 * flops / 1e9:.1f}", "25%", "12%"]  # 1/4, 1/8
    # bfloat16 has no bfloat16 matmul ceiling here; its share of the float32 FMA peak is given.
    assert next(line for line in lines if line.startswith("fastconv_bf16 ")).split()[5:7] == [
        "-",
        "25%",
    ]
    peak = f"peak: fma_peak: {8 * 10_000 * flops / 1e9:,.0f} GFLOP/s, "
    assert any(line.startswith(peak) for line in lines)


def test_without_the_fma_peak_the_column_is_left_out_and_the_table_says_why():
    rows = [
        row("fastconv", "fastconv", [1.0]),
        row("fma_peak", "fma", None, unavailable="this CPU has no FMA"),
    ]
    lines = format_table(rows, {"cpu": "test CPU", "cores": 2}).splitlines()
    assert not any("FMA" in line for line in lines if line.startswith(("trainer", "fastconv")))
    assert "fma_peak: not measured here: this CPU has no FMA" in lines


def test_header_names_the_cpu_family_and_its_cores():
    rows = [row("fastconv", "fastconv", [1.0])]
    machine = {"cpu": "AMD EPYC 9R14", "cores": 2, "cpu_family": 25, "cpu_model": 17}
    first = format_table(rows, machine).splitlines()[0]
    assert first.startswith("machine: AMD EPYC 9R14, 2 cores, cpu family 25 model 17 (Zen 3/4) |")
    machine.update(cpu_family=26, cpu_model=2)
    assert "cpu family 26 model 2 (Zen 5)" in format_table(rows, machine)
    assert "cpu family" not in format_table(rows, {"cpu": "test CPU", "cores": 2})


def test_each_xla_row_is_compared_with_its_graph_twin():
    rows = [
        row("fastconv", "fastconv", [2.0, 1.0], xla=False),
        row("fastconv_xla", "fastconv", [1.0, 1.0], xla=True),
        row("fastconv_bf16", "fastconv", [1.0], precision="mixed_bfloat16"),
        row("fastconv_xla_bf16", "fastconv", [2.0], precision="mixed_bfloat16", xla=True),
        row("fastconv_xla_b512", "fastconv", [1.0], batch_size=512, xla=True),
        # A twin by name that ran other settings is no twin.
        row("fastconv_bf16_b512", "fastconv", [1.0], precision="mixed_bfloat16", batch_size=256),
        row(
            "fastconv_xla_bf16_b512",
            "fastconv",
            [1.0],
            precision="mixed_bfloat16",
            batch_size=512,
            xla=True,
        ),
        row("fastconv_1shard", "fastconv", [0.5], shards=1),
        row("xla_naive", "fastconv", [4.0], xla=True),
    ]
    pairs = {xla["peer"]: twin and twin["peer"] for xla, twin in xla_twins(combined(rows))}
    assert pairs == {
        "fastconv_xla": "fastconv",
        "fastconv_xla_b512": None,
        "fastconv_xla_bf16_b512": None,
        "fastconv_xla_bf16": "fastconv_bf16",
    }
    lines = format_table(rows, {"cpu": "test CPU", "cores": 2}).splitlines()
    start = lines.index(
        "-- --xla against the graph path: images/s over the twin's, median (best) rounds"
    )
    section = [line.split() for line in lines[start + 1 : start + 5]]
    # float32 before mixed_bfloat16, batch 128 before 512; the median rounds' ratio, then
    # the best rounds'.
    assert [fields[0] for fields in section] == [
        "fastconv_xla",
        "fastconv_xla_b512",
        "fastconv_xla_bf16",
        "fastconv_xla_bf16_b512",
    ]
    assert section[0][4:] == ["1.50x", "(1.00x)", "of", "fastconv"]
    assert section[2][4:] == ["0.50x", "(0.50x)", "of", "fastconv_bf16"]
    assert section[1][4:] == ["-", "(its", "graph", "twin", "did", "not", "run)"]


def test_the_command_prints_the_table_of_a_saved_benchmark_json(tmp_path):
    """`python bench/report.py bench.json`, as bench/RESULTS.md says to reproduce a table."""
    saved = {
        "machine_info": {"cpu": {"brand_raw": "test CPU", "count": 2, "family": 25, "model": 1}},
        "benchmarks": [
            {"extra_info": row("fastconv", "fastconv", [1.0], batch_size=128)},
            {"extra_info": row("matmul_float32", "matmul", [0.5], work=10**9, dtype="float32")},
        ],
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(saved))
    report = Path(__file__).resolve().parent.parent / "bench" / "report.py"
    done = subprocess.run([sys.executable, str(report), str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "machine: test CPU, 2 cores, cpu family 25 model 1" in done.stdout
    gflops = f"{1000 * training_flops_per_image() / 1e9:.1f}"
    assert any(line.startswith("fastconv") and gflops in line for line in done.stdout.splitlines())


@pytest.mark.parametrize(
    "content, said",
    [
        (None, "cannot read it (No such file or directory)"),
        ("", "not the JSON of pytest bench/ --benchmark-json"),
        ('{"rows": []}', "not the JSON of pytest bench/ --benchmark-json"),  # end_to_end's
        ("[1, 2, 3]", "not the JSON of pytest bench/ --benchmark-json"),
        ('{"benchmarks": []}', "holds no run of fastconv's benchmarks (pytest bench/)"),
    ],
)
def test_a_file_that_is_not_a_benchmark_json_is_one_line(tmp_path, capsys, content, said):
    """Each was a traceback (FileNotFoundError, JSONDecodeError, KeyError, TypeError), or,
    for a benchmark JSON without fastconv's rows, an empty table and exit code 0."""
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit:
        report.main([str(path)])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {path}: {said}")
