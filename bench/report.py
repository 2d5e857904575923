"""The throughput table: images/s of every trainer, ratios to Keras and to the book, its
nominal GFLOP/s and their share of the matmul ceiling and of the FMA peak measured in the same
run, each --xla peer against its graph twin; beside each row, what its rounds hold and the
settings it ran with.

    pytest bench/ --benchmark-only                       # prints the table at the end
    pytest bench/ --benchmark-only --benchmark-json=bench.json && python bench/report.py bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics

from fastconv.data import IMAGE_SIZE, NUM_CLASSES
from fastconv.model import KERNEL_SIZE, POOLED_SIZE

# /proc/cpuinfo's "cpu family": which cores a host has, where its model name ("AMD EPYC
# 9R14") may not say. Zen 4 runs AVX-512 on 256-bit units, Zen 5 on 512-bit ones: twice the
# FMA peak a core, which the matmul ceiling alone does not show.
CPU_FAMILIES = {23: "Zen/Zen 2", 25: "Zen 3/4", 26: "Zen 5", 6: "Intel"}
BOOK_NOTE = (
    "the book's rounds include its second forward pass per batch (get_loss, to record the "
    "loss), which fastconv's and Keras's rounds don't"
)


def rows_from_json(path: str) -> tuple[list[dict], dict]:
    """The rows our benchmarks recorded in a pytest-benchmark JSON file, and its machine."""
    with open(path) as file:
        saved = json.load(file)
    rows = [b["extra_info"] for b in saved["benchmarks"] if "peer" in b["extra_info"]]
    cpu = saved.get("machine_info", {}).get("cpu", {})  # py-cpuinfo's fields
    machine = {"cpu": cpu.get("brand_raw", "?"), "cores": cpu.get("count", "?")}
    return rows, {**machine, "cpu_family": cpu.get("family"), "cpu_model": cpu.get("model")}


def combined(rows: list[dict]) -> list[dict]:
    """One row per peer, its passes' round times pooled: images/s over the median round and
    over the best one, or for the matmul ceiling and the FMA peak GFLOP/s over the best."""
    by_peer: dict[str, dict] = {}
    for row in rows:
        merged = by_peer.setdefault(row["peer"], {**row, "round_seconds": [], "passes": 0})
        merged["round_seconds"] += row["round_seconds"]
        merged["passes"] += 1
    for row in by_peer.values():
        work, seconds = row["work_per_round"], row["round_seconds"]
        if row["kind"] in ("matmul", "fma"):
            row["gflops"] = work / min(seconds) / 1e9
        else:
            row["images_per_second"] = work / statistics.median(seconds)
            row["best_images_per_second"] = work / min(seconds)
    return list(by_peer.values())


def configuration(row: dict) -> str:
    """The settings a peer ran with, in a few words."""
    kind = row["kind"]
    parts = [row.get("precision", "float32")]
    if kind not in ("matmul", "fma"):
        parts.append(f"batch {row.get('batch_size', 128)}")
    if kind == "keras":
        parts.append(f"spe {row.get('steps_per_execution', '?')}")
        parts.append("jit_compile" if row.get("jit_compile") else "no jit")
        if "metrics" in row:
            parts.append(row["metrics"])
    elif kind == "fastconv":
        parts.append("XLA" if row.get("xla") else "graph")
        if "shards" in row:
            parts.append(f"{row['shards']} shard{'s' if row['shards'] != 1 else ''}")
    elif kind == "book":
        parts.append("eager")
    if "threads" in row:
        parts.append(f"threads {row['threads'].removeprefix('threads: ')}")
    return ", ".join(parts)


def format_table(rows: list[dict], machine: dict) -> str:
    # A peer that cannot run on this machine (the FMA peak without FMA units) left a reason,
    # no rounds.
    unavailable = {r["peer"]: r["unavailable"] for r in rows if "unavailable" in r}
    rows = combined([r for r in rows if "unavailable" not in r])
    passes = max((r["passes"] for r in rows), default=0)
    training = [r for r in rows if "images_per_second" in r]
    ceilings = {r["dtype"]: r for r in rows if r["kind"] == "matmul"}
    fma = next((r for r in rows if r["kind"] == "fma"), None)
    book_speed = _best_of(training, "book")
    tensorflow = next((r["tensorflow"] for r in rows if "tensorflow" in r), "?")
    width = max([len(r["label"]) for r in training] + [40])
    fma_column = f" {'% FMA':>6}" if fma else ""  # left out where the peak was not measured
    lines = [
        f"machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"
        f"{cpu_family(machine)} | TensorFlow {tensorflow} | batch 128 unless noted | "
        f"medians of each peer's rounds, {passes} passes through the peers",
        f"{'trainer':{width}} {'images/s':>9} {'x Keras':>8} {'x book':>7} {'GFLOP/s':>8} "
        f"{'% matmul':>8}{fma_column} {'best round':>10}  {'round':20}  configuration",
    ]
    sections = (
        ("training only", [r for r in training if not r.get("validation")], book_speed),
        ("with the validation pass after each epoch", _validated(training), None),
    )
    for title, section, book in sections:
        if not section:
            continue
        lines.append(f"-- {title}")
        keras_best = _best_of(section, "keras")
        for row in sorted(section, key=lambda r: r["images_per_second"]):
            speed = row["images_per_second"]
            gflops = nominal_gflops(row)
            ceiling = ceilings.get(row.get("precision", "float32").removeprefix("mixed_"))
            of_fma = f" {share(gflops, fma):>6}" if fma else ""
            lines.append(
                f"{row['label']:{width}} {speed:9,.0f} {_ratio(speed, keras_best):>8} "
                f"{_ratio(speed, book):>7} {gflops:8.1f} {share(gflops, ceiling):>8}{of_fma} "
                f"{row['best_images_per_second']:10,.0f}  {row.get('round', '?'):20}  "
                f"{configuration(row)}"
            )
    lines += _xla_lines(training)
    for dtype, row in sorted(ceilings.items()):
        lines.append(
            f"ceiling: 2048x2048 matmul in {dtype}: {row['gflops']:,.0f} GFLOP/s "
            f"({configuration(row)})"
        )
    if fma:
        lines.append(
            f"peak: {fma['label']}: {fma['gflops']:,.0f} GFLOP/s, "
            f"{fma['gflops'] / fma['fma_threads']:,.0f} a thread ({configuration(fma)}); "
            "% FMA is every precision's share of this float32 peak"
        )
    lines += [f"{peer}: not measured here: {reason}" for peer, reason in unavailable.items()]
    lines.append("what a round holds (images/s = 48,000 training images over its seconds):")
    legend = {r["round"]: r.get("round_includes", "") for r in rows if "round" in r}
    lines += [f"  {name}: {text}" for name, text in sorted(legend.items())]
    lines.append(
        "x Keras: against the fastest Keras fit peer of the same section; x book: against the "
        f"book's eager class; {BOOK_NOTE}; GFLOP/s: the network's nominal training FLOPs "
        f"({training_flops_per_image():,} an image) at the row's images/s"
    )
    lines += _headline(training)
    best = [{**r, "images_per_second": r["best_images_per_second"]} for r in training]
    lines += ["at each peer's best round:", *_headline(best)[:2]]
    return "\n".join(lines)


def cpu_family(machine: dict) -> str:
    """', cpu family F model M (its cores)' where the machine's family is known."""
    family = machine.get("cpu_family")
    if family is None:
        return ""
    name = CPU_FAMILIES.get(family)
    return f", cpu family {family} model {machine.get('cpu_model', '?')}" + (
        f" ({name})" if name else ""
    )


def nominal_gflops(row: dict) -> float:
    """The network's training FLOPs at the row's images/s (the median round's)."""
    return row["images_per_second"] * training_flops_per_image() / 1e9


def share(gflops: float, reference: dict | None) -> str:
    """`gflops` as a share of a measured ceiling or peak row; "-" without one."""
    return f"{100 * gflops / reference['gflops']:.0f}%" if reference else "-"


def xla_twins(training: list[dict]) -> list[tuple[dict, dict | None]]:
    """Each --xla peer (fastconv_xla...) and its graph twin, the peer named without "_xla"
    (fastconv_xla_bf16_b512 -> fastconv_bf16_b512) if it ran at the same precision and
    batch size; None where it did not run."""
    by_peer = {r["peer"]: r for r in training}
    pairs = []
    for peer, row in by_peer.items():
        if not peer.startswith("fastconv_xla"):
            continue
        twin = by_peer.get("fastconv" + peer.removeprefix("fastconv_xla"))
        if twin and _settings(twin) != _settings(row):
            twin = None
        pairs.append((row, twin))
    return sorted(pairs, key=lambda pair: _settings(pair[0]))


def _settings(row: dict) -> tuple:
    return row.get("precision", "float32"), row.get("batch_size", 128), bool(row.get("validation"))


def _xla_lines(training: list[dict]) -> list[str]:
    """The "--xla against graph" section: each --xla row's images/s over its twin's."""
    pairs = xla_twins(training)
    if not pairs:
        return []
    lines = ["-- --xla against the graph path: images/s over the twin's, median (best) rounds"]
    width = max(len(xla["peer"]) for xla, _ in pairs)
    for xla, graph in pairs:
        precision, batch, _ = _settings(xla)
        where = f"{xla['peer']:{width}} {precision:>14}, batch {batch:<4}"
        if graph is None:
            lines.append(f"{where} -  (its graph twin did not run)")
            continue
        median = _ratio(xla["images_per_second"], graph["images_per_second"])
        best = _ratio(xla["best_images_per_second"], graph["best_images_per_second"])
        lines.append(f"{where} {median} ({best}) of {graph['peer']}")
    return lines


def _validated(training: list[dict]) -> list[dict]:
    return [r for r in training if r.get("validation")]


def _best_of(training: list[dict], kind: str) -> float | None:
    """The fastest images/s among the peers of `kind` ("keras", "book")."""
    return max((r["images_per_second"] for r in training if r["kind"] == kind), default=None)


def _fastest_at_128(training: list[dict]) -> tuple[str | None, dict[str, float]]:
    """The fastest fastconv peer at the book's batch size, and every peer's speed there."""
    at_128 = {
        r["peer"]: r["images_per_second"] for r in training if r.get("batch_size", 128) == 128
    }
    fastest = max((p for p in at_128 if p.startswith("fastconv")), key=at_128.get, default=None)
    return fastest, at_128


def _headline(training: list[dict]):
    """The ratios the project promises, at the book's batch size of 128: training only, then
    with the validation pass each epoch."""
    only = [r for r in training if not r.get("validation")]
    keras_best, book_speed = _best_of(only, "keras"), _best_of(only, "book")
    fastest, at_128 = _fastest_at_128(only)
    lines = []
    if fastest:
        lines.append(
            f"fastest fastconv at batch 128 ({fastest}): {_ratio(at_128[fastest], keras_best)} "
            f"Keras fit's best, {_ratio(at_128[fastest], book_speed)} the book's eager class "
            f"(whose rounds make a second forward pass per batch){_named(only, keras_best)}"
        )
    validated = _validated(training)
    fastest_val, at_128_val = _fastest_at_128(validated)
    if fastest_val:
        keras_val = _best_of(validated, "keras")
        lines.append(
            f"with validation each epoch, fastest fastconv ({fastest_val}): "
            f"{_ratio(at_128_val[fastest_val], keras_val)} Keras fit's best with "
            f"validation_data{_named(validated, keras_val)}"
        )
    if "fastconv_xla" in at_128:
        xla = at_128["fastconv_xla"]
        lines.append(
            f"--xla: {_ratio(xla, at_128.get('xla_naive'))} the naive XLA step, "
            f"{_ratio(xla, at_128.get('fastconv'))} fastconv's graph path"
        )
    speeds = {r["peer"]: r["images_per_second"] for r in only}
    for suffix, precision in (("", "float32"), ("_bf16", "mixed_bfloat16")):
        at_batch = {b: speeds.get(f"fastconv{suffix}_b{b}") for b in (256, 512)}
        if all(at_batch.values()) and f"fastconv{suffix}" in speeds:
            lines.append(
                f"larger batches, {precision}: "
                + ", ".join(
                    f"batch {b} {_ratio(speed, speeds[f'fastconv{suffix}'])}"
                    for b, speed in at_batch.items()
                )
                + " batch 128's images/s"
            )
    if "fastconv_logging" in at_128 and "fastconv" in at_128:
        lines.append(
            "TensorBoard step logging costs "
            f"{1 - at_128['fastconv_logging'] / at_128['fastconv']:.1%} of fastconv's speed "
            f"({_ratio(at_128['fastconv_logging'], at_128.get('fastconv'))})"
        )
    return lines


def _named(training: list[dict], speed: float | None) -> str:
    """'; Keras fit's best: PEER, N images/s' for the Keras peer that ran at `speed`."""
    peer = next(
        (r["peer"] for r in training if r["kind"] == "keras" and r["images_per_second"] == speed),
        None,
    )
    return f"; Keras fit's best: {peer}, {speed:,.0f} images/s" if peer else ""


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def training_flops_per_image(n_kernels: int = 10, units: int = 100) -> int:
    """Floating-point operations to train on one image (2 per multiply-add).

    Forward: the conv (28*28*K*9 multiply-adds) and the two dense layers. Backward: the conv
    needs only its weight gradient (the images need none), the dense layers need weight and
    input gradients, twice their forward work. The book's network: 1,464,240, ~1.46 MFLOP.
    """
    conv = IMAGE_SIZE * IMAGE_SIZE * n_kernels * KERNEL_SIZE * KERNEL_SIZE * 2
    dense = (POOLED_SIZE * POOLED_SIZE * n_kernels * units + units * NUM_CLASSES) * 2
    return 2 * conv + 3 * dense


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "json", metavar="BENCHMARK_JSON", help="written by pytest bench/ --benchmark-json=FILE"
    )
    path = parser.parse_args(argv).json
    try:
        rows, machine = rows_from_json(path)
    except OSError as error:
        parser.error(f"{path}: cannot read it ({error.strerror})")
    except (ValueError, KeyError, TypeError, AttributeError):  # UnicodeDecodeError: ValueError
        parser.error(f"{path}: not the JSON of pytest bench/ --benchmark-json")
    if not rows:
        parser.error(f"{path}: holds no run of fastconv's benchmarks (pytest bench/)")
    print(format_table(rows, machine))


if __name__ == "__main__":
    main()
