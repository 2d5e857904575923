"""The throughput table: images/s of every trainer, ratios to Keras and to the book, and the
share of the measured matmul ceiling.

    pytest bench/ --benchmark-only                       # prints the table at the end
    pytest bench/ --benchmark-only --benchmark-json=bench.json && python bench/report.py bench.json
"""

from __future__ import annotations

import json
import sys

from fastconv.model import training_flops_per_image


def rows_from_json(path: str) -> tuple[list[dict], dict]:
    """The rows our benchmarks recorded in a pytest-benchmark JSON file, and its machine."""
    with open(path) as file:
        saved = json.load(file)
    rows = [b["extra_info"] for b in saved["benchmarks"] if "peer" in b["extra_info"]]
    cpu = saved.get("machine_info", {}).get("cpu", {})
    return rows, {"cpu": cpu.get("brand_raw", "?"), "cores": cpu.get("count", "?")}


def format_table(rows: list[dict], machine: dict) -> str:
    training = [r for r in rows if "images_per_second" in r]
    ceilings = {r["dtype"]: r["gflops"] for r in rows if "gflops" in r}
    keras = [r["images_per_second"] for r in training if r["kind"] == "keras"]
    book = [r["images_per_second"] for r in training if r["kind"] == "book"]
    keras_best, book_speed = max(keras, default=None), max(book, default=None)
    tensorflow = next((r["tensorflow"] for r in rows if "tensorflow" in r), "?")
    lines = [
        f"machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores | "
        f"TensorFlow {tensorflow} | batch 128 unless noted | medians of each peer's rounds",
        f"{'trainer':52} {'images/s':>9} {'x Keras':>8} {'x book':>7} {'GFLOP/s':>8} "
        f"{'% matmul':>8}  threads",
    ]
    for row in sorted(training, key=lambda r: r["images_per_second"]):
        speed = row["images_per_second"]
        gflops = speed * training_flops_per_image() / 1e9
        ceiling = ceilings.get(row.get("precision", "float32"))
        lines.append(
            f"{row['label']:52} {speed:9,.0f} {_ratio(speed, keras_best):>8} "
            f"{_ratio(speed, book_speed):>7} {gflops:8.1f} "
            f"{f'{100 * gflops / ceiling:.0f}%' if ceiling else '-':>8}  {row.get('threads', '')}"
        )
    for dtype, gflops in sorted(ceilings.items()):
        lines.append(f"ceiling: 2048x2048 matmul in {dtype}: {gflops:,.0f} GFLOP/s")
    return "\n".join(lines)


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/report.py BENCHMARK_JSON")
    print(format_table(*rows_from_json(sys.argv[1])))
