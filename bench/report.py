"""The throughput table: images/s of every trainer, ratios to Keras and to the book, and the
share of the measured matmul ceiling.

    pytest bench/ --benchmark-only                       # prints the table at the end
    pytest bench/ --benchmark-only --benchmark-json=bench.json && python bench/report.py bench.json
"""

from __future__ import annotations

import json
import statistics
import sys

from fastconv.model import training_flops_per_image


def rows_from_json(path: str) -> tuple[list[dict], dict]:
    """The rows our benchmarks recorded in a pytest-benchmark JSON file, and its machine."""
    with open(path) as file:
        saved = json.load(file)
    rows = [b["extra_info"] for b in saved["benchmarks"] if "peer" in b["extra_info"]]
    cpu = saved.get("machine_info", {}).get("cpu", {})
    return rows, {"cpu": cpu.get("brand_raw", "?"), "cores": cpu.get("count", "?")}


def combined(rows: list[dict]) -> list[dict]:
    """One row per peer, its passes' round times pooled: images/s over the median round and
    over the best one, or for the matmul ceiling GFLOP/s over the best."""
    by_peer: dict[str, dict] = {}
    for row in rows:
        merged = by_peer.setdefault(row["peer"], {**row, "round_seconds": [], "passes": 0})
        merged["round_seconds"] += row["round_seconds"]
        merged["passes"] += 1
    for row in by_peer.values():
        work, seconds = row["work_per_round"], row["round_seconds"]
        if row["kind"] == "matmul":
            row["gflops"] = work / min(seconds) / 1e9
        else:
            row["images_per_second"] = work / statistics.median(seconds)
            row["best_images_per_second"] = work / min(seconds)
    return list(by_peer.values())


def format_table(rows: list[dict], machine: dict) -> str:
    rows = combined(rows)
    passes = max((r["passes"] for r in rows), default=0)
    training = [r for r in rows if "images_per_second" in r]
    ceilings = {r["dtype"]: r["gflops"] for r in rows if "gflops" in r}
    keras_best, book_speed = _best_of(training, "keras"), _best_of(training, "book")
    tensorflow = next((r["tensorflow"] for r in rows if "tensorflow" in r), "?")
    lines = [
        f"machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores | "
        f"TensorFlow {tensorflow} | batch 128 unless noted | "
        f"medians of each peer's rounds, {passes} passes through the peers",
        f"{'trainer':52} {'images/s':>9} {'x Keras':>8} {'x book':>7} {'GFLOP/s':>8} "
        f"{'% matmul':>8} {'best round':>10}  threads",
    ]
    for row in sorted(training, key=lambda r: r["images_per_second"]):
        speed = row["images_per_second"]
        gflops = speed * training_flops_per_image() / 1e9
        ceiling = ceilings.get(row.get("precision", "float32").removeprefix("mixed_"))
        lines.append(
            f"{row['label']:52} {speed:9,.0f} {_ratio(speed, keras_best):>8} "
            f"{_ratio(speed, book_speed):>7} {gflops:8.1f} "
            f"{f'{100 * gflops / ceiling:.0f}%' if ceiling else '-':>8} "
            f"{row['best_images_per_second']:10,.0f}  {row.get('threads', '')}"
        )
    for dtype, gflops in sorted(ceilings.items()):
        lines.append(f"ceiling: 2048x2048 matmul in {dtype}: {gflops:,.0f} GFLOP/s")
    lines += _headline(training, keras_best, book_speed)
    best = [{**r, "images_per_second": r["best_images_per_second"]} for r in training]
    keras_top, book_top = _best_of(best, "keras"), _best_of(best, "book")
    lines += ["at each peer's best round:", *_headline(best, keras_top, book_top)[:2]]
    return "\n".join(lines)


def _best_of(training: list[dict], kind: str) -> float | None:
    """The fastest images/s among the peers of `kind` ("keras", "book")."""
    return max((r["images_per_second"] for r in training if r["kind"] == kind), default=None)


def _headline(training: list[dict], keras_best: float | None, book_speed: float | None):
    """The ratios the project promises, at the book's batch size of 128."""
    at_128 = {
        r["peer"]: r["images_per_second"] for r in training if r.get("batch_size", 128) == 128
    }
    fastest = max((p for p in at_128 if p.startswith("fastconv")), key=at_128.get, default=None)
    lines = []
    if fastest:
        lines.append(
            f"fastest fastconv at batch 128 ({fastest}): {_ratio(at_128[fastest], keras_best)} "
            f"Keras fit's best, {_ratio(at_128[fastest], book_speed)} the book's eager class"
        )
    if "fastconv_xla" in at_128:
        xla = at_128["fastconv_xla"]
        lines.append(
            f"--xla: {_ratio(xla, at_128.get('xla_naive'))} the naive XLA step, "
            f"{_ratio(xla, at_128.get('fastconv'))} fastconv's graph path"
        )
    if "fastconv_logging" in at_128 and "fastconv" in at_128:
        lines.append(
            "TensorBoard step logging costs "
            f"{1 - at_128['fastconv_logging'] / at_128['fastconv']:.1%} of fastconv's speed "
            f"({_ratio(at_128['fastconv_logging'], at_128.get('fastconv'))})"
        )
    return lines


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/report.py BENCHMARK_JSON")
    print(format_table(*rows_from_json(sys.argv[1])))
