"""Steady-state training throughput of every peer on the real 48,000-image split.

Each peer runs in its own process with its own best thread settings. The run goes through
the peers `PASSES` times (one benchmark per peer and pass); each time, a peer runs one
untimed round (the first also traces and compiles), then its timed rounds. images/s is the
work of a round over the median of all the peer's rounds, of every pass (and, beside it,
over its best round). Compare ratios, not absolute numbers: these machines are shared and
noisy.
"""

import pytest
from peers import PASSES, PEERS

SCHEDULE = [(number, peer) for number in range(1, PASSES + 1) for peer in PEERS]


@pytest.mark.parametrize(
    "pass_number, peer", SCHEDULE, ids=[f"{peer.name}-pass{n}" for n, peer in SCHEDULE]
)
def test_throughput(benchmark, peer_worker, record, pass_number, peer):
    worker = peer_worker(peer.name)  # started in the first pass, kept for the later ones
    benchmark.pedantic(worker.run_round, rounds=peer.rounds, iterations=1, warmup_rounds=1)
    # The table pools a peer's passes from these round times (report.combined).
    row = {
        "peer": peer.name,
        "label": peer.label,
        "kind": peer.kind,
        "pass": pass_number,
        "work_per_round": worker.work_per_round,
        "round_seconds": list(benchmark.stats.stats.data),
        **worker.details,
    }
    if peer.kind != "matmul":  # this pass's own figure, for readers of the JSON
        row["images_per_second"] = worker.work_per_round / benchmark.stats.stats.median
    benchmark.extra_info.update(row)
    record(row)
