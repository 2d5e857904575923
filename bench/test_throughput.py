"""Steady-state training throughput of every peer on the real 48,000-image split.

Each peer runs in its own process with its own best thread settings, is warmed up (traced,
compiled) by one untimed round, then timed over several rounds; images/s is the work of a
round over the median round time (and, beside it, over the best round time). Compare ratios,
not absolute numbers: these machines are shared and noisy.
"""

import pytest
from peers import PEERS


def timed_row(benchmark, worker, peer) -> dict:
    """Times the peer's rounds after one warm-up round; its row for the table, sans result."""
    benchmark.pedantic(worker.run_round, rounds=peer.rounds, iterations=1, warmup_rounds=1)
    return {"peer": peer.name, "label": peer.label, "kind": peer.kind, **worker.details}


@pytest.mark.parametrize("peer", [p for p in PEERS if p.is_training], ids=lambda p: p.name)
def test_training_throughput(benchmark, peer_worker, record, peer):
    worker = peer_worker(peer.name)
    row = timed_row(benchmark, worker, peer)
    row["images_per_second"] = worker.work_per_round / benchmark.stats.stats.median
    # Some peers swing between a fast and a slow mode from round to round (Keras fit: 0.8 or
    # 1.3 s an epoch); their best round is reported beside the median.
    row["best_images_per_second"] = worker.work_per_round / benchmark.stats.stats.min
    benchmark.extra_info.update(row)
    record(row)


@pytest.mark.parametrize("peer", [p for p in PEERS if not p.is_training], ids=lambda p: p.name)
def test_matmul_ceiling(benchmark, peer_worker, record, peer):
    worker = peer_worker(peer.name)
    row = timed_row(benchmark, worker, peer)
    row["gflops"] = worker.work_per_round / benchmark.stats.stats.min / 1e9  # best: a ceiling
    benchmark.extra_info.update(row)
    record(row)
